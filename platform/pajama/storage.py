"""Where Pajama keeps what it makes: a local directory or an object-store prefix, one API for both.

`PAJAMA_STORAGE_URI` (or `project.storage`) names the root: `/data/pajama`, `s3://bucket/prefix`,
`gs://bucket/prefix`, `abfs://container@account.dfs.core.windows.net/prefix`. Everything goes
through pyarrow's filesystems, the layer Ray Data and Ray Train use themselves, so a URI that works
here works for their reads, writes and checkpoints too. Endpoints and credentials come from each
store's standard environment (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_DEFAULT_REGION`; `GOOGLE_APPLICATION_CREDENTIALS`; `AZURE_STORAGE_ACCOUNT_KEY`, ...), never
from recipes.

Object stores have no atomic rename, so nothing here relies on one: `write_text` of a local file
goes through a temporary file and `os.replace`, and an object is visible only once its upload is
complete. Readers take an artifact as finished only when its manifest exists (pajama.artifacts),
and the manifest is written last.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import uuid
from pathlib import Path

import pyarrow.fs as pafs

REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "abfs://", "abfss://", "az://", "hdfs://")


class StorageError(RuntimeError):
    """The storage root cannot be used (no such bucket, refused credentials, ...)."""


def is_local(uri: str) -> bool:
    """Whether `uri` is a path on this machine's filesystem (not an object-store URI)."""
    return not uri.startswith(REMOTE_SCHEMES)


def join(uri: str, *parts: str) -> str:
    """`uri` with `parts` appended, '/'-separated on every store."""
    return "/".join([uri.rstrip("/"), *(str(p).strip("/") for p in parts if str(p))])


@functools.lru_cache(maxsize=32)
def _filesystem_for_root(root: str) -> pafs.FileSystem:
    return pafs.FileSystem.from_uri(root)[0]


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a local path or an object-store URI. One filesystem
    per bucket is kept, so its connections are reused."""
    if is_local(uri):
        return pafs.LocalFileSystem(), os.path.abspath(uri.removeprefix("file://"))
    scheme, rest = uri.split("://", 1)
    bucket = rest.split("/", 1)[0]
    return _filesystem_for_root(f"{scheme}://{bucket}"), rest.rstrip("/")


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_text(uri: str) -> str:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as stream:
        return stream.read().decode()


def write_text(uri: str, text: str) -> None:
    """Write a whole file; a reader sees the old content or the new, never a part."""
    if is_local(uri):
        path = Path(uri.removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        return
    fs, path = filesystem(uri)
    with fs.open_output_stream(path) as stream:
        stream.write(text.encode())


def files(uri: str) -> list[str]:
    """Every file under `uri`, as paths relative to it, sorted; [] if there is nothing there."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return sorted(info.path[len(path):].lstrip("/") for info in infos if info.type == pafs.FileType.File)


def delete(uri: str) -> None:
    """Remove a file or a whole prefix; nothing there is not an error."""
    fs, path = filesystem(uri)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif kind == pafs.FileType.File:
        fs.delete_file(path)


def make_dir(uri: str) -> None:
    """Create folder `uri` for a writer that does not create its parents (pyarrow's parquet writer):
    a directory with its parents on local storage; nothing on an object store, which has none."""
    if is_local(uri):
        Path(uri.removeprefix("file://")).mkdir(parents=True, exist_ok=True)


def upload_dir(local: Path, uri: str) -> None:
    """Copy the files under local directory `local` to `uri` (same relative names)."""
    fs, path = filesystem(uri)
    if not any(p.is_file() for p in Path(local).rglob("*")):
        return
    pafs.copy_files(str(Path(local).resolve()), path, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs, use_threads=True)


def download_dir(uri: str, local: Path) -> Path:
    """Copy the files under `uri` into local directory `local` (created); returns `local`."""
    fs, path = filesystem(uri)
    local = Path(local)
    local.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, str(local.resolve()), source_filesystem=fs,
                    destination_filesystem=pafs.LocalFileSystem(), use_threads=True)
    return local


def local_copy(uri: str) -> Path:
    """A local directory holding what is under `uri`: the directory itself for a local URI, else a
    copy in the cache (reused once complete: a marker file is written after the last byte). Meant
    for what a process loads whole (a model, a tokenizer), not for shards, which are streamed."""
    if is_local(uri):
        return Path(uri.removeprefix("file://"))
    target = cache_dir() / "copies" / hashlib.sha256(uri.encode()).hexdigest()[:20]
    done = target.with_name(target.name + ".complete")
    if not done.exists():
        staging = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
        download_dir(uri, staging)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
        done.write_text(uri)
    return target


def cache_dir() -> Path:
    """This machine's cache for local copies of stored files (models to load, tokenizers):
    PAJAMA_CACHE_DIR, else ~/.cache/pajama."""
    return Path(os.environ.get("PAJAMA_CACHE_DIR") or Path.home() / ".cache" / "pajama")


def check_root(uri: str) -> None:
    """Stop early, naming the URI, when the storage root cannot be used: a bucket that does not
    exist, refused credentials, an endpoint that does not answer."""
    if is_local(uri):
        return
    try:
        fs, path = filesystem(uri)
        bucket = path.split("/", 1)[0]
        if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise StorageError(f"storage {uri}: bucket {bucket!r} does not exist (create it, or point "
                               "PAJAMA_STORAGE_URI at one that does)")
        fs.get_file_info(path)
    except StorageError:
        raise
    except (OSError, ValueError) as err:
        raise StorageError(f"storage {uri} cannot be used: {err} (check the endpoint and credentials "
                           "in the environment: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                           "or the equivalents of your store)") from None
