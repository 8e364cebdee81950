"""Projects, sources read whole by one read task each because their files depend on each other (a
repository's licence, a paper's macros): a directory tree or a .zip / .tar(.gz) archive (or
arXiv's gzipped single .tex), its files by path relative to the project root."""

import functools
import gzip
import posixpath
import tarfile
import zipfile
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask
from ray.data.datasource.path_util import _resolve_paths_and_filesystem

from pajama.data.readers.common import BadInputPolicy, Rejected, batched_tables

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
        kind = filesystem.get_file_info(path).type
        if kind == pafs.FileType.Unknown:  # opening a FIFO would wait for a writer forever
            raise OSError("not a regular file (a FIFO, socket or device)")
        if kind == pafs.FileType.Directory:
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


class ProjectDocuments(Datasource):
    """Projects (directories or archives) read whole by one read task each: a project's files
    depend on each other (a repository's licence, a paper's macros), unlike other formats' files."""

    LOCATOR = "file"  # github; an arXiv paper's doc_id is its path

    def __init__(self, paths, *, slice_name: str, policy: BadInputPolicy, filesystem=None):
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
                unreadable = Rejected(path, "the project", f"not a readable directory or archive ({error})",
                                      self._slice_name)
                yield from batched_tables([unreadable], path, self._policy)
                continue
            try:
                yield from batched_tables(self._documents(project, path), path, self._policy, self.LOCATOR)
            finally:
                project.close()

    def _documents(self, project: _Project, path: str) -> Iterator[dict | Rejected]:
        raise NotImplementedError


def read_projects(paths, slice_name, *, policy, filesystem=None, kind: type[ProjectDocuments], default_slice: str):
    return ray.data.read_datasource(
        kind(paths, slice_name=slice_name or default_slice, policy=policy, filesystem=filesystem)
    )
