"""Readers of CommonCrawl archives: WARC responses (HTTP 200 HTML pages, reduced to their main
text) and WET conversion records (the text CommonCrawl extracted), one document per record."""

import functools

import pyarrow as pa
import ray
from fastwarc.warc import ArchiveIterator, WarcRecordType
from resiliparse.parse.encoding import bytes_to_str, detect_encoding

from pajama.data import cleaning
from pajama.data.readers.common import DocumentFiles, Rejected, document_row

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


class _WarcDocuments(DocumentFiles):
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
                    yield document_row(f"{path}#{record_id}", self._slice_name, text, meta)
                elif text is not None:
                    yield text
        except OSError as error:
            after = f"after record {record_id}" if record_id is not None else "from the start"
            yield Rejected(f"{path}#offset-{stream.tell()}", f"byte {stream.tell()}",
                           f"not a readable WARC file {after} ({error}); re-download or remove it", self._slice_name)

    @staticmethod
    def _text(record, doc_id: str, slice_name: str) -> str | Rejected | None:
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
    def _text(record, doc_id: str, slice_name: str) -> str | Rejected:
        payload = record.reader.read()
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError as error:
            return Rejected(doc_id, f"record {doc_id.rpartition('#')[2]}", f"WET text is not UTF-8 ({error})",
                            slice_name, payload.decode("utf-8", errors="replace"))


def _read_archives(paths, slice_name, *, policy, filesystem=None, kind: type[_WarcDocuments]):
    return ray.data.read_datasource(
        kind(paths, slice_name=slice_name or "common_crawl", policy=policy, filesystem=filesystem)
    )


read_warc = functools.partial(_read_archives, kind=_WarcDocuments)
read_wet = functools.partial(_read_archives, kind=_WetDocuments)
