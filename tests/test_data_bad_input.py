"""The data stage on bad input: every bad record is counted and quarantined with a reason, the
stage completes, and per slice documents in = bad input + dropped + duplicates + kept."""

from __future__ import annotations

import gzip
import json
import os
import random

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from pajama.config import DataConfig
from pajama.data.readers import read_source
from pajama.data.readers.common import QUARANTINED_TEXT_CHARS

from conftest import run_data_stages

BIG_BYTES = 50 * 1024 * 1024


def _words(rng: random.Random, n: int) -> str:
    """n random words, every fifth a stop word, in sentences: prose that the gopher rules keep."""
    words = ["the" if i % 5 == 0 else "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 8)))
             for i in range(n)]
    return ". ".join(" ".join(words[i:i + 10]) for i in range(0, n, 10)) + "."


def _record(text, set_name: str | None = "RedPajamaC4", **fields) -> bytes:
    meta = {"redpajama_set_name": set_name} if set_name else {}
    return json.dumps({"text": text, "meta": meta, **fields}).encode() + b"\n"


@pytest.fixture()
def sources(tmp_path):
    """Good documents among each kind of bad input, in two sources (the second with a slice argument)."""
    rng = random.Random(0)
    mixed = tmp_path / "web" / "mixed.jsonl"
    mixed.parent.mkdir()
    good = [_words(rng, 80) for _ in range(30)]
    lines = [_record(text, "RedPajamaC4" if i % 2 else "RedPajamaBook") for i, text in enumerate(good)]
    lines += [
        b'{"text": "cut off in the middle\n',                          # 31: not JSON, names no slice
        _record("Caf\u00e9 au lait").replace(b"\\u00e9", b"\xe9"),   # 32: not UTF-8
        _record(None),                                                  # 33: no text
        _record("   "),                                                 # 34: empty text
        _record(good[1]),                                               # 35: exact duplicate of line 2 (c4)
    ]
    mixed.write_bytes(b"".join(lines))
    big = tmp_path / "web" / "big.jsonl"
    with open(big, "wb") as f:  # one 50 MB document, written in pieces
        f.write(b'{"meta": {"redpajama_set_name": "RedPajamaBook"}, "text": "')
        for _ in range(BIG_BYTES // (1 << 20)):
            f.write(b"word " * ((1 << 20) // 5) + b"w" * ((1 << 20) % 5))
        f.write(b'"}\n')
    wiki = [_record(_words(rng, 80), None) for _ in range(400)]
    compressed = gzip.compress(b"".join(wiki))
    cut = tmp_path / "wiki" / "cut.jsonl.gz"
    cut.parent.mkdir()
    cut.write_bytes(compressed[: len(compressed) // 2])
    return {"mixed": mixed, "big": big, "cut": cut}


def _config(tmp_path, **overrides) -> DataConfig:
    return DataConfig(
        sources=[{"format": "jsonl", "path": str(tmp_path / "web" / "*.jsonl")},
                 {"format": "jsonl", "path": str(tmp_path / "wiki" / "cut.jsonl.gz"), "slice": "wikipedia"}],
        filters=["gopher"], tokenizer={"vocab_size": 300, "sample_documents": 200}, seq_len=16,
        eval_fraction=0.2, sequences_per_shard=256, shuffle_partitions=2,
        shuffle_strategy="sort_shuffle_pull_based", **overrides)


def test_bad_input_is_quarantined_with_reasons_and_counts_add_up(ray_session, tmp_path, sources):
    out = tmp_path / "artifact"
    out.mkdir()
    stats = run_data_stages(_config(tmp_path), out, tmp_path)["stats"]

    quarantine = pq.read_table(out / "quarantine")
    bad = quarantine.filter(pc.starts_with(quarantine.column("reason"), "bad_input: ")).to_pylist()
    by_id = {row["doc_id"]: row for row in bad}
    mixed, big, cut = sources["mixed"], sources["big"], sources["cut"]
    read_before_break = stats["slices"]["wikipedia"]["documents_in"] - 1
    expected = {
        f"{mixed}#31": (None, f"{mixed}: line 31: not JSON ("),
        f"{mixed}#32": ("c4", f"{mixed}: line 32: not valid UTF-8 ("),
        f"{mixed}#33": ("c4", f"{mixed}: line 33: no string 'text' field"),
        f"{mixed}#34": ("c4", f"{mixed}: line 34: 'text' is empty or whitespace only"),
        f"{big}#1": ("books", f"{big}: line 1: text of {BIG_BYTES} bytes is over max_document_bytes (10000000)"),
        f"{cut}#{read_before_break + 1}": (
            "wikipedia",
            f"{cut}: line {read_before_break + 1}: the file breaks off after line {read_before_break} ("),
    }
    assert set(by_id) == set(expected)
    for doc_id, (slice_name, reason) in expected.items():
        assert by_id[doc_id]["slice"] == slice_name, doc_id
        assert by_id[doc_id]["reason"].startswith(f"bad_input: {reason}"), by_id[doc_id]["reason"]
    # The 50 MB text stays out: quarantine keeps a prefix, and no signal was computed on it.
    assert by_id[f"{big}#1"]["text"] == ("word " * QUARANTINED_TEXT_CHARS)[:QUARANTINED_TEXT_CHARS]
    assert by_id[f"{mixed}#32"]["text"] == "Caf\ufffd au lait"
    documents = pq.read_table(out.with_name(f"{out.name}.signals") / "documents")
    unread = documents.filter(pc.is_valid(documents.column("read_error")))
    assert unread.num_rows == 6 and unread.column("rps_doc_word_count").null_count == 6
    assert 0 < read_before_break < 400

    assert stats["bad_input_without_slice"] == 1
    assert {s: e["bad_input"] for s, e in stats["slices"].items()} == {"c4": 3, "books": 1, "wikipedia": 1}
    assert stats["slices"]["c4"]["exact_duplicates"] == 1
    for name, e in stats["slices"].items():
        assert e["documents_in"] == (e["bad_input"] + sum(e["dropped"].values()) + e["exact_duplicates"]
                                     + e["near_duplicates"] + e["documents_out"]), name
    lines_read = 35 + 1 + read_before_break + 1
    assert sum(e["documents_in"] for e in stats["slices"].values()) + stats["bad_input_without_slice"] == lines_read
    assert quarantine.num_rows == lines_read - sum(e["documents_out"] for e in stats["slices"].values())
    assert stats["train_sequences"] > 0
    report = (out / "report.md").read_text()
    assert "| bad input |" in report and "1 bad-input record(s) name no slice" in report
    assert json.loads((out / "stats.json").read_text())["bad_input_without_slice"] == 1


def test_on_bad_input_fail_stops_the_stage_naming_the_file(ray_session, tmp_path, sources):
    out = tmp_path / "artifact"
    out.mkdir()
    with pytest.raises(Exception, match="record\\(s\\) could not be read") as raised:
        run_data_stages(_config(tmp_path, on_bad_input="fail"), out, tmp_path)
    assert any(f"{path}: " in str(raised.value) for path in sources.values())


def test_bad_input_settings_are_validated(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(_record("A document."))
    source = [{"format": "jsonl", "path": str(tmp_path / "a.jsonl")}]
    with pytest.raises(ValidationError, match="on_bad_input"):
        DataConfig(sources=source, on_bad_input="skip")
    with pytest.raises(ValidationError, match="max_document_bytes"):
        DataConfig(sources=source, max_document_bytes=0)


@pytest.fixture()
def unopenable(tmp_path):
    """A glob's worth of files: good documents beside three files that cannot be opened. Tests
    run as root, whom chmod 000 does not stop, so the unreadable ones are of kinds no one can read."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = random.Random(1)
    (corpus / "good.jsonl").write_bytes(b"".join(_record(_words(rng, 80)) for _ in range(20)))
    loop, back = corpus / "loop.jsonl", corpus / "loop-back"
    loop.symlink_to(back)  # loop.jsonl -> loop-back -> loop.jsonl
    back.symlink_to(loop)
    fifo = corpus / "fifo.jsonl"
    os.mkfifo(fifo)  # opening it would wait for a writer forever
    gone = corpus / "gone.jsonl"
    gone.symlink_to(corpus / "deleted.jsonl")  # its target removed after the glob listed it
    return {"corpus": corpus, "loop": loop, "fifo": fifo, "gone": gone}


def _glob_config(corpus, **overrides) -> DataConfig:
    return DataConfig(
        sources=[{"format": "jsonl", "path": str(corpus / "*.jsonl"), "slice": "c4"}], filters=["gopher"],
        tokenizer={"vocab_size": 300, "sample_documents": 200}, seq_len=16, eval_fraction=0.2,
        sequences_per_shard=256, shuffle_partitions=2, shuffle_strategy="sort_shuffle_pull_based", **overrides)


def test_files_that_cannot_be_opened_are_quarantined_and_the_others_read(ray_session, tmp_path, unopenable):
    out = tmp_path / "artifact"
    out.mkdir()
    stats = run_data_stages(_glob_config(unopenable["corpus"]), out, tmp_path)["stats"]

    quarantine = pq.read_table(out / "quarantine")
    bad = {row["doc_id"]: row for row in quarantine.filter(
        pc.starts_with(quarantine.column("reason"), "bad_input: ")).to_pylist()}
    loop, fifo, gone = unopenable["loop"], unopenable["fifo"], unopenable["gone"]
    assert bad.keys() == {str(loop), str(fifo), str(gone)}
    assert bad[str(loop)]["reason"] == (
        f"bad_input: {loop}: the file: cannot be opened: a symbolic link loop (Too many levels of symbolic links)")
    assert bad[str(fifo)]["reason"] == (f"bad_input: {fifo}: the file: not a regular file (a FIFO, socket or "
                                        "device); only files and directories are read")
    assert bad[str(gone)]["reason"] == (
        f"bad_input: {gone}: the file: cannot be opened: a dangling symbolic link (No such file or directory)")
    assert all(row["slice"] == "c4" for row in bad.values())

    c4 = stats["slices"]["c4"]
    assert c4["bad_input"] == 3 and c4["documents_in"] == 20 + 3
    assert c4["documents_out"] > 0 and stats["train_sequences"] > 0
    documents = pq.read_table(out / "documents")
    read = documents.filter(pc.is_null(documents.column("read_error"))).column("doc_id").to_pylist()
    assert sorted(read) == sorted(f"{unopenable['corpus'] / 'good.jsonl'}#{line}" for line in range(1, 21))


def test_files_that_cannot_be_opened_stop_the_stage_on_fail(ray_session, tmp_path, unopenable):
    out = tmp_path / "artifact"
    out.mkdir()
    with pytest.raises(Exception, match="file\\(s\\) that cannot be read") as raised:
        run_data_stages(_glob_config(unopenable["corpus"], on_bad_input="fail"), out, tmp_path)
    assert f"{unopenable['loop']}: cannot be opened: a symbolic link loop" in str(raised.value)
    assert f"{unopenable['fifo']}: not a regular file" in str(raised.value)


def test_a_file_removed_between_listing_and_reading_is_bad_input(ray_session, tmp_path):
    kept, removed = tmp_path / "kept.jsonl", tmp_path / "removed.jsonl"
    for path in (kept, removed):
        path.write_bytes(_record("A document that is read."))
    documents = read_source("jsonl", [str(kept), str(removed)], "c4")  # lists the files now, reads them later
    failing = read_source("jsonl", [str(kept), str(removed)], "c4", on_bad_input="fail")
    removed.unlink()

    rows = {row["doc_id"]: row for row in documents.take_all()}
    assert rows[f"{kept}#1"]["read_error"] is None
    assert rows[str(removed)]["slice"] == "c4"
    assert rows[str(removed)]["read_error"].startswith(f"{removed}: the file: cannot be opened (")
    assert "No such file or directory" in rows[str(removed)]["read_error"]
    with pytest.raises(Exception, match=f"{removed}: 1 record\\(s\\) could not be read"):
        failing.take_all()
