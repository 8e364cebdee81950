"""The Ray Train worker loop shared by pretraining and fine-tuning.

Every worker runs `train_loop_per_worker`. It reads only its share of the training shards
(`shards.py`): rank r of N owns the r-th of N equal contiguous ranges of the split's canonical order
(files in name order, then rows), reads it in order in micro-batches and wraps to its start for the
next epoch; a resume starts reading at the row the checkpoint's consumed count gives, without
reading what came before. What this guarantees:

- For a fixed number of workers N and micro_batch_size, the global batches are deterministic: the
  same on every run, relaunch and resume, and a resumed run neither repeats nor skips a sequence.
- With 1 worker the order is the canonical order, as it always was. With N workers the global
  batch of a micro-step is rank 0's next micro-batch, then rank 1's, ...: every epoch trains on
  every sequence once, except fewer than N x (micro_batch_size + 1) in ragged tails, but global
  batches are not the same as with 1 worker; "identical global batches for any N" gave way to
  reading 1/N of the data per worker. What stays equal across N is the loop's arithmetic: the
  same global batch gives the same loss and update at any N, up to floating-point summation order
  (the loss is normalised by the global target tokens; learning rate and tokens_seen follow the step).
- Evaluation scores, on every rank, the first eval_batches micro-batches of its share of the
  held-out split, read once per attempt.

The last checkpoint also carries the exported Hugging Face model, so relaunching a finished run
restores the trained weights (and may continue with a larger max_steps). Rank 0 logs metrics to
MLflow itself, because Ray Train V2 keeps only metrics reported with a checkpoint, and shows people
its progress (`progress.py`).

Checkpoints hold no pickles, so that whoever can write the checkpoint storage cannot run code on
the training workers when they resume. torch.distributed.checkpoint (DCP) cannot promise that: its
`.metadata` file and its non-tensor entries are read back with pickle. So every rank writes one
safetensors file, `state-<rank>.safetensors` (a JSON header, then raw tensor bytes: nothing in it
is executed), holding its RNG state and its local shards of the sharded tensors (FSDP's DTensors,
from `get_state_dict` without `full_state_dict`, so no rank ever gathers the whole model and
optimiser), and rank 0 adds the replicated tensors (DDP's weights and optimiser state, optimiser
step counts) once; `train_state.json` holds the step and the sequences consumed. Resuming reads
into the tensors `get_state_dict` gives the freshly built model and optimiser, and refuses a file
that is not safetensors or whose names, shapes or dtypes differ from those, naming the file.
Shards are not resharded, so a run resumes on the world size it was written with (the run name is
the stage's fingerprint, which holds `scaling.num_workers`, so a relaunch always does). The
optimiser's hyperparameters are not saved: they come from the config, and the learning rate is set
before every step. This was chosen over keeping DCP and checking SHA-256 digests of its files
before loading, which protects only as long as the digests are kept where the storage's writers
cannot rewrite them, and still unpickles what it verified.

Strategies. `ddp` replicates the model (DistributedDataParallel). `fsdp` shards parameters,
gradients and optimiser state with FSDP2 (`fully_shard` on every GPTNeoXLayer, then the root), on
CPU/gloo as on GPU/NCCL. On GPUs (`precision: bf16`) FSDP uses `MixedPrecisionPolicy(param_dtype=
bfloat16, reduce_dtype=float32)`: fp32 master weights and optimiser state, bf16 compute and
all-gathers, fp32 gradient reduce-scatter; `activation_checkpointing: true` recomputes each layer's
forward in the backward (transformers' gradient checkpointing, non-reentrant, which composes with
FSDP2 and DDP), trading about a third more compute for activation memory, which the 3B/7B presets
need at micro-batch 8 x 2048 tokens. DDP under bf16 autocasts the forward and keeps fp32 weights
and gradients. MFU counts 6 x parameters FLOPs per token, so recomputation does not raise it.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray.train
import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from pajama import storage
from pajama.config import LoraConfig, TrainingConfig
from pajama.sft.templates import IGNORE_INDEX
from pajama.train import shards
from pajama.train.progress import Progress
from pajama.train.trace import StepTrace

EXPORT_DIR = "hf"
STATE_FILE = "train_state.json"
RNG_KEY = "rng"


@dataclass(frozen=True)
class TrainSpec:
    """What a stage trains, besides its TrainingConfig section; both travel to every worker."""

    init: str  # "scratch", or the storage URI (or local path) of a Hugging Face model to fine-tune
    seed: int
    seq_len: int
    eval_slices: tuple[str, ...]  # names of the held-out rows' slice_id values
    model_config: dict | None = None  # GPTNeoXConfig kwargs, for init "scratch"
    lora: LoraConfig | None = None  # LoRA adapters instead of full fine-tuning
    tracking: dict | None = None  # the stage's MLflow run (StageContext.train_tracking)


class CheckpointError(RuntimeError):
    """A checkpoint this code did not write, or wrote for another model or world size."""


# Dense bf16 peak FLOP/s per device, for MFU when the config gives no peak_flops.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 125e12}


def peak_flops(configured: float | None, device: torch.device) -> float | None:
    if configured:
        return configured
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def lr_at(step: int, training: TrainingConfig) -> float:
    """Linear warmup, then cosine decay to min_learning_rate at max_steps."""
    peak, floor, warmup = training.learning_rate, training.min_learning_rate, training.warmup_steps
    if step < warmup:
        return peak * (step + 1) / warmup
    span = max(1, training.max_steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


def _world() -> tuple[int, int]:
    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size()


def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def _sum_over_ranks(value: float, device) -> float:
    """A host number summed over all ranks; a single worker keeps it on the host (no device sync)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    return _all_reduce(torch.tensor(value, dtype=torch.float64, device=device)).item()


