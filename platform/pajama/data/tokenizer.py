"""Train a byte-level BPE tokenizer with GPT-NeoX's special tokens, or load a Hugging Face one.

GPT-NeoX-20B (the RedPajama-INCITE tokenizer) is a byte-level BPE whose `<|endoftext|>` (id 0)
is BOS, EOS and UNK and whose `<|padding|>` is id 1; a trained tokenizer keeps that layout so
models trained on either behave the same way for generation and padding.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from typing import TYPE_CHECKING, Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

EOD = "<|endoftext|>"
PAD = "<|padding|>"


def train_bpe(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOD, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    # transformers (and with it torch) is imported where it is used: Ray workers import this
    # module for the data stage's batch functions, which would pay seconds each for nothing.
    from transformers import GPTNeoXTokenizerFast

    return GPTNeoXTokenizerFast(tokenizer_object=tok, bos_token=EOD, eos_token=EOD, unk_token=EOD,
                                pad_token=PAD, add_bos_token=False, add_eos_token=False)


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerFast:
    """A hub name (downloaded once, for users online) or a local directory; never remote code."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
    if tok.pad_token is None:
        tok.pad_token = PAD if PAD in tok.get_vocab() else tok.eos_token
    return tok


class BatchEncoder:
    """Token ids of many texts, exactly as the Hugging Face tokenizer of `tokenizer_json` (its tokenizer.json
    text) gives them with add_special_tokens=False: what the data stage packs.

    A byte-level BPE (GPT-2's pre-tokenizer regex, no dropout, no truncation or padding, NFC or no
    normalizer: the tokenizer the tiny recipe trains and GPT-NeoX-20B's) is encoded with tiktoken, which
    runs the same algorithm with ~3x fewer CPU seconds than `tokenizers`; its added tokens are split out first
    as `tokenizers` does (leftmost-longest, the unnormalized ones on the raw text, then the NFC-normalized
    ones). The two BPEs differ in how they pick merges (tiktoken: the adjacent pair whose concatenation has the
    lowest id; `tokenizers`: the pair listed first in `merges`), which agree when ids grow with the merges and
    every token is what the merges make of its own bytes: both are checked on the vocabulary, and the two
    encoders compared on PROBE_TEXTS. Any other tokenizer, or one that fails a check, is encoded with
    `tokenizers` itself, as it is with `encoder="huggingface"`. `engine` says which one runs; `mismatch`
    compares the two on texts (the data stage compares a sample of its documents).
    """

    def __init__(self, tokenizer_json: str, encoder: str = "auto"):
        if encoder not in ("auto", "huggingface"):
            raise ValueError(f"encoder must be 'auto' or 'huggingface' (data.tokenizer.encoder), not {encoder!r}")
        self._reference = Tokenizer.from_str(tokenizer_json)
        self._tiktoken = (_TiktokenBpe.from_tokenizer_json(json.loads(tokenizer_json), self._reference)
                          if encoder == "auto" else None)
        if self._tiktoken is not None and self.mismatch(PROBE_TEXTS) is not None:
            self._tiktoken = None
        self.engine = "tiktoken" if self._tiktoken is not None else "huggingface"

    def encode(self, texts: list[str]) -> list[list[int]]:
        if self._tiktoken is not None:
            return [self._tiktoken.encode(text) for text in texts]
        # encode_batch_fast: the ids without the character offsets, which packing never reads
        return [encoding.ids for encoding in self._reference.encode_batch_fast(texts, add_special_tokens=False)]

    def mismatch(self, texts: list[str]) -> int | None:
        """The index of the first text that this encoder and `tokenizers` encode differently, or None."""
        if self._tiktoken is None:
            return None
        expected = self._reference.encode_batch_fast(texts, add_special_tokens=False)
        return next((i for i, (text, encoding) in enumerate(zip(texts, expected))
                     if self._tiktoken.encode(text) != encoding.ids), None)


@functools.lru_cache(maxsize=1)
def batch_encoder(tokenizer_json: str, encoder: str = "auto") -> BatchEncoder:
    """The BatchEncoder of a tokenizer, built once per worker process."""
    return BatchEncoder(tokenizer_json, encoder)


# Where a byte-level BPE's encoders could part: contractions, runs and kinds of whitespace (Unicode's
# spaces, NEL, line and paragraph separators), letters and digits of many scripts, combining marks
# (NFC), emoji sequences, special tokens inside text, control characters.
PROBE_TEXTS = [
    "Hello world! It's, they're, we've, I'm, you'll, he'd; ISN'T 'quoted' don’t",
    "  two\tspaces\t\tand tabs \n\n\nnewlines \r\n   \n trailing   ",
    "no\u00a0break\u2000en\u2009thin\u3000ideographic\u0085nel\u2028line\u2029para\u180emongolian\u200bzw\u202fnnbsp",
    "Ünïcödé café naïve e\u0301 A\u030a \u1e9b\u0323 ﬁ ＡＢＣ１２３ ½ ² ³ ٣٤٥ ١٢ 〇 Ⅻ",
    "日本語のテキスト。中文文本，还有标点！한국어 텍스트 ไทย ภาษา हिन्दी русский текст ελληνικά עברית العربية",
    "emoji 👩‍👩‍👧‍👦 🇫🇷 ✌🏽 🙂🙂🙂 ⭐️ #1 @user $4.99 100% a+b=c <tag/> {json: [1, 2]}",
    "def f(x):\n    return x ** 2  # comment\n\n\tif x:\n\t\tpass\n" + " " * 30 + "indented\n",
    "<|endoftext|>text<|endoftext|><|padding|> <|endoftext|>\n<|endoftext |>",
    "\x00\x01\x07\x1b[31mred\x1b[0m \ufeffbom \ufffd replacement 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𐍈 \U0001f600",
    "123456789 3.14159 1,000,000 2026-12-01 12:30:00 0x1F 1e-9 ١٢٣٤",
]


