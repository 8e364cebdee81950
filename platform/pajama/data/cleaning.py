"""Per-slice text cleaning that turns a source's markup into the document text RedPajama-1T kept.

- Wikipedia: wikitext -> article text (templates, tables, references, media and category links
  removed; link labels kept), as the `wikipedia` dataset that RedPajama-1T used did with
  mwparserfromhell.
- arXiv: LaTeX project -> body text (preamble, comments, bibliography and appendix dropped;
  argument-free macros expanded), as RedPajama-1T's arxiv_cleaner did.
- GitHub: a leading licence header comment is stripped.
- CommonCrawl: web page -> its main content; StackExchange: post HTML -> text (resiliparse,
  paragraphs kept).
"""

import re
from collections.abc import Iterable

import mwparserfromhell
from resiliparse.extract.html2text import extract_plain_text

# --- HTML -----------------------------------------------------------------------------------


def html_to_text(html: str) -> str:
    """Visible text of an HTML fragment (a StackExchange post), keeping paragraphs, lists and <pre> blocks."""
    return extract_plain_text(html, preserve_formatting=True, main_content=False).strip()


def html_main_text(html: str) -> str:
    """Main content of a web page: navigation, headers, footers and other boilerplate dropped."""
    return extract_plain_text(html, preserve_formatting=True, main_content=True).strip()


# --- Wikipedia ------------------------------------------------------------------------------

# English canonical names; dumps add their localised names from <siteinfo> (namespaces 6 and 14).
MEDIA_LINK_PREFIXES = ("File", "Image", "Media")
CATEGORY_LINK_PREFIXES = ("Category",)
_DROPPED_WIKI_TAGS = {"ref", "references", "table", "gallery", "timeline", "graph"}
_MAGIC_WORD = re.compile(r"__[A-Z]+__")


def clean_wikitext(wikitext: str, dropped_link_prefixes: Iterable[str] = ()) -> str:
    """Article text of a wikitext page.

    Templates, tables, <ref>s, comments and magic words are removed; [[target|label]] keeps its
    label and [[target]] its target; links whose target starts with a media or category prefix
    (File:, Image:, Media:, Category: and `dropped_link_prefixes`) are removed; headings stay
    as lines of their own.
    """
    code = mwparserfromhell.parse(wikitext)
    prefixes = {p.casefold() for p in (*MEDIA_LINK_PREFIXES, *CATEGORY_LINK_PREFIXES, *dropped_link_prefixes)}

    def is_dropped_link(link) -> bool:
        namespace, colon, _ = str(link.title).strip().lstrip(":").partition(":")
        return bool(colon) and namespace.strip().casefold() in prefixes

    dropped = [
        *code.filter_tags(recursive=True, matches=lambda tag: str(tag.tag).strip().lower() in _DROPPED_WIKI_TAGS),
        *code.filter_wikilinks(recursive=True, matches=is_dropped_link),
    ]
    for node in dropped:
        try:
            code.remove(node)
        except ValueError:
            pass  # it sat inside a node removed before it (a link inside a removed table)

    text = _MAGIC_WORD.sub("", code.strip_code(normalize=True, collapse=True))
    return _tidy_lines(text)


def _tidy_lines(text: str) -> str:
    """Strip each line, close the gaps removed nodes leave, keep at most one blank line between paragraphs."""
    lines = (re.sub(r"[ \t]{2,}", " ", line.strip()) for line in text.splitlines())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


# --- arXiv ----------------------------------------------------------------------------------

_LATEX_COMMENT = re.compile(r"[ \t]*(?<!\\)%.*$", re.MULTILINE)
_LATEX_COMMENT_LINE = re.compile(r"^[ \t]*%.*(?:\n|$)", re.MULTILINE)
# RedPajama-1T keeps a file from its first sectioning command on.
_LATEX_FIRST_SECTION = re.compile(r"\\(?:chapter|part|section|subsection|subsubsection|paragraph|subparagraph)\b\*?")
_LATEX_END_OF_BODY = re.compile(
    r"\\appendix\b|\\begin\{(?:references|REFERENCES|thebibliography)\}|\\bibliography\{|\\printbibliography\b"
    r"|\\end\{document\}"
)
_LATEX_MACRO_DEFINITION = re.compile(
    r"\\(?:newcommand\*?|renewcommand\*?|providecommand\*?)\s*(?:\{\s*\\([A-Za-z]+)\s*\}|\\([A-Za-z]+))\s*(?=[{\[])"
    r"|\\def\s*\\([A-Za-z]+)\s*(?=\{)"
)
_MACRO_EXPANSION_PASSES = 5


