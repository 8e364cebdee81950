"""The Ray Train worker loop shared by pretraining and fine-tuning.

Every worker runs `train_loop_per_worker`. The data order is deterministic and independent of the
number of workers: each worker iterates the same ordered stream of sequences (Ray Data with
`preserve_order`, not split), takes its rank's slice of every global micro-batch, and skips the
sequences a checkpoint says were consumed, so a resumed run neither repeats nor skips one and 1
worker and N workers see the same global batches. Checkpoints are torch.distributed.checkpoint
(DCP) directories written by every rank (sharded under FSDP) plus a small JSON state; the last
checkpoint also carries the exported Hugging Face model, so relaunching a finished run restores
the trained weights (and may continue with a larger max_steps). Rank 0 logs metrics to MLflow
itself, because Ray Train V2 keeps only metrics reported with a checkpoint.

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
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import ray.train
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from pajama.sft.templates import IGNORE_INDEX
from pajama.train.trace import StepTrace

EXPORT_DIR = "hf"
STATE_FILE = "train_state.json"

# Dense bf16 peak FLOP/s per device, for MFU when the config gives no peak_flops.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 125e12}


def peak_flops(configured: float | None, device: torch.device) -> float | None:
    if configured:
        return configured
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def lr_at(step: int, cfg: dict) -> float:
    """Linear warmup, then cosine decay to min_learning_rate at max_steps."""
    peak, floor = cfg["learning_rate"], cfg["min_learning_rate"]
    if step < cfg["warmup_steps"]:
        return peak * (step + 1) / cfg["warmup_steps"]
    span = max(1, cfg["max_steps"] - cfg["warmup_steps"])
    progress = min(1.0, (step - cfg["warmup_steps"]) / span)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


def _world() -> tuple[int, int]:
    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size()


def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def _to_tensors(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    # List columns arrive as object arrays of equal-length arrays: stack them into 2-D tensors.
    # Other columns may be read-only views of Arrow memory, which torch must not alias.
    return {k: torch.as_tensor(np.stack(v) if v.dtype == object else np.require(v, requirements="W"))
            for k, v in batch.items()}


def _global_batches(shard, batch_rows: int, skip_rows: int) -> Iterator[dict[str, torch.Tensor]]:
    """Endless ordered stream of global micro-batches, starting `skip_rows` sequences in."""
    epoch_rows = None
    while True:
        rows = 0
        for batch in shard.iter_batches(batch_size=batch_rows, batch_format="numpy", drop_last=True):
            rows += batch_rows
            if skip_rows >= batch_rows:
                skip_rows -= batch_rows
                continue
            yield _to_tensors(batch)
        if rows == 0:
            raise ValueError(f"the training set has fewer than {batch_rows} sequences (one global micro-batch)")
        if epoch_rows is None:
            epoch_rows = rows
            skip_rows %= epoch_rows


def _rank_slice(batch: dict[str, torch.Tensor], rank: int, micro: int) -> dict[str, torch.Tensor]:
    return {k: v[rank * micro : (rank + 1) * micro] for k, v in batch.items()}


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


def _build_model(spec: dict, device: torch.device):
    from transformers import AutoModelForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM

    if spec["init"] == "scratch":
        # Initialise on the device itself: a 7B model's random init on the CPU takes minutes.
        with device:
            model = GPTNeoXForCausalLM(GPTNeoXConfig(**spec["model_config"]))
    else:
        model = AutoModelForCausalLM.from_pretrained(spec["init"], dtype=torch.float32)
    if spec.get("lora"):
        from peft import LoraConfig, get_peft_model

        lora = spec["lora"]
        model = get_peft_model(model, LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                                                 target_modules=lora["target_modules"], task_type="CAUSAL_LM"))
    if spec["training"]["activation_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model.to(device)


def _parallelize(model, strategy: str, precision: str, world: int):
    if world == 1:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXLayer

        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if precision == "bf16" else MixedPrecisionPolicy()
        for module in model.modules():
            if isinstance(module, GPTNeoXLayer):
                fully_shard(module, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
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


def _optimizer(model, cfg: dict) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg["learning_rate"], betas=tuple(cfg["adam_betas"]), fused=False,
    )


def _save_checkpoint(model, optimizer, state: dict, rank: int, metrics: dict, export_spec: dict | None = None) -> None:
    """Every rank writes its DCP shard and RNG state; Ray Train merges the ranks' directories
    into one checkpoint in the run's storage. With `export_spec`, rank 0 adds the HF export."""
    with tempfile.TemporaryDirectory() as tmp:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp)
        # RNG per rank as raw bytes (no pickles in checkpoints).
        Path(tmp, f"rng-{rank}.bin").write_bytes(torch.get_rng_state().numpy().tobytes())
        if rank == 0:
            Path(tmp, STATE_FILE).write_text(json.dumps(state))
        if export_spec is not None:
            _export(model, export_spec, rank, Path(tmp, EXPORT_DIR))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _load_checkpoint(model, optimizer, rank: int) -> dict | None:
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as path:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state_dict = {"model": model_sd, "optim": optim_sd}
        dcp.load(state_dict, checkpoint_id=path)
        set_state_dict(model, optimizer, model_state_dict=state_dict["model"], optim_state_dict=state_dict["optim"])
        rng = Path(path, f"rng-{rank}.bin")
        if rng.exists():
            torch.set_rng_state(torch.from_numpy(np.frombuffer(rng.read_bytes(), dtype=np.uint8).copy()))
        return json.loads(Path(path, STATE_FILE).read_text())


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


