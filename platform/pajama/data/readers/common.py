"""What every reader shares: document and bad-input rows, batching into tables, file listing and
opening (decompression included), and the datasource base class of file formats.

A file that cannot be opened is bad input like a record that cannot be read: a path that cannot
be listed (a symbolic link loop, a dangling link, a FIFO or device) and a file that cannot be
opened when its read task runs (removed after listing, no read permission) each become one
bad-input row whose doc_id is the file's path, while the files beside it are read as usual.
"""

import errno
import json
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple
from xml.etree import ElementTree

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
from ray.data._internal.util import RetryingPyFileSystem
from ray.data.block import BlockMetadata
from ray.data.datasource import ReadTask
from ray.data.datasource.file_based_datasource import FileBasedDatasource, _has_file_extension
from ray.data.datasource.file_meta_provider import DefaultFileMetadataProvider
from resiliparse.parse.encoding import bytes_to_str

from pajama.config import BUNDLED_PREFIX, RESOURCES_DIR
from pajama.data.slices import DOCUMENT_COLUMNS, READ_ERROR

DOCUMENT_SCHEMA = pa.schema([(column, pa.string()) for column in (*DOCUMENT_COLUMNS, READ_ERROR)])
# Text kept with a bad-input row: enough to recognise the record, never a 50 MB blob.
QUARANTINED_TEXT_CHARS = 1000
# A block closes at whichever comes first: books and papers are large, most web pages small.
BATCH_ROWS = 1024
BATCH_TEXT_CHARS = 64 << 20
_MAX_LISTED_BAD_RECORDS = 20


class BadInputError(ValueError):
    """Input records that could not be read; the message names the file and each record."""


class Rejected(NamedTuple):
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
class BadInputPolicy:
    """What a reader does with bad input: `fail` raises, else it emits bad-input rows; and the
    largest document text in UTF-8 bytes (None: no limit)."""

    fail: bool = False
    max_document_bytes: int | None = None

    def checked(self, document: dict, path: str, locator: str) -> dict | Rejected:
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
        return Rejected(doc_id, where, reason, document["slice"], text, document["meta"])


def meta_json(meta: dict) -> str:
    # default=str: parquet and Arrow metadata may hold timestamps or dates.
    return json.dumps(meta, ensure_ascii=False, default=str)


def document_row(doc_id: str, slice_name: str, text: str, meta: dict) -> dict:
    return {"doc_id": doc_id, "slice": slice_name, "text": text, "meta": meta_json(meta), READ_ERROR: None}


