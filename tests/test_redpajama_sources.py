"""The RedPajama releases as sources, and the 3B/7B recipes against the published INCITE settings.

Everything is offline: RedPajama-1T is served from a generated mirror in the release's layout by
a loopback HTTP server (Range requests, and a mode that drops a connection mid-file once); RPv2
is a generated release directory whose signals are Pajama's own, written in RPv2's format; the hub
is a local cache directory read with HF_HUB_OFFLINE.
"""

import gzip
import json
import random
import re
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

from pajama.config import load_config
from pajama.data import filters, signals
from pajama.data.readers import read_source
from pajama.data.readers.redpajama_v2 import PUBLISHED_COLUMNS
from pajama.data.slices import READ_ERROR, SLICES
from pajama.data.filters import apply_filters
from pajama.data.signal_stage import with_signals

from conftest import run_data_stages

REPO = Path(__file__).resolve().parents[1]
WORDS = ("bread river stone garden window letter market orange silver planet music winter doctor "
         "engine forest castle yellow pocket butter ladder mirror candle rocket pencil").split()

# One release file per slice (CommonCrawl: two snapshots, zstd as released) and its record count.
RELEASE_FILES = {
    "arxiv/arxiv_0a1b.jsonl": 3,
    "book/book.jsonl": 40,
    "c4/c4-train.00000-of-01024.jsonl": 4,
    "common_crawl/2019-30/en_head_0000.json.gz.dedup.classifier.jsonl.zst": 60,
    "common_crawl/2023-06/en_middle_0001.json.gz.dedup.classifier.jsonl.zst": 2,
    "github/filtered_0c2d.sampled.jsonl": 3,
    "stackexchange/stackexchange.jsonl": 2,
    "wikipedia/wiki.jsonl": 3,
}
SLICE_OF_FOLDER = {"arxiv": "arxiv", "book": "books", "c4": "c4", "common_crawl": "common_crawl", "github": "github",
                   "stackexchange": "stackexchange", "wikipedia": "wikipedia"}
# Small Range requests, so that a file takes several and a connection can drop mid-file.
BLOCK_SIZE = 4096


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) + str(rng.randrange(1000)) for _ in range(words)) + "."


def _record(relative: str, i: int, rng: random.Random) -> dict:
    text = _text(rng, 120)
    if relative.startswith("common_crawl/"):  # CommonCrawl's fields sit beside the text, no "meta"
        return {"text": text, "pred_label": "__label__wiki", "pred_label_prob": 0.7, "wiki_prob": 0.7,
                "source": "cc"}
    return {"text": text, "meta": {"url": f"https://example.org/{i}", "timestamp": "2023-03-20T00:00:00",
                                   "language": "en", "source": relative.split("/")[0]}}


def write_mirror(root: Path) -> dict[str, int]:
    rng = random.Random(0)
    for relative, count in RELEASE_FILES.items():
        path = root / "redpajama-data-1T" / "v1.0.0" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps(_record(relative, i, rng)) + "\n" for i in range(count)).encode()
        if relative.endswith(".zst"):
            with pa.CompressedOutputStream(str(path), "zstd") as f:
                f.write(lines)
        else:
            path.write_bytes(lines)
    return {s: sum(n for rel, n in RELEASE_FILES.items() if SLICE_OF_FOLDER[rel.split("/")[0]] == s) for s in SLICES}


