"""Throughput of Pajama's Ray Train pretraining loop against a bare PyTorch loop, in one run.

Both train the same GPT-NeoX (a preset's shape) on the same token rows (random token ids written
to a parquet shard, which the Ray loop's worker reads itself as in the pretrain stage), with
the same micro-batch, sequence length, optimiser (AdamW, fp32 master weights; fused on GPUs),
gradient clipping, precision, activation checkpointing and the same compiled tokens-to-loss
function (`pajama.train.loop.row_losses`, under torch.compile when compile is on). The bare loop
runs in a fresh process with as many torch threads as the Ray worker gets CPUs, before and (on
CPU) after the Ray loop (their mean is the baseline, so a drift in the machine's speed does not
favour either side). Throughput is tokens over wall time between the end of the last warmup step
and the end of the last step (so it includes data loading, the optimiser step and, for the Ray
loop, its per-step logging); the Ray loop's step ends come from its trace (PAJAMA_TRACE_DIR). On
a shared machine wall time is noisy, so two steadier figures are printed too: tokens per median
step time, and tokens per CPU-second of the training process (all its threads, its shard reads
included). Peak memory: the max RSS of each training process and, on GPU, the peak allocated CUDA
memory. MFU = 6 x parameters x tokens/s / peak (H100/H200 dense bf16: 989e12). Several
micro-batch sizes and strategies run in one Ray session, one line each; `strategy fsdp` wraps the
single worker with FSDP2 (bf16 parameters, fp32 reduction), against the same bare loop. The time
from the last step to the end of `fit` (final checkpoint with optimiser state, HF export, copy to
storage) is printed as `final_checkpoint_s`.

    python benchmarks/pretrain_throughput.py                      # CPU, tiny preset, 1 worker
    python benchmarks/pretrain_throughput.py --device cuda --preset 1b --micro-batch 8 14 16
    python benchmarks/pretrain_throughput.py --device cuda --preset 1b --micro-batch 14 --strategy fsdp
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from queue import Empty

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from pajama.config import PretrainConfig, load_config
from pajama.train.loop import PEAK_BF16_FLOPS, TrainSpec, _build_model, _optimizer, peak_flops, row_losses
from pajama.train.pretrain import gpt_neox_config


class _VocabOnly:
    """gpt_neox_config reads only a tokenizer's size and special-token ids."""

    bos_token_id = eos_token_id = 0
    pad_token_id = 1

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--preset", default=None, help="recipe whose pretrain.model to use (default: tiny on CPU, 1b on cuda)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default=None, help="default: fp32 on CPU, bf16 on cuda")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 on CPU, 30 on cuda)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--micro-batch", type=int, nargs="+", default=None,
                   help="one or more micro-batch sizes, each a run (default: the preset's micro_batch_size)")
    p.add_argument("--strategy", choices=["ddp", "fsdp"], nargs="+", default=["ddp"],
                   help="the Ray loop's strategy, each a run per micro-batch size (the bare loop has none)")
    p.add_argument("--compile", choices=["on", "off"], default=None,
                   help="torch.compile the tokens-to-loss function in both loops (default: on for cuda, off on CPU)")
    p.add_argument("--bare-runs", type=int, choices=[0, 1, 2], default=None,
                   help="bare runs per micro-batch size, before and after the Ray loop (default: 2 on CPU, 1 on cuda, "
                        "whose speed does not drift with other load; 0: the Ray loop alone)")
    p.add_argument("--seq-len", type=int, default=None, help="default: the preset's data.seq_len")
    p.add_argument("--activation-checkpointing", choices=["on", "off"], default=None,
                   help="default: the preset's setting")
    p.add_argument("--cpus", type=int, default=1, help="CPUs (torch threads) for the training process on CPU")
    args = p.parse_args()
    gpu = args.device == "cuda"
    args.preset = args.preset or ("1b" if gpu else "tiny")
    args.precision = args.precision or ("bf16" if gpu else "fp32")
    args.steps = args.steps or (30 if gpu else 20)
    args.compile = (args.compile or ("on" if gpu else "off")) == "on"
    args.bare_runs = (1 if gpu else 2) if args.bare_runs is None else args.bare_runs
    if args.precision == "bf16" and not gpu:
        p.error("--precision bf16 needs --device cuda (CPU runs train in fp32)")
    if gpu and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible")
    return args


