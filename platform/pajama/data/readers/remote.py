"""Reading a published release over the network: listing files, streaming them with retries and
resumption, and a Ray datasource with one read task per unit of the release (a file, a shard).

Files are opened through fsspec, the filesystem layer of the field: HTTPFileSystem for http(s)
URLs (each block is an HTTP Range request), HfFileSystem for `hf://` paths, the local filesystem
otherwise. `ResumingReader` turns a transient failure (a dropped connection, a timeout, HTTP 408,
425, 429 or 5xx) into a reopen at the byte offset reached, so the stream above it (decompression,
line splitting) sees every byte exactly once: no record is lost or read twice. It gives up after
`retries` consecutive failures, and the file then breaks off as bad input (see readers/common.py).
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable, Iterator, Sequence
from urllib.parse import urljoin

import aiohttp
import fsspec
import pyarrow as pa
from fsspec.exceptions import FSTimeoutError
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

# Bytes per HTTP Range request: large enough to stream at line rate, small enough that a retry
# after a dropped connection repeats little.
BLOCK_SIZE = 8 << 20
RETRIES = 5
_BACKOFF_S = 0.5
_MAX_BACKOFF_S = 30.0
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}


def is_transient(error: BaseException) -> bool:
    """Whether reading again may succeed: a broken or timed-out connection, or a busy server."""
    if isinstance(error, aiohttp.ClientResponseError):
        return error.status in _TRANSIENT_STATUS
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return False
    return isinstance(error, (aiohttp.ClientError, asyncio.TimeoutError, FSTimeoutError, OSError))


def filesystem_for(url: str, filesystem=None):
    """(filesystem, path inside it) of a URL or local path; `filesystem` wins when given."""
    if filesystem is not None:
        return filesystem, url.split("://", 1)[-1] if url.startswith("hf://") else url
    return fsspec.core.url_to_fs(url)


def read_listing(url: str, filesystem=None, resolve: bool = True) -> list[str]:
    """The non-blank lines of a listing file (a release's urls.txt); with `resolve`, relative
    entries resolved against the listing's own location."""
    fs, path = filesystem_for(url, filesystem)
    with fs.open(path, "rb") as f:
        lines = [line.strip() for line in f.read().decode("utf-8").splitlines() if line.strip()]
    if not resolve:
        return lines
    return [line if "://" in line or line.startswith("/") else urljoin(url, line) for line in lines]


class ResumingReader(io.RawIOBase):
    """A read-only byte stream of one remote file that reopens it at the offset reached after a
    transient error (HTTP: a Range request from that byte), up to `retries` times in a row."""

    def __init__(self, fs, path: str, retries: int = RETRIES, block_size: int = BLOCK_SIZE):
        super().__init__()
        self._fs, self._path, self._retries, self._block_size = fs, path, retries, block_size
        self._file = None
        self.offset = 0
        self.resumptions = 0

    def readable(self) -> bool:
        return True

    def _open(self):
        kwargs = {"block_size": self._block_size} if "http" in self._fs.protocol else {}
        f = self._fs.open(self._path, "rb", **kwargs)
        if self.offset:
            f.seek(self.offset)
        return f

    def readinto(self, buffer) -> int:
        failures = 0
        while True:
            try:
                if self._file is None:
                    self._file = self._open()
                data = self._file.read(min(len(buffer), self._block_size))
                break
            except Exception as error:  # noqa: BLE001 - classified just below
                self._drop()
                failures += 1
                if not is_transient(error) or failures > self._retries:
                    raise OSError(f"{self._path}: reading at byte {self.offset} failed "
                                  f"({type(error).__name__}: {error}) after {failures} attempt(s)") from error
                self.resumptions += 1
                time.sleep(min(_BACKOFF_S * 2 ** (failures - 1), _MAX_BACKOFF_S))
        buffer[: len(data)] = data
        self.offset += len(data)
        return len(data)

    def _drop(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is discarded
                pass
            self._file = None

    def close(self) -> None:
        self._drop()
        super().close()


def open_stream(fs, path: str, retries: int = RETRIES, block_size: int = BLOCK_SIZE) -> io.BufferedReader:
    """A buffered, decompressed (by extension: .gz, .zst, .bz2) byte stream of a remote file."""
    raw = io.BufferedReader(ResumingReader(fs, path, retries, block_size), 1 << 20)
    codec = {".gz": "gzip", ".zst": "zstd", ".bz2": "bz2"}.get(path[path.rfind("."):])
    if codec is None:
        return raw
    return io.BufferedReader(pa.CompressedInputStream(pa.PythonFile(raw, mode="r"), codec), 1 << 20)


class UnitsDatasource(Datasource):
    """One read task per unit (a file, a shard), each yielding the pyarrow tables `read_unit` makes."""

    def __init__(self, units: Sequence, read_unit: Callable[[object], Iterator[pa.Table]], name: str):
        self._units, self._read_unit, self._name = list(units), read_unit, name

    def get_name(self) -> str:
        return self._name

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None) -> list[ReadTask]:
        read_unit = self._read_unit
        return [ReadTask(lambda unit=unit: read_unit(unit),
                         BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=[str(unit)]),
                         per_task_row_limit=per_task_row_limit)
                for unit in self._units]
