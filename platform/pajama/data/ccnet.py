"""cc_net's document signals, the `ccnet_*` columns of RedPajama-V2, computed per document.

RedPajama-V2 took its `ccnet_*` quality signals from Facebook's cc_net pipeline (Wenzek et al. 2020,
facebookresearch/cc_net, `mine.py`): paragraph (line) deduplication, then a SentencePiece + KenLM
perplexity under a Wikipedia language model and a head/middle/tail bucket from per-language
perplexity percentiles. This module gives the per-document pieces; a platform stage does the
corpus-wide part (counting line hashes) on Ray Data.

Follows cc_net exactly:
- `normalize_for_lm` is cc_net's `text_normalizer.normalize` with its defaults (strip; lowercase;
  accents stripped by NFD and dropping combining marks, the rest stays decomposed, e.g. Hangul
  becomes jamo; every Unicode decimal digit -> "0"; cc_net's Unicode punctuation table; control
  characters U+0000-U+001F and U+007F-U+009F deleted), in that order. `normalize_for_dedup` is
  its `normalize_for_dedup` (no accent stripping, the punctuation of the table deleted).
- Line hashes: the text split on "\\n" (every line, blank ones included), each line
  `normalize_for_dedup`-ed, sha1, the first 8 digest bytes read as a little-endian uint64.
- Which lines are duplicates: mine.py runs the two-pass dedup of the cc_net paper. Pass one adds
  every line hash of the shard group to a set that marks a hash seen twice or more; pass two drops,
  in every document, each line whose hash is so marked. So a line that occurs two or more times
  (in one document or across documents) loses all its occurrences, the first one too; a line seen
  once stays. A document left with no line, or with an empty text, is dropped altogether.
  (finalize_doc also keeps only the first of a hash repeated inside one document; under the
  two-pass rule such a line is already marked, so that step changes nothing and is not repeated.)
  `dedup_paragraphs` is that rule over a list of documents, the reference for the Ray stage.
- The four counts (RPv2's `ccnet_original_length`, `ccnet_original_nlines`, `ccnet_length`,
  `ccnet_nlines`), from dedup.finalize_doc: nlines = number of "\\n"-separated lines, length =
  number of characters (code points) of the text, "original" before and plain after dropping lines.
- Perplexity as mine.py computes it: `normalize` is applied to the whole document, which deletes
  its newlines (they are control characters) and so glues the lines together; the normalized text
  is SentencePiece-encoded into pieces joined with spaces; DocLM then splits that on "\\n" (one
  line remains) and scores it with KenLM (`score`, with <s> and </s>). Length = pieces + 1 (for
  </s>), perplexity = round(10 ** (-log10 score / length), 1). cc_net leaves the perplexity unset
  when the tokenized text is empty (then the bucket is "all"); here that is None.
  (cc_net's DocLM used alone with normalize=True would score each line separately; mine.py does
  not use it that way, and the published models and cutoffs belong to the whole-document scores.)
- Buckets: cc_net's PerplexityBucket with cutoff.csv at percentiles 30 and 60: pp < p30 is "head",
  pp < p60 "middle", otherwise "tail"; no perplexity gives "all". RPv2 stores head/middle/tail as
  0/1/2 and "all" as null.
- Training as cc_net's Makefile: the SentencePiece model is a unigram model trained on normalized
  documents (cc_net: normalized Wikipedia openings, one document per training sentence) with
  character_coverage 0.9995; the language model is a 5-gram over the pieces of the same normalized
  documents, with lmplz's estimate (interpolated modified Kneser-Ney, `--discount_fallback`).

Differs, and why:
- Dedup scope: cc_net marks duplicates within groups of 50 shards of one snapshot (`hash_in_mem`,
  memory bound); a stage that counts hashes over a whole corpus drops more.
- `ccnet_original_length`: in mine.py it comes from the WET record's Content-Length header (UTF-8
  bytes of the record, title line included); without WET headers this is len(text) in characters,
  which is what dedup.finalize_doc falls back to. cc_net's WET reader also strips every line and
  drops documents shorter than 300 characters before dedup (`min_len`); both are left to the caller,
  so lengths here count a line's surrounding whitespace.
- KenLM's trainer `lmplz` is a C++ binary that the kenlm wheel does not ship, so `build_arpa`
  estimates the same model in Python and writes ARPA (cc_net's `{lang}.arpa.bin` is the binary
  form made by `build_binary`, also absent from the wheel; kenlm.Model loads either). Scoring stays
  on the real kenlm library. Meant for small reference corpora: counts live in Python dicts.
- SentencePiece training (`train_sentencepiece`) is made deterministic (seed, one thread, no
  sampling or shuffling, model bytes written without the output path) and tolerant of small
  corpora (hard_vocab_limit off where cc_net retried with 40000 pieces; documents up to 1 MiB kept
  where the 4192-byte default skips longer training sentences). It writes no .vocab file.
- Platform-built models get their cutoffs from `perplexity_cutoffs` over a sample of their own
  perplexities (np.percentile, linear interpolation; cc_net's published values are rounded to
  multiples of 10). Recipes that score with cc_net's published Wikipedia models (GPU or not)
  should use cc_net's cc_net/data/cutoff.csv columns at rows 30 and 60 (English: 340 and 520).
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import re
import sys
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Literal

import numpy as np

Bucket = Literal["head", "middle", "tail", "all"]

# cc_net text_normalizer.UNICODE_PUNCT, verbatim (a fact of the format: same keys, same replacements).
UNICODE_PUNCT = {
    "，": ",", "。": ".", "、": ",", "„": '"', "”": '"', "“": '"', "«": '"', "»": '"', "１": '"',
    "」": '"', "「": '"', "《": '"', "》": '"', "´": "'", "∶": ":", "：": ":", "？": "?", "！": "!",
    "（": "(", "）": ")", "；": ";", "–": "-", "—": " - ", "．": ". ", "～": "~", "’": "'", "…": "...",
    "━": "-", "〈": "<", "〉": ">", "【": "[", "】": "]", "％": "%", "►": "-",
}
_NON_PRINTING_CHARS = "".join(map(chr, [*range(0, 32), *range(127, 160)]))
_DEDUP_DELETION = str.maketrans("", "", "".join(UNICODE_PUNCT) + _NON_PRINTING_CHARS)
# what _DEDUP_DELETION deletes, but "\n"
_DEDUP_DELETABLE = re.compile(f"[{re.escape(''.join(UNICODE_PUNCT) + _NON_PRINTING_CHARS.replace(chr(10), ''))}]")
# \d on str patterns is every Unicode decimal digit (category Nd), as in cc_net.
_DIGIT_RE = re.compile(r"\d")
_WHITESPACE_BUT_SPACE = re.compile(r"[^\S ]")  # \s is str.split's whitespace


@functools.cache
def _lm_translation() -> dict[int, str | None]:
    """One str.translate table for what cc_net's normalize does after NFD and digits: drop combining marks
    (category Mn, strip_accents), replace_unicode_punct, remove_non_printing_char. The three act on
    disjoint characters and no replacement holds a mark or a control character, so one pass equals the
    three in cc_net's order; digits go first because "１" is both a digit and a punctuation key.
    Built on first use (a scan of all code points, about 0.1 s)."""
    marks = (chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Mn")
    return str.maketrans({**dict.fromkeys(marks), **UNICODE_PUNCT, **dict.fromkeys(_NON_PRINTING_CHARS)})


_DELETE, _REPLACE = 1, 2


@functools.cache
def _lm_actions() -> np.ndarray:
    """What _lm_translation does to each code point: 0 nothing, _DELETE or _REPLACE."""
    actions = np.zeros(sys.maxunicode + 1, np.uint8)
    for code, replacement in _lm_translation().items():
        actions[code] = _DELETE if replacement is None else _REPLACE
    return actions


CCNET_HEAD_PERCENTILE = 30
CCNET_TAIL_PERCENTILE = 60


def normalize_for_lm(line: str) -> str:
    """cc_net's text_normalizer.normalize(line) with its defaults (accent, case, numbers, punct=1)."""
    line = line.strip()
    if not line:
        return line
    line = line.lower()
    # ASCII is its own NFD: skip the decomposition.
    if line.isascii():
        return _DIGIT_RE.sub("0", line).translate(_lm_translation())
    line = _DIGIT_RE.sub("0", unicodedata.normalize("NFD", line))
    # the table with numpy (str.translate costs a dict lookup per character): deletions by mask, then the
    # few punctuation characters present replaced one by one (no replacement holds a key of the table)
    codes = np.frombuffer(line.encode("utf-32-le", "surrogatepass"), np.uint32)
    action = _lm_actions()[codes]
    if not action.any():
        return line
    line = codes[action != _DELETE].tobytes().decode("utf-32-le", "surrogatepass")
    for code in np.unique(codes[action == _REPLACE]).tolist():
        line = line.replace(chr(code), UNICODE_PUNCT[chr(code)])
    return line


