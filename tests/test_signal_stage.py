"""The references and signals stages on small corpora: cc_net's paragraph dedup across the web slice (its
reference rule, its counts, a document left empty dropped as `duplicate_paragraphs` and counted), the
quality models built from reference slices and the model-based signals they give."""

from __future__ import annotations

import functools
import json
import random
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from ray.data.context import ShuffleStrategy

from pajama.artifacts import StageContext
from pajama import hub
from pajama.config import DataConfig, load_config
from pajama.data import ccnet, references, signal_stage
from pajama.data.stage import data_context, text_bytes, text_chunks

from conftest import run_data_stages

SMALL_DATA = dict(tokenizer={"vocab_size": 300, "sample_documents": 200}, seq_len=16, eval_fraction=0.2,
                  sequences_per_shard=256, shuffle_partitions=2, shuffle_strategy="sort_shuffle_pull_based")


def _write(path, texts):
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    return str(path)


def test_paragraph_dedup_follows_cc_net_and_counts_documents_it_empties(ray_session, tmp_path):
    web = ["A shared footer line.\nThe first page speaks of rivers.\nIt also speaks of stones.",
           "A shared footer line.\nThe second page is about gardens.",
           "A shared footer line.\nThe first page speaks of rivers.",  # every line repeats: emptied
           "The fourth page\n\nhas a blank line, which a single document does not repeat."]
    c4 = ["A shared footer line.\nC4 is not deduplicated by paragraph here."]
    cfg = DataConfig(sources=[{"path": _write(tmp_path / "web.jsonl", web), "slice": "common_crawl"},
                              {"path": _write(tmp_path / "c4.jsonl", c4), "slice": "c4"}],
                     filters=[], exact_dedup=False, fuzzy_dedup={"enabled": False}, **SMALL_DATA)
    out = tmp_path / "data"
    out.mkdir()
    stats = run_data_stages(cfg, out, tmp_path)["stats"]

    documents = pq.read_table(tmp_path / "data.signals" / "documents").to_pylist()
    by_text = {d["doc_id"].rsplit("#", 1)[1]: d for d in documents if d["slice"] == "common_crawl"}
    expected = ccnet.dedup_paragraphs(web)
    assert expected == ["It also speaks of stones.", "The second page is about gardens.", None,
                        "The fourth page\n\nhas a blank line, which a single document does not repeat."]
    for line, (text, original) in enumerate(zip(expected, web), start=1):
        doc = by_text[str(line)]
        assert doc["text"] == (text or "")
        assert (doc["ccnet_original_length"], doc["ccnet_original_nlines"]) == (len(original), original.count("\n") + 1)
        assert (doc["ccnet_length"], doc["ccnet_nlines"]) == (len(text or ""), 0 if text is None else text.count("\n") + 1)
    [c4_doc] = [d for d in documents if d["slice"] == "c4"]
    assert c4_doc["text"] == c4[0] and c4_doc["ccnet_nlines"] == c4_doc["ccnet_original_nlines"] == 2

    assert stats["slices"]["common_crawl"]["dropped"] == {"duplicate_paragraphs": 1}
    assert stats["slices"]["common_crawl"]["documents_out"] == 3 and stats["slices"]["c4"]["documents_out"] == 1
    quarantine = pq.read_table(out / "quarantine").to_pylist()
    assert [(q["doc_id"].rsplit("#", 1)[1], q["reason"]) for q in quarantine] == [("3", "duplicate_paragraphs")]
    histograms = json.loads((tmp_path / "data.signals" / "histograms.json").read_text())["signals"]
    assert sum(histograms["ccnet_nlines"]["counts"]["common_crawl"]) == 4


def _texts(rng: random.Random, vocabulary: str, n: int) -> list[str]:
    words = vocabulary.split()
    return [" ".join(rng.choice(words) for _ in range(60)) + ".\n" + " ".join(rng.choice(words) for _ in range(40))
            for _ in range(n)]


