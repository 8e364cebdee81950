"""The pretrain stage: a GPT-NeoX base model trained from the data stage's shards on Ray Train."""

from __future__ import annotations

import math

from pajama.artifacts import Artifact, StageContext
from pajama.config import ModelConfig, PretrainConfig
from pajama.data.tokenizer import load_tokenizer
from pajama.train.loop import TrainSpec
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


def run(cfg: PretrainConfig, ctx: StageContext, inputs: dict[str, Artifact]) -> dict:
    """The pretrain stage: train on the data stage's shards, export a HF model to `ctx.out/model`."""
    data = inputs["data"]
    tokenizer = load_tokenizer(str(data.local("tokenizer")))
    model_config = gpt_neox_config(cfg.model, tokenizer)
    spec = TrainSpec(init="scratch", model_config=model_config, seed=ctx.seed, seq_len=data.manifest["seq_len"],
                     eval_slices=tuple(data.manifest["slices"]), tracking=ctx.train_tracking)
    metrics = fit(spec, data.join("shards", "train"), data.join("shards", "eval"), cfg, ctx.storage,
                  run_name=f"pretrain-{ctx.fingerprint}", export_to=ctx.out / "model")
    tokenizer.save_pretrained(ctx.out / "model")
    return {"model_dir": "model", "final_metrics": metrics, "model_config": model_config}