def setup(args, micro: int | None) -> dict:
    cfg = load_config(args.preset)
    pre = cfg.pretrain
    seq_len = args.seq_len or cfg.data.seq_len
    micro = micro or pre.micro_batch_size
    ckpt = pre.activation_checkpointing if args.activation_checkpointing is None else args.activation_checkpointing == "on"
    model = pre.model.model_copy(update={"max_position_embeddings": max(pre.model.max_position_embeddings, seq_len)})
    model_config = gpt_neox_config(model, _VocabOnly(model.vocab_size or cfg.data.tokenizer.vocab_size))
    with torch.device("meta"):  # the parameter count for MFU, without allocating the model
        params = sum(p.numel() for p in GPTNeoXForCausalLM(GPTNeoXConfig(**model_config)).parameters())
    return {"model_config": model_config, "params": params, "seq_len": seq_len, "micro": micro,
            "activation_checkpointing": ckpt, "steps": args.warmup + args.steps}


def write_rows(out: Path, n_rows: int, seq_len: int, vocab: int) -> Path:
    rows = np.random.default_rng(0).integers(0, vocab, size=(n_rows, seq_len), dtype=np.int32)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"input_ids": pa.array(list(rows), type=pa.list_(pa.int32()))}), out / "part-00000.parquet")
    return out


def throughput(step_ends: list[float], warmup: int, tokens_per_step: int) -> tuple[float, float]:
    """Tokens per second of the given clock (wall or CPU) over the timed window, and per median step."""
    timed = np.asarray(step_ends[warmup - 1 :] if warmup else step_ends)
    return tokens_per_step * (len(timed) - 1) / (timed[-1] - timed[0]), tokens_per_step / float(np.median(np.diff(timed)))


def run_bare(args, setup_: dict, shard_dir: Path) -> dict:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=bare_loop, args=(args, setup_, shard_dir, queue))
    proc.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except Empty:
            if not proc.is_alive():
                raise RuntimeError(f"the bare loop's process exited with code {proc.exitcode} before reporting") from None
    proc.join()
    return result


