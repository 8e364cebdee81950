"""The signals stage: the raw slices, read once, with every quality signal of every document.

RedPajama-V2's point is that signals are computed once and filter recipes are tuned many times. This
stage's fingerprint covers only what the signals depend on (the sources and how bad input is handled:
config.SIGNAL_STAGE_FIELDS), so a changed threshold, filter recipe, dedup or packing setting re-runs
the data stage (pajama.data.stage) on top of this artifact and reuses it.

The artifact holds:
- `documents/`  every input record with the columns of ALL_SIGNAL_COLUMNS and its `text_bytes` (UTF-8
                bytes of its text, so that counting bytes reads no text); bad input (non-null
                `read_error`, see pajama.data.readers) with null signals. Columns a source already
                carries (RedPajama-V2's published values) are kept as they are, not recomputed.
                Documents of data.paragraph_dedup_slices hold their text after cc_net's paragraph
                dedup (the signals are those of that text, as RPv2's are of cc_net's output); one left
                with no line has an empty text and ccnet_nlines 0, which the data stage drops as
                `duplicate_paragraphs`.
- `duplicate_paragraphs/`  the hashes of the lines found two or more times across those slices
- `stats.json`  per slice: records, bytes and bad input read (and bad input naming no slice)
- `histograms.json`  per-slice distributions of the numeric signals (pajama.data.histograms); the data
  stage draws them with the thresholds of its recipes (one figure, where the recipes are known)
- `_phases/`    a marker per finished phase (paragraphs, signals): an attempt killed midway resumes
                after the last finished one, clearing what the unfinished one left.

cc_net's paragraph dedup (pajama.data.ccnet): every "\n"-separated line of the documents of those
slices is hashed; a hash found two or more times across them (one document or several) marks a
duplicate, and every occurrence of it is dropped, the first one too. The hashes are counted with a Ray
Data group-by over all lines, so the scope is the whole corpus where cc_net's was a group of 50 shards;
the driver then holds the duplicate hashes (8 bytes each) and ships them to the scoring tasks.
"""

from __future__ import annotations

import glob
import json
import logging
from collections.abc import Sequence

import pyarrow as pa
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from pajama import storage
from pajama.artifacts import StageContext
from pajama.config import DataConfig, is_remote, resolve_path
from pajama.data import ccnet, histograms, readers, references, signals
from pajama.data.provenance import raw_inputs
from pajama.data.slices import READ_ERROR
from pajama.data.stage import (TEXT_BYTES, Phases, data_stage_context, parquet_schema, read_parquet_dir, rewrite,
                               shuffle_partitions, text_bytes, text_chunks, totals)

log = logging.getLogger(__name__)

# cc_net's counts around its paragraph dedup, and its language score (RPv2's names).
CCNET_COUNT_COLUMNS = {"ccnet_original_length": pa.int64(), "ccnet_original_nlines": pa.int64(),
                       "ccnet_length": pa.int64(), "ccnet_nlines": pa.int64()}
# Every signal: the rule-based ones (pajama.data.signals), cc_net's, and the model-based ones
# (pajama.data.references).
ALL_SIGNAL_COLUMNS = {**signals.SIGNAL_COLUMNS, **CCNET_COUNT_COLUMNS, "ccnet_language_score": pa.float64(),
                      **references.MODEL_SIGNAL_COLUMNS}


def run(cfg: DataConfig, ctx: StageContext, inputs: dict) -> dict:
    """Read the sources and write every record with its signals under `ctx.out_uri`; returns the manifest
    fields (per-slice counts) and logs them and the raw inputs to the stage's run."""
    with data_stage_context(cfg):
        stats = _build_signals_artifact(cfg, ctx, inputs)
    ctx.log_datasets(raw_inputs(cfg), context="raw")
    ctx.log_metrics({f"{key}/{name}": e[key] for name, e in stats["slices"].items() for key in e})
    ctx.log_artifact(ctx.out / "histograms.json")
    return {"slices": sorted(stats["slices"]), "stats": stats}