def test_quality_models_are_built_from_reference_slices_and_score_documents(ray_session, tmp_path):
    rng = random.Random(0)
    vocabularies = {
        "common_crawl": "buy cheap deals click here free shipping best price offer today login cart",
        "wikipedia": "the river was named after the city in the century of the kingdom history",
        "books": "she said that he would come home before the night fell upon the quiet house",
        "c4": "the company announced new products for customers in the market this year",
    }
    sources = [{"path": _write(tmp_path / f"{name}.jsonl", _texts(rng, words, 40)), "slice": name}
               for name, words in vocabularies.items()]
    cfg = DataConfig(sources=sources, filters=[],
                     quality_models={"perplexity": {"vocab_size": 100, "order": 3}, "classifier_epochs": 50,
                                     "dsir_buckets": 1000}, **SMALL_DATA)
    out = tmp_path / "references"
    out.mkdir()
    manifest = references.run(cfg, StageContext(out, tmp_path, "test"), {})

    assert manifest["reference_documents"] == {"web": 40, "wikipedia": 40, "books": 40, "openwebtext": 40,
                                               "wikiref": 40}
    assert manifest["training"]["classifier_palm"] == {"positives": {"books": 40, "openwebtext": 40, "wikipedia": 40},
                                                       "negatives": 40}
    head, middle = manifest["perplexity_cutoffs"]
    assert 0 < head <= middle
    for name in ("classifiers/wikiref.model.bin", "classifiers/palm.model.bin", "classifiers/wikipedia.model.bin",
                 "dsir/books.xx.1000.counts.npy", "dsir/cc.xx.lambda.npy", "perplexity/lm.sp.model",
                 "perplexity/lm.arpa"):
        assert (out / name).is_file(), name

    batch = pa.table({"text": [_texts(rng, vocabularies["wikipedia"], 1)[0], _texts(rng, vocabularies["common_crawl"], 1)[0]]})
    scored = references.score(batch, {"uri": str(out), "manifest": manifest}).to_pydict()
    wiki, web = 0, 1
    assert scored["rps_doc_ml_wikipedia_score"][wiki] > 0.5 > scored["rps_doc_ml_wikipedia_score"][web]
    assert scored["rps_doc_wikipedia_importance"][wiki] > 0 > scored["rps_doc_wikipedia_importance"][web]
    assert scored["ccnet_perplexity"][wiki] < scored["ccnet_perplexity"][web]
    assert scored["ccnet_bucket"][wiki] == "head" and scored["ccnet_bucket"][web] == "tail"
    assert set(scored) == {"text", *references.MODEL_SIGNAL_COLUMNS}


def test_without_quality_models_the_model_based_signals_are_null(tmp_path):
    out = tmp_path / "references"
    out.mkdir()
    cfg = DataConfig(sources=[{"path": _write(tmp_path / "web.jsonl", ["A page."]), "slice": "common_crawl"}],
                     filters=[])
    manifest = references.run(cfg, StageContext(out, tmp_path, "test"), {})
    scored = references.score(pa.table({"text": ["A page."]}), {"uri": str(out), "manifest": manifest})
    assert all(scored.column(name).null_count == 1 for name in references.MODEL_SIGNAL_COLUMNS)
    assert set(signal_stage.ALL_SIGNAL_COLUMNS) >= set(references.MODEL_SIGNAL_COLUMNS)
    assert pc.sum(pc.is_null(scored.column("ccnet_bucket"))).as_py() == 1


