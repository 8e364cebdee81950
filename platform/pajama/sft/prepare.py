"""Fine-tuning examples -> decontaminated, tokenized, packed train and eval shards, on Ray Data.

The data is prepared on the cluster, never held whole by the driver: each file (a hub dataset's files
one by one, fetched by the task that reads it; an `hf` dataset whole) is read by one task with the
loaders of pajama.sft.formats; decontamination, the split and tokenization run in `map_batches` (the
tokenizer is loaded in each worker from the base model's files, and only the evaluation sets'
n-grams, computed once here, travel with the function). The packed sequences are written as parquet
under the artifact, `shards/train/<shard>.parquet` and `shards/eval/...` (`input_ids`, `labels`,
`position_ids`, list<int32> each), and training streams them like pretraining data.

The shards are byte-identical across runs with the same config, seed and library versions,
whatever order Ray's tasks finish in: every example's key is a seeded hash of its content; the key
alone puts it in the eval or train split and in a shard, and each shard is packed from its
examples in key order (a seeded shuffle) and written under its shard number.

This module imports neither torch nor Ray Train: the Ray Data workers that run its batch functions
import it, and a fine-tuning stage would otherwise wait seconds for each of them to load both.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from pajama import hub, storage
from pajama.config import SFTConfig, SFTDataConfig, resolve_path
from pajama.data.stage import data_context, hash_unit
from pajama.data.tokenizer import load_tokenizer
from pajama.sft import decontam, formats, packing, templates

log = logging.getLogger(__name__)

PACKED_COLUMNS = ("input_ids", "labels", "position_ids")
SPLITS = ("train", "eval")
DECONTAMINATED = "decontaminated"  # the `split` of an example dropped by decontamination
NGRAM = 10
# A shard is packed by one task from about this many examples (more: fuller sequences, more memory).
EXAMPLES_PER_SHARD = 10_000
# Examples per block as files are read: the unit of parallelism of the steps that follow.
READ_BLOCK_EXAMPLES = 1_000

EXAMPLE_SCHEMA = pa.schema([
    ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
    ("task", pa.string()),
    ("source", pa.string()),
])
PACK_REPORT_COUNTS = ("examples", "truncated", "dropped_no_response", "sequences", "tokens")


def _load(datasets: list[SFTDataConfig]) -> list[dict]:
    """All examples of `datasets`, here: for the evaluation sets to decontaminate against, which are small."""
    return [ex for d in datasets for ex in formats.load_examples(d.format, resolve_path(d.path), **d.options)]


def read_units(datasets: list[SFTDataConfig]) -> list[dict]:
    """What one task reads each: {format, path, options (JSON)}. A hub dataset in a file format is
    listed here and becomes one unit per file, which the reading task fetches itself."""
    units = []
    for d in datasets:
        path, options = resolve_path(d.path), dict(d.options)
        if d.format != "hf" and hub.repo_id(path):
            data_files = options.pop("data_files", "**/*.jsonl*")
            for name in hub.dataset_file_names(path, data_files, options.get("revision")):
                units.append({"format": d.format, "path": path, "options": json.dumps({**options, "data_files": name})})
        else:
            units.append({"format": d.format, "path": path, "options": json.dumps(options)})
    return units


def _read_unit(units: pa.Table, block_examples: int):
    """The examples of each unit, in blocks of `block_examples` (a whole file is loaded by its task)."""
    for unit in units.to_pylist():
        examples = formats.load_examples(unit["format"], unit["path"], **json.loads(unit["options"]))
        for start in range(0, len(examples), block_examples):
            yield pa.Table.from_pylist(examples[start : start + block_examples], schema=EXAMPLE_SCHEMA)


@functools.lru_cache(maxsize=1)
def _tokenizer(uri: str):
    # Loaded once per worker process from the base model's files (a local copy of an object-store URI).
    return load_tokenizer(str(storage.local_copy(uri)))


def _example_key(example: dict, seed: int) -> str:
    """A seeded hash of the example's content: its split, shard and place in the shard."""
    return hashlib.sha1(f"{seed}:{json.dumps(example, sort_keys=True)}".encode()).hexdigest()


