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

"meta or argument": the slice comes from meta["redpajama_set_name"] unless `slice_name` is given.

doc_id is `<file or project path>#<locator>` (jsonl: line number from 1; parquet/hf: row index
from 0; WARC/WET: WARC-Record-ID; mediawiki: page id; stackexchange: question id; github: path
inside the repository), or the path itself for `text` and `arxiv`.

Bad input is never skipped silently. The `read_error` column is null for a document, else why
the record could not be read, naming the file and the record ("<path>: line 7: not JSON (...)").
Such a row is emitted for every record that cannot be read (invalid
JSON or UTF-8, a missing or non-string text, empty text in jsonl/parquet/hf records, a bad meta,
a malformed post or page, a text over `max_document_bytes`) and once for a file that breaks off
(a truncated or corrupt compressed file, malformed XML or WARC framing, an unreadable archive):
that row says after which line or record it broke, and the records before it are read as usual.
A bad-input row has the doc_id its record would have had (a StackExchange post: `<path>#post-<id>`;
a broken file: `<path>#<line or row where it broke>`, `<path>#xml-line-<n>` or `#xml-end`,
`<path>#offset-<bytes>` for WARC, or the path of a text file or project), the first
QUARANTINED_TEXT_CHARS characters of whatever text could be recovered ("" if none), its meta when
readable ("{}" if not), and its slice when known: from the argument, or from the record's meta when
that could be parsed. A jsonl/parquet/hf record read without a slice argument whose slice cannot be
told has a null slice: no slice is guessed, and the data stage counts it apart from the slices.
With `on_bad_input="fail"` the reader instead finishes the file and raises BadInputError naming
it and each bad record, so the input can be fixed first. Input that is not a document by design is
left out as documented per format: non-HTML or non-200 WARC responses, non-article wiki pages
and redirects, StackExchange posts that are neither questions nor answers (and answers whose
question is missing from the dump, which are logged), repository files that are not source code
(by extension) or are binary, and LaTeX files without a sectioning command (as RedPajama-1T).
"""

import functools
import gzip
import io
import json
import logging
import os
import posixpath
import re
import tarfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import NamedTuple
from xml.etree import ElementTree

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
from fastwarc.warc import ArchiveIterator, WarcRecordType
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask
from ray.data.datasource.file_based_datasource import FileBasedDatasource
from ray.data.datasource.path_util import _resolve_paths_and_filesystem
from resiliparse.parse.encoding import bytes_to_str, detect_encoding

from pajama.data import cleaning
from pajama.data.slices import DOCUMENT_COLUMNS, READ_ERROR, SET_NAME_TO_SLICE, check_slice

logger = logging.getLogger(__name__)

DOCUMENT_SCHEMA = pa.schema([(column, pa.string()) for column in (*DOCUMENT_COLUMNS, READ_ERROR)])
# Text kept with a bad-input row: enough to recognise the record, never a 50 MB blob.
QUARANTINED_TEXT_CHARS = 1000
# A block closes at whichever comes first: books and papers are large, most web pages small.
BATCH_ROWS = 1024
BATCH_TEXT_CHARS = 64 << 20
_MAX_LISTED_BAD_RECORDS = 20


class BadInputError(ValueError):
    """Input records that could not be read; the message names the file and each record."""


class _Rejected(NamedTuple):
    """A record that could not be read: its doc_id, where it is in its file, why, and what is known."""

    doc_id: str
    where: str
    reason: str
    slice: str | None
    text: str = ""
    meta: str = "{}"

    def row(self, path: str) -> dict:
        return {"doc_id": self.doc_id, "slice": self.slice, "text": self.text[:QUARANTINED_TEXT_CHARS],
                "meta": self.meta, READ_ERROR: f"{path}: {self.where}: {self.reason}"}


@dataclass(frozen=True)
class _BadInputPolicy:
    """What a reader does with bad input: `fail` raises, else it emits bad-input rows; and the
    largest document text in UTF-8 bytes (None: no limit)."""

    fail: bool = False
    max_document_bytes: int | None = None

    def checked(self, document: dict, path: str, locator: str) -> dict | _Rejected:
        """`document`, or its rejection when its text is over max_document_bytes."""
        limit, text = self.max_document_bytes, document["text"]
        if limit is None or len(text) * 4 <= limit:  # UTF-8 takes at most 4 bytes a character
            return document
        size = len(text.encode("utf-8", errors="surrogatepass"))
        if size <= limit:
            return document
        doc_id = document["doc_id"]
        where = f"{locator} {doc_id[len(path) + 1:]}" if doc_id.startswith(f"{path}#") else "the document"
        reason = (f"text of {size} bytes is over max_document_bytes ({limit}); "
                  f"only its first {QUARANTINED_TEXT_CHARS} characters are kept")
        return _Rejected(doc_id, where, reason, document["slice"], text, document["meta"])


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
    `num_partitions` (hash partitions used to group answers with their question).
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
    policy = _BadInputPolicy(on_bad_input == "fail", max_document_bytes)
    return reader(paths, slice_name, filesystem=filesystem, policy=policy, **options)


def _absolute_local_paths(paths: str | list[str]) -> list[str]:
    """Local paths made absolute: read tasks may run in another directory, and doc_ids stay stable."""
    return [path if "://" in path else os.path.abspath(path) for path in ([paths] if isinstance(paths, str) else paths)]


# --- shared pieces --------------------------------------------------------------------------


def _meta_json(meta: dict) -> str:
    # default=str: parquet and Arrow metadata may hold timestamps or dates.
    return json.dumps(meta, ensure_ascii=False, default=str)


def _document(doc_id: str, slice_name: str, text: str, meta: dict) -> dict:
    return {"doc_id": doc_id, "slice": slice_name, "text": text, "meta": _meta_json(meta), READ_ERROR: None}


def _tables(
    items: Iterable[dict | _Rejected],
    path: str,
    policy: _BadInputPolicy,
    locator: str = "record",
    schema: pa.Schema = DOCUMENT_SCHEMA,
) -> Iterator[pa.Table]:
    """Batch a file's rows into tables, rejected records as bad-input rows; or, when the policy
    fails on bad input, raise for them after the file's last table. `locator` names what follows
    the '#' of the file's doc_ids (line, row, page, ...), for the reason of an oversized document."""
    rows, text_chars, rejected = [], 0, []
    for item in items:
        if isinstance(item, dict):
            item = policy.checked(item, path, locator)
        if isinstance(item, _Rejected):
            if policy.fail:
                rejected.append(item)
                continue
            item = item.row(path)
        rows.append(item)
        text_chars += len(item["text"])
        if len(rows) >= BATCH_ROWS or text_chars >= BATCH_TEXT_CHARS:
            yield pa.Table.from_pylist(rows, schema=schema)
            rows, text_chars = [], 0
    if rows:
        yield pa.Table.from_pylist(rows, schema=schema)
    if rejected:
        listed = "\n".join(f"  {r.where}: {r.reason}" for r in rejected[:_MAX_LISTED_BAD_RECORDS])
        more = len(rejected) - _MAX_LISTED_BAD_RECORDS
        raise BadInputError(
            f"{path}: {len(rejected)} record(s) could not be read; fix or remove them and read again:\n"
            + listed
            + (f"\n  ... and {more} more" if more > 0 else "")
        )


