"""DSIR importance weights: RedPajama-V2's `rps_doc_{books,openwebtext,wikipedia}_importance` and their
`..._importance_length_correction` variants (Xie et al. 2023, "Data Selection for Language Models via
Importance Resampling"; RPv2: app/src/core/quality_signals/importance_weights.py, artifacts/hash_dist.py).

What follows RPv2 exactly:
- a document's features are its raw words (NLTK WordPunctTokenizer tokens, `\\w+|[^\\w\\s]+`) and its raw
  word bigrams (consecutive pairs within the document), each hashed into one of `buckets` buckets (RPv2's
  DSIR_FEATURE_DIM, 10000) and counted; a bigram is one feature with one bucket, not two words;
- a `Distribution` is built from a sample of a reference corpus (RPv2: books, OpenWebText and Wikipedia as
  targets, the language's CommonCrawl sample as the source): the bucket counts summed over the sample, and
  lambda = the mean number of raw words per document (the Poisson MLE, as hash_dist.py computes it);
- score = sum over buckets b of features[b] * (log(p_target[b] + 1e-8) - log(p_source[b] + 1e-8)), with
  p = counts / counts.sum();
- the length-corrected score adds log(pmf(len; lambda_target) + 1e-8) - log(pmf(len; lambda_source) + 1e-8),
  pmf being scipy.stats.poisson.pmf (computed with that function's own formula, exp(xlogy(k, lambda) -
  gammaln(k + 1) - lambda): the same floats without importing scipy.stats), logged after the +1e-8 as
  RPv2 does (the pmf underflows to 0 for long documents and the term is then 0). `len` is len(text), the
  number of characters, because RPv2 passes len(Document), which is the length of the raw content, while
  lambda is a mean word count: RPv2's mismatch, kept so that the values mean what RPv2's do;
- null for an empty text (a whitespace-only text has no features and scores 0.0, as in RPv2); values are
  rounded to 8 decimals (Python's round, as RPv2);
- files: `{dataset}.{lang}.{buckets}.counts.npy` (int64 counts) and `{dataset}.{lang}.lambda.npy` (a 0-d
  float64), as hash_dist.py writes them.

What differs, and why:
- the hash. RPv2 buckets with Python's hash(), which is salted per process (PYTHONHASHSEED), so its buckets
  change from one process to the next and a saved distribution only matches the features of a process
  that happens to share the salt. Here a word's hash is xxh3_64 of its UTF-8 bytes, and a bigram's is the
  splitmix64 finaliser of (h(left) * 0x9E3779B97F4A7C15) XOR h(right), modulo 2**64 (ordered: "a b" and
  "b a" differ); bucket = hash mod buckets. It is stable across processes and machines, and the bigram
  hash is computed from the word hashes with numpy, so each distinct word of a batch is hashed once in
  Python and nothing is hashed per token. Distribution files made by RPv2 are therefore not usable here.
- the sum. The dot product is summed feature by feature rather than over a dense vector of bucket counts;
  the order of the float additions differs, by far less than the 8 decimals kept.
- `{dataset}.{lang}.documents.npy` also records the sample size (RPv2 keeps only lambda).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import xxhash
from scipy.special import gammaln, xlogy

from pajama.data.signals import raw_words

DSIR_BUCKETS = 10000  # RPv2's DSIR_FEATURE_DIM
PRECISION = 8  # RPv2 rounds its signals to 8 decimals
_SMOOTHING = 1e-8  # added to probabilities before the log, as RPv2

_BATCH_SIZE = 1024  # documents featurised at once while building a distribution

_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_SPLITMIX_MULTIPLIERS = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


@dataclass(frozen=True, eq=False)
class Distribution:
    """Hashed {1,2}-gram counts of a reference sample and its mean raw words per document."""

    counts: np.ndarray  # int64, one count per bucket
    mean_words: float  # the Poisson lambda of the length correction
    documents: int

    @property
    def buckets(self) -> int:
        return len(self.counts)

    def save(self, directory: Path, dataset: str, language: str) -> None:
        """Writes RPv2's `{dataset}.{language}.{buckets}.counts.npy` and `{dataset}.{language}.lambda.npy`
        (and `{dataset}.{language}.documents.npy`) into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / f"{dataset}.{language}.{self.buckets}.counts.npy", self.counts.astype(np.int64))
        np.save(directory / f"{dataset}.{language}.lambda.npy", np.float64(self.mean_words))
        np.save(directory / f"{dataset}.{language}.documents.npy", np.int64(self.documents))

    @classmethod
    def load(cls, directory: Path, dataset: str, language: str, buckets: int = DSIR_BUCKETS) -> Distribution:
        directory = Path(directory)
        counts = np.load(directory / f"{dataset}.{language}.{buckets}.counts.npy", allow_pickle=False)
        mean_words = np.load(directory / f"{dataset}.{language}.lambda.npy", allow_pickle=False)
        documents = np.load(directory / f"{dataset}.{language}.documents.npy", allow_pickle=False)
        return cls(counts=counts.astype(np.int64), mean_words=float(mean_words), documents=int(documents))