def _to_tensors(table: pa.Table) -> dict[str, torch.Tensor]:
    """A micro-batch's columns as tensors; list columns (sequences of one length) become 2-D."""
    tensors = {}
    for name, column in zip(table.column_names, table.columns):
        column = column.combine_chunks()
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            lengths = pc.list_value_length(column)
            if pc.min(lengths).as_py() != pc.max(lengths).as_py():
                raise ValueError(f"column {name} holds sequences of different lengths; training needs packed, "
                                 "equal-length rows")
            values = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), -1)
        else:
            values = column.to_numpy(zero_copy_only=False)
        # Arrow memory is read-only, and torch must not alias it.
        tensors[name] = torch.from_numpy(np.require(values, requirements="W"))
    return tensors


def _to_device(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _n_targets(batch: dict[str, torch.Tensor]) -> int:
    return int((batch.get("labels", batch["input_ids"])[:, 1:] != IGNORE_INDEX).sum())


def row_losses(model, batch: dict[str, torch.Tensor], autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence summed next-token loss and target-token count (labels default to input_ids)."""
    input_ids = batch["input_ids"].long()
    labels = batch["labels"].long() if "labels" in batch else input_ids
    kwargs = {}
    if "position_ids" in batch:
        kwargs["position_ids"] = batch["position_ids"].long()
    if "attention_mask" in batch:
        kwargs["attention_mask"] = batch["attention_mask"]
    with autocast:
        # No KV cache while training: with one, GPT-NeoX ignores restarting position_ids and
        # packed fine-tuning examples would attend across each other.
        logits = model(input_ids=input_ids, use_cache=False, **kwargs).logits
    targets = labels[:, 1:]
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.size(-1)), targets.reshape(-1),
        ignore_index=IGNORE_INDEX, reduction="none",
    )
    return losses.view(targets.shape).sum(dim=1), (targets != IGNORE_INDEX).sum(dim=1)


def _build_model(spec: TrainSpec, training: TrainingConfig, device: torch.device):
    from transformers import AutoModelForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM

    if spec.init == "scratch":
        # Initialise on the device itself: a 7B model's random init on the CPU takes minutes.
        with device:
            model = GPTNeoXForCausalLM(GPTNeoXConfig(**spec.model_config))
    else:
        # Each worker fetches the base model from the storage itself: nodes share no disk.
        model = AutoModelForCausalLM.from_pretrained(storage.local_copy(spec.init), dtype=torch.float32)
    if spec.lora:
        import peft

        lora = spec.lora
        model = peft.get_peft_model(model, peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                           target_modules=lora.target_modules, task_type="CAUSAL_LM"))
    if training.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model.to(device)


def _parallelize(model, strategy: str, precision: str, world: int):
    # FSDP wraps a single worker too: its bf16 parameters and fp32 reduction are part of the
    # numerics, which should not change with the world size (Ray Train starts a process group of 1).
    if strategy == "fsdp" and dist.is_initialized():
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXLayer

        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if precision == "bf16" else MixedPrecisionPolicy()
        for module in model.modules():
            if isinstance(module, GPTNeoXLayer):
                fully_shard(module, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        return model
    if world == 1:
        return model
    device_ids = [torch.cuda.current_device()] if torch.cuda.is_available() and next(model.parameters()).is_cuda else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def _gradient_sync(model, enabled: bool):
    """Skip the gradient reduction on all but the last micro-batch of an accumulated step."""
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()
    if hasattr(model, "no_sync") and not enabled:  # DDP
        return model.no_sync()
    return contextlib.nullcontext()


def _optimizer(model, training: TrainingConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": training.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=training.learning_rate, betas=tuple(training.adam_betas),
        # One kernel for the whole update on GPUs (FSDP2's DTensors included); CPUs keep foreach.
        fused=next(model.parameters()).is_cuda,
    )


def _state_file(directory: Path, rank: int) -> Path:
    return Path(directory, f"state-{rank}.safetensors")


def _flat_tensors(model, optimizer) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """The model's and optimiser's tensors by unique name: DTensors under FSDP, else plain tensors
    (the same on every rank). They alias the model's and optimiser's own, except that a fresh
    optimiser's state is created (zeros) for the checkpoint to be read into."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    flat = {f"model/{k}": v for k, v in model_sd.items()}
    flat.update({f"optim/{fqn}/{k}": v for fqn, state in optim_sd["state"].items() for k, v in state.items()})
    return flat, model_sd, optim_sd


def _local(value: torch.Tensor) -> torch.Tensor:
    """This rank's part of a tensor: its shard of a DTensor, or the whole of a replicated one."""
    return value.to_local() if hasattr(value, "to_local") else value


def write_checkpoint(model, optimizer, state: dict, rank: int, world: int, directory: Path) -> None:
    """This rank's part of a checkpoint (see the module docstring) into `directory`."""
    tensors = {RNG_KEY: torch.get_rng_state()}
    flat, _, _ = _flat_tensors(model, optimizer)
    for name, value in flat.items():
        if rank == 0 or hasattr(value, "to_local"):
            # A copy on the CPU: safetensors takes contiguous CPU tensors that share no memory.
            tensors[name] = _local(value).detach().to("cpu", copy=True).contiguous()
    save_file(tensors, str(_state_file(directory, rank)), metadata={"world_size": str(world)})
    if rank == 0:
        Path(directory, STATE_FILE).write_text(json.dumps(state))


def _open_state(directory: Path, rank: int, world: int):
    path = _state_file(directory, rank)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {directory} has no {path.name}: it was not written by this version "
                              f"of pajama's loop (nor by as many workers); delete the run's checkpoints to start over")
    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
    except SafetensorError as err:
        raise CheckpointError(f"{path} is not a safetensors file ({err}); refusing to load it") from None
    written = (handle.metadata() or {}).get("world_size")
    if written != str(world):
        raise CheckpointError(f"{path} was written by a run of {written} workers, this one has {world}")
    return path, handle


def read_checkpoint(model, optimizer, rank: int, world: int, directory: Path) -> dict:
    """Restore this rank's model, optimiser and RNG state from `directory`; return the train state."""
    flat, model_sd, optim_sd = _flat_tensors(model, optimizer)
    with contextlib.ExitStack() as files, torch.no_grad():
        own_path, own = _open_state(directory, rank, world)
        files.enter_context(own)
        first_path, first = own_path, own  # the replicated tensors are in rank 0's file
        if rank:
            first_path, first = _open_state(directory, 0, world)
            files.enter_context(first)
        expected = {RNG_KEY} | {n for n, v in flat.items() if rank == 0 or hasattr(v, "to_local")}
        if set(own.keys()) != expected:
            raise CheckpointError(f"{own_path} does not hold this model's tensors: missing "
                                  f"{sorted(expected - set(own.keys()))[:5]}, "
                                  f"unknown {sorted(set(own.keys()) - expected)[:5]}")
        for name, value in flat.items():
            path, source = (own_path, own) if hasattr(value, "to_local") else (first_path, first)
            if name not in source.keys():
                raise CheckpointError(f"{path} has no tensor {name}")
            loaded, local = source.get_tensor(name), _local(value)
            if loaded.shape != local.shape or loaded.dtype != local.dtype:
                raise CheckpointError(f"{path}: {name} is {loaded.dtype} {list(loaded.shape)}, "
                                      f"the model's is {local.dtype} {list(local.shape)}")
            local.copy_(loaded)
        rng = own.get_tensor(RNG_KEY)
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)
    torch.set_rng_state(rng)
    return json.loads(Path(directory, STATE_FILE).read_text())


