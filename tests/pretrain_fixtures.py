"""Tiny, generated pretraining inputs for the base-model tests and the CPU throughput benchmark.

`make_data_artifact` writes what the data stage would (a tokenizer, `shards/train` and
`shards/eval` parquet with `input_ids` and `slice_id`, a manifest) from the Python docs that ship
with the interpreter (`pydoc_data.topics`), so nothing is downloaded. Every row also carries a
`seq_index` (its position in the training order) so that tests can tell from the loop's trace
(`PAJAMA_TRACE_DIR`) exactly which sequences each step consumed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pajama.artifacts import Artifact
from pajama.config import PretrainConfig
from pajama.data.tokenizer import train_bpe

SLICES = ["docs_a", "docs_b"]


def make_data_artifact(root: Path, seq_len: int = 32, vocab_size: int = 384, train_files: int = 2,
                       eval_rows: int = 32, train_order: np.ndarray | None = None) -> Artifact:
    """A data-stage artifact under `root`: the training rows are split over `train_files` shards,
    in `train_order` (a permutation of their seq_index values) if given."""
    import pydoc_data.topics

    texts = list(pydoc_data.topics.topics.values())
    tokenizer = train_bpe(texts, vocab_size)
    tokenizer.save_pretrained(root / "tokenizer")
    stream = [t for text in texts for t in tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]]
    n = len(stream) // seq_len
    rows = np.asarray(stream[: n * seq_len], dtype=np.int32).reshape(n, seq_len)
    train, evaluation = rows[:-eval_rows], rows[-eval_rows:]
    orders = {"train": np.arange(len(train)) if train_order is None else train_order,
              "eval": np.arange(len(evaluation))}
    for split, split_rows, files in (("train", train, train_files), ("eval", evaluation, 1)):
        (root / "shards" / split).mkdir(parents=True, exist_ok=True)
        bounds = np.linspace(0, len(split_rows), files + 1).astype(int)
        for i in range(files):
            index = orders[split][bounds[i] : bounds[i + 1]]
            pq.write_table(pa.table({
                "input_ids": pa.array(split_rows[index].tolist(), type=pa.list_(pa.int32())),
                "slice_id": pa.array(index % len(SLICES), type=pa.int16()),
                "seq_index": pa.array(index, type=pa.int64()),
            }), root / "shards" / split / f"part-{i:05d}.parquet")
    manifest = {"slices": SLICES, "seq_len": seq_len, "train_rows": len(train), "eval_rows": len(evaluation)}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return Artifact("data", "fixture", str(root), manifest)


def global_batch_order(rows: int, world: int, micro: int) -> np.ndarray:
    """The order of `rows` training rows in which 1 worker reads, micro-batch after micro-batch, the
    global batches that `world` workers of `micro` rows read from the rows in their own order
    (pajama.train.shards): rank 0's first micro-batch, rank 1's first, ..., then the rows no rank reads."""
    share = rows // world
    blocks = [np.arange(r * share + b * micro, r * share + (b + 1) * micro)
              for b in range(share // micro) for r in range(world)]
    used = np.concatenate(blocks)
    return np.concatenate([used, np.setdiff1d(np.arange(rows), used)])


def tiny_pretrain_config(num_workers: int = 2, **overrides) -> PretrainConfig:
    """A GPT-NeoX of ~60k parameters that trains a step in milliseconds on one CPU core."""
    cfg = {
        "model": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 64},
        # 0.5 CPU per worker: both workers fit on the 2-CPU test Ray with a CPU to spare.
        "scaling": {"num_workers": num_workers, "cpus_per_worker": 0.5},
        "micro_batch_size": 4, "global_batch_size": 8, "max_steps": 10, "learning_rate": 3e-3,
        "min_learning_rate": 3e-4, "warmup_steps": 2, "checkpoint_every": 4, "eval_every": 5, "eval_batches": 2,
        "keep_checkpoints": 2, "max_failures": 1,
    }
    cfg.update(overrides)
    return PretrainConfig.model_validate(cfg)


def read_trace(trace_dir: Path) -> list[dict]:
    """Every step record the loop wrote, in the order each rank wrote them."""
    return [json.loads(line) for f in sorted(trace_dir.glob("rank-*.jsonl")) for line in f.read_text().splitlines()]


def last_attempt_by_step(records: list[dict], rank: int) -> dict[int, dict]:
    """One record per step for a rank; a step redone after a restart keeps the later record."""
    return {r["step"]: r for r in records if r["rank"] == rank}


def run_pretrain(cfg: PretrainConfig, data: Artifact, root: Path, name: str, tracking: dict | None = None,
                 storage: str | None = None, **env: str) -> dict:
    """The pretrain stage as the DAG runs it, with `env` (PAJAMA_TRACE_DIR, ...) set on the
    driver for the run, which `fit` forwards to the workers. Output goes to `root/name`; the
    project storage (checkpoints) is `storage`, by default `root/storage`."""
    from pajama.artifacts import StageContext
    from pajama.train.pretrain import run

    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        ctx = StageContext(out=out, storage=storage or root / "storage", fingerprint=name, seed=0,
                           tracking_uri=tracking and tracking["uri"], run_id=tracking and tracking["run_id"])
        return run(cfg, ctx, {"data": data})
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_checkpoints(root: Path, name: str) -> list[Path]:
    """The Ray Train checkpoints kept for a run, oldest first."""
    return sorted(p for p in (root / "storage" / "ray_train" / f"pretrain-{name}").glob("checkpoint_*") if p.is_dir())


def checkpoint_shapes(checkpoint: Path) -> dict[str, dict[str, list[int]]]:
    """Per rank's state file of a checkpoint (`state-<rank>.safetensors`), its tensors' shapes."""
    from safetensors import safe_open

    shapes = {}
    for path in sorted(checkpoint.glob("state-*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            shapes[path.name] = {k: f.get_slice(k).get_shape() for k in f.keys()}
    return shapes