def build_distribution(texts: Iterable[str], buckets: int = DSIR_BUCKETS) -> Distribution:
    """The bucket counts of every text's raw unigrams and bigrams, summed, and the mean raw word count."""
    counts = np.zeros(buckets, np.int64)
    total_words = 0
    documents = 0
    texts = iter(texts)
    while batch := list(itertools.islice(texts, _BATCH_SIZE)):
        words_per_doc, _, feature_bucket = _features(batch, buckets)
        counts += np.bincount(feature_bucket, minlength=buckets)
        total_words += int(words_per_doc.sum())
        documents += len(batch)
    if documents == 0:
        raise ValueError("a distribution needs at least one document")
    return Distribution(counts=counts, mean_words=total_words / documents, documents=documents)


def importance_weights(
    texts: list[str], target: Distribution, source: Distribution
) -> tuple[list[float | None], list[float | None]]:
    """Per text, log p_target(text) / p_source(text) under the hashed bag-of-{1,2}-grams models, and the
    same plus RPv2's Poisson length correction; None for an empty text."""
    return importance_weights_of_targets(texts, {"target": target}, source)["target"]


def importance_weights_of_targets(
    texts: list[str], targets: dict[str, Distribution], source: Distribution
) -> dict[str, tuple[list[float | None], list[float | None]]]:
    """importance_weights for each of `targets` (name -> distribution), from one featurisation of `texts`."""
    for target in targets.values():
        if target.buckets != source.buckets:
            raise ValueError(f"target has {target.buckets} buckets, source {source.buckets}")
    features = _features(texts, source.buckets)
    return {name: _importance_weights(texts, features, target, source) for name, target in targets.items()}


def _importance_weights(
    texts: list[str], features: tuple[np.ndarray, np.ndarray, np.ndarray], target: Distribution, source: Distribution
) -> tuple[list[float | None], list[float | None]]:
    log_ratio = np.log(target.counts / target.counts.sum() + _SMOOTHING) - np.log(
        source.counts / source.counts.sum() + _SMOOTHING
    )
    _, feature_doc, feature_bucket = features
    scores = np.bincount(feature_doc, weights=log_ratio[feature_bucket], minlength=len(texts))
    lengths = np.fromiter(map(len, texts), np.int64, len(texts))
    length_correction = np.log(_poisson_pmf(lengths, target.mean_words) + _SMOOTHING) - np.log(
        _poisson_pmf(lengths, source.mean_words) + _SMOOTHING
    )
    plain = [round(float(score), PRECISION) if length else None for score, length in zip(scores, lengths)]
    corrected = [
        round(float(score) + float(correction), PRECISION) if length else None
        for score, correction, length in zip(scores, length_correction, lengths)
    ]
    return plain, corrected


def _poisson_pmf(k: np.ndarray, mean: float) -> np.ndarray:
    return np.exp(xlogy(k, mean) - gammaln(k + 1) - mean)


def _features(texts: list[str], buckets: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw word counts per text, and every feature (each raw word, each raw bigram) as its text's index
    and its bucket (two parallel arrays)."""
    words, words_per_doc = raw_words(texts)
    encoded = pc.dictionary_encode(words)
    vocabulary = encoded.dictionary.to_pylist()
    word_hash = np.fromiter(
        (xxhash.xxh3_64_intdigest(word.encode("utf-8")) for word in vocabulary), np.uint64, len(vocabulary)
    )
    token_hash = word_hash[encoded.indices.to_numpy()]
    doc_of_token = np.repeat(np.arange(len(texts)), words_per_doc)
    bigram_in_doc = doc_of_token[1:] == doc_of_token[:-1]
    bigram_hash = _bigram_hash(token_hash[:-1][bigram_in_doc], token_hash[1:][bigram_in_doc])
    feature_doc = np.concatenate([doc_of_token, doc_of_token[:-1][bigram_in_doc]])
    feature_bucket = (np.concatenate([token_hash, bigram_hash]) % np.uint64(buckets)).astype(np.int64)
    return words_per_doc, feature_doc, feature_bucket


def _bigram_hash(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser of (left * golden gamma) XOR right, all modulo 2**64 (uint64 wraps)."""
    mixed = (left * _GOLDEN_GAMMA) ^ right
    mixed = (mixed ^ (mixed >> np.uint64(30))) * _SPLITMIX_MULTIPLIERS[0]
    mixed = (mixed ^ (mixed >> np.uint64(27))) * _SPLITMIX_MULTIPLIERS[1]
    return mixed ^ (mixed >> np.uint64(31))
