"""RedPajama-Data-V2 as released: each document joined with its published quality signals and
duplicate flag, so that filter recipes run on RPv2's own signal values without recomputing them.

Layout under the release root (https://data.together.xyz/redpajama-data-v2/v1.0.0, or a local
copy), per base tag `<snapshot>/<shard:04d>/<language>_<head|middle|tail>` (togethercomputer/
RedPajama-Data-V2's loading script):

    documents/<tag>.json.gz                 jsonl: raw_content, url, language, source_domain, digest, ...
    quality_signals/<tag>.signals.json.gz   jsonl, line i <-> document i: {"id": "<tag>.json.gz/<i>",
                                            "id_int", "metadata": {...}, "quality_signals": {name: spans}}
    duplicates/<tag>.duplicates.parquet     `doc_id` of each exact duplicate (absent: none)
    listings/<language>-<snapshot>-<partition>.txt   base tags, one a line (partition e.g. head_middle)

A signal is a list of [start, end, value] spans: one span over the whole text for a
document-level signal, one per line for `rps_lines_*`. Pajama's columns (pajama.data.signals
SIGNAL_COLUMNS, named as RPv2's) take the published values: `rps_doc_*` the value of the single
span; `rps_lines_*` the list of per-line values (a single null span, RPv2's mark of a text without
lines, is the empty list), and their `_frac` / `_mean` aggregates are derived from that list as
signals.py derives them; `language` is the document's CCNet language and `language_score`
`ccnet_language_score`. Signals RPv2 does not publish (gopher_*, c4_*, rpv1_*) are absent, and the
data stage computes them. The other published signals (ccnet_*, ML scores, importance weights,
ut1 blacklist) are kept in `meta` by name, with the RPv2 id (`rpv2_id`), the partition and
`is_duplicate`, so a recipe can filter on them with `meta_field`.

Only head and middle tags are read: RPv2 publishes no quality signals for the tail partition.
Options: `base_tags` (list), or `listings` (names under listings/, e.g. "en-2023-06-head_middle");
a local root without either reads every documents/**/*.json.gz. `retries`, `block_size` as for
redpajama_1t. doc_id: RPv2's id, `<tag>.json.gz/<line from 0>`; slice: common_crawl.
"""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from pajama.data.readers.common import DOCUMENT_SCHEMA, BadInputPolicy, Rejected, batched_tables, document_row
from pajama.data.readers.remote import BLOCK_SIZE, RETRIES, UnitsDatasource, filesystem_for, open_stream, read_listing
from pajama.data.signals import LINE_SIGNALS, PRECISION, SIGNAL_COLUMNS

# RPv2 publishes rps_doc_ut1_blacklist as an opaque id of a category combination, where Pajama's column holds
# the category names: it stays in meta and Pajama computes its own from data.ut1_blacklist.
_DOCUMENT_SIGNALS = [name for name in SIGNAL_COLUMNS if name.startswith("rps_doc_") and name != "rps_doc_ut1_blacklist"]
PUBLISHED_COLUMNS = [name for name in SIGNAL_COLUMNS if name != "rps_doc_ut1_blacklist"
                     and (name.startswith("rps_") or name in ("language", "language_score"))]
SCHEMA = pa.schema([*DOCUMENT_SCHEMA, *[(name, SIGNAL_COLUMNS[name]) for name in PUBLISHED_COLUMNS]])
_INTEGER = (pa.int32(), pa.int64())


def _typed(value, dtype: pa.DataType):
    return int(value) if value is not None and dtype in _INTEGER else value


def _ratio(numerator: float, denominator: int) -> float | None:
    return round(numerator / denominator, PRECISION) if denominator else None


def published_signals(quality_signals: dict, document: dict) -> tuple[dict, dict]:
    """(Pajama's signal columns, the other document-level signals) of one RPv2 record."""
    def value(name):
        spans = quality_signals.get(name)
        return spans[0][2] if spans else None

    columns = {name: _typed(value(name), SIGNAL_COLUMNS[name]) for name in _DOCUMENT_SIGNALS}
    for name, (value_type, suffix) in LINE_SIGNALS.items():
        spans = quality_signals.get(name)
        if spans is None:
            columns[name] = columns[f"{name}_{suffix}"] = None
            continue
        per_line = [] if len(spans) == 1 and spans[0][2] is None else [_typed(span[2], value_type) for span in spans]
        columns[name] = per_line
        hits = sum(v > 0 for v in per_line) if suffix == "frac" else sum(per_line)
        columns[f"{name}_{suffix}"] = _ratio(hits, len(per_line))
    columns["language"] = document.get("language")
    columns["language_score"] = value("ccnet_language_score")
    others = {name: spans[0][2] for name, spans in quality_signals.items()
              if name not in columns and spans and len(spans) == 1}
    return columns, others