def normalize_for_dedup(line: str) -> str:
    """cc_net's text_normalizer.normalize_for_dedup: strip, lowercase, digits -> 0, table punctuation and
    control characters deleted (accents kept)."""
    line = line.strip()
    if not line:
        return line
    return _DIGIT_RE.sub("0", line.lower()).translate(_DEDUP_DELETION)


def paragraph_hashes(text: str) -> np.ndarray:
    """One uint64 per "\\n"-separated line of `text` (blank lines included), as cc_net's dedup.compute_hashes."""
    # normalize_for_dedup per line, its lowercasing and digits done once for the whole text (the same: lowering
    # keeps "\n" and every whitespace character, and final sigma's context stops at whitespace), its deletion
    # only when the text has a character to delete
    lowered = _DIGIT_RE.sub("0", text.lower())
    lines = [line.strip() for line in lowered.split("\n")]
    if _DEDUP_DELETABLE.search(lowered):
        lines = [line.translate(_DEDUP_DELETION) for line in lines]
    digests = b"".join(hashlib.sha1(line.encode("utf-8")).digest()[:8] for line in lines)
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


def _checked_lines(text: str, drop: np.ndarray) -> list[str]:
    lines = text.split("\n")
    if len(drop) != len(lines):
        raise ValueError(f"drop has {len(drop)} entries for a text of {len(lines)} lines")
    return lines


