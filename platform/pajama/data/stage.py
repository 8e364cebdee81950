"""The data stage: documents with their quality signals -> filters -> dedup -> tokenizer -> packed shards.

Everything runs on Ray Data with documents as rows, processed in Arrow batches, and persisted
between phases as parquet inside the artifact, so each phase streams from storage with bounded
memory on any cluster size. The large outputs are written by Ray tasks straight to the artifact's
place in the storage (`ctx.out_uri`: a local directory or an object-store prefix), so no node needs
a disk shared with the driver; the small files the driver writes go to `ctx.out` and join the
artifact when the stage commits. The artifact holds:

- `documents/`   every input record with its filter verdict (`keep`, `drop_reason`): the signals
                 artifact's documents (pajama.data.signal_stage) less their signal columns, bad input
                 (non-null `read_error`, see pajama.data.readers) with keep false
- `deduped/`     the documents the filters kept, with `exact_dup_of` / `fuzzy_dup_of` set on duplicates
- `quarantine/`  what was not kept, with its reason: the first failing rule, `exact_duplicate of
                 <doc_id>` / `near_duplicate of <doc_id>`, or `bad_input: <read_error>`
- `tokenizer/`   the Hugging Face tokenizer the shards were made with
- `shards/train`, `shards/eval`  packed `input_ids` sequences (+ `slice_id`) in a seeded order:
                 `<shard>.parquet` files of about data.sequences_per_shard sequences each
- `report.md`, `report.png`, `stats.json`  per-slice statistics
- `signal_histograms.png`  the signals artifact's per-slice histograms with the thresholds of the rules
                 this stage applied
- `_phases/`     a marker per finished phase (below)

The stage reads the signals stage's artifact, so a re-tuned recipe, dedup or packing setting does not
compute the signals again. It runs in phases (PHASES): selection (documents/), dedup (deduped/ and the per-slice
counts), quarantine, tokenizer, packing (shards/). Each phase writes its output, then its marker
`_phases/<phase>.json` holding what later phases need of it (the counts, for dedup and packing).
An attempt killed midway leaves its finished phases in the artifact's staging place
(pajama.artifacts keeps them for this stage) and the next attempt resumes after the last of them,
redoing only the phase that was cut short, whose partial output it clears first.

Bad input (unreadable records, broken files, files that cannot be opened, documents over
data.max_document_bytes) goes straight to quarantine: no signal, filter or dedup sees it. With
data.on_bad_input "fail" the readers raise instead and the stage stops. Counts add up per slice:
documents in = bad input + dropped by each rule + duplicates removed + kept. Bad-input records
whose slice cannot be told (a jsonl record that is not JSON, read without a slice in its source)
are counted apart, in stats `bad_input_without_slice`; no slice is guessed for them.

The shards are byte-identical across runs with the same config, seed and library versions (a
killed run resumed included, on any storage), although Ray delivers rows in whatever order its
tasks finish: documents go to shards by a hash of their doc_id, each shard is packed from its
documents in doc_id order and shuffled with a seed of its own, and the file is named by its shard
number. The tokenizer is trained on a doc_id-hash sample read in doc_id order, for the same reason.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import logging
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from ray.data.context import ShuffleStrategy

from pajama import storage
from pajama.artifacts import StageContext
from pajama.config import DataConfig
from pajama.data import decontam, dedup, filters, histograms, signals
from pajama.data.slices import READ_ERROR, SLICES
from pajama.data.tokenizer import BatchEncoder, batch_encoder, load_tokenizer, train_bpe
from pajama.train.shards import ROW_GROUP_SEQUENCES

log = logging.getLogger(__name__)


# RedPajama-1T's token counts per slice (billions; the togethercomputer/RedPajama-Data-1T dataset
# card), the "rpv1" mixture preset.
RPV1_TOKENS_B = {"common_crawl": 878, "c4": 175, "github": 59, "books": 26, "arxiv": 28, "wikipedia": 24,
                 "stackexchange": 20}


def hash_unit(key: str, salt: str) -> float:
    """A deterministic number in [0, 1) per document: eval split and fractional up-sampling."""
    return int.from_bytes(hashlib.sha1(f"{salt}:{key}".encode()).digest()[:8], "big") / 2**64


# The UTF-8 bytes of a document's text, a column from the signals stage on: the per-slice byte counts
# read it instead of the texts.
TEXT_BYTES = "text_bytes"


def text_bytes(batch: pa.Table) -> pa.Array:
    return pc.binary_length(pc.cast(batch.column("text"), pa.binary())).cast(pa.int64())


def text_chunks(batch: pa.Table, max_bytes: int) -> list[pa.Table]:
    """`batch` as consecutive slices of about `max_bytes` of text: rows go by where their text starts in the
    batch's text, so a slice holds at most max_bytes plus its last row's. At least one slice."""
    sizes = pc.fill_null(text_bytes(batch), 0).to_numpy()
    chunk_of_row = (np.cumsum(sizes) - sizes) // max_bytes
    starts = [0, *(np.flatnonzero(np.diff(chunk_of_row)) + 1).tolist()]
    ends = [*starts[1:], batch.num_rows]
    return [batch.slice(start, end - start) for start, end in zip(starts, ends)]


def where(ds: ray.data.Dataset, mask) -> ray.data.Dataset:
    """Rows for which `mask(batch)` (a boolean pyarrow array) is true, in Arrow batches."""
    return ds.map_batches(lambda b: b.filter(mask(b)), batch_format="pyarrow")


def _is_duplicate(batch: pa.Table) -> pa.Array:
    flags = [pc.is_valid(batch.column(c)) for c in ("exact_dup_of", "fuzzy_dup_of") if c in batch.column_names]
    mask = pa.array([False] * batch.num_rows)
    for flag in flags:
        mask = pc.or_(mask, flag)
    return mask


def _parquet_files(uri: str) -> list[str]:
    files = [storage.join(uri, name) for name in storage.files(uri) if name.endswith(".parquet")]
    if not files:
        raise FileNotFoundError(f"no parquet files under {uri}")
    return files


def parquet_schema(uri: str | Path) -> pa.Schema:
    """The schema of the parquet files under a folder of an artifact (that of its first file)."""
    filesystem, path = storage.filesystem(_parquet_files(str(uri))[0])
    return pq.read_schema(path, filesystem=filesystem)


def read_parquet_dir(uri: str | Path, columns: list[str] | None = None) -> ray.data.Dataset:
    """The parquet files under a folder of an artifact (local or in object storage), in file-name order;
    only `columns` when given. Name the columns here rather than select them afterwards: Ray Data's
    pushed-down projection still costs about as much as reading every column.

    Read with Ray Data's V1 parquet datasource: these are files Pajama wrote itself, and the V2
    datasource starts a pool of footer-reader actors per execution (seconds on a small cluster,
    and again in every training worker, which executes the whole stream itself; see loop.py).
    """
    files = _parquet_files(str(uri))
    context = ray.data.DataContext.get_current()
    use_v2, context.use_datasource_v2 = context.use_datasource_v2, False
    try:
        return ray.data.read_parquet(files, columns=columns)
    finally:
        context.use_datasource_v2 = use_v2


def _rules(cfg: DataConfig) -> list:
    """The rules the stage applies: the paragraph-dedup one, then those of data.filters in order."""
    return [filters.DUPLICATE_PARAGRAPHS_RULE, *(rule for name in cfg.filters for rule in filters.load_recipe(name))]


def _select(batch: pa.Table, rules: list, contamination: tuple | None = None) -> pa.Table:
    """Filter verdict of the batch's documents (and, given `contamination` = (n-gram hashes, n), the
    decontamination verdict of those the rules keep), without their signal columns; its bad-input
    rows pass with keep false and no drop_reason (quarantined as bad input, not by a rule)."""
    bad = pc.is_valid(batch.column(READ_ERROR))
    documents = filters.apply_filters(batch.filter(pc.invert(bad)), rules)
    if contamination is not None:
        documents = decontam.mark_contaminated(documents, *contamination)
    unreadable = batch.filter(bad)
    unreadable = unreadable.append_column("keep", pa.array([False] * unreadable.num_rows, pa.bool_()))
    selected = pa.concat_tables([documents, unreadable], promote_options="default")
    return selected.select([c for c in selected.column_names if c not in signals.SIGNAL_COLUMNS])


def mixture_weights(cfg: DataConfig, bytes_per_slice: dict[str, int],
                    bytes_per_token: dict[str, float] | None = None) -> dict[str, float]:
    """Sampling weight per slice: explicit weights, or those that reach RedPajama-1T's proportions.

    "rpv1" matches RedPajama-1T's token counts (RPV1_TOKENS_B), so it weighs each slice by its
    tokens, estimated as its bytes over its bytes per token: a byte of code, LaTeX or multilingual
    Wikipedia makes more tokens than a byte of English prose, and weighing bytes would give those
    slices too few tokens. `bytes_per_token` is measured per slice with the data's tokenizer
    (_bytes_per_token); a slice without a measurement counts _BYTES_PER_TOKEN."""
    if cfg.mixture is None:
        return {s: 1.0 for s in bytes_per_slice}
    if isinstance(cfg.mixture, dict):
        unknown = set(cfg.mixture) - set(SLICES)
        if unknown:
            raise ValueError(f"data.mixture names unknown slices: {sorted(unknown)}")
        return {s: cfg.mixture.get(s, 1.0) for s in bytes_per_slice}
    if cfg.mixture != "rpv1":
        raise ValueError(f"data.mixture preset {cfg.mixture!r} is unknown; use 'rpv1' or a slice->weight map")
    tokens = {s: b / (bytes_per_token or {}).get(s, _BYTES_PER_TOKEN) for s, b in bytes_per_slice.items() if b > 0}
    total_target = sum(RPV1_TOKENS_B[s] for s in tokens)
    total = sum(tokens.values())
    return {s: (RPV1_TOKENS_B[s] / total_target) * total / t for s, t in tokens.items()}


# Documents per slice whose tokens are counted to measure the slice's bytes per token.
_BYTES_PER_TOKEN_SAMPLE = 2000


def _bytes_per_token(docs: ray.data.Dataset, tokenizer_json: str, encoder: str, salt: str,
                     documents_per_slice: dict[str, int]) -> dict[str, float]:
    """UTF-8 bytes per token of each slice, counted with the data's tokenizer on a doc_id-hash
    sample of about _BYTES_PER_TOKEN_SAMPLE documents a slice."""
    fractions = {s: _BYTES_PER_TOKEN_SAMPLE / max(1, n) for s, n in documents_per_slice.items()}

    def count(batch: pa.Table) -> pa.Table:
        batch = batch.filter(pa.array([hash_unit(d, salt) < fractions.get(s, 0.0) for d, s in
                                       zip(batch.column("doc_id").to_pylist(), batch.column("slice").to_pylist())],
                                      pa.bool_()))
        texts = batch.column("text").to_pylist()
        encoded = batch_encoder(tokenizer_json, encoder).encode(texts)
        return pa.table({"slice": batch.column("slice"),
                         "bytes": pa.array([len(t.encode("utf-8")) for t in texts], pa.int64()),
                         "tokens": pa.array([len(ids) for ids in encoded], pa.int64())})

    per_slice = totals(docs.map_batches(count, batch_format="pyarrow"), ["slice"], ("bytes", "tokens"))
    return {row["slice"]: row["bytes"] / row["tokens"] for row in per_slice if row["tokens"]}


# Shards are sized for about sequences_per_shard sequences, at ~4 bytes of text per token.
_BYTES_PER_TOKEN = 4


def _assign_shards(batch: pa.Table, tokenizer_json: str, encoder: str, eval_fraction: float,
                   weights: dict[str, float] | None, train_shards: int, eval_shards: int, salt: str) -> pa.Table:
    """Each document's tokens (`input_ids`, in place of its text), its split (a hash of its doc_id, below
    eval_fraction: eval), its train copies (up-sampled by `weights`, None: one), and its shard: a hash of its
    doc_id, so a random sample of the corpus. `_shard` numbers the shards of both splits at once: train
    0 .. train_shards-1, then eval. Tokenizing here spreads it over every block, not over the few shards.

    `encoder` (data.tokenizer.encoder): where it is tiktoken, a doc_id-hash sample of ENCODER_CHECK_FRACTION
    of the documents is encoded with `tokenizers` too, and a difference stops the stage."""
    encoder_of_batch = batch_encoder(tokenizer_json, encoder)
    texts = batch.column("text").to_pylist()
    doc_ids = batch.column("doc_id").to_pylist()
    _check_encoder(encoder_of_batch, texts, doc_ids, salt)
    encoded = encoder_of_batch.encode(texts)
    lengths = np.fromiter((len(ids) for ids in encoded), np.int32, len(encoded))
    offsets = pa.array(np.concatenate(([0], np.cumsum(lengths, dtype=np.int64))).astype(np.int32))
    flat = np.fromiter(itertools.chain.from_iterable(encoded), np.int32, int(lengths.sum()))
    batch = batch.drop_columns(["text"]).append_column("input_ids", pa.ListArray.from_arrays(offsets, pa.array(flat)))
    in_eval = pa.array([hash_unit(d, salt + ":eval") < eval_fraction for d in doc_ids], pa.bool_())
    train, evaluation = batch.filter(pc.invert(in_eval)), batch.filter(in_eval)
    if weights:
        train = _upsample(train, weights, salt)
    parts = []
    for docs, num_shards, first in ((train, train_shards, 0), (evaluation, eval_shards, train_shards)):
        shards = [first + int(hash_unit(d, salt + ":shard") * num_shards) for d in docs.column("doc_id").to_pylist()]
        parts.append(docs.append_column("_shard", pa.array(shards, pa.int32())))
    return pa.concat_tables(parts)


# The share of documents that a tiktoken encoding checks against `tokenizers` (chosen by doc_id hash).
ENCODER_CHECK_FRACTION = 0.01


def _check_encoder(encoder: BatchEncoder, texts: list[str], doc_ids: list[str], salt: str) -> None:
    if encoder.engine == "huggingface":
        return
    sample = [i for i, doc_id in enumerate(doc_ids) if hash_unit(doc_id, salt + ":encoder") < ENCODER_CHECK_FRACTION]
    differs = encoder.mismatch([texts[i] for i in sample])
    if differs is not None:
        raise ValueError(
            f"data.tokenizer.encoder: tiktoken encodes document {doc_ids[sample[differs]]!r} differently from the "
            "tokenizer itself (`tokenizers`); set data.tokenizer.encoder=huggingface to encode with the tokenizer")


def _pack_shard(docs: pa.Table, eos_token_id: int, seq_len: int, slices: list[str],
                shards_uri: str, train_shards: int, eval_shards: int, seed: int) -> pa.Table:
    """Concatenate one shard's documents' tokens in doc_id order, each followed by EOD, cut each slice's
    token stream into seq_len rows, shuffle them with the shard's own seed and write `<shard>.parquet`
    under `<shards_uri>/<split>` (a local path or an object-store URI); `_shard` and `input_ids` as
    _assign_shards made them.

    The file depends only on which documents the shard holds, never on the order or batching in
    which Ray delivers them: a re-run writes the same bytes. Returns the split, and sequences and
    dropped tail tokens per slice."""
    shard = docs.column("_shard")[0].as_py()
    split, num_shards, first = (("train", train_shards, 0) if shard < train_shards
                                else ("eval", eval_shards, train_shards))
    shard -= first
    docs = docs.sort_by("doc_id")
    # Every document's tokens then EOD, as one array, and the slice of each of those tokens.
    token_lists = docs.column("input_ids").combine_chunks()
    lengths = pc.list_value_length(token_lists).to_numpy(zero_copy_only=False).astype(np.int64) + 1
    ends = np.cumsum(lengths)
    tokens = np.full(int(ends[-1]) if len(ends) else 0, eos_token_id, np.int32)
    not_eod = np.ones(len(tokens), bool)
    not_eod[ends - 1] = False
    tokens[not_eod] = token_lists.flatten().to_numpy()
    doc_slices = docs.column("slice").to_pylist()
    token_slice = np.repeat(np.array([slices.index(s) for s in doc_slices], np.int16), lengths)
    rows, slice_ids, summary = [], [], defaultdict(list)
    for slice_name in sorted(set(doc_slices)):
        stream = tokens[token_slice == slices.index(slice_name)]
        n = len(stream) // seq_len
        rows.append(stream[: n * seq_len].reshape(n, seq_len))
        slice_ids += [slices.index(slice_name)] * n
        for column, value in (("slice_id", slices.index(slice_name)), ("sequences", n),
                              ("dropped_tail_tokens", len(stream) - n * seq_len)):
            summary[column].append(value)
    ids = np.concatenate(rows)
    if len(ids):
        order = np.random.default_rng([seed, shard]).permutation(len(ids))
        # list<int32> straight from the flat buffer: no Python list per sequence.
        offsets = pa.array(np.arange(0, len(ids) * seq_len + 1, seq_len, dtype=np.int32))
        table = pa.table({
            "input_ids": pa.ListArray.from_arrays(offsets, pa.array(ids[order].reshape(-1))),
            "slice_id": pa.array(np.asarray(slice_ids, dtype=np.int16)[order], type=pa.int16()),
        })
        # Names sort in shard order; row groups are the unit the training workers read (train/shards.py).
        name = f"{shard:0{max(5, len(str(num_shards - 1)))}d}.parquet"
        pq.write_table(table, storage.join(shards_uri, split, name), row_group_size=ROW_GROUP_SEQUENCES)
    return pa.table({"split": pa.array([split] * len(summary["slice_id"]), pa.string()),
                     "slice_id": pa.array(summary["slice_id"], pa.int16()),
                     "sequences": pa.array(summary["sequences"], pa.int64()),
                     "dropped_tail_tokens": pa.array(summary["dropped_tail_tokens"], pa.int64())})


def _upsample(batch: pa.Table, weights: dict[str, float], salt: str) -> pa.Table:
    repeats = []
    for doc_id, slice_name in zip(batch.column("doc_id").to_pylist(), batch.column("slice").to_pylist()):
        w = weights.get(slice_name, 1.0)
        repeats.append(int(w) + (1 if hash_unit(doc_id, salt) < w - int(w) else 0))
    return batch.take(pa.array(np.repeat(np.arange(len(repeats)), repeats), type=pa.int64()))


def run(cfg: DataConfig, ctx: StageContext, inputs: dict) -> dict:
    """The data stage: build the data artifact (under `ctx.out_uri`, small files in `ctx.out`),
    resuming the phases an earlier attempt finished there; returns the manifest fields (stats,
    slices, sequences) and logs the per-slice counts and the report to the stage's run."""
    with data_stage_context(cfg):
        manifest = _build_data_artifact(cfg, ctx, inputs["signals"].join("documents"))
    ctx.log_metrics(_stats_metrics(manifest["stats"]))
    distributions = json.loads(storage.read_text(inputs["signals"].join("histograms.json")))
    histograms.plot(distributions, ctx.out / "signal_histograms.png", _rules(cfg))
    for name in ("report.md", "report.png", "signal_histograms.png"):
        ctx.log_artifact(ctx.out / name)
    return manifest


