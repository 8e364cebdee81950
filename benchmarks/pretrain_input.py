"""The training workers' input (pajama.train.shards), measured on the reader the workers run, on a
generated split laid out as the data stage writes it (files of data.sequences_per_shard sequences,
row groups of 256): no Ray cluster is needed, the reader is the whole input path of a worker.

- Read amplification at 1, 2 and 4 workers: every rank reads one epoch of its share, and the bytes
  it read (the process's read syscalls, /proc/self/io `rchar`) per step are compared with its share
  of the split's bytes per step. The worst rank is reported; target <= 1.1x. A rank reads at most
  two row groups it shares with its neighbours beyond its share, and one footer per file it
  opens (pyarrow reads the last 64 KiB), so the ratio falls as shares grow: the default split
  gives a 4-worker share of about 47 row groups (a real run's are thousands).
- Resume: the wall time from a restart to the first training step's input (index the split from
  its footers, seek to the checkpoint's position, read the step's micro-batches as tensors) at
  step 10 and at step 1,000 of the same 4-worker run (micro-batch 4, 2 accumulation steps), and
  the bytes read for it; target: step 1,000 at most 2x step 10. Each is the median of --repeats
  restarts, interleaved, since a few milliseconds on a shared machine are noisy.

    python benchmarks/pretrain_input.py               # about 40 s on 2 cores
    python benchmarks/pretrain_input.py --rows 96000 --seq-len 2048

Exits non-zero when a target is missed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pajama.train import shards
from pajama.train.loop import _to_tensors

WORLDS = (1, 2, 4)
RESUME_WORLD, MICRO, ACCUM = 4, 4, 2
RESUME_STEPS = (10, 1000)
AMPLIFICATION_TARGET, RESUME_TARGET = 1.1, 2.0


def bytes_read() -> int:
    """Bytes this process has read through read syscalls so far."""
    return int(next(line.split()[1] for line in Path("/proc/self/io").read_text().splitlines()
                    if line.startswith("rchar:")))


def write_split(directory: Path, rows: int, seq_len: int, rows_per_file: int) -> str:
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, first in enumerate(range(0, rows, rows_per_file)):
        n = min(rows_per_file, rows - first)
        ids = rng.integers(0, 50_000, n * seq_len, dtype=np.int32)
        offsets = pa.array(np.arange(0, n * seq_len + 1, seq_len, dtype=np.int32))
        pq.write_table(pa.table({"input_ids": pa.ListArray.from_arrays(offsets, pa.array(ids)),
                                 "slice_id": pa.array(np.zeros(n, np.int16))}),
                       directory / f"{i:05d}.parquet", row_group_size=shards.ROW_GROUP_SEQUENCES)
    return str(directory)


def amplification(uri: str, world: int, split_bytes: int) -> float:
    """The worst rank's bytes read per step over its share of the split's bytes per step."""
    index = shards.ShardIndex.build(uri)
    worst = 0.0
    for rank in range(world):
        steps = len(shards.rank_rows(index, rank, world, MICRO)) // MICRO
        before = bytes_read()
        stream = shards.batches(index, rank, world, MICRO, 0)
        for _ in range(steps):
            next(stream)
        per_step = (bytes_read() - before) / steps
        worst = max(worst, per_step / (split_bytes * MICRO / index.num_rows))
        stream.close()
    return worst


def resume(uri: str, step: int) -> tuple[float, int]:
    """Seconds and bytes from a restart at `step` to rank 0's first step's micro-batches."""
    started, before = time.perf_counter(), bytes_read()
    index = shards.ShardIndex.build(uri)
    stream = shards.batches(index, 0, RESUME_WORLD, MICRO, step * MICRO * ACCUM)
    first_step = [_to_tensors(next(stream)) for _ in range(ACCUM)]
    elapsed, read = time.perf_counter() - started, bytes_read() - before
    stream.close()
    assert all(len(batch["input_ids"]) == MICRO for batch in first_step)
    return elapsed, read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=48000, help="sequences in the split (default 48000)")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (default 512)")
    parser.add_argument("--rows-per-file", type=int, default=4096, help="data.sequences_per_shard (default 4096)")
    parser.add_argument("--repeats", type=int, default=21, help="restarts timed per step; the median counts")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pajama-input-") as tmp:
        uri = write_split(Path(tmp) / "train", args.rows, args.seq_len, args.rows_per_file)
        files = sorted(Path(uri).glob("*.parquet"))
        split_bytes = sum(f.stat().st_size for f in files)
        index = shards.ShardIndex.build(uri)
        print(f"split: {index.num_rows} sequences of {args.seq_len} tokens, {len(files)} files, "
              f"{len(index.units)} row groups, {split_bytes / 2**20:.1f} MiB", flush=True)
        share = index.num_rows // WORLDS[-1] / shards.ROW_GROUP_SEQUENCES
        print(f"a {WORLDS[-1]}-worker share: {share:.1f} row groups", flush=True)

        missed = []
        for world in WORLDS:
            ratio = amplification(uri, world, split_bytes)
            workers = "worker" if world == 1 else "workers"
            print(f"read amplification at {world} {workers}: {ratio:.2f}x (target <= {AMPLIFICATION_TARGET}x)",
                  flush=True)
            if ratio > AMPLIFICATION_TARGET:
                missed.append(f"read amplification at {world} {workers}")

        resume(uri, RESUME_STEPS[0])  # the first open of the files pays for what any later one reuses
        timings: dict[int, list[float]] = {step: [] for step in RESUME_STEPS}
        read: dict[int, int] = {}
        for _ in range(args.repeats):
            for step in RESUME_STEPS:  # interleaved, so that a busy moment hits both alike
                seconds, read[step] = resume(uri, step)
                timings[step].append(seconds)
        median = {step: statistics.median(t) for step, t in timings.items()}
        for step in RESUME_STEPS:
            print(f"restart to first step, resuming at step {step} of {RESUME_WORLD} workers: "
                  f"{median[step] * 1000:.1f} ms, {read[step] / 2**20:.2f} MiB read")
        ratio = median[RESUME_STEPS[1]] / median[RESUME_STEPS[0]]
        print(f"resume time at step {RESUME_STEPS[1]} / at step {RESUME_STEPS[0]}: {ratio:.2f}x "
              f"(target <= {RESUME_TARGET}x)")
        if ratio > RESUME_TARGET:
            missed.append("resume time")
    if missed:
        raise SystemExit(f"missed targets: {', '.join(missed)}")


if __name__ == "__main__":
    main()