def _save_checkpoint(model, optimizer, state: dict, rank: int, world: int, metrics: dict,
                     export: tuple[TrainSpec, TrainingConfig] | None = None) -> None:
    """Every rank writes its part; Ray Train merges the ranks' directories into one checkpoint in
    the run's storage. With `export`, rank 0 adds the HF export."""
    with tempfile.TemporaryDirectory() as tmp:
        write_checkpoint(model, optimizer, state, rank, world, Path(tmp))
        if export is not None:
            _export(model, *export, rank, Path(tmp, EXPORT_DIR))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _load_checkpoint(model, optimizer, rank: int, world: int) -> dict | None:
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as path:
        return read_checkpoint(model, optimizer, rank, world, Path(path))


class _MlflowLogger:
    """Rank 0's direct line to the stage's MLflow run."""

    def __init__(self, tracking: dict | None, rank: int):
        self.client = None
        if tracking and rank == 0:
            from mlflow.tracking import MlflowClient

            self.client, self.run_id = MlflowClient(tracking["uri"]), tracking["run_id"]

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])


def _held_out_batches(index: shards.ShardIndex, training: TrainingConfig, rank: int, world: int
                      ) -> list[dict[str, torch.Tensor]]:
    """This rank's first `eval_batches` held-out micro-batches, read once and kept in memory:
    every evaluation scores the same sequences without re-reading the shards."""
    kept = []
    for table in shards.head(index, rank, world, training.micro_batch_size, training.eval_batches):
        local = _to_tensors(table)
        local.pop("seq_index", None)
        kept.append(local)
    return kept


