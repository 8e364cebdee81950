"""Streaming readers that turn every RedPajama source format into document rows on Ray Data.

`read_source(fmt, paths, slice_name)` returns a lazy Ray Dataset whose rows have exactly the
columns in `slices.DOCUMENT_COLUMNS` plus `slices.READ_ERROR` (see "Bad input"). Each format is a Ray Data datasource: files (or, for
`github` and `arxiv`, projects) are opened inside read tasks and parsed record by record into
pyarrow tables of at most BATCH_ROWS documents, so memory stays bounded and a file is never one
opaque row. Paths may be local or any URI pyarrow or fsspec understands (`filesystem=` takes
either kind); `.gz`, `.bz2` and `.zst` files are decompressed on the fly.

| fmt           | input                                           | one document per         | slice            |
|---------------|-------------------------------------------------|--------------------------|------------------|
| jsonl         | RedPajama-1T jsonl(.gz/.zst): {"text", "meta"}  | line                     | meta or argument |
| parquet       | parquet files with a text column                | row                      | meta or argument |
| hf_disk       | a `datasets` dataset saved with save_to_disk    | row                      | meta or argument |
| hf_hub        | a dataset name on the Hugging Face Hub          | row / line of its files  | meta or argument |
| warc / wet    | CommonCrawl WARC (HTML -> main text) / WET      | HTTP 200 HTML / text rec | common_crawl     |
| mediawiki     | pages-articles XML dump (.xml, .xml.bz2)        | namespace-0 article      | wikipedia        |
| github        | repository directory or .zip/.tar(.gz) archive  | source file              | github           |
| arxiv         | paper directory or .tar.gz / .gz source         | paper                    | arxiv            |
| stackexchange | a site's Posts.xml (or the folder holding it)   | question with answers    | stackexchange    |
| text          | plain text files (books)                        | file                     | books            |
| redpajama_1t  | RedPajama-1T's urls.txt (URL or file), or the   | line                     | file's folder    |
|               | hf://datasets/...-1T-Sample repository          |                          |                  |
| redpajama_v2  | RedPajama-V2 release root: documents joined     | document + its signals   | common_crawl     |
|               | with published quality signals and duplicates   |                          |                  |

"meta or argument": the slice comes from meta["redpajama_set_name"] unless `slice_name` is given.

Each family of formats has its module in this package: records (jsonl, parquet, hf_disk, hf_hub),
web (warc, wet), mediawiki, stackexchange, github and arxiv (both projects, see projects.py) and
plain_text (text), redpajama_1t and redpajama_v2 (the releases as published, streamed over
HTTP(S) with retries and resumption by remote.py); common.py holds what they share (bad-input
rows, batching, file listing and opening).

doc_id is `<file or project path>#<locator>` (jsonl: line number from 1; parquet/hf: row index
from 0; WARC/WET: WARC-Record-ID; mediawiki: page id; stackexchange: question id; github: path
inside the repository), or the path itself for `text` and `arxiv`. A file of the package's bundled
resources is named as recipes name it (`bundled:corpus/arxiv.jsonl.gz#1`), not by where the package is
installed: every choice made by a hash of doc_ids (samples, splits, shards, dedup's smallest doc_id)
is then the same in every checkout, as the fingerprints that name those artifacts are.

Bad input is never skipped silently. The `read_error` column is null for a document, else why
the record could not be read, naming the file and the record ("<path>: line 7: not JSON (...)").
Such a row is emitted for every record that cannot be read (invalid
JSON or UTF-8, a missing or non-string text, empty text in jsonl/parquet/hf records, a bad meta,
a malformed post or page, a text over `max_document_bytes`) and once for a file that breaks off
(a truncated or corrupt compressed file, malformed XML or WARC framing, an unreadable archive)
or cannot be opened at all (a symbolic link loop, a dangling link, a FIFO, a file removed after
listing or without read permission: the row's doc_id is the path, see readers/common.py):
that row says after which line or record it broke, and the records before it are read as usual.
A bad-input row has the doc_id its record would have had (a StackExchange post: `<path>#post-<id>`;
a broken file: `<path>#<line or row where it broke>`, `<path>#xml-line-<n>` or `#xml-end`,
`<path>#offset-<bytes>` for WARC, or the path of a text file or project), the first
QUARANTINED_TEXT_CHARS characters of whatever text could be recovered ("" if none), its meta when
readable ("{}" if not), and its slice when known: from the argument, or from the record's meta when
that could be parsed. A jsonl/parquet/hf record read without a slice argument whose slice cannot be
told has a null slice: no slice is guessed, and the data stage counts it apart from the slices.
With `on_bad_input="fail"` the reader instead finishes the file and raises BadInputError naming
it and each bad record, so the input can be fixed first (paths that cannot be listed: at once,
before anything is read). When none of the paths can be read, read_source raises
FileNotFoundError naming each with its reason. Input that is not a document by design is
left out as documented per format: non-HTML or non-200 WARC responses, non-article wiki pages
and redirects, StackExchange posts that are neither questions nor answers (and answers whose
question is missing from the dump, which are logged), repository files that are not source code
(by extension) or are binary, and LaTeX files without a sectioning command (as RedPajama-1T).
"""

