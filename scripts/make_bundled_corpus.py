"""Generate Pajama's bundled default pretraining corpus from Python's own sources and documentation.

The laptop default pipeline (and its tests) needs a small corpus in RedPajama-1T's jsonl shape that
ships with the package, so nothing is downloaded. This script builds one deterministically from the
standard library of the running CPython (sources, docstrings, pydoc topics and HTML, IDLE's docs,
the email test messages), maps each source plausibly onto one of the seven RedPajama slices, then
plants junk and duplicates for the quality filters and dedup to find. What it planted is recorded
only in ground_truth.json, never in a document's meta.

    python scripts/make_bundled_corpus.py [--out platform/pajama/resources/corpus]

The same Python version gives byte-identical output (sorted iteration, seeded randomness,
PYTHONHASHSEED=0, gzip mtime 0). Output: one <slice>.jsonl.gz per slice, ground_truth.json,
LICENSE (the PSF licence of the material) next to the hand-written README.md.
"""

from __future__ import annotations

import argparse
import ast
import collections
import dataclasses
import email
import email.policy
import gzip
import hashlib
import importlib
import inspect
import io
import itertools
import json
import os
import platform
import pydoc
import random
import re
import sys
import sysconfig
import textwrap
import warnings
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "platform"))
from pajama.data.slices import SLICE_TO_SET_NAME, SLICES  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "platform" / "pajama" / "resources" / "corpus"
STDLIB = Path(sysconfig.get_paths()["stdlib"])
INCLUDE = Path(sysconfig.get_paths()["include"])
PY_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
DOCS_URL = f"https://docs.python.org/{PY_VERSION}"
GITHUB_BLOB = f"https://github.com/python/cpython/blob/{PY_VERSION}"
LICENSE_ID = "PSF-2.0"

# Most text bytes of clean documents per slice (the books are ~0.65 MB, all of them taken), ~3.2 MB
# in all where the sources allow: enough tokens for a tiny GPT-NeoX to learn something, small
# enough to pretrain on 2 CPU cores in minutes.
BUDGET_BYTES = {
    "common_crawl": 520_000,
    "c4": 360_000,
    "github": 650_000,
    "arxiv": 400_000,
    "wikipedia": 500_000,
    "stackexchange": 400_000,
}
# Clean documents shorter than this would be indistinguishable from the planted "very short" junk.
MIN_CLEAN_WORDS = 30

# Books: one "book" per documentation chapter, each chapter a module rendered by pydoc.
BOOKS = {
    "Text Processing Services": ("string", "textwrap", "difflib", "re"),
    "Data Types": ("collections", "heapq", "bisect", "copy", "pprint", "reprlib", "graphlib"),
    "Numeric and Mathematical Modules": ("numbers", "fractions", "statistics", "random"),
    "Functional Programming Modules": ("itertools", "functools", "operator"),
    "File and Directory Access": ("pathlib", "fnmatch", "glob", "shutil", "tempfile", "filecmp"),
    "Concurrent Execution": ("threading", "queue", "sched", "concurrent.futures"),
    "Command Line Interfaces": ("argparse", "getopt", "optparse"),
}
# Common Crawl: these modules' pydoc HTML pages, one web page per public class or function.
WEB_MODULES = (
    "json", "csv", "html", "urllib.parse", "http.cookies", "base64", "gzip", "hashlib", "secrets",
    "uuid", "dataclasses", "contextlib", "abc", "tokenize", "shlex", "cmd", "struct", "zipfile",
    "calendar", "ipaddress", "email.message", "datetime", "tarfile", "smtplib", "http.client",
    "urllib.request", "logging.handlers", "socketserver", "mailbox", "plistlib", "xml.dom.minidom",
)
# C modules whose docstrings (read at run time) feed stackexchange and c4 alongside the .py ones.
C_MODULES = (
    "builtins", "sys", "math", "cmath", "time", "gc", "marshal", "posix", "array", "binascii",
    "zlib", "select", "mmap", "unicodedata", "fcntl", "resource", "syslog", "termios", "grp", "pwd",
    "atexit", "faulthandler", "pyexpat",
)
# Private pure-Python twins of C modules, richly documented; mined like the C modules.
PRIVATE_PY_MODULES = ("_pydecimal", "_pyio")
# Neither mined for docstrings nor shipped as code: installed packages, tests (some hold
# deliberately broken files), generated codec tables, the topics dict the wikipedia slice uses.
SKIP_DIRS = {"site-packages", "test", "tests", "idle_test", "__pycache__", "encodings", "pydoc_data"}

# Planted junk per kind, and planted duplicates, per slice (web slices get the most, as in reality).
JUNK_KINDS = ("very_short", "lorem_ipsum", "symbol_soup", "all_caps_spam", "boilerplate",
              "repetitive_lines")
JUNK_PER_KIND = {"common_crawl": 5, "c4": 4, "github": 2, "stackexchange": 2, "wikipedia": 2,
                 "arxiv": 2, "books": 1}
EXACT_DUPLICATES = {"common_crawl": 6, "c4": 5, "github": 4, "stackexchange": 3, "wikipedia": 2,
                    "arxiv": 2, "books": 1}
NEAR_DUPLICATES = {"common_crawl": 5, "c4": 4, "github": 3, "stackexchange": 3, "wikipedia": 2,
                   "arxiv": 2, "books": 1}
# (from slice, to slice, count): web scrapes of Wikipedia and GitHub, C4 inside Common Crawl, ...
CROSS_EXACT_DUPLICATES = (("c4", "common_crawl", 3), ("wikipedia", "common_crawl", 2),
                          ("github", "common_crawl", 1), ("stackexchange", "c4", 2))