def _decode_source_file(data: bytes) -> str:
    """Text of a file as found on disk: UTF-8, else Windows-1252 (old TeX and books use it)."""
    return bytes_to_str(data, "utf-8", fallback_encodings=("utf-8", "cp1252"))


class _DocumentFiles(FileBasedDatasource):
    """Files that each hold a stream of documents; subclasses parse one file in `_documents`."""

    EXTENSIONS: list[str] | None = None
    LOCATOR = "record"  # what follows the '#' of a doc_id

    def __init__(self, paths, *, slice_name: str | None, policy: _BadInputPolicy, filesystem=None):
        super().__init__(paths, filesystem=filesystem, file_extensions=self.EXTENSIONS)
        self._slice_name = slice_name
        self._policy = policy

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        yield from _tables(self._documents(f, path), path, self._policy, self.LOCATOR)

    def _documents(self, f: pa.NativeFile, path: str) -> Iterator[dict | _Rejected]:
        raise NotImplementedError


# --- jsonl, parquet, Hugging Face -----------------------------------------------------------


def _record_document(
    record, doc_id: str, where: str, slice_name: str | None, text_column: str, problem: str | None = None
) -> dict | _Rejected:
    """A RedPajama-style record {text, meta, ...}: fields besides text and meta join meta.

    `problem` rejects a record that could be parsed only in part (its text and slice are kept)."""
    if not isinstance(record, dict):
        return _Rejected(doc_id, where, problem or f"a JSON object was expected, got {type(record).__name__}",
                         slice_name, json.dumps(record, ensure_ascii=False, default=str))
    record = dict(record)
    text = record.pop(text_column, None)
    recovered = text if isinstance(text, str) else ""
    meta = record.pop("meta", None)
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except ValueError:
            return _Rejected(doc_id, where, problem or "'meta' is a string that is not JSON", slice_name, recovered)
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        return _Rejected(doc_id, where, problem or f"'meta' must be an object, got {type(meta).__name__}",
                         slice_name, recovered)
    meta = {**meta, **record}  # e.g. RedPajama-1T CommonCrawl's pred_label and source
    if slice_name is None:
        set_name = meta.get("redpajama_set_name")
        slice_name = SET_NAME_TO_SLICE.get(set_name)
        if slice_name is None:
            problem = problem or f"meta.redpajama_set_name is {set_name!r}, not a RedPajama set; pass slice_name"
    if problem is None and not isinstance(text, str):
        problem = f"no string {text_column!r} field (set text_column= if the text is elsewhere)"
    if problem is None and not text.strip():
        problem = f"{text_column!r} is empty or whitespace only"
    if problem is not None:
        return _Rejected(doc_id, where, problem, slice_name, recovered, _meta_json(meta))
    return _document(doc_id, slice_name, text, meta)