def clean_latex_project(tex_files: list[str]) -> str:
    """Body text of a LaTeX project given the contents of its .tex files, in reading order.

    Each file loses its comments (`%` to end of line, not `\\%`), everything before its first
    sectioning command, and everything from the bibliography or `\\appendix` on; files without a
    sectioning command contribute nothing (as in RedPajama-1T). Argument-free `\\newcommand`
    and `\\def` macros defined anywhere in the project are expanded and their definitions removed.
    """
    uncommented = [_strip_latex_comments(tex) for tex in tex_files]
    macros: dict[str, str] = {}
    for tex in uncommented:
        macros.update(_argument_free_macros(tex))
    macros = _resolve_nested_macros(macros)

    bodies = []
    for tex in uncommented:
        start = _LATEX_FIRST_SECTION.search(tex)
        if start is None:
            continue
        body = tex[start.start():]
        end = _LATEX_END_OF_BODY.search(body)
        if end is not None:
            body = body[: end.start()]
        bodies.append(_expand_macros(_remove_macro_definitions(body), macros).strip())
    return re.sub(r"\n{3,}", "\n\n", "\n\n".join(b for b in bodies if b)).strip()


def _strip_latex_comments(tex: str) -> str:
    return _LATEX_COMMENT.sub("", _LATEX_COMMENT_LINE.sub("", tex))


def _braced_group_end(tex: str, open_brace: int) -> int | None:
    """Index just past the `}` matching the `{` at `open_brace`, or None when unbalanced."""
    depth = 0
    i = open_brace
    while i < len(tex):
        char = tex[i]
        if char == "\\":
            i += 2  # an escaped brace does not count
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def _macro_definitions(tex: str):
    """(start, end, name, value or None when it takes arguments) for each macro definition."""
    for match in _LATEX_MACRO_DEFINITION.finditer(tex):
        name = match.group(1) or match.group(2) or match.group(3)
        position = match.end()
        takes_arguments = False
        # \newcommand{\x}[2][default]{...}: the first [] holds the number of arguments.
        while position < len(tex) and tex[position] == "[":
            close = tex.find("]", position)
            if close < 0:
                break
            if not takes_arguments and tex[position + 1 : close].strip() != "0":
                takes_arguments = True
            position = close + 1
            while position < len(tex) and tex[position].isspace():
                position += 1
        if position >= len(tex) or tex[position] != "{":
            continue
        end = _braced_group_end(tex, position)
        if end is None:
            continue
        yield match.start(), end, name, None if takes_arguments else tex[position + 1 : end - 1]


def _argument_free_macros(tex: str) -> dict[str, str]:
    return {name: value for _, _, name, value in _macro_definitions(tex) if value is not None}


def _remove_macro_definitions(tex: str) -> str:
    spans = [(start, end) for start, end, _, value in _macro_definitions(tex) if value is not None]
    for start, end in reversed(spans):
        tex = tex[:start] + tex[end:]
    return tex


def _macro_pattern(names: Iterable[str]) -> re.Pattern:
    # Longest names first so \Rn is not read as \R followed by "n".
    alternatives = "|".join(sorted((re.escape(n) for n in names), key=len, reverse=True))
    return re.compile(r"\\(" + alternatives + r")(?![A-Za-z])")


def _resolve_nested_macros(macros: dict[str, str]) -> dict[str, str]:
    """Expand macros used inside other macros' values (a bounded number of times: \\def can recurse)."""
    if not macros:
        return macros
    pattern = _macro_pattern(macros)
    for _ in range(_MACRO_EXPANSION_PASSES):
        expanded = {name: pattern.sub(lambda m: macros[m.group(1)], value) for name, value in macros.items()}
        if expanded == macros:
            break
        macros = expanded
    return macros