def _prepare(batch: pa.Table, tokenizer_uri: str, style: str, eval_grams: set, eval_fraction: float,
             seed: int) -> pa.Table:
    """Each example's key, split (train, eval or decontaminated), task, and tokens with loss mask
    (none for a decontaminated example)."""
    tokenizer = _tokenizer(tokenizer_uri)
    columns = {name: [] for name in ("key", "split", "task", "input_ids", "labels")}
    for example in batch.to_pylist():
        key = _example_key(example, seed)
        if decontam.shares_ngram(example, eval_grams, NGRAM):
            split, tokens = DECONTAMINATED, {"input_ids": [], "labels": []}
        else:
            split = "eval" if hash_unit(key, "eval") < eval_fraction else "train"
            tokens = templates.tokenize_example(tokenizer, example, style)
        for name, value in (("key", key), ("split", split), ("task", example["task"]),
                            ("input_ids", tokens["input_ids"]), ("labels", tokens["labels"])):
            columns[name].append(value)
    ints = pa.list_(pa.int32())
    return pa.table({"key": pa.array(columns["key"], pa.string()), "split": pa.array(columns["split"], pa.string()),
                     "task": pa.array(columns["task"], pa.string()),
                     "input_ids": pa.array(columns["input_ids"], ints), "labels": pa.array(columns["labels"], ints)})


def _counts(prepared: ray.data.Dataset) -> Counter:
    """Examples per (split, task), counted block by block where the blocks lie."""
    partials = prepared.map_batches(
        lambda b: b.select(["split", "task"]).group_by(["split", "task"]).aggregate([([], "count_all")]),
        batch_format="pyarrow", batch_size=None)
    counts = Counter()
    for row in partials.iter_rows():
        counts[(row["split"], row["task"])] += row["count_all"]
    return counts


def _assign_shard(batch: pa.Table, split: str, num_shards: int) -> pa.Table:
    """The batch's examples of `split`, with their shard (a hash of the key) in `_shard`."""
    batch = batch.filter(pc.equal(batch.column("split"), split)).select(["key", "input_ids", "labels"])
    shards = [int(hash_unit(key, "shard") * num_shards) for key in batch.column("key").to_pylist()]
    return batch.append_column("_shard", pa.array(shards, pa.int32()))


def _shard_uri(directory: str, shard: int, num_shards: int) -> str:
    return storage.join(directory, f"{shard:0{max(5, len(str(num_shards - 1)))}d}.parquet")  # names sort in shard order


def _write_shard(uri: str, sequences: list[dict], row_group_size: int) -> None:
    table = pa.table({c: pa.array([s[c] for s in sequences], pa.list_(pa.int32())) for c in PACKED_COLUMNS})
    storage.make_dir(uri.rsplit("/", 1)[0])
    fs, path = storage.filesystem(uri)
    pq.write_table(table, path, filesystem=fs, row_group_size=row_group_size)


def _pack_shard(examples: pa.Table, max_length: int, pad_token_id: int, directory: str, num_shards: int,
                row_group_size: int) -> pa.Table:
    """Pack one shard's examples in key order and write its file; returns its packing report.

    The file depends only on which examples the shard holds, never on how Ray batched or ordered them."""
    shard = examples.column("_shard")[0].as_py()
    examples = examples.sort_by("key").select(["input_ids", "labels"])
    sequences, report = packing.pack_examples(examples.to_pylist(), max_length, pad_token_id)
    _write_shard(_shard_uri(directory, shard, num_shards), sequences, row_group_size)
    return pa.table({"shard": [shard], **{k: pa.array([report[k]], pa.int64()) for k in PACK_REPORT_COUNTS}})