class _Mirror(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.drop_once: set[str] = set()  # URL paths whose first mid-file range request is cut off
        self.dropped: list[str] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _serve(self, body: bool):
        url_path = unquote(urlparse(self.path).path)
        path = self.server.root / url_path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start, end, status = 0, len(data), 200
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            start, status = int(match[1]), 206
            end = min(int(match[2]) + 1, len(data)) if match[2] else len(data)
            if start >= len(data):
                self.send_error(416)
                return
        self.send_response(status)
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if not body:
            return
        if start > 0 and url_path in self.server.drop_once:
            self.server.drop_once.discard(url_path)
            self.server.dropped.append(url_path)
            self.wfile.write(data[start:start + (end - start) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # the connection breaks off mid-body
            self.close_connection = True
            return
        self.wfile.write(data[start:end])


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    root = tmp_path_factory.mktemp("mirror")
    counts = write_mirror(root)
    server = _Mirror(root)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    release = f"{server.base}/redpajama-data-1T/v1.0.0"
    (root / "redpajama-data-1T" / "v1.0.0" / "urls.txt").write_text(
        "".join(f"{release}/{relative}\n" for relative in RELEASE_FILES))
    yield server, f"{release}/urls.txt", counts
    server.shutdown()


def _rows(dataset) -> list[dict]:
    rows = dataset.take_all()
    assert all(row[READ_ERROR] is None for row in rows), [row[READ_ERROR] for row in rows if row[READ_ERROR]]
    return rows


def _per_slice(rows) -> dict[str, int]:
    counts = dict.fromkeys(SLICES, 0)
    for row in rows:
        counts[row["slice"]] += 1
    return counts


def test_redpajama_1t_reads_every_slice_of_the_release_over_http(ray_session, mirror):
    server, urls, counts = mirror
    rows = _rows(read_source("redpajama_1t", urls, block_size=BLOCK_SIZE))

    assert _per_slice(rows) == counts
    assert len({row["doc_id"] for row in rows}) == len(rows)
    by_id = {row["doc_id"]: json.loads(row["meta"]) for row in rows}
    release = urls.rsplit("/", 1)[0]
    cc = by_id[f"{release}/common_crawl/2019-30/en_head_0000.json.gz.dedup.classifier.jsonl.zst#1"]
    assert cc["cc_snapshot"] == "2019-30" and cc["red_pajama_subset"] == "common_crawl"
    assert cc["pred_label"] == "__label__wiki" and cc["redpajama_set_name"] == "RedPajamaCommonCrawl"
    book = by_id[f"{release}/book/book.jsonl#2"]
    assert book["red_pajama_subset"] == "book" and book["redpajama_set_name"] == "RedPajamaBook"
    assert book["url"] == "https://example.org/1" and book["source"] == "book"


def test_data_stage_reads_the_release_per_slice_with_its_metadata(ray_session, mirror, tmp_path):
    """`pajama data`'s stage with a redpajama_1t source on the mirror's urls.txt: every slice counted,
    the release's metadata kept on each document, a connection dropped mid-file changing nothing."""
    from pajama.config import DataConfig
    
    server, urls, counts = mirror
    dropped = f"{urlparse(urls).path.rsplit('/', 1)[0]}/book/book.jsonl"
    server.drop_once.add(dropped)
    cfg = DataConfig(sources=[{"format": "redpajama_1t", "path": urls, "options": {"block_size": BLOCK_SIZE}}],
                     filters=[], fuzzy_dedup={"enabled": False}, exact_dedup=False,
                     tokenizer={"vocab_size": 300, "sample_documents": 200}, seq_len=16, eval_fraction=0.2,
                     sequences_per_shard=256, shuffle_partitions=2, shuffle_strategy="sort_shuffle_pull_based")
    out = tmp_path / "artifact"
    out.mkdir()
    stats = run_data_stages(cfg, out, tmp_path)["stats"]

    assert dropped in server.dropped
    assert {name: e["documents_in"] for name, e in stats["slices"].items() if e["documents_in"]} == \
        {name: n for name, n in counts.items() if n}
    assert all(e["bad_input"] == 0 for e in stats["slices"].values())
    documents = pq.read_table(out / "documents").to_pylist()
    subsets = {json.loads(d["meta"])["red_pajama_subset"] for d in documents}
    assert subsets == {"arxiv", "book", "c4", "common_crawl", "github", "stackexchange", "wikipedia"}


def test_redpajama_1t_selects_slices_and_snapshots(ray_session, mirror):
    _, urls, counts = mirror
    rows = _rows(read_source("redpajama_1t", urls, slices=["common_crawl", "wikipedia"], snapshots=["2023-06"]))
    assert _per_slice(rows) == {**dict.fromkeys(SLICES, 0), "common_crawl": 2, "wikipedia": counts["wikipedia"]}


def test_a_connection_dropped_mid_file_resumes_without_losing_or_repeating_records(ray_session, mirror):
    server, urls, counts = mirror
    release_path = urlparse(urls).path.rsplit("/", 1)[0]
    dropped = {f"{release_path}/book/book.jsonl",
               f"{release_path}/common_crawl/2019-30/en_head_0000.json.gz.dedup.classifier.jsonl.zst"}
    server.drop_once |= dropped
    clean = sorted((row["doc_id"], row["text"]) for row in _rows(read_source("redpajama_1t", urls)))

    rows = _rows(read_source("redpajama_1t", urls, block_size=BLOCK_SIZE))

    assert set(server.dropped) == dropped  # each connection really broke off mid-file
    assert _per_slice(rows) == counts
    assert sorted((row["doc_id"], row["text"]) for row in rows) == clean


def test_redpajama_1t_sample_by_hub_name(ray_session, tmp_path):
    # A folder laid out like HfFileSystem ("datasets/<org>/<name>/...") stands in for the Hub.
    repo = tmp_path / "datasets" / "togethercomputer" / "RedPajama-Data-1T-Sample"
    repo.mkdir(parents=True)
    for name in ("arxiv_sample", "book_sample", "c4_sample", "cc_2019-30_sample", "cc_2023-06_sample",
                 "github_sample", "stackexchange_sample", "wikipedia_sample"):
        (repo / f"{name}.jsonl").write_text(json.dumps({"text": f"{name} text", "meta": {}}) + "\n")
    (repo / "README.md").write_text("card")
    hub = DirFileSystem(path=str(tmp_path), fs=LocalFileSystem())

    rows = _rows(read_source("redpajama_1t", "hf://datasets/togethercomputer/RedPajama-Data-1T-Sample",
                             filesystem=hub))

    assert _per_slice(rows) == {**dict.fromkeys(SLICES, 1), "common_crawl": 2}
    snapshots = {json.loads(row["meta"]).get("cc_snapshot") for row in rows if row["slice"] == "common_crawl"}
    assert snapshots == {"2019-30", "2023-06"}


# --- RedPajama-V2: published signals --------------------------------------------------------

SENTENCES = ("The baker of the town sold fresh bread and warm rolls to the people at dawn.",
             "Children walked to the river with their parents and watched the boats go by.",
             "A storm came over the hills that evening, and the farmers brought the sheep inside.",
             "She wrote a long letter to her brother about the garden and the new house.",
             "The market was busy with traders who had come from the coast to sell fish.",
             "Old maps of the valley show roads that have since disappeared under the forest.")
TAGS = ("2023-06/0000/en_head", "2023-06/0000/en_middle")
_LINE = re.compile(r"[^\n]*\n|[^\n]+$")


def _rpv2_text(rng: random.Random, i: int) -> str:
    if i % 4 == 3:  # a short page that Gopher and C4 drop
        return "Click here. Buy now!"
    shuffled = rng.sample(SENTENCES, len(SENTENCES))  # no sentence twice: Gopher drops repetition
    lines = [" ".join(shuffled[i:i + 2]) for i in range(0, len(shuffled), 2)]
    return "\n".join(lines) + f"\nPage {i} ends with a note about the {rng.choice(WORDS)} of the day."


def _spans(text: str, value):
    return [[0, len(text), value]]


def write_rpv2_release(root: Path, changed: str) -> list[str]:
    """Documents, signals (Pajama's own values in RPv2's format) and duplicates per tag; the
    document `changed` gets a published rps_doc_word_count unlike its text's. Returns doc ids."""
    rng, ids = random.Random(1), []
    for tag in TAGS:
        texts = [_rpv2_text(rng, i) for i in range(8)]
        computed = signals.compute_signals(pa.table({"text": texts})).to_pylist()
        docs, records = [], []
        for row, (text, values) in enumerate(zip(texts, computed)):
            rpv2_id = f"{tag}.json.gz/{row}"
            ids.append(rpv2_id)
            docs.append({"raw_content": text, "url": f"https://example.org/{rpv2_id}", "language": values["language"],
                         "source_domain": "example.org", "date_download": "2023-02-01T00:00:00Z", "digest": f"sha1:{row}"})
            line_spans = [(m.start(), m.end()) for m in _LINE.finditer(text)]
            quality = {"ccnet_language_score": _spans(text, values["language_score"]),
                       "ccnet_perplexity": _spans(text, 250.0),
                       **{name: _spans(text, values[name]) for name in PUBLISHED_COLUMNS
                          if name.startswith("rps_doc_")}}
            for name in signals.LINE_SIGNALS:
                quality[name] = [[start, end, value] for (start, end), value in zip(line_spans, values[name])]
            if rpv2_id == changed:
                quality["rps_doc_word_count"] = _spans(text, 1_000_000)
            records.append({"id": rpv2_id, "id_int": row, "quality_signals": quality,
                            "metadata": {"cc_segment": "crawl-data/x", "cc_net_source": f"{tag}.json.gz",
                                         "snapshot_id": "2023-06"}})
        for folder, name, rows in (("documents", f"{tag}.json.gz", docs),
                                   ("quality_signals", f"{tag}.signals.json.gz", records)):
            path = root / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            with gzip.open(path, "wt") as f:
                f.writelines(json.dumps(row) + "\n" for row in rows)
    duplicates = root / "duplicates" / f"{TAGS[0]}.duplicates.parquet"  # TAGS[1] has none: no file
    duplicates.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"doc_id": [f"{TAGS[0]}.json.gz/1"]}), duplicates)
    (root / "listings").mkdir()
    (root / "listings" / "en-2023-06-head_middle.txt").write_text("\n".join(TAGS) + "\n")
    return ids