def bare_loop(args, setup_: dict, shard_dir: Path, queue) -> None:
    """The baseline: one process, no Ray, the loop's model, optimiser and arithmetic and nothing else."""
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.cpus)
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
    rows = np.stack(pq.read_table(shard_dir / "part-00000.parquet").column("input_ids").to_numpy(zero_copy_only=False))
    training, spec = loop_config(args, setup_, "ddp")
    torch.manual_seed(0)
    model = _build_model(spec, training, device)
    model.train()
    optimizer = _optimizer(model, training)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    losses_of = torch.compile(row_losses) if args.compile else row_losses
    micro, ends, cpu = setup_["micro"], [], []
    for step in range(setup_["steps"]):
        input_ids = torch.from_numpy(rows[step * micro : (step + 1) * micro]).to(device, non_blocking=True)
        losses, _ = losses_of(model, {"input_ids": input_ids}, autocast)
        loss = losses.sum() / (micro * (input_ids.shape[1] - 1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        ends.append(time.time())
        cpu.append(time.process_time())
    queue.put({"step_ends": ends, "step_cpu": cpu,
               "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "max_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
               "threads": torch.get_num_threads()})


def loop_config(args, setup_: dict, strategy: str) -> tuple[PretrainConfig, TrainSpec]:
    """The training section and spec of one run, for the Ray loop and the bare loop alike."""
    gpu = args.device == "cuda"
    steps = setup_["steps"]
    training = PretrainConfig.model_validate({
        "model": {"hidden_size": setup_["model_config"]["hidden_size"],
                  "num_hidden_layers": setup_["model_config"]["num_hidden_layers"],
                  "num_attention_heads": setup_["model_config"]["num_attention_heads"]},
        "scaling": {"num_workers": 1, "use_gpu": gpu, "cpus_per_worker": min(8, os.cpu_count() - 1) if gpu else args.cpus},
        "strategy": strategy, "precision": args.precision, "compile": args.compile,
        "activation_checkpointing": setup_["activation_checkpointing"],
        "micro_batch_size": setup_["micro"], "global_batch_size": setup_["micro"], "max_steps": steps,
        "learning_rate": 1e-4, "min_learning_rate": 1e-5, "warmup_steps": 0,
        "checkpoint_every": steps + 1, "eval_every": steps + 1, "eval_batches": 1, "max_failures": 0,
    })
    spec = TrainSpec(init="scratch", model_config=setup_["model_config"], seed=0, seq_len=setup_["seq_len"],
                     eval_slices=("all",))
    return training, spec


def ray_loop(args, setup_: dict, strategy: str, shard_dir: Path, work: Path) -> tuple[list[dict], float]:
    """Pajama's Ray Train loop (1 worker) through `fit`, as the pretrain stage calls it. Returns
    the trace and the seconds from the last step's end to `fit`'s return."""
    from pajama.train.trainer import fit

    training, spec = loop_config(args, setup_, strategy)
    run = work / f"{strategy}-{setup_['micro']}"
    os.environ["PAJAMA_TRACE_DIR"] = str(run / "trace")
    try:
        fit(spec, str(shard_dir), str(shard_dir), training, str(run / "storage"),
            run_name="throughput", export_to=run / "export")
        finished = time.time()
        trace = [json.loads(line) for line in (run / "trace" / "rank-0.jsonl").read_text().splitlines()]
    finally:
        os.environ.pop("PAJAMA_TRACE_DIR", None)
        shutil.rmtree(run, ignore_errors=True)  # a 1B run's checkpoint is 12 GB
    return trace, finished - trace[-1]["ended"]


def report(args, s: dict, strategy: str, bare_runs: list[dict], trace: list[dict], final_s: float) -> dict:
    """Print one run's figures (the Ray loop's, against the bare runs when there are any)."""
    tokens_per_step = s["micro"] * s["seq_len"]
    device = torch.device(args.device)
    peak = peak_flops(None, device) if device.type == "cuda" else None
    params = s["params"]
    ray_window, ray_median = throughput([r["ended"] for r in trace], args.warmup, tokens_per_step)
    ray_cpu = throughput([r["process_cpu_s"] for r in trace], args.warmup, tokens_per_step)[0]
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({args.cpus} thread(s))",
        "preset": args.preset, "params": params, "precision": args.precision, "strategy": strategy,
        "compile": args.compile, "micro_batch": s["micro"], "seq_len": s["seq_len"],
        "activation_checkpointing": s["activation_checkpointing"], "warmup_steps": args.warmup, "timed_steps": args.steps,
        "ray_tokens_per_s": ray_window, "ray_median_step_tokens_per_s": ray_median, "ray_tokens_per_cpu_s": ray_cpu,
        "ray_worker_max_rss_mb": trace[-1]["max_rss_mb"], "ray_worker_threads": trace[-1]["threads"],
        "final_checkpoint_s": final_s,
    }
    if bare_runs:
        bare_window, bare_median = np.mean([throughput(b["step_ends"], args.warmup, tokens_per_step) for b in bare_runs], axis=0)
        bare_cpu = np.mean([throughput(b["step_cpu"], args.warmup, tokens_per_step)[0] for b in bare_runs])
        result.update({
            "bare_tokens_per_s": bare_window, "ratio_ray_over_bare": ray_window / bare_window,
            "bare_runs_tokens_per_s": [round(float(throughput(b["step_ends"], args.warmup, tokens_per_step)[0]), 1)
                                       for b in bare_runs],
            "bare_median_step_tokens_per_s": bare_median, "ratio_median_step": ray_median / bare_median,
            "bare_tokens_per_cpu_s": bare_cpu, "ratio_per_cpu_s": ray_cpu / bare_cpu,
            "bare_max_rss_mb": max(b["max_rss_mb"] for b in bare_runs), "bare_threads": bare_runs[0]["threads"],
        })
    if device.type == "cuda":
        result["ray_max_cuda_mb"] = trace[-1]["max_cuda_mb"]
        if bare_runs:
            result["bare_max_cuda_mb"] = bare_runs[0]["max_cuda_mb"]
        if peak:
            result.update(peak_flops=peak, ray_mfu=6 * params * ray_window / peak)
            if bare_runs:
                result["bare_mfu"] = 6 * params * result["bare_tokens_per_s"] / peak
        else:
            result["mfu"] = f"unknown GPU peak (known: {', '.join(PEAK_BF16_FLOPS)})"
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value:.4g}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    print("JSON " + json.dumps({k: float(v) if isinstance(v, np.floating) else v for k, v in result.items()}), flush=True)
    return result