@contextlib.contextmanager
def data_context(shuffle_strategy: str | None, read_blocks: int | None = None):
    """Ray Data's context for a stage's data preparation while the block runs: `shuffle_strategy` (a
    ShuffleStrategy value; None keeps Ray's), reads split into at least `read_blocks` blocks (None keeps
    Ray's), and no per-operator resource reservation.

    Ray's default of 200 blocks a read is for big clusters: on a few CPUs it cuts every file into
    dozens of small blocks, each a task and an output file of every pass, several times the work
    (the data stage's selection on 12 MB of text: 1.6 s with 200, 0.4 s with 4): the data stages read
    shuffle_partitions(cfg) blocks (data_stage_context).

    The reservation (Ray 2.60's ReservationOpResourceAllocator) budgets each execution from the
    cluster's resources as its autoscaling coordinator reports them, which it reads once a second and
    which are zero until the first answer: every execution runs one task at a time for about its first
    second. The stages run some thirty short executions, each a fused read-map-write or a map, a sort
    shuffle and a map, none pipelining operators that the reservation would keep from starving each
    other: it cost them most of a core. The signals and data stages as benchmarks/data_stage_scaling.py
    runs them, on 2 CPUs: the bundled corpus 14.0 s with it, 10.7 s without; 4x the corpus 24.7 and 19.0 s."""
    context = ray.data.DataContext.get_current()
    previous = context.shuffle_strategy, context.read_op_min_num_blocks, context.op_resource_reservation_enabled
    if shuffle_strategy:
        context.shuffle_strategy = ShuffleStrategy(shuffle_strategy)
    if read_blocks:
        context.read_op_min_num_blocks = read_blocks
    context.op_resource_reservation_enabled = False
    try:
        yield
    finally:
        context.shuffle_strategy, context.read_op_min_num_blocks, context.op_resource_reservation_enabled = previous