def _evaluate(model, batches: list[dict[str, torch.Tensor]], slices: tuple[str, ...], device,
              autocast) -> dict[str, float]:
    """Held-out loss and perplexity, overall and per slice, summed over all ranks."""
    # Sums on the device: NCCL reduces only device tensors. Rows without a slice_id count as slice 0.
    sums = torch.zeros(len(slices), dtype=torch.float64, device=device)
    counts = torch.zeros(len(slices), dtype=torch.float64, device=device)
    model.eval()
    with torch.no_grad():
        for batch in batches:
            local = _to_device(batch, device)
            slice_ids = local.pop("slice_id").long() if "slice_id" in local else torch.zeros(
                len(local["input_ids"]), dtype=torch.long, device=device)
            losses, n = row_losses(model, local, autocast)
            sums.index_add_(0, slice_ids, losses.double())
            counts.index_add_(0, slice_ids, n.double())
    model.train()
    _all_reduce(sums), _all_reduce(counts)
    metrics = {}
    if counts.sum() > 0:
        total = sums.sum() / counts.sum()
        metrics.update(eval_loss=total.item(), eval_perplexity=math.exp(min(total.item(), 50)))
    for sid, name in enumerate(slices):
        if counts[sid] > 0:
            metrics[f"eval_loss/{name}"] = (sums[sid] / counts[sid]).item()
    return metrics