def _pack_split(prepared: ray.data.Dataset, split: str, examples: int, max_length: int, pad_token_id: int,
                directory: str, row_group_size: int) -> dict:
    """Pack the split's examples into shards under `directory`; the summed packing report. Row groups
    are what each training worker reads its share in (train/shards.py): one per micro-batch, since
    fine-tuning sets are small enough to hold fewer sequences than a pretraining row group."""
    num_shards = max(1, math.ceil(examples / EXAMPLES_PER_SHARD))
    reports = []
    if examples:
        partitions = max(4, 2 * int(ray.cluster_resources().get("CPU", 1)))
        reports = (prepared.map_batches(_assign_shard, fn_kwargs={"split": split, "num_shards": num_shards},
                                        batch_format="pyarrow")
                   .groupby("_shard", num_partitions=min(partitions, num_shards))
                   .map_groups(_pack_shard, batch_format="pyarrow",
                               fn_kwargs={"max_length": max_length, "pad_token_id": pad_token_id,
                                          "row_group_size": row_group_size,
                                          "directory": directory, "num_shards": num_shards})
                   .take_all())
    # Every shard number has its file, an empty one if no example hashed there (an empty split too).
    for shard in set(range(num_shards)) - {r["shard"] for r in reports}:
        _write_shard(_shard_uri(directory, shard, num_shards), [], row_group_size)
    report = {k: sum(r[k] for r in reports) for k in PACK_REPORT_COUNTS}
    if report["examples"] != examples:
        raise RuntimeError(f"{split}: {examples} examples split off but {report['examples']} packed or dropped")
    report["fill"] = report["tokens"] / (report["sequences"] * max_length) if report["sequences"] else 0.0
    return report


def prepare_examples(cfg: SFTConfig, tokenizer_uri: str, seed: int, out_uri: str) -> dict:
    """Packed train and eval shards under `<out_uri>/shards/{train,eval}`, and a report of what was
    loaded, dropped and packed: examples_loaded == sum(decontaminated) + train and eval examples."""
    with data_context(cfg.shuffle_strategy):
        return _prepare_shards(cfg, tokenizer_uri, seed, out_uri)


def _prepare_shards(cfg: SFTConfig, tokenizer_uri: str, seed: int, out_uri: str) -> dict:
    eval_grams = decontam.eval_ngrams(_load(cfg.decontaminate_against), NGRAM)
    units = read_units(cfg.datasets)
    log.info("%s: reading %d file(s), decontaminating against %d %d-grams, tokenizing", cfg.style, len(units),
             len(eval_grams), NGRAM)
    prepared = (ray.data.from_items(units, override_num_blocks=len(units))
                .map_batches(_read_unit, batch_size=1, batch_format="pyarrow",
                             fn_kwargs={"block_examples": READ_BLOCK_EXAMPLES})
                .map_batches(_prepare, batch_format="pyarrow",
                             fn_kwargs={"tokenizer_uri": tokenizer_uri, "style": cfg.style, "eval_grams": eval_grams,
                                        "eval_fraction": cfg.eval_fraction, "seed": seed})
                .materialize())  # read once: counted, then packed split by split
    counts = _counts(prepared)
    per_split = Counter()
    for (split, _), n in counts.items():
        per_split[split] += n
    if cfg.eval_fraction and not per_split["eval"]:
        raise ValueError(f"eval_fraction={cfg.eval_fraction} put none of the {per_split['train']} examples into "
                         "the eval split; raise eval_fraction or add examples")
    report = {"examples_loaded": sum(counts.values()),
              "decontaminated": {task: n for (split, task), n in sorted(counts.items()) if split == DECONTAMINATED}}
    if report["decontaminated"]:
        log.warning("decontamination dropped %d example(s) sharing a %d-gram with the eval sets: %s",
                    sum(report["decontaminated"].values()), NGRAM, report["decontaminated"])
    pad_token_id = _tokenizer(tokenizer_uri).pad_token_id
    for split in SPLITS:
        log.info("%s: packing the %s split", cfg.style, split)
        report[split] = _pack_split(prepared, split, per_split[split], cfg.max_length, pad_token_id,
                                    storage.join(out_uri, "shards", split), cfg.micro_batch_size)
    return report
