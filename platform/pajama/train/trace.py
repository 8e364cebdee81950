"""Opt-in instrumentation of the training loop for tests and benchmarks, driven by env vars.

- `PAJAMA_TRACE_DIR`: every rank appends one JSON line per optimiser step to `rank-<r>.jsonl`
  (step, the `seq_index` of the rows it consumed when the data has that column, loss, the wall
  time and the process's CPU time at the step's end, peak RSS and, on GPU, peak allocated memory, torch threads, node id,
  pid), and rank 0 writes `probe.safetensors`: a fixed probe batch and the logits the trained
  model gives it, taken right before the export, so a test can compare them with the export's.
- `PAJAMA_TEST_FAIL_AT_STEP=k` (test-only fault injection, needs `PAJAMA_TRACE_DIR`): the last
  rank kills its own process after step k, once per trace dir (a marker file remembers it). It
  waits `FAULT_GRACE_S` first: Ray Train's controller registers a reported checkpoint when it next
  polls the workers (every 2 s by default), and a crash before that falls back to the checkpoint
  before, which is correct but would not exercise the resume the tests check.

The driver forwards these variables to the workers (`FORWARDED_ENV`); unset, nothing happens.
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import torch

FORWARDED_ENV = ("PAJAMA_TRACE_DIR", "PAJAMA_TEST_FAIL_AT_STEP")
PROBE_FILE = "probe.safetensors"
PROBE_SHAPE = (2, 16)
FAULT_GRACE_S = 6.0


class StepTrace:
    def __init__(self, rank: int, world: int):
        directory = os.environ.get("PAJAMA_TRACE_DIR")
        self.dir = Path(directory) if directory else None
        self.rank, self.world = rank, world
        fail_at = os.environ.get("PAJAMA_TEST_FAIL_AT_STEP")
        if fail_at and self.dir is None:
            raise ValueError("PAJAMA_TEST_FAIL_AT_STEP needs PAJAMA_TRACE_DIR (for its run-once marker)")
        self.fail_at = int(fail_at) if fail_at else None
        if self.dir is not None:
            import ray

            self.dir.mkdir(parents=True, exist_ok=True)
            self.node_id = ray.get_runtime_context().get_node_id()

    def step(self, step: int, seq_index: list[int], metrics: dict) -> None:
        if self.dir is None:
            return
        record = {"step": step, "rank": self.rank, "world": self.world, "seq_index": seq_index,
                  "loss": metrics["loss"], "tokens_per_s": metrics["tokens_per_s"], "ended": time.time(),
                  "process_cpu_s": time.process_time(),
                  # ru_maxrss is in KiB on Linux.
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "threads": torch.get_num_threads(), "node_id": self.node_id, "pid": os.getpid()}
        if torch.cuda.is_available():
            record["max_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
        with open(self.dir / f"rank-{self.rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        marker = self.dir / "fault-injected"
        if step == self.fail_at and self.rank == self.world - 1 and not marker.exists():
            marker.write_text(f"rank {self.rank} pid {os.getpid()} killed itself after step {step}\n")
            time.sleep(FAULT_GRACE_S)
            os._exit(1)

    def probe(self, model, vocab_size: int, device: torch.device) -> None:
        """Every rank runs the forward (a collective under FSDP); rank 0 saves it."""
        if self.dir is None:
            return
        input_ids = torch.randint(0, vocab_size, PROBE_SHAPE, generator=torch.Generator().manual_seed(1234))
        was_training = model.training
        model.eval()
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(device), use_cache=False).logits.float().cpu()
        model.train(was_training)
        if self.rank == 0:
            from safetensors.torch import save_file

            save_file({"input_ids": input_ids, "logits": logits.contiguous()}, str(self.dir / PROBE_FILE))
