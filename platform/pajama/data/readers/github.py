"""Reader of GitHub repositories (a directory or .zip / .tar(.gz) archive each): one document per
source file, recognised by extension, its licence header stripped; the repository's licence
is detected from its LICENSE / COPYING file."""

import functools
import posixpath
import re

from pajama.data import cleaning
from pajama.data.readers.common import decode_source_file, document_row
from pajama.data.readers.projects import ProjectDocuments, read_projects

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


class _GithubDocuments(ProjectDocuments):
    """One document per source file; meta licence is the SPDX id found in the root LICENSE /
    LICENCE / COPYING file, 'unknown' when not recognised, null when there is none."""

    def _documents(self, project, path):
        licence_files = sorted(name for name in project.names if _LICENCE_FILE.fullmatch(name))
        licence = detect_licence(decode_source_file(project.read(licence_files[0]))) if licence_files else None
        for name in project.names:
            language = source_language(name)
            if language is None:
                continue
            data = project.read(name)
            if b"\0" in data[:8192]:
                continue  # binary despite its extension
            yield document_row(
                f"{path}#{name}",
                self._slice_name,
                cleaning.strip_licence_header(decode_source_file(data), language),
                {"repo": project.name, "path": name, "language": language, "licence": licence},
            )


read_github = functools.partial(read_projects, kind=_GithubDocuments, default_slice="github")