def data_stage_context(cfg: DataConfig):
    """data_context for the references, signals and data stages: data.shuffle_strategy, and reads of
    shuffle_partitions(cfg) blocks."""
    return data_context(cfg.shuffle_strategy, shuffle_partitions(cfg))


def shuffle_partitions(cfg: DataConfig) -> int:
    """Partitions of a group-by: data.shuffle_partitions, or twice the cluster's CPUs (at least 4): Ray's
    default of 200 is for big clusters, a laptop wants a few."""
    return cfg.shuffle_partitions or max(4, 2 * int(ray.cluster_resources().get("CPU", 1)))


def _stats_metrics(stats: dict) -> dict[str, float]:
    """The per-slice funnel as `<group>/<slice>` metrics (and `<group>/total`), which the MLflow UI
    charts together per group; drops as `dropped/<rule>/<slice>`."""
    counts = ("documents_in", "documents_out", "exact_duplicates", "near_duplicates", "bad_input")
    metrics = {}
    for name, e in stats["slices"].items():
        for key in counts:
            metrics[f"{key}/{name}"] = e[key]
        metrics[f"train_tokens/{name}"] = e.get("train_tokens", 0)
        for rule, n in e["dropped"].items():
            metrics[f"dropped/{rule}/{name}"] = n
    for key in counts:
        metrics[f"{key}/total"] = sum(e[key] for e in stats["slices"].values())
    metrics["bad_input/without_slice"] = stats["bad_input_without_slice"]
    metrics["dropped/total"] = sum(sum(e["dropped"].values()) for e in stats["slices"].values())
    metrics["sequences/train"] = stats["train_sequences"]
    metrics["sequences/eval"] = stats["eval_sequences"]
    return metrics