CROSS_NEAR_DUPLICATES = (("wikipedia", "common_crawl", 1), ("c4", "common_crawl", 2))
SHINGLE_WORDS = 5
# No two clean documents are this similar (word-shingle Jaccard); planted near duplicates are >= 0.8.
CLEAN_MAX_JACCARD = 0.6


@dataclasses.dataclass(frozen=True)
class Ref:
    """Where a document came from; each slice turns it into that slice's RedPajama meta."""

    key: str
    title: str
    url: str
    path: str = ""
    language: str = "en"
    repo: str = "python/cpython"


@dataclasses.dataclass
class Doc:
    slice: str
    text: str
    ref: Ref
    role: str = "clean"  # clean | junk:<kind> | exact_duplicate | near_duplicate
    original: Doc | None = None
    edits: int = 0


# ---------------------------------------------------------------------------------------------
# Helpers


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def stable_order(items, key):
    """Items in an order that is fixed by content, not by file-system or dict order."""
    return sorted(items, key=lambda item: sha256(key(item)))


def word_count(text: str) -> int:
    return len(text.split())


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def scrub(text: str) -> str:
    """Remove what would tie the text to this machine or process: install paths, object addresses."""
    text = text.replace(str(STDLIB) + os.sep, "Lib/").replace(str(STDLIB), "Lib")
    text = _ADDRESS.sub("", text)
    text = "\n".join(line.rstrip() for line in text.splitlines()).strip("\n") + "\n"
    home = os.path.expanduser("~")
    if sys.prefix in text or (home not in ("", "/") and home + "/" in text):
        raise RuntimeError(f"a local path leaked into the corpus text: {text[:200]!r}")
    return text


def unwrap_paragraphs(text: str) -> list[str]:
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]


def is_prose(paragraph: str) -> bool:
    return (word_count(paragraph) >= 8 and paragraph[-1] in ".!?"
            and ">>>" not in paragraph and not re.search(r"[{}\[\]]|::", paragraph))


def word_shingles(text: str) -> set[tuple[str, ...]]:
    words = text.lower().split()
    return {tuple(words[i:i + SHINGLE_WORDS]) for i in range(max(1, len(words) - SHINGLE_WORDS + 1))}


def jaccard(a: str, b: str) -> float:
    sa, sb = word_shingles(a), word_shingles(b)
    return len(sa & sb) / len(sa | sb)


def require(path: Path) -> Path:
    if not path.exists():
        raise SystemExit(f"{path} is missing: build the corpus with a full CPython install "
                         "(python.org, pyenv or conda), whose stdlib ships its test data and docs")
    return path


# ---------------------------------------------------------------------------------------------
# Parsing the standard library


@dataclasses.dataclass
class Member:
    module: str
    qualname: str
    kind: str  # class | function | method
    signature: str
    doc: str
    source: str = ""  # Python source of a function; empty for C
    path: str = ""  # Lib/... file of a Python module; empty for C


def stdlib_python_files() -> list[Path]:
    files = []
    for path in sorted(STDLIB.rglob("*.py")):
        parts = path.relative_to(STDLIB).parts
        if SKIP_DIRS.isdisjoint(parts[:-1]) and not parts[0].startswith("config-"):
            files.append(path)
    return files