def drop_paragraphs(text: str, drop: np.ndarray) -> str:
    """The lines of `text` whose `drop` entry is False, joined with "\\n"."""
    lines = _checked_lines(text, drop)
    return "\n".join(line for line, dropped in zip(lines, drop.tolist()) if not dropped)


def paragraph_counts(text: str, drop: np.ndarray) -> dict[str, int]:
    """RPv2's four cc_net counts for `text` before and after dropping the lines marked in `drop`."""
    lines = _checked_lines(text, drop)
    kept_lengths = [len(line) for line, dropped in zip(lines, drop.tolist()) if not dropped]
    return {
        "ccnet_original_length": len(text),
        "ccnet_original_nlines": len(lines),
        "ccnet_length": sum(kept_lengths) + max(len(kept_lengths) - 1, 0),  # the kept lines joined by "\n"
        "ccnet_nlines": len(kept_lengths),
    }


def dedup_paragraphs(texts: list[str]) -> list[str | None]:
    """cc_net's two-pass paragraph dedup over `texts`, the reference for the corpus-wide stage.

    Every line whose hash occurs two or more times among all lines of all texts is dropped (all its
    occurrences); None for a document that cc_net removes (empty, or every line dropped)."""
    hashes = [paragraph_hashes(text) if text else np.empty(0, np.uint64) for text in texts]
    occurrences = Counter(h for doc_hashes in hashes for h in doc_hashes.tolist())
    deduplicated: list[str | None] = []
    for text, doc_hashes in zip(texts, hashes):
        drop = np.fromiter((occurrences[h] > 1 for h in doc_hashes.tolist()), dtype=bool, count=len(doc_hashes))
        deduplicated.append(drop_paragraphs(text, drop) if text and not drop.all() else None)
    return deduplicated