class _JsonlDocuments(_DocumentFiles):
    EXTENSIONS = [f"{kind}{compression}" for kind in ("jsonl", "json") for compression in ("", ".gz", ".zst", ".bz2")]
    LOCATOR = "line"

    def __init__(self, paths, *, text_column: str, **kwargs):
        super().__init__(paths, **kwargs)
        self._text_column = text_column

    def _documents(self, f, path):
        line_number = 0
        try:
            for line_number, line in enumerate(io.BufferedReader(f), start=1):
                if line.strip():
                    yield self._line_document(line, f"{path}#{line_number}", f"line {line_number}")
        except (OSError, EOFError) as error:  # a truncated or corrupt compressed file
            line_number += 1
            yield _Rejected(f"{path}#{line_number}", f"line {line_number}",
                            f"the file breaks off after line {line_number - 1} ({error}); "
                            "it may be truncated or corrupt", self._slice_name)

    def _line_document(self, line: bytes, doc_id: str, where: str) -> dict | _Rejected:
        try:
            text = line.decode("utf-8")
            problem = None
        except UnicodeDecodeError as error:
            # Parse what the replacement characters leave, to keep the record's text and slice.
            text, problem = line.decode("utf-8", errors="replace"), f"not valid UTF-8 ({error})"
        try:
            record = json.loads(text)
        except ValueError as error:
            return _Rejected(doc_id, where, problem or f"not JSON ({error})", self._slice_name, text)
        return _record_document(record, doc_id, where, self._slice_name, self._text_column, problem)


class _TableDocuments(_DocumentFiles):
    """Files of record batches (parquet, Arrow IPC streams); each row is a record."""

    def __init__(self, paths, *, text_column: str, **kwargs):
        super().__init__(paths, **kwargs)
        self._text_column = text_column

    def _record_batches(self, f) -> Iterator[pa.RecordBatch]:
        raise NotImplementedError

    LOCATOR = "row"

    def _documents(self, f, path):
        row = 0
        try:
            for batch in self._record_batches(f):
                for record in batch.to_pylist():
                    yield _record_document(record, f"{path}#{row}", f"row {row}", self._slice_name,
                                           self._text_column)
                    row += 1
        except (OSError, pa.ArrowInvalid) as error:
            yield _Rejected(f"{path}#{row}", f"row {row}", f"the file breaks off after {row} row(s) ({error}); "
                            "it may be truncated or corrupt", self._slice_name)


class _ParquetDocuments(_TableDocuments):
    EXTENSIONS = ["parquet"]

    def _open_input_source(self, filesystem, path, **open_args):
        return filesystem.open_input_file(path)  # parquet reads its footer first: random access

    def _record_batches(self, f):
        return pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS)


class _ArrowStreamDocuments(_TableDocuments):
    """The Arrow IPC stream files that `datasets` save_to_disk writes."""

    EXTENSIONS = ["arrow"]

    def _record_batches(self, f):
        return pa.ipc.open_stream(f)


def _read_jsonl(paths, slice_name, *, policy, filesystem=None, text_column="text"):
    return ray.data.read_datasource(
        _JsonlDocuments(paths, slice_name=slice_name, policy=policy, filesystem=filesystem, text_column=text_column)
    )


def _read_parquet(paths, slice_name, *, policy, filesystem=None, text_column="text"):
    return ray.data.read_datasource(
        _ParquetDocuments(paths, slice_name=slice_name, policy=policy, filesystem=filesystem, text_column=text_column)
    )


def _read_hf_disk(paths, slice_name, *, policy, filesystem=None, text_column="text", split="train",
                  storage_options=None):
    import datasets

    if filesystem is not None:
        raise ValueError("hf_disk loads through datasets.load_from_disk: pass storage_options=, not filesystem=")
    data_files = []
    for path in [paths] if isinstance(paths, str) else paths:
        dataset = datasets.load_from_disk(path, storage_options=storage_options)
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise ValueError(f"{path}: no split {split!r}; it has {', '.join(dataset)} (pass split=)")
            dataset = dataset[split]
        if text_column not in dataset.column_names:
            raise ValueError(
                f"{path}: no column {text_column!r}; it has {', '.join(dataset.column_names)} (pass text_column=)"
            )
        # save_to_disk writes plain Arrow stream files; reading them directly streams in parallel.
        data_files += [cache_file["filename"] for cache_file in dataset.cache_files]
    return ray.data.read_datasource(
        _ArrowStreamDocuments(data_files, slice_name=slice_name, policy=policy, text_column=text_column)
    )