# The phases in order: each persists its output under the artifact, then its marker (Phases).
PHASES = ("selection", "dedup", "quarantine", "tokenizer", "packing")


class Phases:
    """The phases of a stage (the data stage's, the signals stage's) that finished in this or an earlier
    attempt at its artifact.

    A phase first clears what a killed attempt may have left of its output, writes the output, then
    its marker `_phases/<phase>.json` under the artifact: the values later phases need of it (JSON).
    A marker is written last, so a phase with one finished; a re-run reads its output instead.
    """

    def __init__(self, out_uri: str):
        self.uri = storage.join(out_uri, "_phases")
        self.done = {name.removesuffix(".json"): json.loads(storage.read_text(storage.join(self.uri, name)))
                     for name in storage.files(self.uri) if name.endswith(".json")}

    def finish(self, phase: str, **values) -> None:
        storage.write_text(storage.join(self.uri, f"{phase}.json"), json.dumps(values, indent=2, sort_keys=True))
        self.done[phase] = values


def rewrite(uri: str, write) -> None:
    """Write a phase's output folder with `write(uri)`, after clearing a killed attempt's part of it."""
    storage.delete(uri)
    write(uri)


def _build_data_artifact(cfg: DataConfig, ctx: StageContext, signal_documents_uri: str) -> dict:
    out, out_uri, seed = ctx.out, ctx.out_uri, ctx.seed
    phases = Phases(out_uri)
    if phases.done:
        log.info("data: resuming: %s done in an earlier attempt", ", ".join(p for p in PHASES if p in phases.done))
    partitions = shuffle_partitions(cfg)
    documents_uri, deduped_uri = storage.join(out_uri, "documents"), storage.join(out_uri, "deduped")

    if "selection" not in phases.done:
        log.info("data: applying filters to the documents' signals")
        rules = _rules(cfg)
        contamination = None
        if cfg.decontamination.against:
            n = cfg.decontamination.ngram
            contamination = (decontam.eval_ngram_hashes(cfg.decontamination.against, n), n)
            log.info("data: decontamination against %d evaluation %d-grams", len(contamination[0]), n)
        # _select drops the signal columns, so only those the rules read are read (the per-line lists of
        # the others are most of the artifact's bytes)
        unread = set(signals.SIGNAL_COLUMNS) - set(filters.signals_needed(rules))
        read = [name for name in parquet_schema(signal_documents_uri).names if name not in unread]
        selected = read_parquet_dir(signal_documents_uri, read).map_batches(
            _select, fn_kwargs={"rules": rules, "contamination": contamination}, batch_format="pyarrow")
        rewrite(documents_uri, selected.write_parquet)
        phases.finish("selection")
    if "dedup" not in phases.done:
        kept = where(read_parquet_dir(documents_uri), lambda b: b.column("keep"))
        if cfg.exact_dedup:
            log.info("data: exact dedup")
            kept = dedup.exact_dedup(kept, num_partitions=partitions)
        if cfg.fuzzy_dedup.enabled:
            log.info("data: MinHash LSH dedup")
            fz = cfg.fuzzy_dedup
            # fuzzy_dedup reads its input twice (keys, then the join): run what precedes it once.
            kept = dedup.fuzzy_dedup(kept.materialize(), threshold=fz.threshold, num_perm=fz.num_perm, ngram=fz.ngram,
                                     bands=fz.bands, rows=fz.rows, seed=seed, num_partitions=partitions,
                                     driver_components_max_edges=fz.driver_components_max_edges)
        rewrite(deduped_uri, kept.write_parquet)
        dup_columns = [c for c in ("exact_dup_of", "fuzzy_dup_of") if c in parquet_schema(deduped_uri).names]
        stats = _slice_stats(read_parquet_dir(documents_uri, ["slice", "keep", "drop_reason", READ_ERROR, TEXT_BYTES]),
                             read_parquet_dir(deduped_uri, ["slice", TEXT_BYTES, *dup_columns]), dup_columns)
        phases.finish("dedup", dup_columns=dup_columns, stats=stats)
    dup_columns = phases.done["dedup"]["dup_columns"]
    stats = phases.done["dedup"]["stats"]
    final = where(read_parquet_dir(deduped_uri, ["doc_id", "slice", "text", *dup_columns]),
                  lambda b: pc.invert(_is_duplicate(b)))

    if cfg.quarantine and "quarantine" not in phases.done:
        rewrite(storage.join(out_uri, "quarantine"),
                 lambda uri: _write_quarantine(documents_uri, deduped_uri, dup_columns, uri))
        phases.finish("quarantine")

    salt = str(seed)
    final_docs = final.select_columns(["doc_id", "slice", "text"])
    # On object storage the tokenizer is saved in `out` and uploaded under the artifact at once, so
    # that a resumed attempt (with a new, empty `out`) finds it there.
    tokenizer_uri = storage.join(out_uri, "tokenizer")
    uploaded = tokenizer_uri != str(out / "tokenizer")
    if "tokenizer" not in phases.done:
        log.info("data: tokenizer")
        if cfg.tokenizer.train:
            # A sample chosen by doc_id hash and read in doc_id order: the same tokenizer on every run.
            documents_out = sum(e["documents_out"] for e in stats["slices"].values())
            fraction = cfg.tokenizer.sample_documents / max(1, documents_out)
            sample = final_docs if fraction >= 1 else final_docs.map_batches(
                lambda b: b.filter(pa.array([hash_unit(d, salt + ":tokenizer") < fraction
                                             for d in b.column("doc_id").to_pylist()])), batch_format="pyarrow")
            tokenizer = train_bpe([r["text"] for r in sorted(sample.iter_rows(), key=lambda r: r["doc_id"])],
                                  cfg.tokenizer.vocab_size)
        else:
            tokenizer = load_tokenizer(cfg.tokenizer.name_or_path)
        tokenizer.save_pretrained(out / "tokenizer")
        if uploaded:
            rewrite(tokenizer_uri, lambda uri: storage.upload_dir(out / "tokenizer", uri))
        phases.finish("tokenizer")
    elif uploaded:
        storage.download_dir(tokenizer_uri, out / "tokenizer")
    tokenizer = load_tokenizer(str(out / "tokenizer"))
    # The tokenizer goes to the packing tasks as text: they may run on nodes that cannot see `out`.
    tokenizer_json = (out / "tokenizer" / "tokenizer.json").read_text()

    if "packing" not in phases.done:
        log.info("data: tokenizing and packing")
        rewrite(storage.join(out_uri, "shards"), lambda uri: _pack(
            cfg, final_docs, stats, tokenizer_json, tokenizer.eos_token_id, uri, partitions, seed))
        phases.finish("packing", stats=stats)
    stats = phases.done["packing"]["stats"]
    (out / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True))
    write_report(stats, out)
    return {"slices": sorted(stats["slices"]), "seq_len": cfg.seq_len, "stats": stats,
            "tokenizer": cfg.tokenizer.name_or_path or "trained-bpe", "vocab_size": len(tokenizer)}