class PerplexityModel:
    """A SentencePiece model and a KenLM model (ARPA or binary), cc_net's `{lang}.sp.model` / `{lang}.arpa.bin`."""

    def __init__(self, sp_model_path: str | Path, lm_path: str | Path):
        import kenlm
        import sentencepiece

        self.sp_model_path = Path(sp_model_path)
        self.lm_path = Path(lm_path)
        self._sp = sentencepiece.SentencePieceProcessor(model_file=str(self.sp_model_path))
        self._lm = kenlm.Model(str(self.lm_path))

    @staticmethod
    def load(sp_model_path: str | Path, lm_path: str | Path) -> PerplexityModel:
        """The model for these paths, loaded once per process."""
        return _load_perplexity_model(str(Path(sp_model_path).resolve()), str(Path(lm_path).resolve()))

    def doc_perplexity(self, text: str) -> float | None:
        """cc_net's perplexity of a document (see the module docstring); None when nothing is left to score."""
        return self.perplexities([text])[0]

    def perplexities(self, texts: list[str]) -> list[float | None]:
        """doc_perplexity for each text; the SentencePiece encoding runs as one batch call."""
        normalized = [normalize_for_lm(text) for text in texts]
        # One thread: a Ray worker is given its CPU budget, sentencepiece would otherwise take every core.
        pieces_per_text = self._sp.encode(normalized, out_type=str, num_threads=1)
        scores: list[float | None] = []
        for pieces in pieces_per_text:
            tokenized = " ".join(pieces)
            if not tokenized:
                scores.append(None)
                continue
            # cc_net's DocLM: length counts Python's whitespace split of the tokenized line, plus </s>; that
            # is the number of pieces unless a piece is empty or holds whitespace (so it is counted only then)
            one_token_each = (tokenized.count(" ") == len(pieces) - 1 and "" not in pieces
                              and not _WHITESPACE_BUT_SPACE.search(tokenized))
            length = (len(pieces) if one_token_each else len(tokenized.split())) + 1
            scores.append(round(10.0 ** (-self._lm.score(tokenized) / length), 1))
        return scores


@functools.cache
def _load_perplexity_model(sp_model_path: str, lm_path: str) -> PerplexityModel:
    return PerplexityModel(sp_model_path, lm_path)


def perplexity_bucket(perplexity: float | None, cutoffs: tuple[float, float]) -> Bucket:
    """cc_net's bucket for a perplexity, with cutoffs = (30th, 60th percentile): head below the first,
    middle below the second, tail otherwise; "all" without a perplexity."""
    if perplexity is None:
        return "all"
    head_max, middle_max = cutoffs
    if perplexity < head_max:
        return "head"
    if perplexity < middle_max:
        return "middle"
    return "tail"


def perplexity_cutoffs(perplexities: Iterable[float | None]) -> tuple[float, float]:
    """(30th, 60th) percentile of a sample of perplexities (None skipped): the bucket cutoffs of a
    platform-built model, as cc_net's cutoff.csv holds for its published ones."""
    values = np.array([p for p in perplexities if p is not None], dtype=np.float64)
    if values.size == 0:
        raise ValueError("no perplexity to compute cutoffs from")
    head_max, middle_max = np.percentile(values, [CCNET_HEAD_PERCENTILE, CCNET_TAIL_PERCENTILE])
    return float(head_max), float(middle_max)


# ---------------------------------------------------------------------------------------------------
# Training: an lmplz-equivalent ARPA writer and a deterministic SentencePiece trainer.

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
# lmplz --discount_fallback's defaults for adjusted counts 1, 2 and 3+ (cc_net's Makefile passes the flag).
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)


def _kneser_ney_discounts(adjusted_counts: Iterable[int]) -> tuple[float, float, float]:
    """Chen & Goodman's closed-form modified-KN discounts D1, D2, D3+ (their eq. 26), as lmplz computes
    them from the counts of counts n1..n4 of one order; lmplz's fallback when n1, n2 or n3 is zero or a
    discount leaves its range [0, k]."""
    count_of_counts = Counter(c for c in adjusted_counts if c <= 4)
    n = [count_of_counts[k] for k in range(5)]
    if not (n[1] and n[2] and n[3]):
        return FALLBACK_DISCOUNTS
    y = n[1] / (n[1] + 2 * n[2])
    discounts = tuple(k - (k + 1) * y * n[k + 1] / n[k] for k in (1, 2, 3))
    if any(not 0.0 <= d <= k for k, d in zip((1, 2, 3), discounts)):
        return FALLBACK_DISCOUNTS
    return discounts  # type: ignore[return-value]


