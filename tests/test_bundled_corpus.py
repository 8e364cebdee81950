"""The bundled default corpus: RedPajama-1T jsonl per slice, with the junk and duplicates its
ground_truth.json says were planted (and no others)."""

import collections
import gzip
import hashlib
import json
import platform
import re
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest
from pajama.data.slices import SET_NAME_TO_SLICE, SLICE_TO_SET_NAME, SLICES

CORPUS = Path(str(files("pajama").joinpath("resources", "corpus")))
GENERATOR = Path(__file__).resolve().parents[1] / "scripts" / "make_bundled_corpus.py"
# What a tag would say; a junk page's title may still quote its own text ("Lorem ipsum ...") and
# real names may say "duplicate" (configparser.DuplicateSectionError).
PLANT_TAG = re.compile(r"\b(junk|planted|mirror|(exact|near)[_ -]?dup\w*)\b", re.IGNORECASE)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    words = text.lower().split()
    return {tuple(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}


def shingle_jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


@pytest.fixture(scope="module")
def truth() -> dict:
    return json.loads((CORPUS / "ground_truth.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def corpus() -> dict[str, dict[int, dict]]:
    """Each slice's records by 1-based line number, as ground_truth.json (and doc_id) count them."""
    records = {}
    for slice_name in SLICES:
        with gzip.open(CORPUS / f"{slice_name}.jsonl.gz", "rt", encoding="utf-8") as lines:
            records[slice_name] = {n: json.loads(line) for n, line in enumerate(lines, start=1)}
    return records


def planted_lines(entry: dict) -> set[int]:
    return {r["line_number"] for key in ("junk", "exact_duplicates", "near_duplicates") for r in entry[key]}


def test_every_slice_is_redpajama_jsonl_with_its_set_name(corpus):
    for slice_name in SLICES:
        assert corpus[slice_name], f"{slice_name}.jsonl.gz is empty"
        for record in corpus[slice_name].values():
            assert set(record) == {"text", "meta"}
            assert isinstance(record["text"], str) and record["text"].strip()
            set_name = record["meta"]["redpajama_set_name"]
            assert set_name == SLICE_TO_SET_NAME[slice_name]
            assert SET_NAME_TO_SLICE[set_name] == slice_name


def test_sizes_fit_a_laptop_pretrain(corpus):
    documents = sum(len(records) for records in corpus.values())
    text_bytes = sum(len(r["text"].encode("utf-8")) for records in corpus.values() for r in records.values())
    gz_bytes = sum((CORPUS / f"{s}.jsonl.gz").stat().st_size for s in SLICES)
    assert 1_500 <= documents <= 4_000
    assert 2_000_000 <= text_bytes <= 4_000_000
    assert gz_bytes < 2_000_000
    for slice_name, records in corpus.items():
        assert sum(len(r["text"]) for r in records.values()) >= 100_000, slice_name


def test_source_meta_per_slice(corpus, truth):
    github = list(corpus["github"].values())
    assert all({"repo_name", "path", "language", "license", "size"} <= set(r["meta"]) for r in github)
    languages = collections.Counter(r["meta"]["language"] for r in github)
    assert languages["Python"] > 100 and languages["C"] > 0
    assert {r["meta"]["license"] for r in github} == {"PSF-2.0"}
    assert any(r["text"].startswith("# Copyright (c) 2001-") for r in github)
    assert all("title" in r["meta"] for r in corpus["wikipedia"].values())
    assert all("short_book_title" in r["meta"] for r in corpus["books"].values())
    assert any(r["text"].startswith("\\section{") for r in corpus["arxiv"].values())
    junk_lines = {j["line_number"] for j in truth["slices"]["stackexchange"]["junk"]}
    assert all(r["text"].startswith("Q: ") and "\nA: " in r["text"]
               for line, r in corpus["stackexchange"].items() if line not in junk_lines)
    for slice_name in ("common_crawl", "c4", "stackexchange", "arxiv"):
        assert all(r["meta"]["url"].startswith("https://") for r in corpus[slice_name].values())


def test_ground_truth_counts_add_up(corpus, truth):
    assert set(truth["slices"]) == set(SLICES)
    for slice_name, entry in truth["slices"].items():
        records = corpus[slice_name]
        assert entry["set_name"] == SLICE_TO_SET_NAME[slice_name]
        assert entry["documents"] == len(records)
        assert entry["text_bytes"] == sum(len(r["text"].encode("utf-8")) for r in records.values())
        counts = entry["counts"]
        assert counts["junk"] == {k: sum(j["kind"] == k for j in entry["junk"]) for k in truth["junk_kinds"]}
        assert counts["exact_duplicates"] == len(entry["exact_duplicates"]) > 0
        assert counts["near_duplicates"] == len(entry["near_duplicates"]) > 0
        assert all(counts["junk"][kind] > 0 for kind in truth["junk_kinds"]), slice_name
        assert len(planted_lines(entry)) == len(entry["junk"]) + counts["exact_duplicates"] + counts["near_duplicates"]
        assert entry["clean_documents"] + len(planted_lines(entry)) == entry["documents"]
    totals = truth["totals"]
    entries = truth["slices"].values()
    assert totals["documents"] == sum(e["documents"] for e in entries)
    assert totals["junk"] == sum(len(e["junk"]) for e in entries)
    assert totals["exact_duplicates"] == sum(len(e["exact_duplicates"]) for e in entries)
    assert totals["near_duplicates"] == sum(len(e["near_duplicates"]) for e in entries)


def test_planted_junk_is_junk_and_only_where_recorded(corpus, truth):
    for slice_name, entry in truth["slices"].items():
        records = corpus[slice_name]
        for junk in entry["junk"]:
            text = records[junk["line_number"]]["text"]
            assert sha256(text) == junk["text_sha256"]
            lines = text.splitlines()
            kind = junk["kind"]
            if kind == "very_short":
                assert len(text.split()) < 10
            elif kind == "lorem_ipsum":
                assert text.startswith("Lorem ipsum")
            elif kind == "symbol_soup":
                visible = [c for c in text if not c.isspace()]
                assert sum(c.isalpha() for c in visible) / len(visible) < 0.05
            elif kind == "all_caps_spam":
                assert text == text.upper() and sum(c.isalpha() for c in text) > 100
            elif kind == "boilerplate":
                assert "cookies" in text.lower() and len(lines) >= 6
            elif kind == "repetitive_lines":
                assert collections.Counter(lines).most_common(1)[0][1] / len(lines) > 0.9
            else:
                pytest.fail(f"unknown junk kind {kind!r} in ground truth")
        # Clean documents are all long enough to tell apart from the planted very short ones.
        junk_lines = {j["line_number"] for j in entry["junk"]}
        for line, record in records.items():
            if line not in junk_lines:
                assert len(record["text"].split()) >= 30, (slice_name, line)


def test_exact_duplicates_are_the_only_repeated_texts(corpus, truth):
    occurrences = collections.defaultdict(list)
    for slice_name, records in corpus.items():
        for line, record in records.items():
            occurrences[sha256(record["text"])].append((slice_name, line))
    recorded_pairs = set()
    cross_slice = 0
    for slice_name, entry in truth["slices"].items():
        for dup in entry["exact_duplicates"]:
            original = dup["original"]
            text = corpus[slice_name][dup["line_number"]]["text"]
            assert text == corpus[original["slice"]][original["line_number"]]["text"]
            assert sha256(text) == dup["text_sha256"] == original["text_sha256"]
            assert original["line_number"] not in planted_lines(truth["slices"][original["slice"]])
            recorded_pairs.add(frozenset({(slice_name, dup["line_number"]), (original["slice"], original["line_number"])}))
            cross_slice += original["slice"] != slice_name
    repeated = {frozenset(places) for places in occurrences.values() if len(places) > 1}
    assert repeated == recorded_pairs
    assert cross_slice > 0


def test_near_duplicates_differ_by_a_few_words(corpus, truth):
    cross_slice = 0
    for slice_name, entry in truth["slices"].items():
        for dup in entry["near_duplicates"]:
            original = dup["original"]
            text = corpus[slice_name][dup["line_number"]]["text"]
            source = corpus[original["slice"]][original["line_number"]]["text"]
            assert sha256(text) == dup["text_sha256"] and sha256(source) == original["text_sha256"]
            words, source_words = text.split(), source.split()
            assert len(words) == len(source_words)
            assert sum(a != b for a, b in zip(words, source_words)) == dup["edited_words"]
            assert 1 <= dup["edited_words"] <= 5
            similarity = shingle_jaccard(text, source)
            assert similarity == pytest.approx(dup["word_shingle_jaccard"], abs=1e-4)
            assert similarity >= 0.8
            cross_slice += original["slice"] != slice_name
    assert cross_slice > 0


def test_only_planted_near_duplicates(corpus, truth):
    """Clean documents are all less alike than CLEAN_MAX_JACCARD; only planted copies are closer."""
    planted_pairs = set()
    junk = set()
    for slice_name, entry in truth["slices"].items():
        junk |= {(slice_name, j["line_number"]) for j in entry["junk"]}
        for dup in entry["exact_duplicates"] + entry["near_duplicates"]:
            original = dup["original"]
            planted_pairs.add(frozenset({(slice_name, dup["line_number"]), (original["slice"], original["line_number"])}))
    places = [(s, line) for s in SLICES for line in corpus[s] if (s, line) not in junk]
    sets = [shingles(corpus[s][line]["text"]) for s, line in places]
    postings = collections.defaultdict(list)
    for doc, doc_shingles in enumerate(sets):
        for shingle in doc_shingles:
            postings[shingle].append(doc)
    similar = set()
    for doc, doc_shingles in enumerate(sets):
        shared = collections.Counter(other for s in doc_shingles for other in postings[s] if other > doc)
        for other, n in shared.items():
            if n / (len(doc_shingles) + len(sets[other]) - n) >= 0.6:
                similar.add(frozenset({places[doc], places[other]}))
    assert similar == planted_pairs


def test_meta_does_not_reveal_what_was_planted(corpus):
    for slice_name, records in corpus.items():
        # Same fields on every document of a slice: no extra tag field on planted ones.
        assert len({tuple(record["meta"]) for record in records.values()}) == 1, slice_name
        for record in records.values():
            assert not PLANT_TAG.search(json.dumps(record["meta"])), record["meta"]


@pytest.mark.slow
def test_generator_reproduces_the_committed_corpus(truth, tmp_path):
    here = f"{sys.platform}-{platform.machine()}"
    if sys.version.split()[0] != truth["python_version"] or here != truth["platform"]:
        pytest.skip(f"corpus was built with Python {truth['python_version']} on {truth['platform']}")
    subprocess.run([sys.executable, str(GENERATOR), "--out", str(tmp_path)], check=True,
                   capture_output=True, timeout=900)
    for name in [f"{s}.jsonl.gz" for s in SLICES] + ["ground_truth.json", "LICENSE"]:
        assert (tmp_path / name).read_bytes() == (CORPUS / name).read_bytes(), name
