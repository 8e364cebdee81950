"""Reader of arXiv paper sources (a directory, .tar.gz or gzipped .tex each): one document per
paper, its .tex files (the one with \\documentclass first) cleaned as RedPajama-1T did, by
cleaning.clean_latex_project."""

import functools
import re

from pajama.data import cleaning
from pajama.data.readers.common import decode_source_file, document_row
from pajama.data.readers.projects import ProjectDocuments, read_projects

_NEW_STYLE_ARXIV_ID = re.compile(r"(\d{4})\.\d{4,5}(?:v\d+)?")


class _ArxivDocuments(ProjectDocuments):
    def _documents(self, project, path):
        tex_names = [name for name in project.names if name.lower().endswith(".tex")]
        sources = {name: decode_source_file(project.read(name)) for name in tex_names}
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
        yield document_row(path, self._slice_name, cleaning.clean_latex_project([sources[n] for n in order]), meta)


read_arxiv = functools.partial(read_projects, kind=_ArxivDocuments, default_slice="arxiv")
