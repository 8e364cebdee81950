"""The instruct and chat stages: supervised fine-tuning of the base model on Ray Train.

Examples are loaded from any supported format, decontaminated against the evaluation sets
(10-gram overlap), rendered with the RedPajama-INCITE template of the stage's style, tokenized
with the loss on response tokens only, and packed into fixed-length sequences whose examples
neither attend to nor score each other (pajama.sft.prepare, on Ray Data). Training reuses the
pretraining loop (checkpoints, resume, MLflow); the export is a Hugging Face model whose tokenizer
carries the chat template.
"""

from __future__ import annotations

from pajama import storage
from pajama.artifacts import Artifact, StageContext
from pajama.config import SFTConfig
from pajama.data.tokenizer import load_tokenizer
from pajama.kinds import kind
from pajama.models import model_uri
from pajama.sft.prepare import prepare_examples
from pajama.train.loop import TrainSpec
from pajama.train.trainer import fit


def upstream(cfg: SFTConfig, stages: tuple[str, ...]) -> tuple[str, ...]:
    """The DAG's pretrain stage, unless the recipe names a base model (a path, run or registry URI)."""
    return () if cfg.base_model else stages


def run(cfg: SFTConfig, ctx: StageContext, inputs: dict[str, Artifact]) -> dict:
    """The instruct or chat stage: fine-tune the base model, export it with its chat template."""
    if cfg.base_model:
        base_model_uri = model_uri(cfg.base_model, ctx.tracking_uri, ctx.storage)
        base_model = cfg.base_model
    else:
        base = inputs["pretrain"]
        base_model_uri, base_model = base.join(base.manifest["model_dir"]), f"runs:/{base.run_id}"
    report = prepare_examples(cfg, base_model_uri, ctx.seed, ctx.out_uri)
    print(f"[pajama] {cfg.style}: {report['train']['sequences']} packed train sequences, "
          f"{report['eval']['sequences']} eval; decontaminated {report['decontaminated'] or 'nothing'}")
    spec = TrainSpec(init=base_model_uri, lora=cfg.lora if cfg.method == "lora" else None, seed=ctx.seed,
                     seq_len=cfg.max_length, eval_slices=("response",), tracking=ctx.train_tracking)
    shards = storage.join(ctx.out_uri, "shards")
    metrics = fit(spec, storage.join(shards, "train"), storage.join(shards, "eval"), cfg, ctx.storage,
                  run_name=f"{cfg.style}-{ctx.fingerprint}", export_to=ctx.out / "model")
    tokenizer = load_tokenizer(str(storage.local_copy(base_model_uri)))
    tokenizer.chat_template = kind(cfg.style).style.chat_template
    tokenizer.save_pretrained(ctx.out / "model")
    return {"model_dir": "model", "final_metrics": metrics, "data_report": report, "method": cfg.method,
            "base_model": base_model, "shards": "shards"}