def module_name(path: Path) -> str:
    parts = list(path.relative_to(STDLIB).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_public(name: str) -> bool:
    return not name.startswith("_")


def parse_members(path: Path) -> tuple[str, list[Member]]:
    """The module docstring and the documented public classes, functions and methods."""
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    # Split once: ast.get_source_segment re-splits the whole file on every call (minutes over the
    # stdlib). newline="" splits on \n, \r and \r\n only, as the parser counts lines.
    lines = io.StringIO(source, newline="").readlines()
    module = module_name(path)
    repo_path = "Lib/" + path.relative_to(STDLIB).as_posix()
    members = []

    def add(node, qualname, kind):
        doc = ast.get_docstring(node)
        if not doc:
            return
        signature = "" if kind == "class" else f"({ast.unparse(node.args)})"
        # padded: a method's first line gets its indentation back, so dedent works.
        span = "".join(lines[node.lineno - 1:node.end_lineno])
        at = SimpleNamespace(lineno=1, end_lineno=node.end_lineno - node.lineno + 1,
                             col_offset=node.col_offset, end_col_offset=node.end_col_offset)
        code = textwrap.dedent(ast.get_source_segment(span, at, padded=True) or "")
        members.append(Member(module, qualname, kind, signature, doc, code, repo_path))

    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and is_public(node.name):
            add(node, node.name, "function")
        elif isinstance(node, ast.ClassDef) and is_public(node.name):
            add(node, node.name, "class")
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and is_public(item.name):
                    add(item, f"{node.name}.{item.name}", "method")
    return ast.get_docstring(tree) or "", members


def docstring_modules() -> dict[str, tuple[Path, str, list[Member]]]:
    """Public stdlib modules not already used by the books or web pages, with their docstrings."""
    taken = {m for chapter in BOOKS.values() for m in chapter} | set(WEB_MODULES)
    modules = {}
    for path in stdlib_python_files():
        name = module_name(path)
        if any(part.startswith("_") for part in name.split(".")) and name not in PRIVATE_PY_MODULES:
            continue
        # Submodules too: concurrent.futures' pydoc chapter documents concurrent.futures.thread's classes.
        if any(name == t or name.startswith(t + ".") for t in taken):
            continue
        doc, members = parse_members(path)
        modules[name] = (path, doc, members)
    return modules


def c_module_members() -> list[Member]:
    """Documented public functions, classes and methods of the C modules in C_MODULES."""
    members = []

    def add(obj, module, qualname, kind):
        doc = inspect.getdoc(obj)
        if not doc:
            return
        try:
            signature = "" if kind == "class" else str(inspect.signature(obj))
        except (TypeError, ValueError):  # many C callables expose no signature
            signature = ""
        members.append(Member(module, qualname, kind, signature, doc))

    for name in C_MODULES:
        module = importlib.import_module(name)
        for attr in sorted(dir(module)):
            obj = getattr(module, attr)
            if not is_public(attr):
                continue
            if inspect.isbuiltin(obj):
                add(obj, name, attr, "function")
            elif inspect.isclass(obj) and obj.__module__ == name:
                add(obj, name, attr, "class")
                for method_name, method in sorted(vars(obj).items()):
                    if is_public(method_name) and callable(method):
                        add(method, name, f"{attr}.{method_name}", "method")
    return members


def assign_docstring_slice(key: str, whole_module: bool) -> str:
    """Split the docstrings between arxiv, stackexchange and c4 so their texts never overlap.

    A public Python module goes whole to one slice (an arxiv paper is a module); the members of C
    modules and private twins are dealt one by one to the Q&A and prose slices.
    """
    bucket = int(sha256(key), 16) % 10
    if whole_module:
        return "arxiv" if bucket < 4 else "stackexchange" if bucket < 7 else "c4"
    return "stackexchange" if bucket < 3 else "c4"


def docstring_members(slice_name: str, modules, c_members) -> list[Member]:
    """The members whose docstrings go to slice_name, a module's own docstring as kind "module"."""
    chosen = []
    for name, (_, module_doc, members) in modules.items():
        if name in PRIVATE_PY_MODULES:
            chosen += [m for m in members
                       if assign_docstring_slice(f"{name}.{m.qualname}", False) == slice_name]
        elif assign_docstring_slice(name, True) == slice_name:
            chosen.append(Member(name, "", "module", "", module_doc))
            chosen += members
    chosen += [m for m in c_members
               if assign_docstring_slice(f"{m.module}.{m.qualname}", False) == slice_name]
    return chosen


def library_url(module: str, anchor: str = "") -> str:
    return f"{DOCS_URL}/library/{module}.html" + (f"#{module}.{anchor}" if anchor else "")


# ---------------------------------------------------------------------------------------------
# Clean documents, one builder per slice


def github_docs() -> list[Doc]:
    """Stdlib .py files and public C headers that pass RedPajama's GitHub quality thresholds."""
    notice = licence_notice()
    candidates = []
    sources = [(p, "Lib/" + p.relative_to(STDLIB).as_posix(), "Python") for p in stdlib_python_files()]
    sources += [(p, "Include/" + p.name, "C") for p in sorted(require(INCLUDE).glob("*.h"))]
    for path, repo_path, language in sources:
        text = path.read_text(encoding="utf-8")
        if not 1_500 <= len(text) <= 6_000 or not passes_github_thresholds(text):
            continue
        candidates.append(Doc("github", text, Ref(repo_path, path.name, f"{GITHUB_BLOB}/{repo_path}",
                                                  path=repo_path, language=language)))
    # Many repositories' files open with a licence header: give every fourth Python file one.
    for doc in candidates:
        if doc.ref.language == "Python" and int(sha256(doc.ref.key), 16) % 4 == 0:
            doc.text = notice + doc.text
    return candidates


def github_stats(text: str) -> dict:
    lines = text.splitlines() or [""]
    return {
        "size": len(text.encode("utf-8")),
        "line_count": len(lines),
        "max_line_length": max(len(line) for line in lines),
        "avg_line_length": round(sum(len(line) for line in lines) / len(lines), 2),
        "alnum_prop": round(sum(c.isalnum() for c in text) / max(1, len(text)), 4),
    }


def passes_github_thresholds(text: str) -> bool:
    stats = github_stats(text)
    return (stats["max_line_length"] <= 1000 and stats["avg_line_length"] <= 100
            and stats["alnum_prop"] >= 0.25)


def licence_notice() -> str:
    licence = require(STDLIB / "LICENSE.txt").read_text(encoding="utf-8")
    years = re.search(r"Copyright \(c\) 2001,[\d,\s]*?(\d{4}) Python Software Foundation", licence)
    if not years:
        raise SystemExit(f"{STDLIB / 'LICENSE.txt'}: no PSF copyright notice found")
    return (f"# Copyright (c) 2001-{years.group(1)} Python Software Foundation; All Rights Reserved\n"
            f"# Licensed under the PSF License Agreement (SPDX-License-Identifier: {LICENSE_ID})\n\n")


def wikipedia_docs() -> list[Doc]:
    """The language reference topics pydoc ships (pydoc_data.topics) as encyclopedia articles.

    Long topics are split at their subsection headings, one article per subsection.
    """
    from pydoc_data.topics import topics

    docs = []
    for key in sorted(topics):
        title = topics[key].split("\n", 1)[0].strip()
        pieces = [(title, topics[key])]
        if len(topics[key]) > 6_000:
            parts = re.split(r"(?m)^(.+)\n=+\n", topics[key])
            pieces = [(title, parts[0])] + [(f"{heading.strip()} ({title})", f"{heading}\n{body}")
                                            for heading, body in zip(parts[1::2], parts[2::2])]
        for article_title, text in pieces:
            # Plain-text articles: drop the reST underlines below headings.
            text = re.sub(r"(?m)^[*=\-~^]{3,}\n", "", text)
            docs.append(Doc("wikipedia", scrub(text), Ref(f"topic:{key}:{article_title}",
                                                          article_title, f"{DOCS_URL}/search.html?q={key}")))
    return [d for d in docs if word_count(d.text) >= MIN_CLEAN_WORDS]


def books_docs() -> list[Doc]:
    """Each book: a documentation chapter, each of its modules a pydoc plain-text chapter."""
    docs = []
    for book, modules in BOOKS.items():
        chapters = []
        for number, name in enumerate(modules, start=1):
            text = pydoc.render_doc(importlib.import_module(name), renderer=pydoc.plaintext)
            # pydoc's disclaimer would be the same paragraph in every chapter.
            text = re.sub(r"\n +The following documentation is automatically generated.*?listed above\.\n",
                          "\n", text, flags=re.DOTALL)
            # A book has no ASCII-art gutters: turn pydoc's " |  " class boxes into indentation.
            text = re.sub(r"(?m)^(\s*)\|  ?", r"\1   ", text)
            chapters.append(f"Chapter {number}. The {name} module\n\n{text}")
        title = f"The Python {PY_VERSION} Standard Library: {book}"
        docs.append(Doc("books", scrub(f"{title}\n\n\n" + "\n\n".join(chapters)),
                        Ref(f"book:{book}", title, f"{DOCS_URL}/library/index.html")))
    return docs


_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                   "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                   "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIALS.get(c, c) for c in text)