def _pack(cfg: DataConfig, final_docs: ray.data.Dataset, stats: dict, tokenizer_json: str, eos_token_id: int,
          shards_uri: str, partitions: int, seed: int) -> None:
    """Write shards/train and shards/eval under `shards_uri` and add their sequence and token counts
    (and the mixture weights) to `stats`."""
    salt = str(seed)
    slices = sorted(stats["slices"])
    stats["encoder"] = batch_encoder(tokenizer_json, cfg.tokenizer.encoder).engine
    bytes_per_token = None
    if cfg.mixture == "rpv1":
        bytes_per_token = _bytes_per_token(final_docs, tokenizer_json, cfg.tokenizer.encoder,
                                           salt + ":bytes_per_token",
                                           {s: stats["slices"][s]["documents_out"] for s in slices})
        stats["bytes_per_token"] = bytes_per_token
    weights = mixture_weights(cfg, {s: stats["slices"][s]["bytes_out"] for s in slices}, bytes_per_token)
    shard_bytes = _BYTES_PER_TOKEN * cfg.seq_len * cfg.sequences_per_shard
    total_bytes = sum(stats["slices"][s]["bytes_out"] * weights.get(s, 1.0) for s in slices)
    num_shards = {split: max(1, math.ceil(total_bytes * share / shard_bytes))
                  for split, share in (("train", 1 - cfg.eval_fraction), ("eval", cfg.eval_fraction))}
    for split in num_shards:
        storage.make_dir(storage.join(shards_uri, split))
    # Both splits in one shuffle. Shuffled: documents go to shards by hash and each shard's sequences are
    # shuffled with a seed; training streams the shards in name order and evaluation scores the first batches.
    upsampling = weights if any(w != 1.0 for w in weights.values()) else None
    shard_counts = {"train_shards": num_shards["train"], "eval_shards": num_shards["eval"]}
    summary = (final_docs.map_batches(_assign_shards, batch_format="pyarrow",
                                      fn_kwargs={"tokenizer_json": tokenizer_json, "encoder": cfg.tokenizer.encoder,
                                                 "eval_fraction": cfg.eval_fraction,
                                                 "weights": upsampling, "salt": salt, **shard_counts})
               .groupby("_shard", num_partitions=min(partitions, sum(num_shards.values())))
               .map_groups(_pack_shard, batch_format="pyarrow",
                           fn_kwargs={"eos_token_id": eos_token_id, "seq_len": cfg.seq_len, "slices": slices,
                                      "shards_uri": shards_uri, "seed": seed, **shard_counts})
               .take_all())
    for split in num_shards:
        rows = [r for r in summary if r["split"] == split]
        stats[f"{split}_sequences"] = sum(r["sequences"] for r in rows)
        stats[f"{split}_tail_tokens_dropped"] = sum(r["dropped_tail_tokens"] for r in rows)
        for r in rows:
            e = stats["slices"][slices[r["slice_id"]]]
            e[f"{split}_tokens"] = e.get(f"{split}_tokens", 0) + r["sequences"] * cfg.seq_len
    stats["mixture_weights"] = weights