def main() -> None:
    import ray

    args = parse_args()
    gpu = args.device == "cuda"
    results = []
    with tempfile.TemporaryDirectory(prefix="pajama-throughput-") as tmp:
        work = Path(tmp)
        ray.init(num_cpus=os.cpu_count() if gpu else args.cpus + 1, num_gpus=1 if gpu else 0, include_dashboard=False)
        try:
            # Micro-batch size by size, each reported as soon as it is measured.
            for micro in args.micro_batch or [None]:
                s = setup(args, micro)
                shard_dir = write_rows(work / f"shards-{s['micro']}", s["steps"] * s["micro"], s["seq_len"],
                                       s["model_config"]["vocab_size"])
                bare_runs = [run_bare(args, s, shard_dir)] if args.bare_runs else []
                for bare in bare_runs:
                    window = throughput(bare["step_ends"], args.warmup, s["micro"] * s["seq_len"])[0]
                    print(f"bare loop, micro-batch {s['micro']}: {window:,.0f} tokens/s", flush=True)
                runs = {strategy: ray_loop(args, s, strategy, shard_dir, work) for strategy in args.strategy}
                if args.bare_runs == 2:
                    bare_runs.append(run_bare(args, s, shard_dir))
                results += [report(args, s, strategy, bare_runs, *run) for strategy, run in runs.items()]
        finally:
            ray.shutdown()
    if len(results) > 1:
        print(f"{'strategy':<8} {'micro':>5} {'bare tok/s':>11} {'ray tok/s':>10} {'ray/bare':>8} {'bare MFU':>8} "
              f"{'ray MFU':>8} {'ray GiB':>8} {'final ckpt s':>12}")
        for r in results:
            bare = f"{r['bare_tokens_per_s']:>11,.0f}" if "bare_tokens_per_s" in r else f"{'-':>11}"
            ratio = f"{r['ratio_ray_over_bare']:>8.3f}" if "ratio_ray_over_bare" in r else f"{'-':>8}"
            bare_mfu = f"{r['bare_mfu']:8.1%}" if "bare_mfu" in r else f"{'-':>8}"
            ray_mfu = f"{r['ray_mfu']:8.1%}" if "ray_mfu" in r else f"{'-':>8}"
            gib = f"{r['ray_max_cuda_mb'] / 1024:8.1f}" if r.get("ray_max_cuda_mb") else f"{'-':>8}"
            print(f"{r['strategy']:<8} {r['micro_batch']:>5} {bare} {r['ray_tokens_per_s']:>10,.0f} {ratio} {bare_mfu} "
                  f"{ray_mfu} {gib} {r['final_checkpoint_s']:>12.1f}")


if __name__ == "__main__":
    main()