def _table(dataset) -> pa.Table:
    return pa.concat_tables(dataset.iter_batches(batch_format="pyarrow", batch_size=None))


def _verdicts(table: pa.Table) -> dict[str, tuple]:
    return {row["doc_id"]: (row["keep"], row["drop_reason"]) for row in table.to_pylist()}


def test_rpv2_filters_on_published_signals_as_on_recomputed_ones(ray_session, tmp_path):
    changed = f"{TAGS[1]}.json.gz/0"
    ids = write_rpv2_release(tmp_path, changed)
    rules = [rule for name in ("gopher", "c4") for rule in filters.load_recipe(name)]

    read = _table(read_source("redpajama_v2", str(tmp_path), listings=["en-2023-06-head_middle"]))
    assert sorted(read.column("doc_id").to_pylist()) == sorted(ids)
    assert read.column(READ_ERROR).null_count == read.num_rows
    published = _verdicts(apply_filters(with_signals(read), rules))
    recomputed = _verdicts(apply_filters(with_signals(read.select(["doc_id", "slice", "text", "meta", READ_ERROR])), rules))

    assert {d: v for d, v in published.items() if d != changed} == {d: v for d, v in recomputed.items() if d != changed}
    assert {keep for keep, _ in published.values()} == {True, False}  # the recipe keeps some and drops some
    # The published word count (1,000,000) is the one the rules see, not the text's.
    assert published[changed] == (False, "gopher_word_count_max") != recomputed[changed]

    meta = {row["doc_id"]: json.loads(row["meta"]) for row in read.to_pylist()}
    assert meta[f"{TAGS[0]}.json.gz/1"]["is_duplicate"] is True
    assert meta[f"{TAGS[0]}.json.gz/2"]["is_duplicate"] is False and meta[changed]["is_duplicate"] is False
    assert meta[changed]["ccnet_perplexity"] == 250.0 and meta[changed]["partition"] == "middle"
    assert meta[changed]["url"] == f"https://example.org/{changed}" and meta[changed]["snapshot_id"] == "2023-06"