import os

import ray

from pajama.data.readers.arxiv import read_arxiv
from pajama.data.readers.common import BadInputError, BadInputPolicy
from pajama.data.readers.github import read_github
from pajama.data.readers.mediawiki import read_mediawiki
from pajama.data.readers.plain_text import read_text
from pajama.data.readers.records import read_hf_disk, read_hf_hub, read_jsonl, read_parquet
from pajama.data.readers.redpajama_1t import read_redpajama_1t
from pajama.data.readers.redpajama_v2 import read_redpajama_v2
from pajama.data.readers.stackexchange import read_stackexchange
from pajama.data.readers.web import read_warc, read_wet
from pajama.data.slices import check_slice

__all__ = ["FORMATS", "BadInputError", "read_source"]

_READERS = {
    "jsonl": read_jsonl,
    "parquet": read_parquet,
    "hf_disk": read_hf_disk,
    "hf_hub": read_hf_hub,
    "warc": read_warc,
    "wet": read_wet,
    "mediawiki": read_mediawiki,
    "github": read_github,
    "arxiv": read_arxiv,
    "stackexchange": read_stackexchange,
    "text": read_text,
    "redpajama_1t": read_redpajama_1t,
    "redpajama_v2": read_redpajama_v2,
}
FORMATS = tuple(_READERS)


def read_source(
    fmt: str,
    paths: str | list[str],
    slice_name: str | None = None,
    *,
    filesystem=None,
    on_bad_input: str = "quarantine",
    max_document_bytes: int | None = None,
    **options,
) -> ray.data.Dataset:
    """Documents (doc_id, slice, text, meta, read_error) of `paths` read as `fmt` (one of FORMATS).

    `slice_name` overrides the slice (needed for jsonl/parquet/hf input without
    meta.redpajama_set_name); `filesystem` is a pyarrow or fsspec filesystem for the paths.
    `on_bad_input` is "quarantine" (bad-input rows, see the module docstring) or "fail" (raise
    BadInputError); `max_document_bytes` makes larger documents bad input.
    Options per format: jsonl/parquet/hf_disk/hf_hub take `text_column` (default "text");
    hf_disk `split` (default "train", for a saved DatasetDict) and `storage_options`; hf_hub
    `data_files` (glob inside the dataset repo, default "**/*.parquet") and `revision`;
    stackexchange `site` (default: the name of the folder holding Posts.xml) and
    `num_partitions` (hash partitions used to group answers with their question);
    redpajama_1t `slices`, `snapshots`, `retries`, `block_size`; redpajama_v2 `base_tags` or
    `listings`, `retries`, `block_size` (see their modules). redpajama_v2 rows also carry the
    release's published signal columns (redpajama_v2.PUBLISHED_COLUMNS).
    """
    reader = _READERS.get(fmt)
    if reader is None:
        raise ValueError(f"unknown source format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if slice_name is not None:
        check_slice(slice_name)
    if on_bad_input not in ("quarantine", "fail"):
        raise ValueError(f"on_bad_input must be 'quarantine' or 'fail', not {on_bad_input!r}")
    if fmt != "hf_hub" and filesystem is None:
        paths = _absolute_local_paths(paths)
    policy = BadInputPolicy(on_bad_input == "fail", max_document_bytes)
    return reader(paths, slice_name, filesystem=filesystem, policy=policy, **options)


def _absolute_local_paths(paths: str | list[str]) -> list[str]:
    """Local paths made absolute: read tasks may run in another directory, and doc_ids stay stable."""
    return [path if "://" in path else os.path.abspath(path) for path in ([paths] if isinstance(paths, str) else paths)]
