"""Reader of plain text files (books): one document per file, titled by its file name."""

import posixpath

import ray

from pajama.data.readers.common import DocumentFiles, Rejected, decode_source_file, document_row, meta_json


class _TextDocuments(DocumentFiles):
    def _documents(self, f, path):
        name = posixpath.basename(path)
        for compression in (".gz", ".bz2", ".zst"):
            name = name.removesuffix(compression)
        title = posixpath.splitext(name)[0]
        try:
            data = f.readall()
        except (OSError, EOFError) as error:
            yield Rejected(path, "the file", f"unreadable ({error}); it may be truncated or corrupt",
                           self._slice_name, meta=meta_json({"title": title}))
            return
        yield document_row(path, self._slice_name, decode_source_file(data), {"title": title})


def read_text(paths, slice_name, *, policy, filesystem=None):
    return ray.data.read_datasource(
        _TextDocuments(paths, slice_name=slice_name or "books", policy=policy, filesystem=filesystem)
    )
