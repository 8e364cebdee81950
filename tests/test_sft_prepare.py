"""Fine-tuning data prepared on Ray Data: counts that add up, shards byte-identical across runs
whatever the blocks and task order, loader errors that still name the file and line, and hub
datasets read file by file."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from pajama.config import SFTConfig, resolve_path
from pajama.serve.tiny_model import make_tiny_model
from pajama.sft import IGNORE_INDEX, SFTDataError, load_examples
from pajama.sft import prepare

EVAL_TEXT = "The quick brown fox jumps over the lazy dog near the quiet river bank today."


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return str(make_tiny_model(tmp_path_factory.mktemp("sft-prepare-base")))


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def shard_files(out) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "shards").rglob("*")) if p.is_file()}


def test_shards_are_byte_identical_across_runs_and_counts_add_up(ray_session, base_dir, tmp_path, monkeypatch):
    evaluation = write_jsonl(tmp_path / "eval.jsonl", [{"prompt": "Describe the scene.", "response": EVAL_TEXT}])
    planted = write_jsonl(tmp_path / "planted.jsonl", [
        {"prompt": f"Story {i}: {EVAL_TEXT.upper()}", "response": "Continue it.", "task": "planted"} for i in range(3)])
    cfg = SFTConfig(style="instruct", max_length=64, eval_fraction=0.2, shuffle_strategy="sort_shuffle_pull_based",
                    datasets=[{"format": "instruct_jsonl", "path": "bundled:sft/instruct.jsonl"},
                              {"format": "instruct_jsonl", "path": planted}],
                    decontaminate_against=[{"format": "instruct_jsonl", "path": evaluation}])
    # Several shards per split; the second run cuts the input into other blocks (other tasks, other order).
    monkeypatch.setattr(prepare, "EXAMPLES_PER_SHARD", 120)
    first, second = tmp_path / "first", tmp_path / "second"
    report = prepare.prepare_examples(cfg, base_dir, seed=7, out_uri=str(first))
    monkeypatch.setattr(prepare, "READ_BLOCK_EXAMPLES", 37)
    assert prepare.prepare_examples(cfg, base_dir, seed=7, out_uri=str(second)) == report
    files = shard_files(first)
    assert files == shard_files(second)
    assert len([f for f in files if f.startswith("shards/train/")]) == 4  # ceil(~450 / 120)
    # Another seed: another split and order.
    prepare.prepare_examples(cfg, base_dir, seed=8, out_uri=str(tmp_path / "seed8"))
    assert shard_files(tmp_path / "seed8") != files

    loaded = len(load_examples("instruct_jsonl", resolve_path("bundled:sft/instruct.jsonl"))) + 3
    assert report["examples_loaded"] == loaded
    assert report["decontaminated"] == {"planted": 3}
    assert report["examples_loaded"] == 3 + report["train"]["examples"] + report["eval"]["examples"]
    assert 0.1 < report["eval"]["examples"] / (loaded - 3) < 0.3
    for split in ("train", "eval"):
        r = report[split]
        table = pq.read_table(first / "shards" / split)
        assert table.column_names == list(prepare.PACKED_COLUMNS)
        assert all(str(t) == "list<element: int32>" for t in table.schema.types)
        assert table.num_rows == r["sequences"] > 0
        rows = table.to_pylist()
        assert all(len(row[c]) == cfg.max_length for row in rows for c in prepare.PACKED_COLUMNS)
        # Each packed example starts at position 0 (with its first label masked); padding follows.
        starts = sum(p == 0 for row in rows for p in row["position_ids"][: _used(row)])
        assert starts == r["examples"] - r["dropped_no_response"]
        assert sum(_used(row) for row in rows) == r["tokens"]
        assert all(row["labels"][i] == IGNORE_INDEX for row in rows for i, p in enumerate(row["position_ids"])
                   if p == 0)
        assert r["fill"] == pytest.approx(r["tokens"] / (r["sequences"] * cfg.max_length))


def _used(row: dict) -> int:
    """Tokens before the padding: up to the last non-zero position (an example has at least 2 tokens)."""
    return max(i for i, p in enumerate(row["position_ids"]) if p) + 1


def test_a_bad_record_stops_the_stage_naming_its_file_and_line(ray_session, base_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n" + json.dumps({"prompt": "p"}) + "\n")
    cfg = SFTConfig(style="instruct", datasets=[{"format": "instruct_jsonl", "path": str(bad)}],
                    shuffle_strategy="sort_shuffle_pull_based")
    with pytest.raises(SFTDataError, match=rf"{bad}:2: missing field 'response'"):
        prepare.prepare_examples(cfg, base_dir, seed=0, out_uri=str(tmp_path / "out"))


def test_a_hub_dataset_is_read_file_by_file(tmp_path, monkeypatch):
    import huggingface_hub.constants

    folder = tmp_path / "hub" / "datasets--org--ni"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    for name in ("train/task1.jsonl", "train/task2.jsonl", "test/task3.jsonl", "README.md"):
        (folder / "snapshots" / ("0" * 40) / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / "snapshots" / ("0" * 40) / name).write_text(json.dumps({"inputs": name, "targets": "t"}) + "\n")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    cfg = SFTConfig(style="instruct", datasets=[{"format": "p3", "path": "hf://datasets/org/ni",
                                                 "options": {"data_files": "train/*", "task": "ni"}}])
    units = prepare.read_units(cfg.datasets)
    assert [json.loads(u["options"]) for u in units] == [{"task": "ni", "data_files": "train/task1.jsonl"},
                                                        {"task": "ni", "data_files": "train/task2.jsonl"}]
    # Each unit is what one task loads: that one file, in the dataset's format.
    assert [load_examples(u["format"], u["path"], **json.loads(u["options"]))[0]["messages"][0]["content"]
            for u in units] == ["train/task1.jsonl", "train/task2.jsonl"]