def _held_out_batches(shard, spec: dict, rank: int, world: int) -> list[dict[str, torch.Tensor]]:
    """This rank's share of the first `eval_batches` held-out batches, read once and kept in
    memory: every evaluation scores the same sequences without re-reading the dataset."""
    micro = spec["training"]["micro_batch_size"]
    batches = shard.iter_batches(batch_size=micro * world, batch_format="numpy", drop_last=True)
    kept = []
    for batch in batches:
        if len(kept) == spec["training"]["eval_batches"]:
            break
        local = _rank_slice(_to_tensors(batch), rank, micro)
        local.pop("seq_index", None)
        kept.append(local)
    return kept


def _evaluate(model, batches: list[dict[str, torch.Tensor]], spec: dict, device, autocast) -> dict[str, float]:
    """Held-out loss and perplexity, overall and per slice, summed over all ranks."""
    slices = spec["eval_slices"]
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


def _export(model, spec: dict, rank: int, out: Path) -> None:
    """Gather the full weights (a collective under FSDP) and save a HF directory on rank 0."""
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank != 0:
        return
    from transformers import AutoConfig, AutoModelForCausalLM

    base = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    if spec.get("lora"):
        base.load_state_dict(full)
        merged = base.merge_and_unload()
        merged.save_pretrained(out, safe_serialization=True)
    else:
        config = AutoConfig.for_model(**base.config.to_dict())
        config.use_cache = True
        with torch.device("meta"):
            fresh = AutoModelForCausalLM.from_config(config)
        fresh.load_state_dict(full, assign=True)
        dtype = torch.bfloat16 if spec["training"]["precision"] == "bf16" else torch.float32
        fresh.to(dtype).save_pretrained(out, safe_serialization=True)