def _build_signals_artifact(cfg: DataConfig, ctx: StageContext, inputs: dict) -> dict:
    """documents/, duplicate_paragraphs/, stats.json and the histograms under the artifact; returns the stats."""
    phases = Phases(ctx.out_uri)
    if phases.done:
        log.info("signals: resuming: %s done in an earlier attempt", ", ".join(sorted(phases.done)))
    documents_uri = storage.join(ctx.out_uri, "documents")
    duplicates_uri = storage.join(ctx.out_uri, "duplicate_paragraphs")
    dedup_slices = cfg.paragraph_dedup_slices
    if "paragraphs" not in phases.done:
        log.info("signals: reading sources, counting the paragraphs of %s", ", ".join(dedup_slices) or "no slice")
        rewrite(duplicates_uri, _duplicate_paragraphs(read_sources(cfg), dedup_slices,
                                                      shuffle_partitions(cfg)).write_parquet)
        phases.finish("paragraphs")
    if "signals" not in phases.done:
        log.info("signals: reading sources, removing duplicate paragraphs, computing quality signals")
        duplicates = _read_hashes(duplicates_uri)
        models = {"uri": inputs["references"].uri, "manifest": inputs["references"].manifest}
        ut1 = resolve_path(cfg.ut1_blacklist) if cfg.ut1_blacklist else None
        rewrite(documents_uri, read_sources(cfg).map_batches(
            with_signals, fn_kwargs={"models": models, "dedup_slices": dedup_slices, "duplicates": duplicates,
                                     "ut1_blacklist": ut1}, batch_format="pyarrow").write_parquet)
        phases.finish("signals", duplicate_paragraph_hashes=len(duplicates))
    stats = _read_stats(read_parquet_dir(documents_uri, ["slice", READ_ERROR, TEXT_BYTES]))
    (ctx.out / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True))
    log.info("signals: histograms")
    numeric = histograms.numeric_signals(parquet_schema(documents_uri), list(ALL_SIGNAL_COLUMNS))
    distributions = histograms.compute(read_parquet_dir(documents_uri, ["slice", *numeric]), numeric)
    (ctx.out / "histograms.json").write_text(json.dumps(distributions))
    return stats


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


def _duplicate_paragraphs(documents: ray.data.Dataset, dedup_slices: list[str], partitions: int) -> ray.data.Dataset:
    """The line hashes found two or more times among the readable documents of `dedup_slices`.

    The hashes go to `partitions` shuffle partitions by value and each partition is counted at once with
    numpy: nearly every line is distinct, and Ray Data's group-by count would pay Python per line."""

    def line_hashes(batch: pa.Table) -> pa.Table:
        batch = batch.filter(pc.and_(pc.is_null(batch.column(READ_ERROR)),
                                     pc.is_in(batch.column("slice"), pa.array(dedup_slices, pa.string()))))
        hashes = [ccnet.paragraph_hashes(text) for text in batch.column("text").to_pylist()]
        # As int64 (the same 64 bits): Ray's sort-based shuffle samples its boundaries as Python ints, which
        # an unsigned column above 2**63 would not take back.
        flat = np.concatenate(hashes) if hashes else np.empty(0, np.uint64)
        return pa.table({"hash": pa.array(flat.view(np.int64), pa.int64()),
                         "_partition": pa.array((flat % np.uint64(partitions)).astype(np.int32))})

    def repeated(partition: pa.Table) -> pa.Table:
        hashes, counts = np.unique(partition.column("hash").to_numpy(), return_counts=True)
        return pa.table({"hash": pa.array(hashes[counts > 1], pa.int64())})

    return documents.map_batches(line_hashes, batch_format="pyarrow").groupby(
        "_partition", num_partitions=partitions).map_groups(repeated, batch_format="pyarrow")


def _read_hashes(uri: str) -> np.ndarray:
    """The sorted hashes of `duplicate_paragraphs/` (none when no line repeats), as int64."""
    names = [name for name in storage.files(uri) if name.endswith(".parquet")]
    if not names:
        return np.empty(0, np.int64)
    tables = []
    for name in names:
        filesystem, path = storage.filesystem(storage.join(uri, name))
        tables.append(pq.read_table(path, filesystem=filesystem))
    return np.sort(pa.concat_tables(tables).column("hash").to_numpy())