def totals(ds: ray.data.Dataset, keys: list[str], sums: tuple[str, ...] = ()) -> list[dict]:
    """Row count ("count") and column sums per key. Each block is reduced where it lies and the
    partial tables (slices x reasons rows each) are reduced again here, so no shuffle runs."""
    aggregations = [([], "count_all"), *[(c, "sum") for c in sums]]
    partials = list(ds.map_batches(lambda b: b.group_by(keys).aggregate(aggregations), batch_format="pyarrow",
                                   batch_size=None).iter_batches(batch_format="pyarrow", batch_size=None))
    if not partials:
        return []
    merged = pa.concat_tables(partials).group_by(keys).aggregate(
        [("count_all", "sum"), *[(f"{c}_sum", "sum") for c in sums]])
    return [{**{k: row[k] for k in keys}, "count": row["count_all_sum"], **{c: row[f"{c}_sum_sum"] or 0 for c in sums}}
            for row in merged.to_pylist()]


def _slice_stats(documents: ray.data.Dataset, deduped: ray.data.Dataset, dup_columns: list[str]) -> dict:
    """Per slice: records in (bad input included), bad input, dropped per rule, duplicates, kept;
    bytes in/out of the documents (bad input's text is not kept whole, so not counted)."""
    per_slice: dict[str, dict] = {}
    without_slice = 0

    def entry(s):
        return per_slice.setdefault(s, {"documents_in": 0, "bytes_in": 0, "bad_input": 0, "dropped": {},
                                        "exact_duplicates": 0, "near_duplicates": 0, "documents_out": 0,
                                        "bytes_out": 0})

    sizes = documents.map_batches(
        lambda b: pa.table({"slice": b.column("slice"), "keep": b.column("keep"),
                            "drop_reason": b.column("drop_reason"),
                            "bad_input": pc.is_valid(b.column(READ_ERROR)), "bytes": b.column(TEXT_BYTES)}),
        batch_format="pyarrow")
    for row in totals(sizes, ["slice", "keep", "drop_reason", "bad_input"], ("bytes",)):
        if row["slice"] is None:  # only bad input lacks a slice (see pajama.data.readers)
            without_slice += row["count"]
            continue
        e = entry(row["slice"])
        e["documents_in"] += row["count"]
        if row["bad_input"]:
            e["bad_input"] += row["count"]
            continue
        e["bytes_in"] += int(row["bytes"])
        if not row["keep"]:
            e["dropped"][row["drop_reason"]] = e["dropped"].get(row["drop_reason"], 0) + row["count"]
    kinds = {"exact_dup_of": "exact_duplicates", "fuzzy_dup_of": "near_duplicates"}
    flags = deduped.map_batches(
        lambda b: pa.table({"slice": b.column("slice"), "bytes": b.column(TEXT_BYTES),
                            **{kinds[c]: pc.is_valid(b.column(c)) for c in dup_columns}}),
        batch_format="pyarrow")
    for row in totals(flags, ["slice", *[kinds[c] for c in dup_columns]], ("bytes",)):
        e = entry(row["slice"])
        # A document flagged by both dedup passes counts once, as an exact duplicate.
        if row.get("exact_duplicates"):
            e["exact_duplicates"] += row["count"]
        elif row.get("near_duplicates"):
            e["near_duplicates"] += row["count"]
        else:
            e["documents_out"] += row["count"]
            e["bytes_out"] += int(row["bytes"])
    for name, e in per_slice.items():
        accounted = (e["bad_input"] + sum(e["dropped"].values()) + e["exact_duplicates"] + e["near_duplicates"]
                     + e["documents_out"])
        if accounted != e["documents_in"]:
            raise RuntimeError(f"slice {name}: {e['documents_in']} documents in but {accounted} accounted for")
    return {"slices": per_slice, "bad_input_without_slice": without_slice}


