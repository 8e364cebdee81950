"""Exact and fuzzy (MinHash LSH) dedup: RPv2 normalisation, exact dedup across slices, the LSH
bands x rows choice, signatures, connected components, and recall/precision on a corpus with
planted near-duplicates."""

from __future__ import annotations

import itertools
import random
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pytest
import ray
from ray.data.context import ShuffleStrategy

from pajama.data import dedup
from pajama.data.dedup import (
    _connected_components,
    _connected_components_on_driver,
    _minhash_constants,
    _texts,
    exact_dedup,
    fuzzy_dedup,
    minhash_signatures,
    optimal_bands_rows,
)
from pajama.data.slices import DOCUMENT_COLUMNS, SLICES
from pajama.data.text import normalize_text




def doc(doc_id: str, slice_: str, text: str) -> dict:
    return {"doc_id": doc_id, "slice": slice_, "text": text, "meta": f'{{"source": "{doc_id}"}}'}


def by_id(rows: list[dict]) -> dict[str, dict]:
    result = {row["doc_id"]: row for row in rows}
    assert len(result) == len(rows)
    return result


def shingles(words: list[str], n: int = 13) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(normalize_text(a).split()), shingles(normalize_text(b).split())
    return len(sa & sb) / len(sa | sb)


def lsh_candidate_probability(j: float, bands: int = 14, rows: int = 9) -> float:
    """P(candidate) on the S-curve of fuzzy_dedup's default threshold 0.7 (14 bands x 9 rows)."""
    return 1 - (1 - j**rows) ** bands


# --- no Ray ----------------------------------------------------------------------------------


def test_normalize_text_is_rpv2_normalisation():
    assert normalize_text("  Hello,\tWORLD!!\n\n It's  me. ") == "hello world its me"
    # NFD splits accented letters into base letter + combining mark.
    assert normalize_text("Café") == "cafe\u0301"
    assert normalize_text("Café") == normalize_text("CAFÉ")
    assert normalize_text("...") == ""