def batched_tables(
    items: Iterable[dict | Rejected],
    path: str,
    policy: BadInputPolicy,
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
        if isinstance(item, Rejected):
            if policy.fail:
                rejected.append(item)
                continue
            item = item.row(path)
        rows.append(item)
        text_chars += len(item["text"])
        if len(rows) >= BATCH_ROWS or text_chars >= BATCH_TEXT_CHARS:
            yield _named_as_in_recipes(pa.Table.from_pylist(rows, schema=schema), path)
            rows, text_chars = [], 0
    if rows:
        yield _named_as_in_recipes(pa.Table.from_pylist(rows, schema=schema), path)
    if rejected:
        listed = "\n".join(f"  {r.where}: {r.reason}" for r in rejected[:_MAX_LISTED_BAD_RECORDS])
        more = len(rejected) - _MAX_LISTED_BAD_RECORDS
        raise BadInputError(
            f"{path}: {len(rejected)} record(s) could not be read; fix or remove them and read again:\n"
            + listed
            + (f"\n  ... and {more} more" if more > 0 else "")
        )


_BUNDLED_DIR = f"{RESOURCES_DIR}{os.sep}"


def _named_as_in_recipes(table: pa.Table, path: str) -> pa.Table:
    """The table with the doc_ids of a bundled file (one of the package's resources) named as recipes name
    that file, `bundled:corpus/arxiv.jsonl.gz#1`, not by where the package is installed (see pajama.data.readers)."""
    if not path.startswith(_BUNDLED_DIR):
        return table
    doc_ids = pc.replace_substring(table.column("doc_id"), _BUNDLED_DIR, BUNDLED_PREFIX, max_replacements=1)
    return table.set_column(table.schema.get_field_index("doc_id"), "doc_id", doc_ids)


def decode_source_file(data: bytes) -> str:
    """Text of a file as found on disk: UTF-8, else Windows-1252 (old TeX and books use it)."""
    return bytes_to_str(data, "utf-8", fallback_encodings=("utf-8", "cp1252"))


XML_ERRORS = (ElementTree.ParseError, OSError, EOFError)


def broken_xml(path: str, error: Exception, after: str | None, slice_name: str | None) -> Rejected:
    """The bad-input record of an XML file that breaks off (malformed, truncated or corrupt)."""
    after = f"after {after}" if after else "before its first record"
    if isinstance(error, ElementTree.ParseError):
        line, column = error.position
        return Rejected(f"{path}#xml-line-{line}", f"line {line}, column {column}",
                        f"malformed XML {after} ({error}); the file may be truncated", slice_name)
    return Rejected(f"{path}#xml-end", "end", f"the file breaks off {after} ({error}); it may be truncated or corrupt",
                    slice_name)


def unlistable_reason(filesystem: pafs.FileSystem, path: str, error: OSError) -> str:
    """Why a path given to a reader cannot be read, in words (local paths say exactly why)."""
    if isinstance(filesystem, RetryingPyFileSystem):
        filesystem = filesystem.unwrap()
    if not isinstance(filesystem, pafs.LocalFileSystem):
        return f"cannot be read ({error})"
    try:
        mode = os.stat(path).st_mode
    except OSError as stat_error:
        if stat_error.errno == errno.ELOOP:
            cause = "a symbolic link loop"
        elif stat_error.errno == errno.ENOENT:
            cause = "a dangling symbolic link" if os.path.islink(path) else "removed after it was listed"
        else:
            cause = "not accessible"
        return f"cannot be opened: {cause} ({stat_error.strerror})"
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return "not a regular file (a FIFO, socket or device); only files and directories are read"
    return f"cannot be read ({error})"


class _Listing(DefaultFileMetadataProvider):
    """Ray's file listing, except that a path it cannot list is set aside in `unlisted` with its
    reason, to become a bad-input row, instead of failing the whole read."""

    def __init__(self, extensions: list[str] | None):
        super().__init__()
        self._extensions = extensions
        self.unlisted: list[tuple[str, str]] = []

    def expand_paths(self, paths, filesystem, partitioning=None, ignore_missing_paths=False):
        try:
            return list(super().expand_paths(paths, filesystem, partitioning, ignore_missing_paths))
        except OSError:
            pass  # list path by path to tell the bad ones from the good ones
        listed = []
        for path in paths:
            try:
                listed += super().expand_paths([path], filesystem, partitioning, ignore_missing_paths)
            except OSError as error:
                # A path the format would not read anyway (by its extension) is no bad input.
                if self._extensions is None or _has_file_extension(path, self._extensions):
                    self.unlisted.append((path, unlistable_reason(filesystem, path, error)))
        if not listed and self.unlisted:
            raise FileNotFoundError("no readable file among the paths given: "
                                    + "; ".join(f"{path}: {reason}" for path, reason in self.unlisted))
        return listed


class _UnopenedFile:
    """Stands for a file whose opening failed, so that its read yields a bad-input row."""

    def __init__(self, error: OSError):
        self.error = error

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False


class DocumentFiles(FileBasedDatasource):
    """Files that each hold a stream of documents; subclasses parse one file in `_documents`."""

    EXTENSIONS: list[str] | None = None
    LOCATOR = "record"  # what follows the '#' of a doc_id

    def __init__(self, paths, *, slice_name: str | None, policy: BadInputPolicy, filesystem=None):
        listing = _Listing(self.EXTENSIONS)
        super().__init__(paths, filesystem=filesystem, file_extensions=self.EXTENSIONS, meta_provider=listing)
        self._slice_name = slice_name
        self._policy = policy
        self._unlisted = [Rejected(path, "the file", reason, slice_name) for path, reason in listing.unlisted]
        if policy.fail and self._unlisted:
            raise BadInputError("file(s) that cannot be read; fix or remove them and read again:\n"
                                + "\n".join(f"  {r.doc_id}: {r.reason}" for r in self._unlisted))

    def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
        tasks = super().get_read_tasks(parallelism, per_task_row_limit, data_context)
        if self._unlisted:
            unlisted = self._unlisted
            metadata = BlockMetadata(num_rows=len(unlisted), size_bytes=None, exec_stats=None,
                                     input_files=[rejected.doc_id for rejected in unlisted])
            tasks.append(ReadTask(lambda: [table for rejected in unlisted
                                           for table in self._tables([rejected], rejected.doc_id)],
                                  metadata, per_task_row_limit=per_task_row_limit))
        return tasks

    def _open_input_source(self, filesystem, path, **open_args):
        try:
            return self._open_file(filesystem, path, **open_args)
        except OSError as error:
            # Transient remote errors propagate, for Ray to retry the read.
            if any(pattern in str(error) for pattern in self._data_context.retried_io_errors):
                raise
            return _UnopenedFile(error)

    def _open_file(self, filesystem, path, **open_args) -> pa.NativeFile:
        return super()._open_input_source(filesystem, path, **open_args)

    def _read_stream(self, f, path: str) -> Iterator[pa.Table]:
        if isinstance(f, _UnopenedFile):
            unopened = Rejected(path, "the file", f"cannot be opened ({f.error}); it may have been removed "
                                "after listing, or not be readable", self._slice_name)
            yield from self._tables([unopened], path)
        else:
            yield from self._tables(self._documents(f, path), path)

    def _tables(self, items: Iterable[dict | Rejected], path: str) -> Iterator[pa.Table]:
        return batched_tables(items, path, self._policy, self.LOCATOR)

    def _documents(self, f: pa.NativeFile, path: str) -> Iterator[dict | Rejected]:
        raise NotImplementedError