def _dedup_paragraphs(batch: pa.Table, dedup_slices: Sequence[str], duplicates: np.ndarray) -> pa.Table:
    """cc_net's counts (ccnet_original_length/_nlines, ccnet_length/_nlines) of every document, and the text of
    those of `dedup_slices` without their duplicate lines."""
    texts = batch.column("text").to_pylist()
    # without duplicate hashes no line is dropped, so none needs hashing
    in_scope = (pc.is_in(batch.column("slice"), pa.array(list(dedup_slices), pa.string())).to_pylist()
                if len(duplicates) else [False] * batch.num_rows)
    hashes = [ccnet.paragraph_hashes(text) if deduplicated else np.empty(0, np.uint64)
              for text, deduplicated in zip(texts, in_scope)]
    flat = np.concatenate(hashes).view(np.int64) if hashes else np.empty(0, np.int64)
    line_drops = np.split(_sorted_contains(duplicates, flat), np.cumsum([len(h) for h in hashes])[:-1])
    counts: dict[str, list[int]] = {name: [] for name in CCNET_COUNT_COLUMNS}
    for i, (text, deduplicated, drop) in enumerate(zip(texts, in_scope, line_drops)):
        if not deduplicated:
            drop = np.zeros(text.count("\n") + 1, bool)
        for name, value in ccnet.paragraph_counts(text, drop).items():
            counts[name].append(value)
        if drop.any():
            texts[i] = "" if drop.all() else ccnet.drop_paragraphs(text, drop)
    batch = batch.set_column(batch.column_names.index("text"), "text", pa.array(texts, pa.string()))
    for name, kind in CCNET_COUNT_COLUMNS.items():
        batch = batch.append_column(name, pa.array(counts[name], kind))
    return batch


def _sorted_contains(values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Whether each key is one of `values` (sorted, as _read_hashes gives them; sorted here otherwise), by
    binary search: np.isin would sort or hash all the values at every call."""
    if len(values) == 0:
        return np.zeros(len(keys), bool)
    if not (values[1:] >= values[:-1]).all():
        values = np.sort(values)
    return values[np.minimum(np.searchsorted(values, keys), len(values) - 1)] == keys


# The signals of a block are computed in chunks of about this much text: their batch-wide numpy and
# Arrow passes hold several arrays the size of the chunk's characters, and slow down once those
# outgrow the CPU caches. Blocks of real source files reach Ray's 128 MB target; on the bundled corpus
# 4x (12.7 MB) as one batch: 16.6 CPU-s, in 4 MB batches 13.2, in 1 MB 11.1 (a 3 MB block: no difference).
_SIGNAL_CHUNK_BYTES = 1 << 20


def with_signals(batch: pa.Table, models: dict | None = None, dedup_slices: Sequence[str] = (),
                 duplicates: np.ndarray | None = None, ut1_blacklist: str | None = None) -> pa.Table:
    """The batch after paragraph dedup (of `dedup_slices`, dropping the lines whose hash is in `duplicates`),
    with `text_bytes` and every signal column (ALL_SIGNAL_COLUMNS order, after the others); its bad-input
    rows (non-null read_error) get null signals. `models`: the references artifact's URI and manifest
    (pajama.data.references.score), None: no model (null model-based signals); `ut1_blacklist`: see
    signals.compute_signals."""
    models = models or {"uri": "", "manifest": {"models": False}}
    duplicates = np.empty(0, np.int64) if duplicates is None else duplicates
    return pa.concat_tables([_chunk_with_signals(chunk, models, dedup_slices, duplicates, ut1_blacklist)
                             for chunk in text_chunks(batch, _SIGNAL_CHUNK_BYTES)], promote_options="default")


def _chunk_with_signals(batch: pa.Table, models: dict, dedup_slices: Sequence[str], duplicates: np.ndarray,
                        ut1_blacklist: str | None) -> pa.Table:
    bad = pc.is_valid(batch.column(READ_ERROR))
    documents = _dedup_paragraphs(batch.filter(pc.invert(bad)), dedup_slices, duplicates)
    missing = [name for name in signals.SIGNAL_COLUMNS if name not in documents.column_names]
    if missing:
        documents = signals.compute_signals(documents, columns=missing, ut1_blacklist=ut1_blacklist)
    if any(name not in documents.column_names for name in references.MODEL_SIGNAL_COLUMNS):
        documents = references.score(documents.drop_columns(
            [c for c in references.MODEL_SIGNAL_COLUMNS if c in documents.column_names]), models)
    # cc_net's language score is the language id of the deduplicated text: RPv2's name for `language_score`.
    documents = documents.append_column("ccnet_language_score", documents.column("language_score"))
    if pc.any(bad).as_py():
        documents = pa.concat_tables([documents, batch.filter(bad)], promote_options="default")
    documents = documents.append_column(TEXT_BYTES, text_bytes(documents))
    others = [c for c in documents.column_names if c not in ALL_SIGNAL_COLUMNS]
    return documents.select(others + list(ALL_SIGNAL_COLUMNS))


def _read_stats(documents) -> dict:
    """Records, bytes of readable text and bad input per slice; bad input that names no slice apart."""
    sizes = documents.map_batches(
        lambda b: pa.table({"slice": b.column("slice"), "bad_input": pc.is_valid(b.column(READ_ERROR)),
                            "bytes": b.column(TEXT_BYTES)}),
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