def _read_hf_hub(paths, slice_name, *, policy, filesystem=None, text_column="text", data_files="**/*.parquet",
                 revision=None):
    """Read the data files of Hub datasets in parallel through HfFileSystem (stable per-file ids)."""
    if filesystem is None:
        from huggingface_hub import HfFileSystem

        filesystem = HfFileSystem()
    at_revision = f"@{revision}" if revision else ""
    files = sorted(
        file
        for name in ([paths] if isinstance(paths, str) else paths)
        for file in filesystem.glob(f"datasets/{name}{at_revision}/{data_files}")
    )
    parquet = [file for file in files if file.endswith(".parquet")]
    if not files:
        raise FileNotFoundError(f"no file of {paths!r} matches data_files={data_files!r}")
    if parquet and len(parquet) != len(files):
        raise ValueError(f"data_files={data_files!r} matches parquet and other files; narrow it to one format")
    return _READERS["parquet" if parquet else "jsonl"](
        files, slice_name, policy=policy, filesystem=filesystem, text_column=text_column
    )


# --- CommonCrawl WARC / WET -----------------------------------------------------------------

_HTML_CONTENT_TYPES = {"text/html", "application/xhtml+xml"}


class _CountingReader:
    """fastwarc asks its stream for tell(), which pyarrow's decompressing streams cannot answer."""

    def __init__(self, stream: pa.NativeFile):
        self._stream = stream
        self._position = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(None if size is None or size < 0 else size)
        self._position += len(data)
        return data

    def tell(self) -> int:
        return self._position


class _WarcDocuments(_DocumentFiles):
    """WARC responses: HTTP 200 HTML pages, reduced to their main text."""

    EXTENSIONS = ["warc", "warc.gz"]
    RECORD_TYPE = WarcRecordType.response
    HTTP_RECORDS = True

    def _documents(self, f, path):
        stream = _CountingReader(f)
        records = ArchiveIterator(stream, record_types=self.RECORD_TYPE, parse_http=self.HTTP_RECORDS)
        record_id = None
        try:
            for record in records:
                meta = {"url": record.headers.get("WARC-Target-URI"), "timestamp": record.headers.get("WARC-Date")}
                record_id = (record.record_id or "").strip("<>")
                text = self._text(record, f"{path}#{record_id}", self._slice_name)
                if isinstance(text, str):
                    yield _document(f"{path}#{record_id}", self._slice_name, text, meta)
                elif text is not None:
                    yield text
        except OSError as error:
            after = f"after record {record_id}" if record_id is not None else "from the start"
            yield _Rejected(f"{path}#offset-{stream.tell()}", f"byte {stream.tell()}",
                            f"not a readable WARC file {after} ({error}); re-download or remove it", self._slice_name)

    @staticmethod
    def _text(record, doc_id: str, slice_name: str) -> str | _Rejected | None:
        if not record.is_http or record.http_headers.status_code != 200:
            return None  # dns: records, redirects, errors
        if (record.http_content_type or "").lower() not in _HTML_CONTENT_TYPES:
            return None
        payload = record.reader.read()
        encoding = record.http_charset or detect_encoding(payload, from_html_meta=True) or "utf-8"
        return cleaning.html_main_text(bytes_to_str(payload, encoding))


class _WetDocuments(_WarcDocuments):
    """WET conversion records: the text CommonCrawl extracted from each page."""

    EXTENSIONS = ["wet", "wet.gz"]
    RECORD_TYPE = WarcRecordType.conversion
    HTTP_RECORDS = False

    @staticmethod
    def _text(record, doc_id: str, slice_name: str) -> str | _Rejected:
        payload = record.reader.read()
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError as error:
            return _Rejected(doc_id, f"record {doc_id.rpartition('#')[2]}", f"WET text is not UTF-8 ({error})",
                             slice_name, payload.decode("utf-8", errors="replace"))


def _read_warc(paths, slice_name, *, policy, filesystem=None, kind: type[_WarcDocuments]):
    return ray.data.read_datasource(
        kind(paths, slice_name=slice_name or "common_crawl", policy=policy, filesystem=filesystem)
    )


# --- MediaWiki dumps ------------------------------------------------------------------------

_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
# Namespaces whose links are media or categories, not prose: -2 Media, 6 File, 14 Category.
_DROPPED_LINK_NAMESPACES = {"-2", "6", "14"}


def _local_name(tag: str) -> str:
    return tag.rpartition("}")[2]


def _broken_xml(path: str, error: Exception, after: str | None, slice_name: str | None) -> _Rejected:
    """The bad-input record of an XML file that breaks off (malformed, truncated or corrupt)."""
    after = f"after {after}" if after else "before its first record"
    if isinstance(error, ElementTree.ParseError):
        line, column = error.position
        return _Rejected(f"{path}#xml-line-{line}", f"line {line}, column {column}",
                         f"malformed XML {after} ({error}); the file may be truncated", slice_name)
    return _Rejected(f"{path}#xml-end", "end", f"the file breaks off {after} ({error}); it may be truncated or corrupt",
                     slice_name)


_XML_ERRORS = (ElementTree.ParseError, OSError, EOFError)


