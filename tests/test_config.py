"""The config tree: presets, inheritance, overrides, and errors that name the field."""

import os
import re
import subprocess
import sys
import time

import pytest

from pajama.config import ConfigError, load_config


def test_tiny_is_the_default_and_validates():
    cfg = load_config()
    assert cfg.project.name == "pajama-tiny"
    assert cfg.pretrain.scaling.num_workers == 2 and not cfg.pretrain.scaling.use_gpu
    assert cfg.pretrain.strategy == "ddp" and cfg.pretrain.precision == "fp32"
    assert cfg.chat.style == "chat" and cfg.instruct.style == "instruct"


@pytest.mark.parametrize("recipe,hidden", [("3b", 2560), ("7b", 4096)])
def test_incite_shapes(recipe, hidden):
    cfg = load_config(recipe)
    m = cfg.pretrain.model
    assert (m.num_hidden_layers, m.hidden_size, m.num_attention_heads) == (32, hidden, 32)
    assert m.intermediate_size == 4 * hidden
    assert m.rotary_pct == 1.0 and m.use_parallel_residual is False
    assert m.max_position_embeddings == 2048 and cfg.data.seq_len == 2048
    assert m.vocab_size == 50432
    assert cfg.data.tokenizer.name_or_path == "EleutherAI/gpt-neox-20b" and not cfg.data.tokenizer.train
    assert cfg.pretrain.scaling.use_gpu and cfg.pretrain.precision == "bf16"
    # INCITE trained with 4M-token global batches.
    assert cfg.pretrain.global_batch_size * cfg.data.seq_len == 2048 * 2048


def test_overrides_apply_last_and_are_typed():
    cfg = load_config("tiny", ["chat.learning_rate=5e-4", "pretrain.max_steps=7"])
    assert cfg.chat.learning_rate == 5e-4 and cfg.pretrain.max_steps == 7
    assert cfg.instruct.learning_rate != 5e-4


@pytest.mark.parametrize("override,field", [
    ("pretrain.learning_rat=1e-3", "pretrain.learning_rat"),            # unknown key
    ("pretrain.learning_rate=fast", "pretrain.learning_rate"),          # wrong type
    ("data.sources.0.path=/no/such/corpus.jsonl", "data.sources.0.path"),  # missing data path
    ("pretrain.global_batch_size=12", "pretrain"),                      # not a multiple of micro x workers
    ("data.sources.0.slice=reddit", "data.sources.0.slice"),            # unknown slice
    ("data.filters=[gopher, c4_typo]", "data.filters"),                 # misspelt filter recipe
])
def test_bad_config_names_the_field(override, field):
    if override.startswith("data.sources.0."):
        key, _, value = override.partition("=")
        # sources is a list: replace the whole entry to reach one field of it.
        entry = {"format": "jsonl", "path": "bundled:corpus/*.jsonl.gz"}
        entry[key.rsplit(".", 1)[1]] = value
        override = "data.sources=[{" + ", ".join(f"{k}: {v!r}" for k, v in entry.items()) + "}]"
    with pytest.raises(ConfigError) as err:
        load_config("tiny", [override])
    assert re.search(rf"(: |\n  ){re.escape(field)}: ", str(err.value)), str(err.value)
    if field == "data.filters":
        assert "c4_typo" in str(err.value) and "c4" in str(err.value)  # the name, and the known recipes


def test_source_of_only_empty_or_unreadable_files_fails_naming_the_path(tmp_path):
    empty = tmp_path / "empty"
    (empty / "nested").mkdir(parents=True)
    (empty / "a.jsonl").write_text("")
    (empty / "nested" / "b.jsonl").write_text("")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "loop.jsonl").symlink_to(broken / "loop-back")  # loop.jsonl -> loop-back -> loop.jsonl
    (broken / "loop-back").symlink_to(broken / "loop.jsonl")
    (broken / "gone.jsonl").symlink_to(broken / "missing.jsonl")
    os.mkfifo(broken / "fifo.jsonl")
    (broken / "dir.jsonl").mkdir()  # a directory where a file is expected, holding nothing
    for path in (str(empty / "*.jsonl"), str(empty), str(broken / "*.jsonl"), str(broken / "loop.jsonl")):
        with pytest.raises(ConfigError) as err:
            load_config("tiny", [f"data.sources=[{{format: jsonl, path: {path!r}}}]"])
        assert ": data.sources.0.path: " in str(err.value)
        assert f"path {path!r} matches no readable, non-empty file" in str(err.value)
    # One readable file beside the broken ones is a source: the others are quarantined when read.
    (broken / "good.jsonl").write_text('{"text": "A document."}\n')
    assert load_config("tiny", [f"data.sources=[{{format: jsonl, path: {str(broken / '*.jsonl')!r}}}]"])


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(ConfigError, match="known: 160m, 1b, 3b, 7b, tiny$"):
        load_config("13b")


def test_cli_fails_fast_before_any_ray_work(tmp_path):
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "pajama", "run", "--set", "pretrain.num_workers=2"],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin", "PAJAMA_STORAGE_URI": str(tmp_path / "s")})
    assert proc.returncode == 2
    assert "pretrain.num_workers: Extra inputs are not permitted" in proc.stderr
    # Nothing was started or written: no Ray session, no storage, no tracking store.
    assert not (tmp_path / "s").exists()
    assert "Started a local Ray instance" not in proc.stderr + proc.stdout
    assert time.time() - started < 60
