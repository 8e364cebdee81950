"""Drop training examples that share a word n-gram (default 10) with the evaluation sets.

Text is normalised before n-grams are taken: Unicode NFKC, lower case, every character that is
neither a letter/digit nor whitespace deleted (so "json.dumps()" is the word "jsondumps" and
"Don't" is "dont"), then split on whitespace. N-grams are taken within one message's content, never
across turns, for the training examples and the evaluation examples alike (prompts and responses).
An evaluation text shorter than n words contributes no n-gram, so it cannot flag anything.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Iterator


def normalized_words(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(c for c in text if c.isalnum() or c.isspace()).split()


def ngrams(text: str, n: int) -> Iterator[tuple[str, ...]]:
    words = normalized_words(text)
    return (tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def eval_ngrams(eval_examples: Iterable[dict], n: int = 10) -> set[tuple[str, ...]]:
    """Every n-gram of every message of the evaluation examples."""
    return {gram for example in eval_examples for message in example["messages"] for gram in ngrams(message["content"], n)}


def shares_ngram(example: dict, grams: set[tuple[str, ...]], n: int = 10) -> bool:
    """Whether a message of `example` has an n-gram in `grams` (from `eval_ngrams` with the same n)."""
    return any(gram in grams for message in example["messages"] for gram in ngrams(message["content"], n))