class _MediaWikiDocuments(_DocumentFiles):
    EXTENSIONS = [f"xml{compression}" for compression in ("", ".bz2", ".gz", ".zst")]
    LOCATOR = "page"

    def _documents(self, f, path):
        root = None
        language, article_url, dropped_prefixes = None, None, []
        page_id = None
        try:
            for event, element in ElementTree.iterparse(f, events=("start", "end")):
                if root is None:
                    root, language = element, element.get(_XML_LANG)
                if event != "end":
                    continue
                tag = _local_name(element.tag)
                if tag == "siteinfo":
                    base = element.findtext("{*}base") or ""
                    article_url = base.rsplit("/", 1)[0] + "/" if "/" in base else None
                    dropped_prefixes = [
                        namespace.text
                        for namespace in element.iterfind("{*}namespaces/{*}namespace")
                        if namespace.get("key") in _DROPPED_LINK_NAMESPACES and namespace.text
                    ]
                elif tag == "page":
                    page_id = element.findtext("{*}id")
                    document = self._page_document(element, path, language, article_url, dropped_prefixes)
                    root.clear()  # drop the pages parsed so far: dumps are tens of GB
                    if document is not None:
                        yield document
        except _XML_ERRORS as error:
            yield _broken_xml(path, error, page_id and f"page {page_id}", self._slice_name)

    def _page_document(self, page, path, language, article_url, dropped_prefixes) -> dict | _Rejected | None:
        page_id = page.findtext("{*}id")
        title = page.findtext("{*}title")
        revision = page.find("{*}revision")
        where = f"page {page_id or '?'} ({title!r})"
        # A page without an id is named by its title (unique in a dump).
        doc_id = f"{path}#{page_id}" if page_id else f"{path}#title:{title}"
        if page.findtext("{*}ns") != "0" or page.find("{*}redirect") is not None:
            return None
        if not page_id or title is None or revision is None or revision.find("{*}text") is None:
            return _Rejected(doc_id, where, "page without id, title or revision text", self._slice_name,
                             (revision is not None and revision.findtext("{*}text")) or "")
        wikitext = revision.findtext("{*}text")
        if wikitext.lstrip().upper().startswith("#REDIRECT"):
            return None  # older dumps mark redirects only in the text
        try:
            text = cleaning.clean_wikitext(wikitext, dropped_prefixes)
        except Exception as error:  # mwparserfromhell raises assorted errors on pathological markup
            return _Rejected(doc_id, where, f"wikitext could not be parsed ({error!r})", self._slice_name, wikitext)
        meta = {
            "title": title,
            "url": article_url + title.replace(" ", "_") if article_url else None,
            "language": language,
            "timestamp": revision.findtext("{*}timestamp"),
        }
        return _document(f"{path}#{page_id}", self._slice_name, text, meta)


def _read_mediawiki(paths, slice_name, *, policy, filesystem=None):
    return ray.data.read_datasource(
        _MediaWikiDocuments(paths, slice_name=slice_name or "wikipedia", policy=policy, filesystem=filesystem)
    )


# --- StackExchange --------------------------------------------------------------------------

_POST_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),  # the question's document: the grouping key
        ("post_id", pa.int64()),
        ("is_question", pa.bool_()),
        ("score", pa.int64()),
        ("text", pa.string()),
        ("meta", pa.string()),  # the question's; null on answers
        (READ_ERROR, pa.string()),  # a post that could not be read is a document of its own
    ]
)
_QUESTION, _ANSWER = "1", "2"


class _StackExchangePosts(_DocumentFiles):
    """The questions and answers of Posts.xml as post rows, to be grouped into documents."""

    EXTENSIONS = [f"xml{compression}" for compression in ("", ".bz2", ".gz", ".zst")]

    def __init__(self, paths, *, site: str | None, **kwargs):
        super().__init__(paths, **kwargs)
        self._site = site

    def _read_stream(self, f, path):
        # Posts are not documents yet: the size limit applies to the questions with their answers.
        yield from _tables(self._posts(f, path), path, replace(self._policy, max_document_bytes=None),
                           schema=_POST_SCHEMA)

    def _posts(self, f, path):
        site = self._site or posixpath.basename(posixpath.dirname(path))
        root = None
        post_id = None
        try:
            for event, row in ElementTree.iterparse(f, events=("start", "end")):
                if root is None:
                    root = row
                if event != "end" or row.tag != "row":
                    continue
                attributes = dict(row.attrib)
                root.clear()  # Stack Overflow's Posts.xml holds tens of millions of rows
                if attributes.get("PostTypeId") in (_QUESTION, _ANSWER):
                    post_id = attributes.get("Id", "?")
                    yield self._post(attributes, path, site)
        except _XML_ERRORS as error:
            yield _broken_xml(path, error, post_id and f"post {post_id}", None)

    @staticmethod
    def _post(attributes: dict, path: str, site: str) -> dict | _Rejected:
        where = f"post {attributes.get('Id', '?')}"
        # Its own doc_id, not its question's: the question stays a document without this post.
        doc_id = f"{path}#post-{attributes.get('Id', '?')}"
        is_question = attributes["PostTypeId"] == _QUESTION
        required = ("Id", "Score", "Body") + (("Title", "CreationDate") if is_question else ("ParentId",))
        missing = [name for name in required if name not in attributes]
        if missing:
            return _Rejected(doc_id, where, f"missing attribute(s) {', '.join(missing)}", None,
                             attributes.get("Body", ""))
        try:
            post_id, score = int(attributes["Id"]), int(attributes["Score"])
            question_id = post_id if is_question else int(attributes["ParentId"])
        except ValueError as error:
            return _Rejected(doc_id, where, f"non-numeric Id, Score or ParentId ({error})", None, attributes["Body"])
        body = cleaning.html_to_text(attributes["Body"])
        meta = None
        if is_question:
            body = "\n".join(part for part in (attributes["Title"].strip(), body) if part)
            meta = json.dumps(
                {
                    "url": f"https://{site}/questions/{question_id}",
                    "timestamp": attributes["CreationDate"],
                    "question_score": score,
                }
            )
        return {
            "doc_id": f"{path}#{question_id}",
            "post_id": post_id,
            "is_question": is_question,
            "score": score,
            "text": body,
            "meta": meta,
            READ_ERROR: None,
        }


