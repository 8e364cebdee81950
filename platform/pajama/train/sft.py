"""The instruct and chat stages: supervised fine-tuning of the base model on Ray Train.

Examples are loaded from any supported format, decontaminated against the evaluation sets
(10-gram overlap), rendered with the RedPajama-INCITE template of the stage's style, tokenized
with the loss on response tokens only, and packed into fixed-length sequences whose examples
neither attend to nor score each other. Training reuses the pretraining loop (checkpoints,
resume, MLflow); the export is a Hugging Face model whose tokenizer carries the chat template.
"""

from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.parquet as pq

from pajama.artifacts import Artifact, StageContext
from pajama.config import SFTConfig, resolve_path
from pajama.kinds import kind
from pajama import storage
from pajama.models import model_uri
from pajama.data.tokenizer import load_tokenizer
from pajama.sft import decontam, formats, packing, templates
from pajama.train.loop import TrainSpec
from pajama.train.trainer import fit

PACKED_COLUMNS = ("input_ids", "labels", "position_ids")


def _load(datasets) -> list[dict]:
    return [ex for d in datasets for ex in formats.load_examples(d.format, resolve_path(d.path), **d.options)]


def prepare_examples(cfg: SFTConfig, tokenizer, seed: int) -> tuple[pa.Table, pa.Table, dict]:
    """Packed train and eval tables and a report of what was loaded, dropped and packed."""
    examples = _load(cfg.datasets)
    kept, dropped_per_task = decontam.decontaminate(examples, _load(cfg.decontaminate_against))
    random.Random(seed).shuffle(kept)
    n_eval = max(1, int(len(kept) * cfg.eval_fraction)) if cfg.eval_fraction else 0
    splits = {"eval": kept[:n_eval], "train": kept[n_eval:]}
    tables, report = {}, {"examples_loaded": len(examples), "decontaminated": dropped_per_task}
    for split, exs in splits.items():
        tokenized = [templates.tokenize_example(tokenizer, ex, cfg.style) for ex in exs]
        packed, pack_report = packing.pack_examples(tokenized, cfg.max_length, tokenizer.pad_token_id)
        report[split] = pack_report
        tables[split] = pa.table({c: pa.array([row[c] for row in packed], type=pa.list_(pa.int32()))
                                  for c in PACKED_COLUMNS})
    return tables["train"], tables["eval"], report


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
    tokenizer = load_tokenizer(str(storage.local_copy(base_model_uri)))
    train, evaluation, report = prepare_examples(cfg, tokenizer, ctx.seed)
    print(f"[pajama] {cfg.style}: {train.num_rows} packed train sequences, {evaluation.num_rows} eval; "
          f"decontaminated {report['decontaminated'] or 'nothing'}")
    spec = TrainSpec(init=base_model_uri, lora=cfg.lora if cfg.method == "lora" else None, seed=ctx.seed,
                     seq_len=cfg.max_length, eval_slices=("response",), tracking=ctx.train_tracking)
    # The training workers read parquet shards from the artifact's storage, where every node reaches
    # them; a row group per micro-batch gives every worker whole row groups of its own.
    splits = {split: storage.join(ctx.out_uri, "shards", split) for split in ("train", "eval")}
    for split, table in (("train", train), ("eval", evaluation)):
        fs, path = storage.filesystem(splits[split])
        fs.create_dir(path)
        pq.write_table(table, storage.join(path, "00000.parquet"), filesystem=fs,
                       row_group_size=cfg.micro_batch_size)
    metrics = fit(spec, splits["train"], splits["eval"], cfg, ctx.storage,
                  run_name=f"{cfg.style}-{ctx.fingerprint}", export_to=ctx.out / "model")
    tokenizer.chat_template = kind(cfg.style).style.chat_template
    tokenizer.save_pretrained(ctx.out / "model")
    return {"model_dir": "model", "final_metrics": metrics, "data_report": report, "method": cfg.method,
            "base_model": base_model}
