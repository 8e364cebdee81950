"""The pretrain stage: a GPT-NeoX base model trained from the data stage's shards on Ray Train."""

from __future__ import annotations

import math
from pathlib import Path

import ray

from pajama.artifacts import Artifact
from pajama.config import ModelConfig, PretrainConfig
from pajama.data.tokenizer import load_tokenizer
from pajama.train.trainer import fit


def gpt_neox_config(model: ModelConfig, tokenizer) -> dict:
    """transformers.GPTNeoXConfig kwargs for a shape; the vocab is padded to a multiple of 128."""
    vocab = model.vocab_size or math.ceil(len(tokenizer) / 128) * 128
    if vocab < len(tokenizer):
        raise ValueError(f"pretrain.model.vocab_size {vocab} is smaller than the tokenizer ({len(tokenizer)})")
    return {
        "vocab_size": vocab,
        "hidden_size": model.hidden_size,
        "num_hidden_layers": model.num_hidden_layers,
        "num_attention_heads": model.num_attention_heads,
        "intermediate_size": model.intermediate_size or 4 * model.hidden_size,
        "rotary_pct": model.rotary_pct,
        "use_parallel_residual": model.use_parallel_residual,
        "max_position_embeddings": model.max_position_embeddings,
        "tie_word_embeddings": model.tie_word_embeddings,
        "hidden_act": "gelu",
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def shard_dataset(path: Path) -> ray.data.Dataset:
    """Shards in file-name order; the order inside is the seeded order the data stage wrote.

    Read with Ray Data's V1 parquet datasource: every training worker executes the whole stream
    itself (see loop.py), and the V2 datasource starts a pool of up to 32 footer-reader actors
    per execution (per worker, per restart), which V1's plain read tasks do not need.
    """
    files = sorted(str(p) for p in path.rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no parquet shards under {path}")
    context = ray.data.DataContext.get_current()
    use_v2, context.use_datasource_v2 = context.use_datasource_v2, False
    try:
        return ray.data.read_parquet(files)
    finally:
        context.use_datasource_v2 = use_v2


def run_pretrain_stage(cfg: PretrainConfig, data: Artifact, out: Path, storage: Path, fp: str, seed: int,
                       tracking: dict | None) -> dict:
    tokenizer = load_tokenizer(str(data.path / "tokenizer"))
    model_config = gpt_neox_config(cfg.model, tokenizer)
    spec = {
        "init": "scratch",
        "model_config": model_config,
        "seed": seed,
        "seq_len": data.manifest["seq_len"],
        "eval_slices": data.manifest["slices"],
        "tracking": tracking,
    }
    metrics = fit(spec, shard_dataset(data.path / "shards" / "train"), shard_dataset(data.path / "shards" / "eval"),
                  cfg, storage, run_name=f"pretrain-{fp}", export_to=out / "model")
    tokenizer.save_pretrained(out / "model")
    return {"model_dir": "model", "final_metrics": metrics, "model_config": model_config}