def _log10(p: float) -> float:
    # A zero backoff (all discounts zero) is written as ARPA's -99, not -inf.
    return math.log10(p) if p > 0 else -99.0


def build_arpa(sentences: Iterable[list[str]], order: int, path: str | Path) -> Path:
    """Estimate the n-gram model lmplz would (`lmplz -o order --discount_fallback`, no pruning) and write
    it as ARPA to `path`.

    Each sentence is scored as <s> w1 .. wk </s>. Interpolated modified Kneser-Ney with lmplz's
    conventions: the highest order and n-grams starting with <s> use raw counts, the other lower-order
    n-grams the number of distinct words seen to their left; per order, discounts D1, D2, D3+ from the
    counts of counts (fallback 0.5, 1, 1.5 where the closed form fails, e.g. no n-gram seen 3 times);
    p(w|h) = (a(hw) - D(a(hw))) / sum_v a(hv) + gamma(h) p(w|h'), gamma(h) = sum_v D(a(hv)) / sum_v a(hv),
    h' = h without its first word, and unigrams interpolate with the uniform distribution over the
    vocabulary (all words, </s> and <unk>, not <s>). <unk> gets only that uniform share, <s> gets
    probability 1 (log 0, never predicted), a context's ARPA backoff is log10 gamma(h). Because the model
    is interpolated, p(w|h) for an unseen hw is gamma(h) p(w|h'), so each context's distribution sums to 1.
    Words must not be empty, hold whitespace or be one of <s>, </s>, <unk>.
    """
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    raw_counts: list[Counter[tuple[str, ...]]] = [Counter() for _ in range(order)]
    n_sentences = 0
    for sentence in sentences:
        tokens = (BOS, *sentence, EOS)
        n_sentences += 1
        for n in range(1, order + 1):
            raw_counts[n - 1].update(zip(*(tokens[i:] for i in range(n))))
    if n_sentences == 0:
        raise ValueError("no sentence to estimate a language model from")
    words = [gram[0] for gram in raw_counts[0]]
    bad = [w for w in words if w == UNK or not w or any(c.isspace() for c in w)]
    if bad or raw_counts[0][(BOS,)] != n_sentences or raw_counts[0][(EOS,)] != n_sentences:
        raise ValueError(f"sentences hold words an ARPA file cannot: {bad[:5] or [BOS, EOS]}")

    # Adjusted counts a(g), per order (index n - 1 holds n-grams of length n).
    adjusted: list[dict[tuple[str, ...], int]] = [{} for _ in range(order)]
    adjusted[order - 1] = dict(raw_counts[order - 1])
    for n in range(order - 1, 0, -1):
        left_extensions = Counter(gram[1:] for gram in raw_counts[n])
        adjusted[n - 1] = {
            gram: (count if gram[0] == BOS else left_extensions[gram]) for gram, count in raw_counts[n - 1].items()
        }
    # <s> is only ever context: lmplz gives the unigram adjusted count 0, i.e. leaves it out of the sums.
    del adjusted[0][(BOS,)]
    del raw_counts

    probabilities: list[dict[tuple[str, ...], float]] = []
    gammas: list[dict[tuple[str, ...], float]] = []  # gammas[n - 1]: contexts of length n - 1
    for n in range(1, order + 1):
        discount = (0.0, *_kneser_ney_discounts(adjusted[n - 1].values()))
        denominators: defaultdict[tuple[str, ...], int] = defaultdict(int)
        discounted_mass: defaultdict[tuple[str, ...], float] = defaultdict(float)
        for gram, count in adjusted[n - 1].items():
            denominators[gram[:-1]] += count
            discounted_mass[gram[:-1]] += discount[min(count, 3)]
        gamma = {context: discounted_mass[context] / total for context, total in denominators.items()}
        if n == 1:
            uniform = gamma[()] / (len(adjusted[0]) + 1)  # vocabulary: the words and </s>, plus <unk>
            probs = {
                gram: (count - discount[min(count, 3)]) / denominators[()] + uniform
                for gram, count in adjusted[0].items()
            }
            probs[(UNK,)] = uniform
        else:
            lower = probabilities[n - 2]
            probs = {
                gram: (count - discount[min(count, 3)]) / denominators[gram[:-1]] + gamma[gram[:-1]] * lower[gram[1:]]
                for gram, count in adjusted[n - 1].items()
            }
        probabilities.append(probs)
        gammas.append(gamma)

    path = Path(path)
    with path.open("w", encoding="utf-8") as arpa:
        arpa.write("\\data\\\n")
        arpa.write(f"ngram 1={len(probabilities[0]) + 1}\n")  # + <s>
        for n in range(2, order + 1):
            arpa.write(f"ngram {n}={len(probabilities[n - 1])}\n")
        for n in range(1, order + 1):
            arpa.write(f"\n\\{n}-grams:\n")
            contexts = gammas[n] if n < order else {}
            if n == 1:
                arpa.write(f"0\t{BOS}\t{_log10(contexts[(BOS,)]):.9g}\n" if order > 1 else f"0\t{BOS}\n")
            for gram, p in probabilities[n - 1].items():
                line = f"{min(0.0, math.log10(p)):.9g}\t{' '.join(gram)}"
                if n < order:
                    # Not a context (ends with </s> or <unk>): backoff log 1 = 0, as lmplz writes it.
                    line += f"\t{_log10(contexts[gram]) if gram in contexts else 0.0:.9g}"
                arpa.write(line + "\n")
        arpa.write("\n\\end\\\n")
    return path