class _TiktokenBpe:
    """A byte-level BPE tokenizer.json as a tiktoken Encoding, with `tokenizers`' handling of added tokens."""

    # GPT-2's pre-tokenizer regex, which `tokenizers`' ByteLevel(use_regex=True) applies
    PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

    def __init__(self, encoding, raw_added: dict[str, int], normalized_added: dict[str, int], nfc: bool):
        self._encoding = encoding
        self._raw_added, self._normalized_added, self._nfc = raw_added, normalized_added, nfc
        self._raw_split = _leftmost_longest(raw_added)
        self._normalized_split = _leftmost_longest(normalized_added)

    @classmethod
    def from_tokenizer_json(cls, spec: dict, reference) -> _TiktokenBpe | None:
        """None unless the tokenizer (`spec`, its tokenizer.json; `reference`, it loaded by `tokenizers`) is a
        byte-level BPE that tiktoken encodes the same way."""
        import tiktoken

        model, pre_tokenizer = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
        normalizer = spec.get("normalizer")
        if (model.get("type") != "BPE" or model.get("dropout") or model.get("byte_fallback")
                or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix")
                or spec.get("truncation") or spec.get("padding")
                or pre_tokenizer.get("type") != "ByteLevel" or pre_tokenizer.get("add_prefix_space", True)
                or not pre_tokenizer.get("use_regex", True)
                or normalizer not in (None, {"type": "NFC"})):
            return None
        added = spec.get("added_tokens") or []
        if any(token["lstrip"] or token["rstrip"] or token["single_word"] for token in added):
            return None
        to_byte = {char: byte for byte, char in _bytes_to_unicode().items()}
        vocab = model["vocab"]
        try:
            ranks = {bytes(to_byte[c] for c in token): i for token, i in vocab.items()}
        except KeyError:  # a token outside the byte-level alphabet
            return None
        # tiktoken merges the adjacent pair whose concatenation has the lowest id; `tokenizers` the pair that
        # comes first in `merges`: the same order only when each merge's result has a larger id than the last.
        merged_ids = [vocab.get("".join(m) if isinstance(m, list) else m.replace(" ", "", 1)) for m in model["merges"]]
        if (len(ranks) != len(set(ranks.values())) or any(bytes([b]) not in ranks for b in _UTF8_BYTES)
                or None in merged_ids or any(a >= b for a, b in zip(merged_ids, merged_ids[1:]))):
            return None
        # tiktoken also takes a piece found whole in the vocabulary as one token, and merges any two adjacent
        # tokens whose concatenation is a token, where `tokenizers` only follows `merges`: every token must be
        # what `tokenizers`' merges make of its own bytes (~0.1 s for 36k tokens).
        added_contents = {token["content"] for token in added}
        if any([piece.value for piece in reference.model.tokenize(token)] != [token]
               for token in vocab if token not in added_contents):
            return None
        encoding = tiktoken.Encoding("pajama-bpe", pat_str=cls.PATTERN, mergeable_ranks=ranks, special_tokens={})
        # an added token that is also in the model's vocabulary (as its string) takes the vocabulary's id
        added_id = {t["content"]: vocab.get(t["content"], t["id"]) for t in added}
        return cls(encoding,
                   raw_added={t["content"]: added_id[t["content"]] for t in added if not t["normalized"]},
                   normalized_added={(unicodedata.normalize("NFC", t["content"]) if normalizer else t["content"]):
                                     added_id[t["content"]] for t in added if t["normalized"]},
                   nfc=normalizer is not None)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece, added_id in _split(text, self._raw_split, self._raw_added):
            if added_id is not None:
                ids.append(added_id)
                continue
            if self._nfc and not piece.isascii():
                piece = unicodedata.normalize("NFC", piece)
            for part, normalized_id in _split(piece, self._normalized_split, self._normalized_added):
                if normalized_id is not None:
                    ids.append(normalized_id)
                else:
                    ids += self._encoding.encode_ordinary(part)
        return ids


def _leftmost_longest(tokens: dict[str, int]) -> re.Pattern | None:
    # Python's regex alternation takes the first alternative that matches at the leftmost position: with the
    # longer tokens first that is the leftmost-longest match of `tokenizers`' Aho-Corasick automaton.
    if not tokens:
        return None
    return re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))


def _split(text: str, pattern: re.Pattern | None, ids: dict[str, int]) -> list[tuple[str, int | None]]:
    """`text` cut at the tokens `pattern` finds: (piece, None) for the text between them, (token, its id)."""
    pieces, start = [], 0
    for match in pattern.finditer(text) if pattern is not None else ():
        if match.start() > start:
            pieces.append((text[start:match.start()], None))
        pieces.append((match.group(), ids[match.group()]))
        start = match.end()
    if start < len(text):
        pieces.append((text[start:], None))
    return pieces


# The bytes UTF-8 text can hold: all but 0xC0, 0xC1 and 0xF5-0xFF (GPT-NeoX-20B's vocabulary leaves those 13 out).
_UTF8_BYTES = [b for b in range(256) if b not in (0xC0, 0xC1) and b < 0xF5]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: each byte as the printable character a byte-level BPE's vocabulary uses."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(shifted)}}
