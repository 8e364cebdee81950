"""What every reader shares: document and bad-input rows, batching into tables, and the
datasource base class of file formats (listing, opening and decompressing files)."""

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple
from xml.etree import ElementTree

import pyarrow as pa
from ray.data.datasource.file_based_datasource import FileBasedDatasource
from resiliparse.parse.encoding import bytes_to_str

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


class DocumentFiles(FileBasedDatasource):
    """Files that each hold a stream of documents; subclasses parse one file in `_documents`."""

    EXTENSIONS: list[str] | None = None
    LOCATOR = "record"  # what follows the '#' of a doc_id

    def __init__(self, paths, *, slice_name: str | None, policy: BadInputPolicy, filesystem=None):
        super().__init__(paths, filesystem=filesystem, file_extensions=self.EXTENSIONS)
        self._slice_name = slice_name
        self._policy = policy

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        yield from self._tables(self._documents(f, path), path)

    def _tables(self, items: Iterable[dict | Rejected], path: str) -> Iterator[pa.Table]:
        return batched_tables(items, path, self._policy, self.LOCATOR)

    def _documents(self, f: pa.NativeFile, path: str) -> Iterator[dict | Rejected]:
        raise NotImplementedError