def _expand_macros(tex: str, macros: dict[str, str]) -> str:
    if not macros:
        return tex
    return _macro_pattern(macros).sub(lambda m: macros[m.group(1)], tex)


# --- GitHub ---------------------------------------------------------------------------------

# Phrases of licence headers (not a bare "license", which module documentation may mention).
_LICENCE_WORDS = re.compile(
    r"copyright|\(c\)|©|spdx-license-identifier|permission is hereby granted|licen[cs]ed under"
    r"|under the terms of|all rights reserved|\b(?:gnu|apache|mit|bsd|mozilla|public)\b[\w ,.-]*licen[cs]e",
    re.IGNORECASE,
)
# A leading comment block in each comment syntax; which ones apply depends on the language.
_BLOCK_COMMENTS = {
    "c": re.compile(r"/\*.*?\*/[ \t]*(?:\n|$)", re.DOTALL),
    "xml": re.compile(r"<!--.*?-->[ \t]*(?:\n|$)", re.DOTALL),
    "haskell": re.compile(r"\{-.*?-\}[ \t]*(?:\n|$)", re.DOTALL),
}
_LINE_COMMENTS = {
    "slash": re.compile(r"(?:[ \t]*//.*(?:\n|$))+"),
    "hash": re.compile(r"(?:[ \t]*#(?!!).*(?:\n|$))+"),
    "dash": re.compile(r"(?:[ \t]*--.*(?:\n|$))+"),
    "percent": re.compile(r"(?:[ \t]*%.*(?:\n|$))+"),
    "semicolon": re.compile(r"(?:[ \t]*;.*(?:\n|$))+"),
    "apostrophe": re.compile(r"(?:[ \t]*'.*(?:\n|$))+"),
}
_C_STYLE = (_BLOCK_COMMENTS["c"], _LINE_COMMENTS["slash"])
_HASH_STYLE = (_LINE_COMMENTS["hash"],)
_COMMENT_STYLES = {
    **dict.fromkeys(
        ("C", "C++", "C#", "Java", "JavaScript", "TypeScript", "Go", "Rust", "Scala", "Kotlin", "Swift",
         "Objective-C", "PHP", "CSS", "Dart", "Groovy", "Verilog", "Solidity", "Protocol Buffer"),
        _C_STYLE,
    ),
    **dict.fromkeys(
        ("Python", "Shell", "Perl", "Ruby", "R", "Julia", "CMake", "Makefile", "Dockerfile", "PowerShell", "YAML",
         "Elixir", "Nim", "Tcl"),
        _HASH_STYLE,
    ),
    **dict.fromkeys(("SQL", "Lua", "Ada", "VHDL"), (_LINE_COMMENTS["dash"],)),
    "Haskell": (_BLOCK_COMMENTS["haskell"], _LINE_COMMENTS["dash"]),
    **dict.fromkeys(("HTML", "XML", "Markdown", "Vue"), (_BLOCK_COMMENTS["xml"],)),
    **dict.fromkeys(("TeX", "Erlang", "MATLAB"), (_LINE_COMMENTS["percent"],)),
    **dict.fromkeys(("Assembly", "Lisp", "Clojure", "Scheme"), (_LINE_COMMENTS["semicolon"],)),
    "Visual Basic": (_LINE_COMMENTS["apostrophe"],),
    "Fortran": (re.compile(r"(?:[ \t]*!.*(?:\n|$))+"),),
}
_SHEBANG = re.compile(r"#![^\n]*\n")


def strip_licence_header(source: str, language: str) -> str:
    """The source file without the licence comment at its top (a shebang line is kept).

    A leading comment counts as a licence header when it mentions a licence or copyright; any
    other leading comment (module documentation) is kept.
    """
    shebang = _SHEBANG.match(source)
    head = shebang.group(0) if shebang else ""
    rest = source[len(head):]
    leading_blank = len(rest) - len(rest.lstrip())
    for comment in _COMMENT_STYLES.get(language, ()):
        match = comment.match(rest, leading_blank)
        if match and _LICENCE_WORDS.search(match.group(0)):
            return head + rest[match.end():].lstrip("\n")
    return source