def test_optimal_bands_rows_matches_datasketch():
    assert optimal_bands_rows(0.8, 128) == (9, 13)
    # Reference: datasketch's optimal_param, integrating the S-curve numerically.
    integrate = pytest.importorskip("scipy.integrate").quad

    def reference(threshold: float, num_perm: int) -> tuple[int, int]:
        best, best_error = (0, 0), float("inf")
        for b in range(1, num_perm + 1):
            for r in range(1, num_perm // b + 1):
                fp = integrate(lambda s, b=b, r=r: 1 - (1 - s**r) ** b, 0.0, threshold)[0]
                fn = integrate(lambda s, b=b, r=r: (1 - s**r) ** b, threshold, 1.0)[0]
                if 0.5 * fp + 0.5 * fn < best_error:
                    best, best_error = (b, r), 0.5 * fp + 0.5 * fn
        return best

    for threshold, num_perm in [(0.5, 128), (0.7, 128), (0.9, 128), (0.8, 64), (0.85, 256)]:
        assert optimal_bands_rows(threshold, num_perm) == reference(threshold, num_perm)
    with pytest.raises(ValueError, match="threshold"):
        optimal_bands_rows(1.0, 128)


def test_minhash_signatures_estimate_jaccard_and_are_seeded():
    rng = random.Random(3)
    vocabulary = [f"w{i}" for i in range(3000)]
    base = rng.choices(vocabulary, k=250)
    edited = base[:100] + ["inserted"] + base[100:200] + base[203:]
    unrelated = rng.choices(vocabulary, k=250)
    docs = [base, edited, unrelated, base[:12], []]
    signatures, signed = minhash_signatures(docs, 13, **_minhash_constants(128, seed=42))
    assert signed.tolist() == [0, 1, 2]  # fewer words than one shingle: no signature, as in RPv2
    assert signatures.shape == (3, 128) and signatures.dtype == np.uint32
    true_j = len(shingles(base) & shingles(edited)) / len(shingles(base) | shingles(edited))
    estimated_j = float(np.mean(signatures[0] == signatures[1]))
    assert abs(estimated_j - true_j) < 0.15  # 3.5 sigma at 128 permutations
    assert np.mean(signatures[0] == signatures[2]) < 0.05

    again, _ = minhash_signatures(docs, 13, **_minhash_constants(128, seed=42))
    other_seed, _ = minhash_signatures(docs, 13, **_minhash_constants(128, seed=7))
    assert np.array_equal(signatures, again)
    assert not np.array_equal(signatures, other_seed)


def test_null_text_is_a_clear_error():
    batch = pa.table({"doc_id": ["a", "b"], "text": ["fine", None]})
    with pytest.raises(ValueError, match="document 'b' has a null 'text'"):
        _texts(batch)


# --- Ray -------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def shuffle_strategy():
    """The tiny recipe's shuffle (data.shuffle_strategy) unless a test picks another."""
    context = ray.data.DataContext.get_current()
    previous, context.shuffle_strategy = context.shuffle_strategy, ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    yield context
    context.shuffle_strategy = previous


# The laptop's path, and the cluster's: Ray's default shuffle with marks joined back by hash.
SHUFFLE_AND_JOIN = pytest.mark.parametrize("cluster_path", [False, True], ids=["sort+broadcast", "v2+hash-join"])


def _take_cluster_path(context, monkeypatch) -> None:
    context.shuffle_strategy = ShuffleStrategy.SHUFFLE_V2
    monkeypatch.setattr(dedup, "_BROADCAST_MAX_ROWS", 0)


@SHUFFLE_AND_JOIN
def test_exact_dedup_across_slices_keeps_smallest_doc_id(ray_session, shuffle_strategy, monkeypatch, cluster_path):
    if cluster_path:
        _take_cluster_path(shuffle_strategy, monkeypatch)
    text = "The quick brown fox jumps over the lazy dog."
    docs = [
        doc("c4/0002", "c4", text),
        doc("books/0001", "books", "  the QUICK brown fox, jumps over the lazy dog!!\n"),
        doc("wikipedia/0003", "wikipedia", "The quick brown fox\tjumps over the lazy dog"),
        doc("c4/0001", "c4", "The quick brown fox jumps over the lazy cat."),
        doc("arxiv/0001", "arxiv", "Same words; different: punctuation?"),
        doc("github/0001", "github", "same words different punctuation"),
        doc("c4/0009", "c4", "A document with no twin."),
    ]
    marked = exact_dedup(ray.data.from_items(docs, override_num_blocks=2), num_partitions=2)
    rows = by_id(marked.take_all())

    assert {d: r["exact_dup_of"] for d, r in rows.items()} == {
        "books/0001": None,
        "c4/0002": "books/0001",
        "wikipedia/0003": "books/0001",
        "c4/0001": None,
        "arxiv/0001": None,
        "github/0001": "arxiv/0001",
        "c4/0009": None,
    }
    for original in docs:
        assert {c: rows[original["doc_id"]][c] for c in DOCUMENT_COLUMNS} == original
        assert set(rows[original["doc_id"]]) == {*DOCUMENT_COLUMNS, "exact_dup_of"}
    removed_per_slice = defaultdict(int)
    for row in rows.values():
        removed_per_slice[row["slice"]] += row["exact_dup_of"] is not None
    assert dict(removed_per_slice) == {"c4": 1, "books": 0, "wikipedia": 1, "arxiv": 0, "github": 1}


def test_fuzzy_dedup_without_candidates_leaves_every_document_alone(ray_session):
    docs = [
        doc("a", "c4", "Too short to shingle."),
        doc("b", "c4", ""),
        doc("c", "books", " ".join(f"word{i}" for i in range(40))),
    ]
    marked = fuzzy_dedup(ray.data.from_items(docs, override_num_blocks=2), num_partitions=2)
    rows = by_id(marked.take_all())
    for original in docs:
        row = rows[original["doc_id"]]
        assert {c: row[c] for c in DOCUMENT_COLUMNS} == original
        assert (row["fuzzy_cluster"], row["fuzzy_dup_of"]) == (original["doc_id"], None)
    with pytest.raises(ValueError, match="both bands and rows"):
        fuzzy_dedup(ray.data.from_items(docs), bands=9)


@SHUFFLE_AND_JOIN
def test_fuzzy_dedup_keeps_the_smallest_doc_id_of_a_near_duplicate_pair(ray_session, shuffle_strategy,
                                                                        monkeypatch, cluster_path):
    if cluster_path:
        _take_cluster_path(shuffle_strategy, monkeypatch)
    rng = random.Random(3)
    words = [f"w{rng.randrange(10_000)}" for _ in range(300)]
    edited = words[:150] + ["edited"] + words[151:]
    docs = [doc("c4/2", "c4", " ".join(words)), doc("books/1", "books", " ".join(edited)),
            doc("c4/3", "c4", " ".join(reversed(words)))]
    rows = by_id(fuzzy_dedup(ray.data.from_items(docs, override_num_blocks=2), num_partitions=2).take_all())
    assert {d: (r["fuzzy_cluster"], r["fuzzy_dup_of"]) for d, r in rows.items()} == {
        "books/1": ("books/1", None), "c4/2": ("books/1", "books/1"), "c4/3": ("c4/3", None)}
    for original in docs:
        assert {c: rows[original["doc_id"]][c] for c in DOCUMENT_COLUMNS} == original


def test_connected_components_converge_on_long_chains(ray_session):
    """A path whose ids are out of order needs three large-star/small-star rounds."""
    path = ["n04", "n02", "n01", "n00", "n05", "n03"]
    pairs = [*itertools.pairwise(path), ("t1", "t2"), ("t2", "t3"), ("t3", "t1")]
    edges = [{"_child": max(a, b), "_parent": min(a, b)} for a, b in pairs]
    edges_ds = ray.data.from_items(edges, override_num_blocks=2)
    expected = {**{node: "n00" for node in path if node != "n00"}, "t2": "t1", "t3": "t1"}
    roots = _connected_components(edges_ds, partitions=2).take_all()
    assert {r["doc_id"]: r["_fuzzy_root"] for r in roots} == expected
    # Small graphs take the single-process path; it must give the same roots.
    roots = _connected_components_on_driver(edges_ds).take_all()
    assert {r["doc_id"]: r["_fuzzy_root"] for r in roots} == expected


def make_corpus(seed: int = 11):
    """3000 unrelated documents of 100-300 words from a seeded Zipfian vocabulary, plus planted
    near-duplicate families (copies with a few words edited, inserted, deleted, or a short
    header/footer) and hard negatives that share half their words with a document.

    Returns (docs, family of each doc_id, [(copy_id, source_id, jaccard)], [(negative, source)]).
    """
    rng = random.Random(seed)
    word_rng = np.random.default_rng(seed)
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"]
    vocabulary = np.array(
        sorted({"".join(rng.choices(syllables, k=rng.randint(2, 4))) for _ in range(25000)})
    )
    zipf_cdf = np.cumsum(1.0 / np.arange(1, vocabulary.size + 1))
    zipf_cdf /= zipf_cdf[-1]

    def words(n: int) -> list[str]:
        return vocabulary[np.searchsorted(zipf_cdf, word_rng.random(n))].tolist()

    def render(tokens: list[str]) -> str:
        # Sentences with capitals and punctuation that normalisation removes.
        out, start = [], 0
        while start < len(tokens):
            end = start + rng.randint(6, 17)
            sentence = tokens[start:end]
            stop = rng.choice(".!?;")
            out.append(" ".join([sentence[0].capitalize(), *sentence[1:]]) + stop)
            start = end
        return " ".join(out)

    def new_id(slice_: str) -> str:
        return f"{slice_}/{rng.getrandbits(48):012x}"

    def edit(tokens: list[str]) -> list[str]:
        copy = list(tokens)
        kind = rng.randrange(5)
        if kind < 3:
            at, k = rng.randrange(len(copy)), rng.randint(1, 2)
            if kind == 0:
                copy[at : at + k] = words(k)
            elif kind == 1:
                copy[at:at] = words(k)
            else:
                del copy[at : at + k]
        elif kind == 3:
            copy = words(rng.randint(2, 6)) + copy
        else:
            copy = copy + words(rng.randint(2, 6))
        return copy

    docs, family, tokens_of = [], {}, {}
    for index in range(3000):
        slice_ = SLICES[index % len(SLICES)]
        doc_id = new_id(slice_)
        tokens_of[doc_id] = words(rng.randint(100, 300))
        docs.append(doc(doc_id, slice_, render(tokens_of[doc_id])))
        family[doc_id] = doc_id

    text_of = {d["doc_id"]: d["text"] for d in docs}
    planted = []
    for number, source in enumerate(rng.sample(list(tokens_of), 400)):
        # A quarter of the families are chains: the second copy edits the first copy.
        for _ in range(2 if number % 4 == 0 else 1):
            copy_tokens = edit(tokens_of[source])
            slice_ = rng.choice(SLICES)
            copy_id = new_id(slice_)
            tokens_of[copy_id], text_of[copy_id] = copy_tokens, render(copy_tokens)
            docs.append(doc(copy_id, slice_, text_of[copy_id]))
            family[copy_id] = family[source]
            planted.append((copy_id, source, jaccard(text_of[copy_id], text_of[source])))
            source = copy_id

    negatives = []
    for source in rng.sample(list(tokens_of), 100):
        half = tokens_of[source][: len(tokens_of[source]) // 2]
        negative_id = new_id("c4")
        docs.append(doc(negative_id, "c4", render(half + words(len(half)))))
        family[negative_id] = negative_id
        negatives.append((negative_id, source))
    rng.shuffle(docs)
    return docs, family, planted, negatives


@pytest.mark.slow
def test_fuzzy_dedup_recall_and_precision_on_planted_near_duplicates(ray_session):
    docs, family, planted, negatives = make_corpus()
    assert len(docs) >= 3500
    marked = fuzzy_dedup(ray.data.from_items(docs, override_num_blocks=4), num_partitions=2)
    rows = by_id(marked.take_all())

    # Every input column passes through unchanged.
    assert len(rows) == len(docs)
    for original in docs:
        assert {c: rows[original["doc_id"]][c] for c in DOCUMENT_COLUMNS} == original

    clusters = defaultdict(list)
    for doc_id, row in rows.items():
        clusters[row["fuzzy_cluster"]].append(doc_id)
    for cluster, members in clusters.items():
        # One document kept per cluster: the smallest doc_id, which names the cluster.
        assert cluster == min(members)
        assert rows[cluster]["fuzzy_dup_of"] is None
        assert all(rows[m]["fuzzy_dup_of"] == cluster for m in members if m != cluster)
        # Precision: no cluster joins documents from different families.
        assert len({family[m] for m in members}) == 1, members
    assert all(rows[n]["fuzzy_cluster"] != rows[s]["fuzzy_cluster"] for n, s in negatives)

    found = np.array([rows[c]["fuzzy_cluster"] == rows[s]["fuzzy_cluster"] for c, s, _ in planted])
    similarity = np.array([j for _, _, j in planted])
    # With 13-word shingles one edited word changes up to 13 shingles, so a single mid-text
    # edit of a 100-300 word document lands at Jaccard 0.7-0.9: the default threshold 0.7
    # (14x9 bands) finds at least 95% of them (0.8's 9x13 bands: ~86%), and merges no others.
    assert found.mean() >= 0.95, f"recall {found.mean():.3f}"
    clear = similarity >= 0.9
    assert clear.sum() >= 150
    assert found[clear].mean() >= 0.99
    expected = np.mean([lsh_candidate_probability(j) for j in similarity])
    assert found.mean() >= expected - 3 * np.sqrt(expected * (1 - expected) / len(found))
    removed = sum(row["fuzzy_dup_of"] is not None for row in rows.values())
    assert removed == sum(len(members) - 1 for members in clusters.values()) >= found.sum()
