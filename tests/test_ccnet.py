"""cc_net signals: normalizer, paragraph dedup, an lmplz-equivalent ARPA estimate scored by kenlm, perplexity
and buckets. Expected values come from reading cc_net's code and from Kneser-Ney written out by hand."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import random
import statistics

import kenlm
import numpy as np
import pytest
import sentencepiece

from pajama.config import RESOURCES_DIR
from pajama.data import ccnet


def _corpus(slice_name: str) -> list[str]:
    with gzip.open(RESOURCES_DIR / "corpus" / f"{slice_name}.jsonl.gz", "rt") as f:
        return [json.loads(line)["text"] for line in f]


# --- normalization ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("  Héllo WÖRLD  ", "hello world"),
        ("Ångström İstanbul ÇA", "angstrom istanbul ca"),  # İ lowercases to i + U+0307, a combining mark
        ("ŒUVRE ß ø", "œuvre ß ø"),  # no decomposition: kept
        ("Call 555-1234 or ０２３ ٣", "call 000-0000 or 000 0"),  # every Unicode decimal digit
        ("１", "0"),  # a punctuation key, but digits are replaced first
        ("«Bonjour» — dit-il…", '"bonjour"  -  dit-il...'),
        ("（a）【b】：c？！％", "(a)[b]:c?!%"),
        ("Tab\there\x00 and\x85 C1", "tabhere and c0"),
        ("first line\nSecond Line", "first linesecond line"),  # newlines are control characters
        ("한국", "\u1112\u1161\u11ab\u1100\u116e\u11a8"),  # NFD stays decomposed (jamo)
        (" \t\n ", ""),
    ],
)
def test_normalize_for_lm_follows_cc_net(raw, expected):
    assert ccnet.normalize_for_lm(raw) == expected


def test_normalize_for_dedup_follows_cc_net():
    # cc_net's own test case (tests/test_normalizer.py).
    assert ccnet.normalize_for_dedup("０２３´∶：\x10 | ;012 hèllo") == "000 | ;000 hèllo"
    assert ccnet.normalize_for_dedup("  Accept cookies！ ") == "accept cookies"
    assert ccnet.normalize_for_dedup("Accept cookies!") == "accept cookies!"


# --- paragraph dedup -------------------------------------------------------------------------------

DOC_A = "Hello world\nShared 2023 menu\nAccept cookies\nOnly in A"
DOC_B = "hello world  \nOnly in B\n\nShared 1999 menu\nAlso only in B"
DOC_C = "Accept cookies！\nOnly in C\nOnly in C\n"


def _sha1_u64(normalized: str) -> int:
    return int.from_bytes(hashlib.sha1(normalized.encode()).digest()[:8], "little")


def test_paragraph_hashes_are_cc_nets_sha1_prefixes():
    hashes = ccnet.paragraph_hashes(DOC_B)
    assert hashes.dtype == np.uint64
    assert hashes.tolist() == [
        _sha1_u64("hello world"), _sha1_u64("only in b"), _sha1_u64(""), _sha1_u64("shared 0000 menu"),
        _sha1_u64("also only in b"),
    ]
    assert ccnet.paragraph_hashes(DOC_A)[0] == hashes[0]
    assert ccnet.paragraph_hashes(DOC_C).size == 4  # the trailing "\n" makes an empty last line


def test_dedup_drops_every_occurrence_of_a_repeated_line():
    # Repeated across the corpus: "hello world" (A, B), "shared 0000 menu" (A, B), "accept cookies" (A, C:
    # the fullwidth ！ is deleted), the blank line (B, C) and "only in c" (twice in C). C keeps nothing.
    assert ccnet.dedup_paragraphs([DOC_A, DOC_B, DOC_C]) == ["Only in A", "Only in B\nAlso only in B", None]
    assert ccnet.dedup_paragraphs(["", "x"]) == [None, "x"]

    drop_a = np.array([True, True, True, False])
    drop_b = np.array([True, False, True, True, False])
    assert ccnet.drop_paragraphs(DOC_B, drop_b) == "Only in B\nAlso only in B"
    assert ccnet.paragraph_counts(DOC_A, drop_a) == {
        "ccnet_original_length": 11 + 16 + 14 + 9 + 3,
        "ccnet_original_nlines": 4,
        "ccnet_length": 9,
        "ccnet_nlines": 1,
    }
    assert ccnet.paragraph_counts(DOC_B, drop_b) == {
        "ccnet_original_length": 13 + 9 + 0 + 16 + 14 + 4,
        "ccnet_original_nlines": 5,
        "ccnet_length": 9 + 1 + 14,
        "ccnet_nlines": 2,
    }
    with pytest.raises(ValueError):
        ccnet.drop_paragraphs(DOC_A, drop_b)


# --- ARPA estimate ---------------------------------------------------------------------------------


def _state_after(model: kenlm.Model, words: list[str]) -> kenlm.State:
    state = kenlm.State()
    model.BeginSentenceWrite(state)
    for word in words:
        following = kenlm.State()
        model.BaseScore(state, word, following)
        state = following
    return state


def _next_word_total(model: kenlm.Model, context: list[str], vocabulary: list[str]) -> float:
    state = _state_after(model, context)
    return sum(10 ** model.BaseScore(state, word, kenlm.State()) for word in [*vocabulary, "</s>", "<unk>"])


def _load(path, capfd) -> kenlm.Model:
    model = kenlm.Model(str(path))
    assert "warn" not in capfd.readouterr().err.lower()
    return model


FALLBACK_CORPUS = [["a", "b"], ["a", "b"], ["b", "c"]]


def test_bigram_model_with_fallback_discounts(tmp_path, capfd):
    model = _load(ccnet.build_arpa(FALLBACK_CORPUS, 2, tmp_path / "m.arpa"), capfd)
    # Bigram counts: <s> a 2, a b 2, b </s> 2, <s> b 1, b c 1, c </s> 1 -> no count 3: fallback D = .5, 1, 1.5.
    # Unigram continuation counts (distinct left words): a 1, b 2, c 1, </s> 2 -> also fallback.
    # Unigrams: sum 6, gamma = (.5 * 2 + 1 * 2) / 6 = .5, uniform over a, b, c, </s>, <unk> = .5 / 5.
    p_a = (1 - 0.5) / 6 + 0.1
    p_b = (2 - 1) / 6 + 0.1
    p_c = (1 - 0.5) / 6 + 0.1
    p_eos = (2 - 1) / 6 + 0.1
    # Context <s>: a 2, b 1 -> sum 3, gamma (1 + .5) / 3. Context a: b 2 -> gamma 1 / 2. Context b: </s> 2, c 1.
    p_a_given_bos = (2 - 1) / 3 + 0.5 * p_a
    p_b_given_a = (2 - 1) / 2 + 0.5 * p_b
    p_eos_given_b = (2 - 1) / 3 + 0.5 * p_eos
    scores = list(model.full_scores("a b"))
    assert [s[0] for s in scores] == pytest.approx(
        [math.log10(p_a_given_bos), math.log10(p_b_given_a), math.log10(p_eos_given_b)], abs=1e-6
    )
    assert [s[1] for s in scores] == [2, 2, 2]
    # Unseen bigram "a c": backoff gamma(a) times the unigram probability.
    assert list(model.full_scores("a c", bos=False, eos=False))[1][0] == pytest.approx(math.log10(0.5 * p_c), abs=1e-6)
    assert 10 ** model.score("zzz", bos=False, eos=False) == pytest.approx(0.1, rel=1e-6)  # <unk>
    for context in [[], ["a"], ["b"], ["c"], ["zzz"]]:
        assert _next_word_total(model, context, ["a", "b", "c"]) == pytest.approx(1.0, abs=1e-5)


def test_trigram_model_uses_raw_counts_after_bos(tmp_path, capfd):
    model = _load(ccnet.build_arpa(FALLBACK_CORPUS, 3, tmp_path / "m.arpa"), capfd)
    # Trigrams (raw): <s> a b 2, a b </s> 2, <s> b c 1, b c </s> 1. Bigrams: <s> a 2 and <s> b 1 keep raw
    # counts; a b, b </s>, b c, c </s> get 1 (one distinct left word each). All orders fall back.
    p_b = (2 - 1) / 6 + 0.1  # unigrams as in the bigram model
    p_b_given_a = (1 - 0.5) / 1 + (0.5 / 1) * p_b
    p_b_given_bos_a = (2 - 1) / 2 + (1 / 2) * p_b_given_a
    assert list(model.full_scores("a b"))[1] == pytest.approx((math.log10(p_b_given_bos_a), 3, False), abs=1e-6)
    for context in [["a"], ["a", "b"], ["b", "c"], ["c", "a"], ["b"], ["zzz", "a"]]:
        assert _next_word_total(model, context, ["a", "b", "c"]) == pytest.approx(1.0, abs=1e-5)


def test_bigram_model_with_closed_form_discounts(tmp_path, capfd):
    corpus = [["x", "a"]] * 3 + [["y", "a", "b"]] * 2 + [["a", "c", "b"]]
    model = _load(ccnet.build_arpa(corpus, 2, tmp_path / "m.arpa"), capfd)
    # Bigram counts: <s> x 3, x a 3, a </s> 3, b </s> 3, <s> y 2, y a 2, a b 2, <s> a 1, a c 1, c b 1:
    # n1 = 3, n2 = 3, n3 = 4, n4 = 0 -> Y = 3 / (3 + 2 * 3), D1 = 1 - 2Y n2/n1, D2 = 2 - 3Y n3/n2, D3 = 3 - 4Y n4/n3.
    y = 3 / 9
    d1, d2, d3 = 1 - 2 * y * 3 / 3, 2 - 3 * y * 4 / 3, 3 - 4 * y * 0 / 4
    # Unigram continuation counts: a 3 (x, y, <s>), b 2 (a, c), </s> 2 (a, b), x 1, y 1, c 1:
    # n1 = 3, n2 = 2, n3 = 1, n4 = 0.
    u = 3 / (3 + 2 * 2)
    u1, u2, u3 = 1 - 2 * u * 2 / 3, 2 - 3 * u * 1 / 2, 3 - 4 * u * 0 / 1
    gamma_unigram = (3 * u1 + 2 * u2 + 1 * u3) / 10
    uniform = gamma_unigram / 7  # a, b, c, x, y, </s>, <unk>
    p_a = (3 - u3) / 10 + uniform
    p_b = (2 - u2) / 10 + uniform
    p_eos = (2 - u2) / 10 + uniform
    # Context <s>: x 3, y 2, a 1. Context a: </s> 3, b 2, c 1. Context b: </s> 3.
    p_a_given_bos = (1 - d1) / 6 + (d3 + d2 + d1) / 6 * p_a
    p_b_given_a = (2 - d2) / 6 + (d3 + d2 + d1) / 6 * p_b
    p_eos_given_b = (3 - d3) / 3 + d3 / 3 * p_eos
    assert [s[0] for s in model.full_scores("a b")] == pytest.approx(
        [math.log10(p_a_given_bos), math.log10(p_b_given_a), math.log10(p_eos_given_b)], abs=1e-6
    )
    for context in [[], ["a"], ["b"], ["c"], ["x"], ["y"]]:
        assert _next_word_total(model, context, ["a", "b", "c", "x", "y"]) == pytest.approx(1.0, abs=1e-5)


def test_build_arpa_rejects_words_arpa_cannot_hold(tmp_path):
    with pytest.raises(ValueError):
        ccnet.build_arpa([["a b"]], 2, tmp_path / "m.arpa")
    with pytest.raises(ValueError):
        ccnet.build_arpa([["a", "</s>"]], 2, tmp_path / "m.arpa")


# --- perplexity model ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built_model(tmp_path_factory):
    wikipedia = _corpus("wikipedia")
    sp_path, lm_path = ccnet.build_perplexity_model(
        wikipedia[:100], tmp_path_factory.mktemp("lm"), order=4, vocab_size=1500
    )
    return sp_path, lm_path, wikipedia[100:]


def test_doc_perplexity_is_cc_nets_formula(built_model):
    sp_path, lm_path, _ = built_model
    model = ccnet.PerplexityModel.load(sp_path, lm_path)
    assert ccnet.PerplexityModel.load(sp_path, lm_path) is model  # cached per process
    text = "The Wörld has 42 modules\nSecond line — here"
    # Normalized as one line (the newline is deleted), then sentencepiece pieces, then one kenlm score.
    pieces = sentencepiece.SentencePieceProcessor(model_file=str(sp_path)).encode(
        "the world has 00 modulessecond line  -  here", out_type=str
    )
    log10_score = kenlm.Model(str(lm_path)).score(" ".join(pieces))
    expected = round(10 ** (-log10_score / (len(pieces) + 1)), 1)
    assert model.doc_perplexity(text) == expected
    assert model.doc_perplexity(" \n\t") is None
    assert model.perplexities([text, "", text]) == [expected, None, expected]


def test_in_domain_text_scores_lower_than_shuffled_or_code(built_model):
    sp_path, lm_path, held_out = built_model
    model = ccnet.PerplexityModel.load(sp_path, lm_path)
    in_domain = held_out[:20]
    rng = random.Random(0)
    shuffled = []
    for text in in_domain:
        words = text.split()
        rng.shuffle(words)
        shuffled.append(" ".join(words))
    code = _corpus("github")[:20]
    in_domain_pp = statistics.median(model.perplexities(in_domain))
    assert in_domain_pp < statistics.median(model.perplexities(shuffled)) / 2
    assert in_domain_pp < statistics.median(model.perplexities(code))


def test_buckets_and_cutoffs():
    english = (340.0, 520.0)  # cc_net's cutoff.csv, column en, rows 30 and 60
    assert [ccnet.perplexity_bucket(p, english) for p in [12.0, 339.9, 340.0, 519.9, 520.0, 4000.0, None]] == [
        "head", "head", "middle", "middle", "tail", "tail", "all",
    ]
    # np.percentile (linear): 30th of 10..100 sits at index 2.7 -> 37, 60th at index 5.4 -> 64.
    assert ccnet.perplexity_cutoffs([100, 10, 20, None, 30, 40, 50, 60, 70, 80, 90]) == pytest.approx((37.0, 64.0))
    with pytest.raises(ValueError):
        ccnet.perplexity_cutoffs([None])


def test_sentencepiece_training_is_deterministic(tmp_path):
    texts = _corpus("wikipedia")[:30]
    first = ccnet.train_sentencepiece(texts, tmp_path / "one" / "en.sp", vocab_size=400, seed=3)
    second = ccnet.train_sentencepiece(texts, tmp_path / "two" / "en.sp", vocab_size=400, seed=3)
    assert first.name == "en.sp.model"
    assert first.read_bytes() == second.read_bytes()
    processor = sentencepiece.SentencePieceProcessor(model_file=str(first))
    vocabulary = "".join(processor.id_to_piece(i) for i in range(processor.get_piece_size()))
    # Trained on normalized text: no capital letter nor digit other than 0 in any piece.
    assert "0" in vocabulary and not any(c.isupper() or c in "123456789" for c in vocabulary)