def _question_document(posts: pa.Table, slice_name: str, policy: _BadInputPolicy) -> pa.Table:
    """`Q: <title>\\n<body>\\nA: <answer>...`, answers by score (highest first), then by id."""
    rows = posts.to_pylist()
    path = rows[0]["doc_id"].rpartition("#")[0]
    if rows[0][READ_ERROR] is not None:  # posts that could not be read, each a bad-input document
        return pa.Table.from_pylist([{**row, "slice": slice_name} for row in rows], schema=DOCUMENT_SCHEMA)
    questions = [row for row in rows if row["is_question"]]
    answers = sorted((row for row in rows if not row["is_question"]), key=lambda row: (-row["score"], row["post_id"]))
    if not questions:
        logger.warning("%s: %d answer(s) left out: their question is not in Posts.xml", rows[0]["doc_id"], len(rows))
        return DOCUMENT_SCHEMA.empty_table()
    question = questions[0]
    if len(questions) > 1:
        item = _Rejected(question["doc_id"], f"question {question['post_id']}",
                         f"appears {len(questions)} times in Posts.xml", slice_name, question["text"], question["meta"])
    else:
        text = "Q: " + question["text"] + "".join("\nA: " + answer["text"] for answer in answers)
        item = {"doc_id": question["doc_id"], "slice": slice_name, "text": text, "meta": question["meta"],
                READ_ERROR: None}
    return next(_tables([item], path, policy, "question"))  # fail: raises for a rejected item


def _read_stackexchange(paths, slice_name, *, policy, filesystem=None, site=None, num_partitions=None):
    # A site folder means its Posts.xml (the dump's other files are users, votes, ...).
    paths = [path if ".xml" in posixpath.basename(path) else path.rstrip("/") + "/Posts.xml"
             for path in ([paths] if isinstance(paths, str) else paths)]
    posts = ray.data.read_datasource(
        _StackExchangePosts(paths, slice_name=None, policy=policy, filesystem=filesystem, site=site)
    )
    # Answers can be anywhere in the file relative to their question: a shuffle brings them together.
    return posts.groupby("doc_id", num_partitions=num_partitions).map_groups(
        _question_document, batch_format="pyarrow",
        fn_kwargs={"slice_name": slice_name or "stackexchange", "policy": policy},
    )


# --- plain text -----------------------------------------------------------------------------


class _TextDocuments(_DocumentFiles):
    def _documents(self, f, path):
        name = posixpath.basename(path)
        for compression in (".gz", ".bz2", ".zst"):
            name = name.removesuffix(compression)
        title = posixpath.splitext(name)[0]
        try:
            data = f.readall()
        except (OSError, EOFError) as error:
            yield _Rejected(path, "the file", f"unreadable ({error}); it may be truncated or corrupt",
                            self._slice_name, meta=_meta_json({"title": title}))
            return
        yield _document(path, self._slice_name, _decode_source_file(data), {"title": title})


def _read_text(paths, slice_name, *, policy, filesystem=None):
    return ray.data.read_datasource(
        _TextDocuments(paths, slice_name=slice_name or "books", policy=policy, filesystem=filesystem)
    )


# --- projects: GitHub repositories and arXiv papers -----------------------------------------

_VCS_DIRECTORIES = {".git", ".hg", ".svn"}
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def _common_root(names: list[str]) -> str:
    """The single top folder every member sits in (GitHub archives wrap the repo in one), or ''."""
    tops = {name.split("/", 1)[0] for name in names}
    if len(tops) == 1 and all("/" in name for name in names):
        return tops.pop() + "/"
    return ""


