"""DSIR importance weights against values computed by hand from RPv2's formulas (arithmetic in comments).

Buckets are computed here from the documented stable hash, written out: a word goes to
xxh3_64(utf-8 bytes) mod B, a bigram to splitmix64's finaliser of (h(left) * 0x9E3779B97F4A7C15) XOR h(right)
mod B (all arithmetic modulo 2**64).
"""

import io
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xxhash
from pajama.data.dsir import DSIR_BUCKETS, Distribution, build_distribution, importance_weights

MASK = 2**64 - 1
BUCKETS = 7  # tiny, so that the expected counts can be listed by hand


def word_hash(word: str) -> int:
    return xxhash.xxh3_64_intdigest(word.encode("utf-8"))


def bigram_hash(left: str, right: str) -> int:
    z = ((word_hash(left) * 0x9E3779B97F4A7C15) & MASK) ^ word_hash(right)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def bucket(feature: str | tuple[str, str], buckets: int = BUCKETS) -> int:
    return (word_hash(feature) if isinstance(feature, str) else bigram_hash(*feature)) % buckets


def counts_of(features: list, buckets: int = BUCKETS) -> np.ndarray:
    counts = np.zeros(buckets, np.int64)
    for feature in features:
        counts[bucket(feature, buckets)] += 1
    return counts


# target sample: "a b" -> words a, b; bigram (a, b).  "a" -> word a.            3 words over 2 documents
TARGET_TEXTS = ["a b", "a"]
TARGET_FEATURES = ["a", "b", ("a", "b"), "a"]
# source sample: "b, b" -> raw (WordPunct) words b , b; bigrams (b ,) (, b).    3 words over 1 document
SOURCE_TEXTS = ["b, b"]
SOURCE_FEATURES = ["b", ",", "b", ("b", ","), (",", "b")]
# scored: "a, b" (4 characters) -> words a , b; bigrams (a ,) (, b)
DOC = "a, b"
DOC_FEATURES = ["a", ",", "b", ("a", ","), (",", "b")]


def hand_score(doc_features: list) -> float:
    target, source = counts_of(TARGET_FEATURES), counts_of(SOURCE_FEATURES)
    log_ratio = [
        math.log(target[b] / target.sum() + 1e-8) - math.log(source[b] / source.sum() + 1e-8)
        for b in range(BUCKETS)
    ]
    return sum(log_ratio[bucket(feature)] for feature in doc_features)


def poisson_pmf(k: int, lam: float) -> float:
    return math.exp(-lam) * lam**k / math.factorial(k)


def test_distribution_counts_features_and_mean_words():
    target = build_distribution(TARGET_TEXTS, buckets=BUCKETS)
    assert target.counts.dtype == np.int64
    assert target.counts.tolist() == counts_of(TARGET_FEATURES).tolist()
    assert target.mean_words == 3 / 2
    assert target.documents == 2
    source = build_distribution(SOURCE_TEXTS, buckets=BUCKETS)
    assert source.counts.tolist() == counts_of(SOURCE_FEATURES).tolist()
    assert source.mean_words == 3.0


def test_bigrams_stay_within_a_document_and_count_once():
    # "x" and "y" in two documents: two words, no bigram; "x y": two words and one bigram feature
    assert build_distribution(["x", "y"], buckets=DSIR_BUCKETS).counts.sum() == 2
    joined = build_distribution(["x y"], buckets=DSIR_BUCKETS).counts
    assert joined.sum() == 3
    assert joined[bucket(("x", "y"), DSIR_BUCKETS)] >= 1


def test_importance_weight_by_hand():
    target = build_distribution(TARGET_TEXTS, buckets=BUCKETS)
    source = build_distribution(SOURCE_TEXTS, buckets=BUCKETS)
    plain, corrected = importance_weights([DOC, "", " "], target, source)
    expected = hand_score(DOC_FEATURES)
    assert plain[0] == pytest.approx(expected, abs=1e-8)
    assert plain[0] == round(plain[0], 8)
    # length correction: len = 4 characters (RPv2's len(Document)); lambda_target = 1.5, lambda_source = 3
    correction = math.log(poisson_pmf(4, 1.5) + 1e-8) - math.log(poisson_pmf(4, 3.0) + 1e-8)
    assert corrected[0] == pytest.approx(expected + correction, abs=1e-8)
    # empty text: null; whitespace only: no features (0.0), length 1 still corrected
    assert plain[1] is None and corrected[1] is None
    assert plain[2] == 0.0
    one_char = math.log(poisson_pmf(1, 1.5) + 1e-8) - math.log(poisson_pmf(1, 3.0) + 1e-8)
    assert corrected[2] == pytest.approx(one_char, abs=1e-8)


