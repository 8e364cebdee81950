"""Pretraining decontamination: a benchmark passage planted in the corpus is dropped and counted."""

from __future__ import annotations

import json
import random

import pyarrow.compute as pc
import pyarrow.parquet as pq

from pajama.config import RESOURCES_DIR, DataConfig
from pajama.data import decontam

from conftest import run_data_stages

EVAL = str(RESOURCES_DIR / "eval_tasks" / "stdlib_mc.jsonl")


def _words(rng: random.Random, n: int) -> str:
    vocabulary = "river stone garden lamp orbit velvet harbor cedar plume quartz meadow signal".split()
    return " ".join(rng.choice(vocabulary) for _ in range(n))


def test_evaluation_ngrams_flag_a_document_that_quotes_a_benchmark(tmp_path):
    question = json.loads(open(EVAL).readline())
    hashes = decontam.eval_ngram_hashes([EVAL], 13)
    import pyarrow as pa

    quoted = f"Some preamble. {question['question']} " + " ".join(question["choices"]) + " And more."
    batch = pa.table({"text": [quoted, _words(random.Random(0), 200), "short"], "keep": [True, True, False],
                      "drop_reason": [None, None, "too_short"]})
    marked = decontam.mark_contaminated(batch, hashes, 13)
    assert marked.column("keep").to_pylist() == [False, True, False]
    assert marked.column("drop_reason").to_pylist() == ["decontamination", None, "too_short"]


def test_planted_benchmark_passage_is_removed_and_counted(ray_session, tmp_path):
    rng = random.Random(1)
    record = json.loads(open(EVAL).readlines()[3])
    planted = f"{_words(rng, 60)} {record['question']} " + " ".join(record["choices"]) + f" {_words(rng, 60)}"
    corpus = tmp_path / "c4"
    corpus.mkdir()
    docs = [{"text": _words(rng, 150 + i), "meta": {"url": f"https://example.org/{i}"}} for i in range(30)]
    docs.insert(7, {"text": planted, "meta": {"url": "https://example.org/planted"}})
    (corpus / "part.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    cfg = DataConfig(sources=[{"format": "jsonl", "path": str(corpus / "*.jsonl"), "slice": "c4"}], filters=[],
                     decontamination={"against": [EVAL]}, exact_dedup=False, fuzzy_dedup={"enabled": False},
                     tokenizer={"vocab_size": 300, "sample_documents": 200}, seq_len=16, eval_fraction=0.2,
                     sequences_per_shard=256, shuffle_partitions=2, shuffle_strategy="sort_shuffle_pull_based")
    out = tmp_path / "artifact"
    out.mkdir()
    stats = run_data_stages(cfg, out, tmp_path)["stats"]

    c4 = stats["slices"]["c4"]
    assert c4["dropped"] == {"decontamination": 1}
    assert c4["documents_in"] == 31 and c4["documents_out"] == 30
    quarantine = pq.read_table(out / "quarantine")
    flagged = quarantine.filter(pc.equal(quarantine.column("reason"), "decontamination")).to_pylist()
    assert [row["text"] for row in flagged] == [planted]