def test_rpv2_refuses_the_tail_partition_which_has_no_signals(tmp_path):
    with pytest.raises(ValueError, match="tail"):
        read_source("redpajama_v2", str(tmp_path), base_tags=["2023-06/0000/en_tail"])


# --- The INCITE recipes ---------------------------------------------------------------------

# Published settings, from the Hugging Face model cards (Training Procedure sections):
# togethercomputer/RedPajama-INCITE-Base-3B-v1: "Gradient Accumulations: 8 (global batch size 4M
#   tokens)", "Num of Tokens: 800B Tokens", "Learning rate: 0.00016";
# togethercomputer/RedPajama-INCITE-7B-Base (RedPajama-INCITE-Base-7B-v0.1): 4M-token batches,
#   "Num of Tokens: 1.001T Tokens", "Learning rate: 0.00012";
# RedPajama-INCITE-7B-Instruct: 1B tokens, learning rate 1e-5; datasets (RedPajama-INCITE-Instruct-
#   3B-v1 card): Muennighoff/P3, Muennighoff/natural-instructions;
# RedPajama-INCITE-7B-Chat: 131M tokens, learning rate 1e-5; OASST1 and Dolly 2.0 (release post).
INCITE = {"3b": {"hidden": 2560, "lr": 1.6e-4, "tokens": 800e9}, "7b": {"hidden": 4096, "lr": 1.2e-4, "tokens": 1.001e12}}