def _base_tags(root: str, base_tags, listings, filesystem) -> list[str]:
    if base_tags:
        tags = list(base_tags)
    elif listings:
        tags = [tag for name in listings for tag in read_listing(f"{root}/listings/{name}.txt", filesystem, False)]
    elif "://" not in root and os.path.isdir(f"{root}/documents"):
        documents = f"{root}/documents/"
        tags = sorted(os.path.join(dirpath, name)[len(documents):-len(".json.gz")]
                      for dirpath, _, names in os.walk(documents) for name in names if name.endswith(".json.gz"))
    else:
        raise ValueError(f"{root}: give base_tags or listings (e.g. en-2023-06-head_middle) for a remote release")
    tail = [tag for tag in tags if tag.endswith("_tail")]
    if tail:
        raise ValueError(f"{root}: {tail[0]}: RedPajama-V2 publishes no quality signals for the tail partition; "
                         "read its documents with format jsonl instead")
    if not tags:
        raise FileNotFoundError(f"{root}: no RedPajama-V2 base tag to read")
    return tags


def _duplicates(fs, path: str) -> set[str]:
    try:
        with fs.open(path, "rb") as f:
            return set(pq.read_table(f, columns=["doc_id"]).column("doc_id").to_pylist())
    except FileNotFoundError:  # the release lists shards without duplicates as missing
        return set()


def _documents(tag: str, documents, signals, duplicates: set[str], slice_name: str):
    row = -1
    try:
        for row, doc_line in enumerate(documents):
            rpv2_id = f"{tag}.json.gz/{row}"
            signal_line = signals.readline()
            try:
                document, record = json.loads(doc_line), json.loads(signal_line)
            except ValueError as error:
                yield Rejected(rpv2_id, f"line {row}", f"document or signals line is not JSON ({error})", slice_name)
                continue
            if record.get("id") != rpv2_id:
                yield Rejected(rpv2_id, f"line {row}", f"the signals file is out of step: its line {row} is "
                               f"{record.get('id')!r}", slice_name, str(document.get("raw_content", "")))
                continue
            columns, others = published_signals(record.get("quality_signals") or {}, document)
            meta = {key: value for key, value in document.items() if key != "raw_content"}
            meta.update(record.get("metadata") or {}, **others, rpv2_id=rpv2_id, partition=tag.rsplit("_", 1)[-1],
                        is_duplicate=rpv2_id in duplicates)
            text = document.get("raw_content")
            if not isinstance(text, str) or not text.strip():
                yield Rejected(rpv2_id, f"line {row}", "no text in raw_content", slice_name, "", json.dumps(meta))
                continue
            yield {**document_row(rpv2_id, slice_name, text, meta), **columns}
        if signals.readline().strip():
            yield Rejected(f"{tag}.json.gz/{row + 1}", f"line {row + 1}", "the signals file has more lines than "
                           "the documents file", slice_name)
    except (OSError, EOFError) as error:
        yield Rejected(f"{tag}.json.gz/{row + 1}", f"line {row + 1}",
                       f"the documents or signals file breaks off after line {row} ({error})", slice_name)


def read_redpajama_v2(paths, slice_name, *, policy: BadInputPolicy, filesystem=None, base_tags=None, listings=None,
                      retries: int = RETRIES, block_size: int = BLOCK_SIZE):
    slice_name = slice_name or "common_crawl"
    units = [(root.rstrip("/"), tag) for root in ([paths] if isinstance(paths, str) else paths)
             for tag in _base_tags(root.rstrip("/"), base_tags, listings, filesystem)]

    def read_tag(unit):
        root, tag = unit
        fs, inner = filesystem_for(root, filesystem)
        documents = open_stream(fs, f"{inner}/documents/{tag}.json.gz", retries, block_size)
        signals = open_stream(fs, f"{inner}/quality_signals/{tag}.signals.json.gz", retries, block_size)
        with documents, signals:
            duplicates = _duplicates(fs, f"{inner}/duplicates/{tag}.duplicates.parquet")
            yield from batched_tables(_documents(tag, documents, signals, duplicates, slice_name),
                                      f"{root}/documents/{tag}.json.gz", policy, "line", SCHEMA)

    return ray.data.read_datasource(UnitsDatasource(units, read_tag, "RedPajamaV2"))