QUARANTINE_COLUMNS = ["doc_id", "slice", "text", "meta"]


def _write_quarantine(documents_uri: str, deduped_uri: str, dup_columns: list[str], uri: str) -> None:
    """Every record the data stage did not keep, with its `reason`: one pass over documents/ (bad input,
    dropped by a rule) and one over deduped/ (duplicates), each reading only the columns it needs."""

    def not_kept(b: pa.Table) -> pa.Table:
        b = b.filter(pc.or_kleene(pc.is_valid(b.column(READ_ERROR)), pc.invert(b.column("keep"))))
        reason = pc.if_else(pc.is_valid(b.column(READ_ERROR)),
                            pc.binary_join_element_wise("bad_input: ", b.column(READ_ERROR), ""), b.column("drop_reason"))
        return b.select(QUARANTINE_COLUMNS).append_column("reason", reason)

    def duplicates(b: pa.Table) -> pa.Table:
        # "<kind> of <doc_id>" where flagged (null elsewhere); exact first: a row flagged by both passes
        # is an exact duplicate, as in the stats
        flagged = [pc.binary_join_element_wise(f"{reason} of ", b.column(column), "")
                   for column, reason in (("exact_dup_of", "exact_duplicate"), ("fuzzy_dup_of", "near_duplicate"))
                   if column in dup_columns]
        reason = pc.coalesce(*flagged)
        return b.select(QUARANTINE_COLUMNS).append_column("reason", reason).filter(pc.is_valid(reason))

    documents = read_parquet_dir(documents_uri, [*QUARANTINE_COLUMNS, "keep", "drop_reason", READ_ERROR])
    quarantined = documents.map_batches(not_kept, batch_format="pyarrow")
    if dup_columns:
        deduped = read_parquet_dir(deduped_uri, [*QUARANTINE_COLUMNS, *dup_columns])
        quarantined = quarantined.union(deduped.map_batches(duplicates, batch_format="pyarrow"))
    quarantined.write_parquet(uri)


