"""The signals stage: the raw slices, read once, with every quality signal of every document.

RedPajama-V2's point is that signals are computed once and filter recipes are tuned many times. This
stage's fingerprint covers only what the signals depend on (the sources and how bad input is handled:
config.SIGNAL_STAGE_FIELDS), so a changed threshold, filter recipe, dedup or packing setting re-runs
the data stage (pajama.data.stage) on top of this artifact and reuses it.

The artifact holds:
- `documents/`  every input record with the columns of signals.SIGNAL_COLUMNS; bad input (non-null
                `read_error`, see pajama.data.readers) with null signals. Columns a source already
                carries (RedPajama-V2's published values) are kept as they are, not recomputed.
- `stats.json`  per slice: records, bytes and bad input read (and bad input naming no slice)
- `histograms.json`, `histograms.png`  per-slice distributions of the numeric signals
  (pajama.data.histograms); the data stage draws them again with its recipes' thresholds
- `_phases/signals.json`  written once `documents/` is complete: an attempt killed before it clears
                what it left and computes the signals again.
"""

from __future__ import annotations

import glob
import json
import logging

import pyarrow as pa
import pyarrow.compute as pc
import ray

from pajama import storage
from pajama.artifacts import StageContext
from pajama.config import DataConfig, is_remote, resolve_path
from pajama.data import histograms, readers, signals
from pajama.data.provenance import raw_inputs
from pajama.data.slices import READ_ERROR
from pajama.data.stage import Phases, read_parquet_dir, rewrite, totals

log = logging.getLogger(__name__)


def run(cfg: DataConfig, ctx: StageContext, inputs: dict) -> dict:
    """Read the sources and write every record with its signals under `ctx.out_uri`; returns the manifest
    fields (per-slice counts) and logs them and the raw inputs to the stage's run."""
    phases = Phases(ctx.out_uri)
    documents_uri = storage.join(ctx.out_uri, "documents")
    if "signals" in phases.done:
        log.info("signals: resuming: computed in an earlier attempt")
    else:
        log.info("signals: reading sources, computing quality signals")
        rewrite(documents_uri, read_sources(cfg).map_batches(with_signals, batch_format="pyarrow").write_parquet)
        phases.finish("signals")
    documents = read_parquet_dir(documents_uri)
    stats = _read_stats(documents)
    (ctx.out / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True))
    log.info("signals: histograms")
    distributions = histograms.compute(documents, histograms.numeric_signals(documents.schema().base_schema,
                                                                             list(signals.SIGNAL_COLUMNS)))
    (ctx.out / "histograms.json").write_text(json.dumps(distributions))
    histograms.plot(distributions, ctx.out / "histograms.png")
    ctx.log_datasets(raw_inputs(cfg), context="raw")
    ctx.log_metrics({f"{key}/{name}": e[key] for name, e in stats["slices"].items() for key in e})
    ctx.log_artifact(ctx.out / "histograms.png")
    return {"slices": sorted(stats["slices"]), "stats": stats}


def _expand(path: str) -> str | list[str]:
    """Local globs become sorted file lists; URIs and plain paths pass through."""
    if is_remote(path) or not any(c in path for c in "*?["):
        return path
    return sorted(glob.glob(path))


def read_sources(cfg: DataConfig) -> ray.data.Dataset:
    datasets = [readers.read_source(src.format, _expand(resolve_path(src.path)), src.slice,
                                    on_bad_input=cfg.on_bad_input, max_document_bytes=cfg.max_document_bytes,
                                    **src.options)
                for src in cfg.sources]
    return datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]


def with_signals(batch: pa.Table) -> pa.Table:
    """The batch with every signal column, in SIGNAL_COLUMNS order after the others; its bad-input rows
    (non-null read_error) get null signals."""
    bad = pc.is_valid(batch.column(READ_ERROR))
    documents = batch.filter(pc.invert(bad))
    missing = [name for name in signals.SIGNAL_COLUMNS if name not in documents.column_names]
    if missing:
        documents = signals.compute_signals(documents, columns=missing)
    if pc.any(bad).as_py():
        documents = pa.concat_tables([documents, batch.filter(bad)], promote_options="default")
    others = [c for c in documents.column_names if c not in signals.SIGNAL_COLUMNS]
    return documents.select(others + list(signals.SIGNAL_COLUMNS))


def _read_stats(documents) -> dict:
    """Records, bytes of readable text and bad input per slice; bad input that names no slice apart."""
    sizes = documents.map_batches(
        lambda b: pa.table({"slice": b.column("slice"), "bad_input": pc.is_valid(b.column(READ_ERROR)),
                            "bytes": pc.binary_length(pc.cast(b.column("text"), pa.binary()))}),
        batch_format="pyarrow")
    per_slice: dict[str, dict] = {}
    without_slice = 0
    for row in totals(sizes, ["slice", "bad_input"], ("bytes",)):
        if row["slice"] is None:  # only bad input lacks a slice (see pajama.data.readers)
            without_slice += row["count"]
            continue
        e = per_slice.setdefault(row["slice"], {"documents_in": 0, "bytes_in": 0, "bad_input": 0})
        e["documents_in"] += row["count"]
        if row["bad_input"]:
            e["bad_input"] += row["count"]
        else:
            e["bytes_in"] += int(row["bytes"])
    return {"slices": per_slice, "bad_input_without_slice": without_slice}