def _train_sentencepiece_on_normalized(lines: Iterable[str], prefix: Path, vocab_size: int, seed: int) -> Path:
    import sentencepiece

    model_path = prefix.parent / f"{prefix.name}.model"
    model_path.parent.mkdir(parents=True, exist_ok=True)
    # The model is written through model_writer: with model_prefix the output path would be stored in
    # the model's trainer spec, and the same training to another path would give other bytes.
    model = io.BytesIO()
    # Determinism: fixed seed, one thread, every sentence used in input order (no sampling, no shuffle).
    sentencepiece.set_random_generator_seed(seed)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",  # cc_net's Makefile
        character_coverage=0.9995,  # cc_net's Makefile
        hard_vocab_limit=False,  # a small corpus may not support vocab_size pieces (cc_net retrains smaller)
        input_sentence_size=0,
        shuffle_input_sentence=False,
        num_threads=1,
        # One training sentence is one normalized document (newlines deleted), as cc_net's Wikipedia
        # openings; the 4192-byte default would silently skip longer documents.
        max_sentence_length=1 << 20,
        minloglevel=2,
    )
    model_path.write_bytes(model.getvalue())
    return model_path


def train_sentencepiece(texts: Iterable[str], prefix: str | Path, vocab_size: int, seed: int = 0) -> Path:
    """Train a unigram SentencePiece model on the normalize_for_lm'd texts (one training sentence per text,
    as cc_net); writes and returns `prefix`.model (no .vocab). Same texts and arguments give the same
    bytes, wherever the model is written."""
    normalized = (line for line in map(normalize_for_lm, texts) if line)
    return _train_sentencepiece_on_normalized(normalized, Path(prefix), vocab_size, seed)


def build_perplexity_model(
    texts: Iterable[str], out_dir: str | Path, order: int = 5, vocab_size: int = 65536, seed: int = 0
) -> tuple[Path, Path]:
    """cc_net's model recipe on `texts` (cc_net: Wikipedia): a SentencePiece model on the normalized texts,
    then an order-`order` KenLM model over their pieces. Returns (out_dir/lm.sp.model, out_dir/lm.arpa).
    vocab_size and order default to cc_net's (65536, 5); the vocabulary shrinks if the texts are too few."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    normalized = [line for line in map(normalize_for_lm, texts) if line]
    sp_path = _train_sentencepiece_on_normalized(normalized, out_dir / "lm.sp", vocab_size, seed)

    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(sp_path))
    pieces = sp.encode(normalized, out_type=str, num_threads=1)
    lm_path = build_arpa(pieces, order, out_dir / "lm.arpa")
    return sp_path, lm_path