def test_length_correction_vanishes_when_the_pmf_underflows():
    # 1000 characters: pmf(1000; 1.5) and pmf(1000; 3) are 0.0 in float64, so log(0 + 1e-8) - log(0 + 1e-8) = 0
    target = build_distribution(TARGET_TEXTS, buckets=BUCKETS)
    source = build_distribution(SOURCE_TEXTS, buckets=BUCKETS)
    long_doc = "a " * 500
    plain, corrected = importance_weights([long_doc], target, source)
    # 500 words a, 499 bigrams (a, a)
    expected = hand_score(["a"] * 500 + [("a", "a")] * 499)
    assert plain[0] == pytest.approx(expected, abs=1e-6)
    assert corrected == plain


def test_matches_rpv2_dense_dot_product_on_real_text():
    # RPv2: features = dense bucket counts, score = np.inner(features, log_diff), rounded to 8 decimals
    texts = [
        "The quick brown fox jumps over the lazy dog. It's 3:45pm -- isn't it?",
        "Photosynthesis converts light energy into chemical energy, stored in glucose.",
        "Click here!!! Best deals on cheap watches... free shipping, today only.",
    ]
    target = build_distribution(texts[:2], buckets=DSIR_BUCKETS)
    source = build_distribution(texts[2:], buckets=DSIR_BUCKETS)
    log_diff = np.log(target.counts / target.counts.sum() + 1e-8) - np.log(source.counts / source.counts.sum() + 1e-8)
    plain, _ = importance_weights(texts, target, source)
    for text, score in zip(texts, plain):
        words = re.findall(r"\w+|[^\w\s]+", text)
        features = counts_of(words + list(zip(words, words[1:])), DSIR_BUCKETS)
        assert score == pytest.approx(round(float(np.inner(features, log_diff)), 8), abs=2e-8)


def test_buckets_are_stable_across_processes():
    texts = ["Stable hashing: the same buckets in every process.", "naïve café, 東京 2024!"]
    here = build_distribution(texts, buckets=DSIR_BUCKETS).counts
    script = (
        "import sys, numpy as np\n"
        "from pajama.data.dsir import build_distribution\n"
        f"np.save(sys.stdout.buffer, build_distribution({texts!r}).counts)\n"
    )
    for hash_seed in ("1", "987654"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, check=True)
        assert np.load(io.BytesIO(result.stdout), allow_pickle=False).tolist() == here.tolist()


def test_save_and_load_round_trip(tmp_path: Path):
    distribution = build_distribution(TARGET_TEXTS, buckets=BUCKETS)
    distribution.save(tmp_path, dataset="wikipedia", language="en")
    # RPv2's file names: {dataset}.{lang}.{buckets}.counts.npy and {dataset}.{lang}.lambda.npy
    counts_file = tmp_path / f"wikipedia.en.{BUCKETS}.counts.npy"
    assert np.load(counts_file, allow_pickle=False).tolist() == counts_of(TARGET_FEATURES).tolist()
    assert float(np.load(tmp_path / "wikipedia.en.lambda.npy", allow_pickle=False)) == 1.5
    loaded = Distribution.load(tmp_path, dataset="wikipedia", language="en", buckets=BUCKETS)
    assert loaded.counts.tolist() == distribution.counts.tolist()
    assert (loaded.mean_words, loaded.documents) == (1.5, 2)


def test_mismatched_buckets_are_refused():
    with pytest.raises(ValueError, match="buckets"):
        importance_weights(["a"], build_distribution(["a"], buckets=3), build_distribution(["a"], buckets=5))