def test_a_published_perplexity_model_is_downloaded_over_http(ray_session, tmp_path):
    """cc_net's published models are files over HTTP (dl.fbaipublicfiles.com/cc_net/lm/): a loopback server
    serves a SentencePiece model and a KenLM model in those formats, the references stage takes them (and
    the given cutoffs) instead of building its own, and the preflight check lists them."""
    served = tmp_path / "served"
    sp_model, arpa = ccnet.build_perplexity_model(_texts(random.Random(1), "the river city history kingdom", 30),
                                                  served, order=3, vocab_size=60)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(SimpleHTTPRequestHandler, directory=served))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        rng = random.Random(2)
        sources = [{"path": _write(tmp_path / f"{name}.jsonl", _texts(rng, "buy cheap river city offers today", 10)),
                    "slice": name} for name in ("common_crawl", "wikipedia", "books", "c4")]
        perplexity = {"sentencepiece": f"{base}/{sp_model.name}", "kenlm": f"{base}/{arpa.name}", "cutoffs": [30, 60]}
        cfg = DataConfig(sources=sources, filters=[], quality_models={"perplexity": perplexity, "dsir_buckets": 64},
                         **SMALL_DATA)
        out = tmp_path / "references"
        out.mkdir()
        manifest = references.run(cfg, StageContext(out, tmp_path, "test"), {})
        pajama_cfg = load_config("tiny", [f"data.quality_models.perplexity.{k}={v}" for k, v in perplexity.items()])
        listed = hub.remote_datasets(pajama_cfg, ["references"])
    finally:
        server.shutdown()
    assert manifest["perplexity_cutoffs"] == [30, 60] and manifest["kenlm_file"] == "lm.arpa"
    assert (out / "perplexity" / "lm.sp.model").read_bytes() == sp_model.read_bytes()
    assert (out / "perplexity" / "lm.arpa").read_bytes() == arpa.read_bytes()
    assert listed == [("data.quality_models.perplexity.sentencepiece", perplexity["sentencepiece"]),
                      ("data.quality_models.perplexity.kenlm", perplexity["kenlm"])]
    scored = references.score(pa.table({"text": ["the river city"]}), {"uri": str(out), "manifest": manifest})
    assert scored.column("ccnet_perplexity")[0].as_py() > 0


def test_signals_do_not_depend_on_how_a_block_is_cut_into_chunks(monkeypatch):
    texts = [f"Line {i} of a page about rivers.\nA shared footer line.\n" * (1 + i % 7) for i in range(40)]
    errors = [None] * 40
    errors[3] = errors[31] = "not UTF-8"
    batch = pa.table({"doc_id": [f"d{i:02d}" for i in range(40)],
                      "slice": ["common_crawl" if i % 3 else "books" for i in range(40)], "text": texts,
                      "read_error": pa.array(errors, pa.string())})
    whole = signal_stage.with_signals(batch, None, ["common_crawl"])
    monkeypatch.setattr(signal_stage, "_SIGNAL_CHUNK_BYTES", 300)
    chunks = text_chunks(batch, 300)
    assert len(chunks) > 10 and sum(c.num_rows for c in chunks) == 40
    assert all(pc.sum(text_bytes(c)).as_py() <= 300 + max(map(len, texts)) for c in chunks)
    chunked = signal_stage.with_signals(batch, None, ["common_crawl"])
    assert chunked.sort_by("doc_id").equals(whole.sort_by("doc_id"))


def test_the_data_context_applies_the_stage_settings_and_restores_ray_data_after():
    context = ray.data.DataContext.get_current()
    before = context.shuffle_strategy, context.read_op_min_num_blocks, context.op_resource_reservation_enabled
    with data_context("sort_shuffle_pull_based", 3):
        assert context.shuffle_strategy == ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
        assert context.read_op_min_num_blocks == 3
        # Ray 2.60's reservation sees no CPU for an execution's first second: the stages run without it
        assert context.op_resource_reservation_enabled is False
    assert (context.shuffle_strategy, context.read_op_min_num_blocks, context.op_resource_reservation_enabled) == before
    with data_context(None):  # None keeps Ray's own strategy and read blocks
        assert (context.shuffle_strategy, context.read_op_min_num_blocks) == before[:2]