def train_loop_per_worker(spec: dict[str, Any]) -> None:
    cfg = spec["training"]
    rank, world = _world()
    device = ray.train.torch.get_device()
    use_bf16 = cfg["precision"] == "bf16" and device.type == "cuda"
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True

    torch.manual_seed(spec["seed"])  # identical initial weights on every rank
    model = _build_model(spec, device)
    n_params = sum(p.numel() for p in model.parameters())
    vocab_size = model.config.vocab_size
    model = _parallelize(model, cfg["strategy"], cfg["precision"], world)
    # One compiled graph from tokens to summed loss: the fp32 cast and the cross-entropy over the
    # vocabulary fuse instead of materialising fp32 logits (benchmarks/gpu_step_mfu.py, 1B on an
    # H100: 42.8% MFU at 36 GiB against 41.0% at 42 GiB for compiling the model alone).
    train_row_losses = torch.compile(row_losses) if cfg["compile"] else row_losses
    optimizer = _optimizer(model, cfg)
    torch.manual_seed(spec["seed"] + rank)

    state = _load_checkpoint(model, optimizer, rank) or {"step": 0, "consumed": 0}
    if state["step"] and rank == 0:
        print(f"[pajama] resumed at step {state['step']} after {state['consumed']} sequences", flush=True)
    micro, accum = cfg["micro_batch_size"], cfg["grad_accum_steps"]
    global_rows = micro * world
    stream = _global_batches(ray.train.get_dataset_shard("train"), global_rows, state["consumed"])
    eval_shard, held_out = ray.train.get_dataset_shard("eval"), None
    logger = _MlflowLogger(spec.get("tracking"), rank)
    trace = StepTrace(rank, world)
    peak = peak_flops(cfg["peak_flops"], device)
    seq_len = spec["seq_len"]
    model.train()
    metrics: dict[str, float] = {}

    while state["step"] < cfg["max_steps"]:
        started = time.perf_counter()
        micro_batches = [_rank_slice(next(stream), rank, micro) for _ in range(accum)]
        seq_index = [i for b in micro_batches for i in b.pop("seq_index", torch.empty(0)).tolist()]
        for b in micro_batches:
            b.pop("slice_id", None)
        # Normalise by the step's target tokens across all ranks, so that grad accumulation and
        # world size do not change the loss (fine-tuning batches have uneven response lengths).
        # DDP and FSDP average gradients over ranks, hence the factor `world`.
        n_targets = _all_reduce(torch.tensor(sum(_n_targets(b) for b in micro_batches),
                                             dtype=torch.float64, device=device)).item()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        for i, batch in enumerate(micro_batches):
            with _gradient_sync(model, enabled=i == accum - 1):
                losses, _ = train_row_losses(model, _to_device(batch, device), autocast)
                loss = losses.sum()
                (loss * world / max(n_targets, 1)).backward()
            loss_sum += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP
            grad_norm = grad_norm.full_tensor()
        lr = lr_at(state["step"], cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        state["consumed"] += global_rows * accum

        step_loss = _all_reduce(loss_sum).item() / max(n_targets, 1)
        elapsed = time.perf_counter() - started
        tokens = global_rows * accum * seq_len
        metrics = {"loss": step_loss, "learning_rate": lr, "grad_norm": float(grad_norm),
                   "tokens_per_s": tokens / elapsed, "tokens_seen": state["consumed"] * seq_len}
        if peak:
            metrics["mfu"] = 6 * n_params * (tokens / elapsed) / (peak * world)
        step = state["step"]
        trace.step(step, seq_index, metrics)
        if step % cfg["eval_every"] == 0 or step == cfg["max_steps"]:
            held_out = held_out if held_out is not None else _held_out_batches(eval_shard, spec, rank, world)
            metrics.update(_evaluate(model, held_out, spec, device, autocast))
        if step % cfg["log_every"] == 0 or "eval_loss" in metrics:
            logger.log(metrics, step)
            if rank == 0:
                shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if "/" not in k)
                print(f"[pajama] step {step}/{cfg['max_steps']}: {shown}", flush=True)
        if step % cfg["checkpoint_every"] == 0 and step < cfg["max_steps"]:
            _save_checkpoint(model, optimizer, state, rank, {"step": step, **metrics})

    trace.probe(model, vocab_size, device)
    _save_checkpoint(model, optimizer, state, rank, {"step": state["step"], **metrics, "final": 1}, export_spec=spec)