def _export(model, spec: TrainSpec, training: TrainingConfig, rank: int, out: Path) -> None:
    """Gather the full weights (a collective under FSDP) and save a HF directory on rank 0."""
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank != 0:
        return
    from transformers import AutoConfig, AutoModelForCausalLM

    base = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    if spec.lora:
        base.load_state_dict(full)
        merged = base.merge_and_unload()
        merged.save_pretrained(out, safe_serialization=True)
    else:
        config = AutoConfig.for_model(**base.config.to_dict())
        config.use_cache = True
        with torch.device("meta"):
            fresh = AutoModelForCausalLM.from_config(config)
        fresh.load_state_dict(full, assign=True)
        dtype = torch.bfloat16 if training.precision == "bf16" else torch.float32
        fresh.to(dtype).save_pretrained(out, safe_serialization=True)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's entry point; `config` is {"spec": TrainSpec, "training": TrainingConfig, "train":
    ShardIndex, "eval": ShardIndex}."""
    spec: TrainSpec = config["spec"]
    training: TrainingConfig = config["training"]
    rank, world = _world()
    device = ray.train.torch.get_device()
    use_bf16 = training.precision == "bf16" and device.type == "cuda"
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True

    torch.manual_seed(spec.seed)  # identical initial weights on every rank
    model = _build_model(spec, training, device)
    n_params = sum(p.numel() for p in model.parameters())
    vocab_size = model.config.vocab_size
    model = _parallelize(model, training.strategy, training.precision, world)
    # One compiled graph from tokens to summed loss: the fp32 cast and the cross-entropy over the
    # vocabulary fuse instead of materialising fp32 logits (1B on an H100: 42.8% MFU at 36 GiB
    # against 41.0% at 42 GiB for compiling the model alone; benchmarks/gpu_suite.sh measures it).
    train_row_losses = torch.compile(row_losses) if training.compile else row_losses
    optimizer = _optimizer(model, training)
    torch.manual_seed(spec.seed + rank)

    state = _load_checkpoint(model, optimizer, rank, world) or {"step": 0, "consumed": 0}
    if state["step"] and rank == 0:
        print(f"[pajama] resumed at step {state['step']} after {state['consumed']} sequences", flush=True)
    micro, accum, max_steps = training.micro_batch_size, training.grad_accum_steps, training.max_steps
    global_rows = micro * world
    # Every rank consumes the same number of rows per step: its position is its share of `consumed`.
    stream = shards.batches(config["train"], rank, world, micro, state["consumed"] // world)
    held_out = None
    logger = _MlflowLogger(spec.tracking, rank)
    trace = StepTrace(rank, world)
    progress = Progress(state["step"], max_steps, training.log_every) if rank == 0 else None
    peak = peak_flops(training.peak_flops, device)
    model.train()
    metrics: dict[str, float] = {}

    def next_step_batches() -> tuple[list[dict[str, torch.Tensor]], list[int], int]:
        micro_batches = [_to_tensors(next(stream)) for _ in range(accum)]
        seq_index = [i for b in micro_batches for i in b.pop("seq_index", torch.empty(0)).tolist()]
        for b in micro_batches:
            b.pop("slice_id", None)
        return micro_batches, seq_index, sum(_n_targets(b) for b in micro_batches)

    upcoming = next_step_batches() if state["step"] < max_steps else None
    while state["step"] < max_steps:
        started = time.perf_counter()
        micro_batches, seq_index, n_targets = upcoming
        # Normalise by the step's target tokens across all ranks, so that grad accumulation and
        # world size do not change the loss (fine-tuning batches have uneven response lengths).
        # DDP and FSDP average gradients over ranks, hence the factor `world`.
        n_targets = _sum_over_ranks(n_targets, device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        for i, batch in enumerate(micro_batches):
            with _gradient_sync(model, enabled=i == accum - 1):
                losses, _ = train_row_losses(model, _to_device(batch, device), autocast)
                loss = losses.sum()
                (loss * world / max(n_targets, 1)).backward()
            loss_sum += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), training.grad_clip)
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP
            grad_norm = grad_norm.full_tensor()
        lr = lr_at(state["step"], training)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        state["consumed"] += global_rows * accum
        # Read the next step's rows while the device works through this one's queued kernels:
        # the loss read below waits for them, and the device would idle during the reading after.
        upcoming = next_step_batches() if state["step"] < max_steps else None

        step_loss = _all_reduce(loss_sum).item() / max(n_targets, 1)
        elapsed = time.perf_counter() - started
        tokens = global_rows * accum * spec.seq_len
        metrics = {"loss": step_loss, "learning_rate": lr, "grad_norm": float(grad_norm),
                   "tokens_per_s": tokens / elapsed, "tokens_seen": state["consumed"] * spec.seq_len}
        if peak:
            metrics["mfu"] = 6 * n_params * (tokens / elapsed) / (peak * world)
        step = state["step"]
        trace.step(step, seq_index, metrics)
        if step % training.eval_every == 0 or step == max_steps:
            held_out = held_out if held_out is not None else _held_out_batches(config["eval"], training, rank, world)
            metrics.update(_evaluate(model, held_out, spec.eval_slices, device, autocast))
        if step % training.log_every == 0 or "eval_loss" in metrics:
            logger.log(metrics, step)
        if progress is not None:
            progress.update(step, metrics)
        if step % training.checkpoint_every == 0 and step < max_steps:
            _save_checkpoint(model, optimizer, state, rank, world, {"step": step, **metrics})

    trace.probe(model, vocab_size, device)
    _save_checkpoint(model, optimizer, state, rank, world, {"step": state["step"], **metrics, "final": 1},
                     export=(spec, training))
