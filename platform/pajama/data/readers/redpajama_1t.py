"""RedPajama-Data-1T as released: the files its `urls.txt` lists, streamed over HTTP(S), or the
jsonl files of RedPajama-Data-1T-Sample on the Hugging Face Hub.

The release (https://data.together.xyz/redpajama-data-1T/v1.0.0/urls.txt, the address on the
dataset card togethercomputer/RedPajama-Data-1T) lists 2084 files, one folder per slice:

    arxiv/arxiv_<uuid>.jsonl               book/book.jsonl             c4/c4-train.<n>-of-01024.jsonl
    common_crawl/<snapshot>/en_<bucket>_<n>.json.gz.dedup.classifier.jsonl.zst   (2019-30 ... 2023-06)
    github/filtered_<hash>.sampled.jsonl   stackexchange/stackexchange.jsonl   wikipedia/wiki.jsonl

Records are `{"text", "meta": {...}}`, except CommonCrawl's (zstd-compressed), whose fields sit
beside the text (`pred_label`, `pred_label_prob`, `wiki_prob`, `source`); either way every field
but the text ends up in `meta`. No record names its slice (`meta.redpajama_set_name` is
SlimPajama's), so the slice comes from the file's folder, and each document's meta gains the
release's own per-slice metadata: `red_pajama_subset` (the folder, as the dataset's loading script
names it), `redpajama_set_name` and, for CommonCrawl, `cc_snapshot`.

The sample (`hf://datasets/togethercomputer/RedPajama-Data-1T-Sample`) holds one jsonl file per
slice at its root, `<slice>_sample.jsonl` and `cc_<snapshot>_sample.jsonl`; it is read through
huggingface_hub's HfFileSystem (or the `filesystem=` given).

Options: `slices` and `snapshots` select what is read (Pajama slice names; CommonCrawl snapshots
like "2023-06"); a `slice_name` argument reads that slice only. `retries` (consecutive transient
failures per file, see readers/remote.py) and `block_size` (bytes per HTTP Range request).
doc_id: `<file URL or hub path>#<line>`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import ray

from pajama.data.readers.common import BadInputPolicy, Rejected, batched_tables
from pajama.data.readers.records import _record_document
from pajama.data.readers.remote import BLOCK_SIZE, RETRIES, UnitsDatasource, filesystem_for, open_stream, read_listing
from pajama.data.slices import SLICE_TO_SET_NAME, check_slice

# The release's folder (and sample file prefix) of each slice.
RELEASE_SLICES = {"arxiv": "arxiv", "book": "books", "c4": "c4", "common_crawl": "common_crawl", "cc": "common_crawl",
                  "github": "github", "stackexchange": "stackexchange", "wikipedia": "wikipedia"}
_SNAPSHOT = re.compile(r"^\d{4}-\d{2}$")
_SAMPLE_FILE = re.compile(r"^(?P<subset>[a-z0-9]+)(?:_(?P<snapshot>\d{4}-\d{2}))?_sample\.jsonl$")


@dataclass(frozen=True)
class ReleaseFile:
    """One file of the release, with what its path says about it."""

    path: str
    subset: str  # the release's folder / file prefix: "book", "common_crawl", ...
    snapshot: str | None

    @property
    def slice(self) -> str:
        return RELEASE_SLICES[self.subset]

    def __str__(self) -> str:
        return self.path


def release_file(path: str) -> ReleaseFile | None:
    """The slice and snapshot of a release or sample file, told from its path; None for other files."""
    parts = path.split("?", 1)[0].rstrip("/").split("/")
    sample = _SAMPLE_FILE.match(parts[-1])
    if sample:
        subset = "common_crawl" if sample["subset"] == "cc" else sample["subset"]
        return ReleaseFile(path, subset, sample["snapshot"]) if subset in RELEASE_SLICES else None
    for i, part in enumerate(parts[:-1]):
        if part in RELEASE_SLICES and part != "cc":
            snapshot = parts[i + 1] if part == "common_crawl" and _SNAPSHOT.match(parts[i + 1]) else None
            return ReleaseFile(path, part, snapshot)
    return None


def list_release(path: str, filesystem=None) -> list[ReleaseFile]:
    """The release's files: the lines of urls.txt, or the sample's jsonl files on the hub."""
    if path.startswith("hf://") or (filesystem is not None and not path.endswith(".txt")):
        if filesystem is None:
            from huggingface_hub import HfFileSystem

            filesystem = HfFileSystem()
        root = path.split("://", 1)[-1].rstrip("/")
        listed = sorted(filesystem.glob(f"{root}/*.jsonl"))
    else:
        listed = read_listing(path, filesystem)
    files = [release_file(file) for file in listed]
    unknown = [file for file, known in zip(listed, files) if known is None]
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} listed file(s) are in no RedPajama-1T slice folder, "
                         f"e.g. {unknown[0]}")
    if not files:
        raise FileNotFoundError(f"{path}: lists no RedPajama-1T file")
    return files


def _documents(file: ReleaseFile, stream, slice_name: str):
    release_meta = {"red_pajama_subset": file.subset, "redpajama_set_name": SLICE_TO_SET_NAME[slice_name]}
    if file.snapshot:
        release_meta["cc_snapshot"] = file.snapshot
    line_number = 0
    try:
        for line_number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            doc_id, where = f"{file.path}#{line_number}", f"line {line_number}"
            try:
                record = json.loads(line)
            except ValueError as error:
                yield Rejected(doc_id, where, f"not JSON or not UTF-8 ({error})", slice_name,
                               line.decode("utf-8", errors="replace"))
                continue
            document = _record_document(record, doc_id, where, slice_name, "text")
            if isinstance(document, dict):
                meta = json.loads(document["meta"])
                document["meta"] = json.dumps({**release_meta, **meta}, ensure_ascii=False, default=str)
            yield document
    except (OSError, EOFError) as error:
        line_number += 1
        yield Rejected(f"{file.path}#{line_number}", f"line {line_number}",
                       f"the file breaks off after line {line_number - 1} ({error})", slice_name)


def read_redpajama_1t(paths, slice_name, *, policy: BadInputPolicy, filesystem=None, slices=None, snapshots=None,
                      retries: int = RETRIES, block_size: int = BLOCK_SIZE):
    wanted = set(slices or []) | ({slice_name} if slice_name else set())
    for name in wanted:
        check_slice(name)
    files = [file for path in ([paths] if isinstance(paths, str) else paths) for file in list_release(path, filesystem)]
    files = [file for file in files
             if (not wanted or file.slice in wanted) and (not snapshots or file.slice != "common_crawl"
                                                        or file.snapshot in snapshots)]
    if not files:
        raise FileNotFoundError(f"{paths}: no RedPajama-1T file in slices {sorted(wanted)} / snapshots {snapshots}")

    def read_file(file: ReleaseFile):
        # Opening and reading errors both surface while streaming: the file breaks off as bad input.
        fs, inner = filesystem_for(file.path, filesystem)
        with open_stream(fs, inner, retries, block_size) as stream:
            yield from batched_tables(_documents(file, stream, file.slice), file.path, policy, "line")

    return ray.data.read_datasource(UnitsDatasource(files, read_file, "RedPajama1T"))