@pytest.mark.parametrize("recipe", ["3b", "7b"])
def test_recipes_match_the_published_incite_settings(recipe):
    cfg, published = load_config(recipe), INCITE[recipe]
    model, pretrain = cfg.pretrain.model, cfg.pretrain
    assert (model.num_hidden_layers, model.hidden_size, model.num_attention_heads) == (32, published["hidden"], 32)
    assert cfg.data.seq_len == model.max_position_embeddings == 2048
    assert pretrain.learning_rate == published["lr"]
    batch_tokens = pretrain.global_batch_size * cfg.data.seq_len
    assert batch_tokens == 4 * 2**20
    assert abs(batch_tokens * pretrain.max_steps - published["tokens"]) < batch_tokens
    assert [(s.format, s.path) for s in cfg.data.sources] == [
        ("redpajama_1t", "https://data.together.xyz/redpajama-data-1T/v1.0.0/urls.txt")]
    assert cfg.data.mixture == "rpv1"
    assert [(d.format, d.path) for d in cfg.instruct.datasets] == [
        ("p3", "hf://datasets/Muennighoff/P3"), ("p3", "hf://datasets/Muennighoff/natural-instructions")]
    assert [(d.format, d.path) for d in cfg.chat.datasets] == [
        ("oasst1", "hf://datasets/OpenAssistant/oasst1"), ("dolly", "hf://datasets/databricks/databricks-dolly-15k")]
    for section, tokens in ((cfg.instruct, 1e9), (cfg.chat, 131e6)):
        sft_batch_tokens = section.global_batch_size * section.max_length
        assert section.learning_rate == 1e-5
        assert abs(sft_batch_tokens * section.max_steps - tokens) < sft_batch_tokens


def test_pajama_config_of_the_incite_recipes_works_offline(tmp_path):
    env = {"PYTHONPATH": str(REPO / "platform"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
           "HOME": str(tmp_path), "PAJAMA_STORAGE_URI": str(tmp_path)}
    for recipe in ("3b", "7b"):
        proc = subprocess.run([sys.executable, "-m", "pajama", "config", "--recipe", recipe], env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "data.together.xyz" in proc.stdout


# --- The hub, through a local cache ---------------------------------------------------------


def _cache_dataset(cache: Path, repo: str, files: dict[str, str]) -> None:
    """A dataset in huggingface_hub's cache layout (refs/main -> snapshots/<commit>/...)."""
    folder = cache / f"datasets--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    for name, text in files.items():
        path = folder / "snapshots" / ("0" * 40) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture()
def offline_hub(tmp_path, monkeypatch):
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def test_natural_instructions_from_the_hub_cache_and_preflight(offline_hub):
    from pajama import hub
    from pajama.sft.formats import load_examples

    record = {"task_name": "task001_quoref_question_generation", "id": "task001-1",
              "definition": "Write a question about the passage.", "inputs": "Passage: ...", "targets": "Who?"}
    _cache_dataset(offline_hub, "Muennighoff/natural-instructions",
                   {"train/task001.json": json.dumps(record) + "\n", "README.md": "card"})

    examples = load_examples("p3", "hf://datasets/Muennighoff/natural-instructions", data_files="train/*")

    assert [(ex["task"], ex["messages"][0]["content"]) for ex in examples] == [
        ("task001_quoref_question_generation", "Write a question about the passage.\n\nPassage: ...")]
    cfg = load_config("3b")
    # Natural Instructions is cached; P3 is not, and the error names it and its field.
    with pytest.raises(hub.HubUnavailableError, match=r"instruct\.datasets\.0\.path: 'Muennighoff/P3'") as error:
        hub.preflight(cfg, ["instruct"])
    assert "natural-instructions" not in str(error.value)
    with pytest.raises(hub.HubUnavailableError, match="Muennighoff/P3"):
        load_examples("p3", "hf://datasets/Muennighoff/P3", data_files="p31t0_train*")
    hub.preflight(cfg, ["pretrain"])  # a stage that reads no remote dataset needs nothing


def test_rpv1_mixture_reaches_redpajama_token_shares_given_bytes_per_token():
    from pajama.data.stage import RPV1_TOKENS_B, mixture_weights

    cfg = load_config("3b").data
    bytes_out = {"common_crawl": 4000, "github": 3000, "wikipedia": 1000}
    bytes_per_token = {"common_crawl": 4.0, "github": 2.5, "wikipedia": 5.0}
    weights = mixture_weights(cfg, bytes_out, bytes_per_token)
    tokens = {s: bytes_out[s] / bytes_per_token[s] * weights[s] for s in bytes_out}
    target = {s: RPV1_TOKENS_B[s] / sum(RPV1_TOKENS_B[t] for t in bytes_out) for s in bytes_out}
    assert {s: round(t / sum(tokens.values()), 9) for s, t in tokens.items()} == {
        s: round(v, 9) for s, v in target.items()}