class _Project:
    """The files of a directory tree or an archive, by path relative to the project root."""

    def __init__(self, filesystem: pafs.FileSystem, path: str):
        self.name = _project_name(path)
        self._filesystem = filesystem
        self._path = path
        self._file = self._archive = None
        if filesystem.get_file_info(path).type == pafs.FileType.Directory:
            selector = pafs.FileSelector(path, recursive=True)
            infos = [info for info in filesystem.get_file_info(selector) if info.is_file]
            self._members = {
                info.path[len(selector.base_dir):].lstrip("/"): info.path
                for info in sorted(infos, key=lambda info: info.path)
            }
        else:
            self._file = filesystem.open_input_file(path)  # archives need random access
            try:
                self._members = self._open_archive()
            except BaseException:
                self._file.close()
                raise
        self.names = [name for name in self._members if not _VCS_DIRECTORIES.intersection(name.split("/"))]

    def _open_archive(self) -> dict:
        lower = self._path.lower()
        if lower.endswith(".zip"):
            self._archive = zipfile.ZipFile(self._file)
            members = {info.filename: info for info in self._archive.infolist() if not info.is_dir()}
        else:
            try:
                self._archive = tarfile.open(fileobj=self._file, mode="r:*")
            except tarfile.ReadError:
                if lower.endswith(_TAR_SUFFIXES) or not lower.endswith(".gz"):
                    raise
                # arXiv serves a single-file submission as the gzipped .tex itself.
                self._file.seek(0)
                return {f"{self.name}.tex": gzip.GzipFile(fileobj=self._file).read()}
            members = {member.name: member for member in self._archive.getmembers() if member.isfile()}
        root = _common_root(list(members))
        return {name[len(root):]: member for name, member in members.items()}

    def read(self, name: str) -> bytes:
        member = self._members[name]
        if isinstance(member, bytes):
            return member
        if isinstance(self._archive, zipfile.ZipFile):
            return self._archive.read(member)
        if isinstance(self._archive, tarfile.TarFile):
            return self._archive.extractfile(member).read()
        with self._filesystem.open_input_stream(member) as f:
            return f.readall()

    def close(self):
        if self._archive is not None:
            self._archive.close()
        if self._file is not None:
            self._file.close()


def _project_name(path: str) -> str:
    name = posixpath.basename(path.rstrip("/"))
    for suffix in (*_TAR_SUFFIXES, ".zip", ".gz"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


class _ProjectDocuments(Datasource):
    """Projects (directories or archives) read whole by one read task each: a project's files
    depend on each other (a repository's licence, a paper's macros), unlike other formats' files."""

    LOCATOR = "file"  # github; an arXiv paper's doc_id is its path

    def __init__(self, paths, *, slice_name: str, policy: _BadInputPolicy, filesystem=None):
        self._projects, self._filesystem = _resolve_paths_and_filesystem(paths, filesystem)
        if not self._projects:
            raise FileNotFoundError(f"no project found at {paths!r}")
        self._slice_name = slice_name
        self._policy = policy

    def estimate_inmemory_data_size(self):
        return None

    def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
        groups = np.array_split(np.array(self._projects, dtype=object), max(1, min(parallelism, len(self._projects))))
        return [
            ReadTask(
                functools.partial(self._read_projects, list(group)),
                BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=tuple(group)),
                per_task_row_limit=per_task_row_limit,
            )
            for group in groups
            if len(group)
        ]

    def _read_projects(self, paths: list[str]) -> Iterator[pa.Table]:
        for path in paths:
            try:
                project = _Project(self._filesystem, path)
            except (OSError, EOFError, ValueError, zipfile.BadZipFile, tarfile.TarError) as error:
                # ValueError: pyarrow refuses the seeks a corrupt archive directory points to.
                unreadable = _Rejected(path, "the project", f"not a readable directory or archive ({error})",
                                       self._slice_name)
                yield from _tables([unreadable], path, self._policy)
                continue
            try:
                yield from _tables(self._documents(project, path), path, self._policy, self.LOCATOR)
            finally:
                project.close()

    def _documents(self, project: _Project, path: str) -> Iterator[dict | _Rejected]:
        raise NotImplementedError


# Languages of the source files kept, by extension (RedPajama-1T kept a similar list).
EXTENSION_TO_LANGUAGE = {
    ".c": "C", ".h": "C", ".cc": "C++", ".cpp": "C++", ".cxx": "C++", ".c++": "C++", ".hh": "C++",
    ".hpp": "C++", ".hxx": "C++", ".cs": "C#", ".java": "Java", ".js": "JavaScript", ".mjs": "JavaScript",
    ".jsx": "JavaScript", ".ts": "TypeScript", ".tsx": "TypeScript", ".go": "Go", ".rs": "Rust",
    ".py": "Python", ".rb": "Ruby", ".php": "PHP", ".scala": "Scala", ".kt": "Kotlin", ".swift": "Swift",
    ".m": "Objective-C", ".sh": "Shell", ".bash": "Shell", ".zsh": "Shell", ".pl": "Perl", ".pm": "Perl",
    ".r": "R", ".jl": "Julia", ".lua": "Lua", ".hs": "Haskell", ".sql": "SQL", ".f90": "Fortran",
    ".f": "Fortran", ".f95": "Fortran", ".dart": "Dart", ".groovy": "Groovy", ".ex": "Elixir",
    ".exs": "Elixir", ".erl": "Erlang", ".clj": "Clojure", ".lisp": "Lisp", ".scm": "Scheme",
    ".asm": "Assembly", ".s": "Assembly", ".vb": "Visual Basic", ".ps1": "PowerShell", ".cmake": "CMake",
    ".html": "HTML", ".htm": "HTML", ".css": "CSS", ".vue": "Vue", ".xml": "XML", ".md": "Markdown",
    ".markdown": "Markdown", ".rst": "reStructuredText", ".tex": "TeX", ".v": "Verilog", ".sol": "Solidity",
    ".proto": "Protocol Buffer", ".tcl": "Tcl", ".nim": "Nim", ".yaml": "YAML", ".yml": "YAML",
}
FILENAME_TO_LANGUAGE = {"Dockerfile": "Dockerfile", "Makefile": "Makefile", "CMakeLists.txt": "CMake"}