def latex_body(doc: str) -> str:
    """Docstring paragraphs as LaTeX: prose escaped, indented code and doctests in verbatim blocks."""
    blocks = []
    for paragraph in re.split(r"\n\s*\n", doc.strip()):
        lines = paragraph.splitlines()
        for is_code, run in itertools.groupby(lines, key=lambda line: line.startswith((" ", "\t", ">>>"))):
            run = list(run)
            if is_code:
                blocks.append("\\begin{verbatim}\n" + textwrap.dedent("\n".join(run)) + "\n\\end{verbatim}")
            else:
                text = latex_escape(" ".join(" ".join(run).split()))
                blocks.append(re.sub(r"`([^`]+)`", r"\\texttt{\1}", text))
    return "\n\n".join(blocks)


def arxiv_docs(modules) -> list[Doc]:
    """One paper per module, as RedPajama's arxiv cleaner outputs it: from the first \\section on."""
    docs = []
    for name, (_, module_doc, members) in modules.items():
        if (name in PRIVATE_PY_MODULES or assign_docstring_slice(name, True) != "arxiv"
                or len(module_doc) < 200 or len(members) < 3):
            continue
        parts = [f"\\section{{Introduction}}\n\n{latex_body(module_doc)}"]
        section = None
        for member in members[:40]:
            owner = member.qualname.split(".")[0] if member.kind == "method" else None
            if member.kind == "class":
                section = member.qualname
                parts.append(f"\\section{{The \\texttt{{{latex_escape(member.qualname)}}} class}}"
                             f"\n\n{latex_body(member.doc)}")
            elif owner is not None and owner == section:
                parts.append(f"\\subsection{{\\texttt{{{latex_escape(member.qualname)}}}}}\n\n"
                             f"{latex_body(member.doc)}")
            else:
                if section != "functions":
                    section = "functions"
                    parts.append("\\section{Functions}")
                parts.append(f"\\subsection{{\\texttt{{{latex_escape(member.qualname + member.signature)}}}}}"
                             f"\n\n{latex_body(member.doc)}")
        text = "\n\n".join(parts) + "\n"
        docs.append(Doc("arxiv", text, Ref(f"arxiv:{name}", f"The {name} module", library_url(name),
                                           path=name)))
    return [d for d in docs if len(d.text) >= 1_500]


_QUESTIONS = (
    ("What does `{qual}` do?",
     ("I came across `{qual}{sig}` in the `{mod}` module of the standard library. What does it do, "
      "and when would I use it?")),
    ("How do I use `{qual}` from Python's {mod} module?",
     ("The name `{qual}` shows up in code I'm reading, but I'm not sure how it behaves. How is it "
      "meant to be used?")),
    ("What is `{mod}.{qual}` for?",
     ("Can someone explain the purpose of `{qual}{sig}` in `{mod}`? I couldn't find a clear "
      "explanation.")),
)


def stackexchange_docs(modules, c_members) -> list[Doc]:
    """A question per documented class or function; answers: its docstring, then its source."""
    docs = []
    for member in docstring_members("stackexchange", modules, c_members):
        if member.kind == "module" or len(member.doc) < 150:
            continue
        key = f"{member.module}.{member.qualname}"
        title, body = _QUESTIONS[int(sha256(key), 16) % len(_QUESTIONS)]
        fields = {"qual": member.qualname, "sig": member.signature, "mod": member.module}
        text = f"Q: {title.format(**fields)}\n\n{body.format(**fields)}\n\nA: {member.doc}\n"
        if member.kind != "class" and member.source and member.source.count("\n") < 25:
            source = "\n".join("    " + line for line in member.source.splitlines())
            text += f"\nA: Here is the implementation from {member.path}:\n\n{source}\n"
        docs.append(Doc("stackexchange", text, Ref(f"se:{key}", title.format(**fields),
                                                   library_url(member.module, member.qualname))))
    return [d for d in docs if word_count(d.text) >= MIN_CLEAN_WORDS]