def write_report(stats: dict, out: Path) -> None:
    """A readable per-slice table (markdown) and a bar chart of documents kept and dropped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = ["| slice | docs in | bad input | dropped (by rule) | exact dups | near dups | docs out | MB in | MB out "
            "| train tokens |",
            "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    names = sorted(stats["slices"])
    for s in names:
        e = stats["slices"][s]
        dropped = ", ".join(f"{k}: {v}" for k, v in sorted(e["dropped"].items())) or "-"
        rows.append(f"| {s} | {e['documents_in']} | {e['bad_input']} | {dropped} | {e['exact_duplicates']} | "
                    f"{e['near_duplicates']} | {e['documents_out']} | {e['bytes_in'] / 1e6:.2f} | "
                    f"{e['bytes_out'] / 1e6:.2f} | {e.get('train_tokens', 0)} |")
    notes = []
    if stats["bad_input_without_slice"]:
        notes.append(f"{stats['bad_input_without_slice']} bad-input record(s) name no slice and are in no row above.")
    bad = stats["bad_input_without_slice"] + sum(stats["slices"][s]["bad_input"] for s in names)
    if bad:
        notes.append(f"{bad} bad-input record(s): why each could not be read is its `read_error` in documents/ "
                     "(and reason `bad_input: ...` in quarantine/).")
    notes.append("Per-slice distributions of the quality signals, with the thresholds of the filter rules applied: "
                 "![signal histograms](signal_histograms.png)")
    (out / "report.md").write_text("# Data report\n\n" + "\n".join(rows) + "\n" + "".join(f"\n{n}\n" for n in notes))

    fig, ax = plt.subplots(figsize=(9, 4))
    x = np.arange(len(names))
    kept = [stats["slices"][s]["documents_out"] for s in names]
    filt = [sum(stats["slices"][s]["dropped"].values()) for s in names]
    dups = [stats["slices"][s]["exact_duplicates"] + stats["slices"][s]["near_duplicates"] for s in names]
    unread = [stats["slices"][s]["bad_input"] for s in names]
    ax.bar(x, kept, label="kept")
    ax.bar(x, filt, bottom=kept, label="dropped by filters")
    ax.bar(x, dups, bottom=np.add(kept, filt), label="duplicates")
    ax.bar(x, unread, bottom=np.add(np.add(kept, filt), dups), label="bad input")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("documents")
    ax.set_title("Documents per slice")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "report.png", dpi=100)
    plt.close(fig)