_LICENCE_FILE = re.compile(r"(?:licen[cs]e|copying)(?:[.-][\w.-]*)?", re.IGNORECASE)
# First match wins: the LGPL and AGPL texts mention the GPL, the GPLv3 text does not say "version 2".
_LICENCE_PHRASES = (
    ("AGPL-3.0", ("gnu affero general public license",)),
    ("LGPL-3.0", ("gnu lesser general public license", "version 3")),
    ("LGPL-2.1", ("gnu lesser general public license",)),
    ("GPL-3.0", ("gnu general public license", "version 3")),
    ("GPL-2.0", ("gnu general public license", "version 2")),
    ("Apache-2.0", ("apache license", "version 2.0")),
    ("MIT", ("permission is hereby granted, free of charge",)),
    ("BSD-3-Clause", ("redistribution and use in source and binary forms", "neither the name")),
    ("BSD-2-Clause", ("redistribution and use in source and binary forms",)),
)


def detect_licence(licence_text: str) -> str:
    """SPDX id of a LICENSE/COPYING file's text by its key phrases, or 'unknown'."""
    text = " ".join(licence_text.lower().split())
    for spdx_id, phrases in _LICENCE_PHRASES:
        if all(phrase in text for phrase in phrases):
            return spdx_id
    return "unknown"


def source_language(path: str) -> str | None:
    """Programming language of a repository file from its name, or None when it is not source."""
    name = posixpath.basename(path)
    extension = posixpath.splitext(name)[1].lower()
    return FILENAME_TO_LANGUAGE.get(name) or EXTENSION_TO_LANGUAGE.get(extension)


class _GithubDocuments(_ProjectDocuments):
    """One document per source file; meta licence is the SPDX id found in the root LICENSE /
    LICENCE / COPYING file, 'unknown' when not recognised, null when there is none."""

    def _documents(self, project, path):
        licence_files = sorted(name for name in project.names if _LICENCE_FILE.fullmatch(name))
        licence = detect_licence(_decode_source_file(project.read(licence_files[0]))) if licence_files else None
        for name in project.names:
            language = source_language(name)
            if language is None:
                continue
            data = project.read(name)
            if b"\0" in data[:8192]:
                continue  # binary despite its extension
            yield _document(
                f"{path}#{name}",
                self._slice_name,
                cleaning.strip_licence_header(_decode_source_file(data), language),
                {"repo": project.name, "path": name, "language": language, "licence": licence},
            )


_NEW_STYLE_ARXIV_ID = re.compile(r"(\d{4})\.\d{4,5}(?:v\d+)?")


class _ArxivDocuments(_ProjectDocuments):
    def _documents(self, project, path):
        tex_names = [name for name in project.names if name.lower().endswith(".tex")]
        sources = {name: _decode_source_file(project.read(name)) for name in tex_names}
        # The main file (\documentclass) first, then the others by name.
        order = sorted(sources, key=lambda name: ("\\documentclass" not in sources[name], name))
        arxiv_id = project.name
        new_style = _NEW_STYLE_ARXIV_ID.fullmatch(arxiv_id)
        modified = self._filesystem.get_file_info(path).mtime
        meta = {
            "arxiv_id": arxiv_id,
            "yymm": new_style.group(1) if new_style else None,
            "url": f"https://arxiv.org/abs/{arxiv_id}",
            "timestamp": modified.isoformat() if modified else None,
        }
        yield _document(path, self._slice_name, cleaning.clean_latex_project([sources[n] for n in order]), meta)


def _read_projects(paths, slice_name, *, policy, filesystem=None, kind: type[_ProjectDocuments], default_slice: str):
    return ray.data.read_datasource(
        kind(paths, slice_name=slice_name or default_slice, policy=policy, filesystem=filesystem)
    )


_READERS = {
    "jsonl": _read_jsonl,
    "parquet": _read_parquet,
    "hf_disk": _read_hf_disk,
    "hf_hub": _read_hf_hub,
    "warc": functools.partial(_read_warc, kind=_WarcDocuments),
    "wet": functools.partial(_read_warc, kind=_WetDocuments),
    "mediawiki": _read_mediawiki,
    "github": functools.partial(_read_projects, kind=_GithubDocuments, default_slice="github"),
    "arxiv": functools.partial(_read_projects, kind=_ArxivDocuments, default_slice="arxiv"),
    "stackexchange": _read_stackexchange,
    "text": _read_text,
}
FORMATS = tuple(_READERS)