def c4_docs(modules, c_members) -> list[Doc]:
    """Short clean prose: the prose paragraphs of one docstring, one per line, as C4 keeps them."""
    docs = []
    for member in docstring_members("c4", modules, c_members):
        paragraphs, size = [], 0
        for paragraph in filter(is_prose, unwrap_paragraphs(member.doc)):
            if size + len(paragraph) > 3_000:
                break
            paragraphs.append(paragraph)
            size += len(paragraph)
        text = "\n".join(paragraphs)
        if len(text) >= 200 and word_count(text) >= MIN_CLEAN_WORDS:
            key = ".".join(filter(None, (member.module, member.qualname)))
            docs.append(Doc("c4", text + "\n", Ref(f"c4:{key}", key,
                                                   library_url(member.module, member.qualname))))
    return docs


class _HTMLText(HTMLParser):
    """Visible text of an HTML page, as (heading, text) sections split at h1-h3."""

    BLOCK = frozenset({"p", "div", "br", "li", "dt", "dd", "tr", "table", "dl", "ul", "ol", "pre",
                       "hr", "section", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote"})
    HIDDEN = frozenset({"script", "style", "head", "title"})

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.sections: list[tuple[str, list[str]]] = [("", [])]
        self.hidden: list[str] = []  # open tags whose text is not shown (incl. Sphinx's "¶" links)
        self.pre = 0
        self.heading: list[str] | None = None

    def emit(self, text: str) -> None:
        chunks = self.sections[-1][1]
        if not self.pre and (not chunks or chunks[-1].endswith("\n")):
            text = text.lstrip(" ")
        if text:
            chunks.append(text)

    def handle_starttag(self, tag, attrs):
        if tag in self.HIDDEN or ("class", "headerlink") in attrs:
            self.hidden.append(tag)
        elif tag in ("h1", "h2", "h3"):
            self.heading = []
        elif tag == "pre":
            self.pre += 1
        if tag in self.BLOCK:
            self.emit("\n")

    def handle_endtag(self, tag):
        if self.hidden and tag == self.hidden[-1]:
            self.hidden.pop()
        elif tag in ("h1", "h2", "h3") and self.heading is not None:
            title = " ".join("".join(self.heading).split())
            self.sections.append((title, [title, "\n"]))
            self.heading = None
        elif tag == "pre":
            self.pre -= 1
        if tag in self.BLOCK:
            self.emit("\n")

    def handle_data(self, data):
        if self.hidden:
            return
        if self.heading is not None:
            self.heading.append(data)
            return
        data = data.replace("\xa0", " ")
        self.emit(data if self.pre else re.sub(r"\s+", " ", data))

    def result(self) -> list[tuple[str, str]]:
        out = []
        for title, chunks in self.sections:
            text = "\n".join(line.rstrip() for line in "".join(chunks).splitlines())
            text = re.sub(r"\n{3,}", "\n\n", text).strip()
            if text:
                out.append((title, text))
        return out


def html_sections(markup: str) -> list[tuple[str, str]]:
    parser = _HTMLText()
    parser.feed(markup)
    parser.close()
    return parser.result()


def common_crawl_docs() -> list[Doc]:
    """Web pages: IDLE's HTML help by section, IDLE's text files, mailing-list messages, API pages."""
    docs = []

    def add(key, title, url, text):
        if word_count(text) >= MIN_CLEAN_WORDS:
            docs.append(Doc("common_crawl", scrub(text), Ref(f"cc:{key}", title, url)))

    markup = require(STDLIB / "idlelib" / "help.html").read_text(encoding="utf-8")
    main = markup.split('<div class="body" role="main">', 1)[1].split('<div class="sphinxsidebar"', 1)[0]
    for title, text in html_sections(main):
        anchor = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
        add(f"idle-help:{title}", f"IDLE — {title}", f"{DOCS_URL}/library/idle.html#{anchor}", text)

    idle = STDLIB / "idlelib"
    for name in ("NEWS.txt", "NEWS2x.txt"):
        releases = re.split(r"\n(?=What's New in IDLE )", require(idle / name).read_text(encoding="utf-8"))
        for release in releases:
            heading = release.strip().split("\n", 1)[0]
            add(f"idle-news:{name}:{heading}", heading, f"{GITHUB_BLOB}/Lib/idlelib/{name}", release)
    for name in ("README.txt", "HISTORY.txt", "TODO.txt", "CREDITS.txt", "extend.txt"):
        add(f"idle:{name}", f"IDLE {name}", f"{GITHUB_BLOB}/Lib/idlelib/{name}",
            require(idle / name).read_text(encoding="utf-8"))
    add("email-architecture", "email package architecture", f"{GITHUB_BLOB}/Lib/email/architecture.rst",
        require(STDLIB / "email" / "architecture.rst").read_text(encoding="utf-8"))
    add("license", "History and License", f"{DOCS_URL}/license.html",
        require(STDLIB / "LICENSE.txt").read_text(encoding="utf-8"))

    for path in sorted(require(STDLIB / "test" / "test_email" / "data").glob("msg_*.txt")):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        bodies = []
        for part in message.walk():
            if part.get_content_type() == "text/plain":
                try:
                    bodies.append(part.get_content())
                except (LookupError, UnicodeError):  # test messages with deliberately bad charsets
                    continue
        subject = " ".join(str(message.get("subject", "(no subject)")).split())
        add(f"email:{path.name}", subject, f"{GITHUB_BLOB}/Lib/test/test_email/data/{path.name}",
            f"{subject}\n\n" + "\n\n".join(bodies))

    for name in WEB_MODULES:
        module = importlib.import_module(name)
        for attr in sorted(getattr(module, "__all__", None) or dir(module)):
            obj = getattr(module, attr, None)
            if (not is_public(attr) or not callable(obj) or getattr(obj, "__module__", None) != name
                    or not (getattr(obj, "__doc__", None) or "").strip()):
                continue
            page = pydoc.html.page(f"{name}.{attr}", pydoc.html.document(obj, attr))
            text = "\n\n".join(body for _, body in html_sections(page))
            add(f"pydoc:{name}.{attr}", f"{name}.{attr}", library_url(name, attr),
                f"{name}.{attr} — Python {PY_VERSION} documentation\n\n{text}")
    return docs


# ---------------------------------------------------------------------------------------------
# RedPajama meta per slice


def slice_meta(slice_name: str, text: str, ref: Ref) -> dict:
    meta = {"redpajama_set_name": SLICE_TO_SET_NAME[slice_name]}
    if slice_name == "github":
        meta |= {"repo_name": ref.repo, "path": ref.path or ref.title, "language": ref.language,
                 "license": LICENSE_ID, **github_stats(text)}
    elif slice_name == "books":
        meta |= {"short_book_title": ref.title, "url": ref.url}
    elif slice_name == "arxiv":
        meta |= {"arxiv_id": f"python-stdlib/{sha256(ref.key)[:10]}", "url": ref.url, "language": "en"}
    elif slice_name == "wikipedia":
        meta |= {"title": ref.title, "url": ref.url, "language": "en"}
    elif slice_name == "stackexchange":
        meta |= {"url": ref.url, "language": "en", "source": "stackexchange"}
    elif slice_name == "c4":
        meta |= {"url": ref.url, "language": "en", "source": "c4"}
    else:
        meta |= {"url": ref.url, "title": ref.title, "language": "en", "source": "cc"}
    return meta


# ---------------------------------------------------------------------------------------------
# Planted junk and duplicates

_LOREM = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt "
          "ut labore et dolore magna aliqua enim ad minim veniam quis nostrud exercitation ullamco "
          "laboris nisi aliquip ex ea commodo consequat duis aute irure in reprehenderit voluptate "
          "velit esse cillum fugiat nulla pariatur excepteur sint occaecat cupidatat non proident "
          "sunt culpa qui officia deserunt mollit anim id est laborum").split()
_SPAM = ("FREE", "CLICK HERE", "BUY NOW", "LIMITED TIME OFFER", "ACT NOW", "WINNER", "100% GUARANTEED",
         "CHEAP PILLS", "NO CREDIT CHECK", "MAKE MONEY FAST", "BEST PRICE", "DOWNLOAD NOW",
         "CASINO BONUS", "HOT DEALS", "DON'T MISS OUT", "SUBSCRIBE TODAY")
_COOKIE_BANNERS = (
    "We use cookies to improve your experience on our site. Accept cookies | Manage preferences",
    "This site uses cookies. By continuing to browse you agree to our use of cookies.",
    "Accept all cookies",
)
_BOILERPLATE = (
    "Home | About | Contact | Privacy Policy | Terms of Service",
    "Click here to subscribe to our newsletter.",
    "Share on Facebook | Share on Twitter | Email this page",
    "Log in | Register | Forgot your password?",
    "Click here to read more.",
    "Skip to main content",
    "Copyright 2023. All rights reserved.",
    "Please enable JavaScript to view this page.",
    "Back to top",
)
_SHORT = ("Loading...", "404 Not Found", "Home", "Page 2 of 7", "Untitled", "TODO", "Coming soon!",
          "Sign in", "(no content)", "test post please ignore", "Redirecting", "pass")
_REPEATED_LINES = ("Loading...", "Error: connection reset by peer", "0 0 0 0 0 0 0 0", "null",
                   "Read more", "[image]", "----------", "Buy now", "Retrying request")


def junk_text(kind: str, rng: random.Random) -> str:
    if kind == "very_short":
        return f"{rng.choice(_SHORT)} {rng.randint(1, 999)}\n"
    if kind == "lorem_ipsum":
        sentences = []
        for _ in range(rng.randint(8, 20)):
            words = [rng.choice(_LOREM) for _ in range(rng.randint(6, 16))]
            sentences.append(" ".join(words).capitalize() + ".")
        return "Lorem ipsum dolor sit amet. " + " ".join(sentences) + "\n"
    if kind == "symbol_soup":
        alphabet = "#$%&*+-/<=>@[]^_{|}~!?;:.,()\\" + "0123456789"
        lines = ["".join(rng.choice(alphabet) for _ in range(rng.randint(40, 90)))
                 for _ in range(rng.randint(6, 14))]
        return "\n".join(lines) + "\n"
    if kind == "all_caps_spam":
        phrases = [rng.choice(_SPAM) + "!" * rng.randint(1, 3) for _ in range(rng.randint(25, 50))]
        return " ".join(phrases) + "\n"
    if kind == "boilerplate":
        lines = [rng.choice(_COOKIE_BANNERS)] + rng.sample(_BOILERPLATE, rng.randint(5, len(_BOILERPLATE)))
        return "\n".join(lines) + "\n"
    if kind == "repetitive_lines":
        # A number per document keeps two such documents from being near-duplicates of each other.
        line = f"{rng.choice(_REPEATED_LINES)} [{rng.randint(100, 999)}]"
        lines = [line] * rng.randint(30, 80)
        lines.insert(rng.randint(0, len(lines)), f"Attempt {rng.randint(1, 99)} failed.")
        return "\n".join(lines) + "\n"
    raise ValueError(f"unknown junk kind {kind!r}")


# Planted documents live on these hosts (and forks); their meta never says what they are.
PLANTED_HOSTS = ("pydocs.example.net", "devnotes.example.org", "codeguide.example.com")


def planted_host(text: str) -> str:
    return PLANTED_HOSTS[int(sha256(text), 16) % len(PLANTED_HOSTS)]


def junk_ref(slice_name: str, text: str) -> Ref:
    digest, host = sha256(text)[:12], planted_host(text)
    title = " ".join(text.split()[:6])[:60]
    if slice_name == "github":
        return Ref(f"planted:{digest}", title, f"https://{host}/site-assets/{digest}.txt",
                   path=f"assets/{digest}.txt", language="Text", repo=f"{host.split('.')[0]}/site-assets")
    return Ref(f"planted:{digest}", title, f"https://{host}/{slice_name}/{digest}", path=digest)


def copy_ref(ref: Ref, target_slice: str, text: str) -> Ref:
    host = planted_host(text)
    return dataclasses.replace(ref, key=f"{ref.key}@{target_slice}:{sha256(text)[:12]}",
                               url=re.sub(r"^https://[^/]+", f"https://{host}", ref.url),
                               repo=f"{host.split('.')[0]}/{ref.repo.split('/')[-1]}")


def edit_words(text: str, rng: random.Random, edits: int) -> str:
    """Replace a few words by other words of the same document, keeping the layout."""
    tokens = re.split(r"(\s+)", text)
    positions = [i for i, t in enumerate(tokens) if t.isalpha() and len(t) > 3]
    vocabulary = sorted({tokens[i] for i in positions})
    for position in sorted(rng.sample(positions, edits)):
        tokens[position] = rng.choice([w for w in vocabulary if w != tokens[position]])
    return "".join(tokens)


def plant(clean: dict[str, list[Doc]], seed: int) -> dict[str, list[Doc]]:
    rng = random.Random(seed)
    planted = {s: [] for s in SLICES}
    # Each clean document is the original of at most one planted copy.
    pools = {s: stable_order(docs, key=lambda d: d.ref.key) for s, docs in clean.items()}

    def pick(slice_name, min_words=0):
        for i, doc in enumerate(pools[slice_name]):
            if word_count(doc.text) >= min_words:
                return pools[slice_name].pop(i)
        raise RuntimeError(f"{slice_name}: no clean document left with {min_words}+ words to copy")

    for slice_name in SLICES:
        for kind in JUNK_KINDS:
            for _ in range(JUNK_PER_KIND[slice_name]):
                text = junk_text(kind, rng)
                planted[slice_name].append(Doc(slice_name, text, junk_ref(slice_name, text),
                                               role=f"junk:{kind}"))

    def copy(source_slice, target_slice, near):
        original = pick(source_slice, min_words=150 if near else 0)
        text, edits = original.text, 0
        if near:
            edits = min(5, max(2, word_count(text) // 200))
            text = edit_words(text, rng, edits)
        planted[target_slice].append(Doc(target_slice, text, copy_ref(original.ref, target_slice, text),
                                         role="near_duplicate" if near else "exact_duplicate",
                                         original=original, edits=edits))

    for slice_name in SLICES:
        for _ in range(EXACT_DUPLICATES[slice_name]):
            copy(slice_name, slice_name, near=False)
        for _ in range(NEAR_DUPLICATES[slice_name]):
            copy(slice_name, slice_name, near=True)
    for near, pairs in ((False, CROSS_EXACT_DUPLICATES), (True, CROSS_NEAR_DUPLICATES)):
        for source, target, count in pairs:
            for _ in range(count):
                copy(source, target, near=near)
    return planted


# ---------------------------------------------------------------------------------------------
# Output


class ShingleIndex:
    """Exact word-shingle Jaccard against every text added so far, via an inverted index."""

    def __init__(self):
        self.postings: dict[tuple[str, ...], list[int]] = {}
        self.sizes: list[int] = []

    def most_similar(self, text: str) -> float:
        shingles = word_shingles(text)
        shared = collections.Counter(i for s in shingles for i in self.postings.get(s, ()))
        return max((n / (len(shingles) + self.sizes[i] - n) for i, n in shared.items()), default=0.0)

    def add(self, text: str) -> None:
        shingles = word_shingles(text)
        for shingle in shingles:
            self.postings.setdefault(shingle, []).append(len(self.sizes))
        self.sizes.append(len(shingles))


def select_clean(candidates: dict[str, list[Doc]]) -> dict[str, list[Doc]]:
    """Each slice's candidates in content order up to its byte budget, skipping any document too
    similar to one already chosen (in any slice), so that the only duplicates are planted ones."""
    index = ShingleIndex()
    chosen = {}
    for slice_name in SLICES:
        chosen[slice_name], used = [], 0
        budget = BUDGET_BYTES.get(slice_name, float("inf"))
        for doc in stable_order(candidates[slice_name], key=lambda d: d.ref.key):
            if used >= budget:
                break
            if index.most_similar(doc.text) >= CLEAN_MAX_JACCARD:
                continue
            index.add(doc.text)
            chosen[slice_name].append(doc)
            used += len(doc.text.encode("utf-8"))
    return chosen


def check_only_planted_duplicates(docs_by_slice: dict[str, list[Doc]]) -> None:
    """Every text is unique except an exact duplicate and its original, which share theirs."""
    copies = {}
    for docs in docs_by_slice.values():
        for doc in docs:
            copies.setdefault(sha256(doc.text), []).append(doc)
    for group in copies.values():
        planted_pair = (len(group) == 2 and {d.role for d in group} == {"clean", "exact_duplicate"}
                        and any(d.original is other for d in group for other in group))
        if len(group) > 1 and not planted_pair:
            raise RuntimeError(f"unplanned duplicate text in {[d.slice for d in group]}: "
                               f"{group[0].text[:80]!r}")


def write_jsonl_gz(path: Path, docs: list[Doc]) -> None:
    buffer = io.BytesIO()
    # filename="" and mtime=0 keep the gzip header free of anything that changes between runs.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as gz:
        for doc in docs:
            record = {"text": doc.text, "meta": slice_meta(doc.slice, doc.text, doc.ref)}
            gz.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
    path.write_bytes(buffer.getvalue())


def build_corpus(out_dir: Path, seed: int = 1234) -> dict:
    warnings.simplefilter("ignore", DeprecationWarning)  # e.g. importing optparse-era modules
    modules = docstring_modules()
    c_members = c_module_members()
    candidates = {
        "common_crawl": common_crawl_docs(),
        "c4": c4_docs(modules, c_members),
        "github": github_docs(),
        "books": books_docs(),
        "arxiv": arxiv_docs(modules),
        "wikipedia": wikipedia_docs(),
        "stackexchange": stackexchange_docs(modules, c_members),
    }
    clean = select_clean(candidates)
    planted = plant(clean, seed)

    out_dir.mkdir(parents=True, exist_ok=True)
    truth = {
        "description": "Junk and duplicates planted by scripts/make_bundled_corpus.py. line_number "
                       "is the 1-based line of the document in <slice>.jsonl.gz (the jsonl reader's "
                       "doc_id is '<file>#<line_number>'); text_sha256 is the SHA-256 of its UTF-8 "
                       "text. Near duplicates give the Jaccard similarity of their lower-cased word "
                       f"{SHINGLE_WORDS}-gram sets with the original.",
        "python_version": sys.version.split()[0],
        # C docstrings vary with the platform's build, so byte-identical reruns need both to match.
        "platform": f"{sys.platform}-{platform.machine()}",
        "seed": seed,
        "junk_kinds": list(JUNK_KINDS),
        "totals": {},
        "slices": {},
    }
    rng = random.Random(seed)
    line_of = {}
    ordered = {}
    for slice_name in SLICES:
        docs = clean[slice_name] + planted[slice_name]
        docs = stable_order(docs, key=lambda d: d.ref.key)
        rng.shuffle(docs)
        ordered[slice_name] = docs
        for line_number, doc in enumerate(docs, start=1):
            line_of[id(doc)] = (slice_name, line_number)

    for slice_name in SLICES:
        docs = ordered[slice_name]
        write_jsonl_gz(out_dir / f"{slice_name}.jsonl.gz", docs)
        entry = {
            "file": f"{slice_name}.jsonl.gz",
            "set_name": SLICE_TO_SET_NAME[slice_name],
            "documents": len(docs),
            "text_bytes": sum(len(d.text.encode("utf-8")) for d in docs),
            "clean_documents": sum(d.role == "clean" for d in docs),
            "counts": {"junk": {k: 0 for k in JUNK_KINDS}, "exact_duplicates": 0, "near_duplicates": 0},
            "junk": [],
            "exact_duplicates": [],
            "near_duplicates": [],
        }
        for line_number, doc in enumerate(docs, start=1):
            digest = sha256(doc.text)
            if doc.role.startswith("junk:"):
                kind = doc.role.split(":", 1)[1]
                entry["junk"].append({"line_number": line_number, "kind": kind, "text_sha256": digest})
                entry["counts"]["junk"][kind] += 1
            elif doc.role in ("exact_duplicate", "near_duplicate"):
                source_slice, source_line = line_of[id(doc.original)]
                record = {"line_number": line_number, "text_sha256": digest,
                          "original": {"slice": source_slice, "line_number": source_line,
                                       "text_sha256": sha256(doc.original.text)}}
                if doc.role == "near_duplicate":
                    record |= {"edited_words": doc.edits,
                               "word_shingle_jaccard": round(jaccard(doc.text, doc.original.text), 4)}
                entry[doc.role + "s"].append(record)
                entry["counts"][doc.role + "s"] += 1
        truth["slices"][slice_name] = entry
    check_only_planted_duplicates(ordered)

    slices = truth["slices"].values()
    truth["totals"] = {
        "documents": sum(e["documents"] for e in slices),
        "text_bytes": sum(e["text_bytes"] for e in slices),
        "clean_documents": sum(e["clean_documents"] for e in slices),
        "junk": sum(len(e["junk"]) for e in slices),
        "exact_duplicates": sum(len(e["exact_duplicates"]) for e in slices),
        "near_duplicates": sum(len(e["near_duplicates"]) for e in slices),
    }
    (out_dir / "ground_truth.json").write_text(json.dumps(truth, indent=1) + "\n", encoding="utf-8")
    (out_dir / "LICENSE").write_text(require(STDLIB / "LICENSE.txt").read_text(encoding="utf-8"),
                                     encoding="utf-8")
    return truth


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--seed", type=int, default=1234, help="seed for planting junk and duplicates")
    args = parser.parse_args(argv)
    # pydoc prints sets and the PYTHONDOCS link as found: pin both so reruns are byte-identical.
    if os.environ.get("PYTHONHASHSEED") != "0" or "PYTHONDOCS" in os.environ:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDOCS"} | {"PYTHONHASHSEED": "0"}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    truth = build_corpus(args.out, args.seed)
    print(json.dumps(truth["totals"]))


if __name__ == "__main__":
    main()
