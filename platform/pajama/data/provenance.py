"""The raw inputs of a data stage as MLflow dataset inputs: URI, format, slice and digest of each.

Logged on the data stage's run (context `raw`), so that lineage runs from a served response through
the model versions, the data artifact and its run back to the files that were read. A local file's
digest is the SHA-256 of its bytes; a file over `FULL_HASH_BYTES` is identified by its size and the
SHA-256 of its first and last MiB, which a copy keeps and an edit almost always changes, at a cost
that does not grow with the corpus. A source with more than `MAX_FILES_PER_SOURCE` files is
recorded as one input (its path or glob) whose digest covers the names and sizes of all its files.
Remote sources (hub datasets, URLs, object stores) are recorded by URI, their digest is the URI's.
"""

from __future__ import annotations

import glob
import hashlib
import os
from pathlib import Path

from pajama.config import DataConfig, is_remote, resolve_path

FULL_HASH_BYTES = 64 << 20
MAX_FILES_PER_SOURCE = 200
_EDGE = 1 << 20


def file_digest(path: str) -> str:
    digest = hashlib.sha256()
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        if size <= FULL_HASH_BYTES:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        else:
            digest.update(f"size={size}".encode())
            digest.update(handle.read(_EDGE))
            handle.seek(size - _EDGE)
            digest.update(handle.read(_EDGE))
    return digest.hexdigest()[:32]


def _files(path: str) -> list[str]:
    matches = sorted(glob.glob(path)) if glob.has_magic(path) else [path]
    files = []
    for match in matches:
        if os.path.isdir(match):
            files += sorted(str(p) for p in Path(match).rglob("*") if p.is_file())
        elif os.path.isfile(match):
            files.append(match)
    return files


def raw_inputs(cfg: DataConfig) -> list[dict]:
    """One entry per raw input: {uri, name, digest, source_type, tags}."""
    entries = []
    for source in cfg.sources:
        path = resolve_path(source.path)
        tags = {"format": source.format, "slice": source.slice or "from records", "path": source.path}
        if source.format == "hf_hub" or is_remote(path):
            entries.append({"uri": path, "name": path.rsplit("/", 1)[-1] or path,
                            "digest": hashlib.sha256(path.encode()).hexdigest()[:32],
                            "source_type": "hf_hub" if source.format == "hf_hub" else "uri", "tags": tags})
            continue
        local = path.removeprefix("file://")
        files = _files(local)
        if len(files) > MAX_FILES_PER_SOURCE:
            listing = "\n".join(f"{f}\t{os.path.getsize(f)}" for f in files)
            entries.append({"uri": local, "name": f"{Path(local).name} ({len(files)} files)",
                            "digest": hashlib.sha256(listing.encode()).hexdigest()[:32], "source_type": "local",
                            "tags": tags})
            continue
        for file in files:
            entries.append({"uri": file, "name": Path(file).name, "digest": file_digest(file), "source_type": "local",
                            "tags": tags})
    return entries
