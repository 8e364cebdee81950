"""The base/instruct/chat comparison: check set, prompt formats, stops, losses, cache and MLflow table."""

import json
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
import torch
from pajama import compare, kinds
from pajama.serve.tiny_model import make_tiny_model
from transformers import AutoTokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("compare-model"))


def test_check_set_is_held_out_eval_data():
    checks = compare.load_checks()
    assert 4 <= len(checks) <= 10
    eval_rows = [json.loads(line) for line in (compare.CHECKS.parent / "eval.jsonl").read_text().splitlines()]
    held_out = {(r["prompt"], r["response"]) for r in eval_rows}
    # Rows of eval.jsonl, so the recipes' decontamination keeps them out of every training set.
    assert {(c["messages"][0]["content"], c["messages"][1]["content"]) for c in checks} <= held_out


def test_each_model_gets_its_own_format():
    prompt = "What does `shlex.split` do?"
    assert kinds.kind("base").style.render_prompt(prompt) == prompt
    assert kinds.kind("instruct").style.render_prompt(prompt) == f"Q: {prompt}\nA:"
    assert kinds.kind("chat").style.render_prompt(prompt) == f"<human>: {prompt}\n<bot>:"
    with pytest.raises(ValueError, match="unknown model kind"):
        kinds.kind("critic")


def _stub_model(new_tokens: list[list[int]], prompt_width: int):
    """A 'model' whose generate returns fixed continuations after `prompt_width` prompt tokens."""
    rows = [[1] * prompt_width + tokens for tokens in new_tokens]
    width = max(map(len, rows))
    out = torch.tensor([row + [1] * (width - len(row)) for row in rows])
    return SimpleNamespace(device=torch.device("cpu"), config=SimpleNamespace(max_position_embeddings=256),
                           generate=lambda **kwargs: out)


def test_answers_are_cut_at_the_next_turn_or_eos(model_dir):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.pad_token = "<|padding|>"
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
    prompt = "<human>: Hi\n<bot>:"
    width = len(ids(prompt))
    model = _stub_model([ids(" Paris is nice.\n<human>: and more"), ids(" Paris") + [tokenizer.eos_token_id],
                         ids(" The quick brown fox")], width)
    results = compare._generate(model, tokenizer, [prompt] * 3, kinds.kind("chat").style.reply_stops, strip=True)
    assert results == [("Paris is nice.", "stop"), ("Paris", "stop"), ("The quick brown fox", "length")]
    raw = compare._generate(model, tokenizer, [prompt] * 3, kinds.kind("base").style.reply_stops, strip=False)
    assert raw[0] == (" Paris is nice.\n", "stop")


def test_rows_losses_and_mean(model_dir):
    checks = compare.load_checks()[:3]
    rows = compare.compare({"base": model_dir, "chat": model_dir}, checks)
    assert [r["model"] for r in rows] == ["base"] * 3 + ["chat"] * 3
    for row, check in zip(rows[3:], checks):
        assert row["rendered_prompt"] == f"<human>: {check['messages'][0]['content']}\n<bot>:"
        assert row["reference"] == check["messages"][1]["content"]
        assert row["finish_reason"] in ("stop", "length") and "<human>:" not in row["generation"]
        assert 0 < row["response_loss"] < 20 and row["response_tokens"] > 1
    # The batched loss equals the model's own loss on one unpadded example.
    from transformers import AutoModelForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    one = compare._labelled(tokenizer, "chat", checks[1])
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([one["input_ids"]]), labels=torch.tensor([one["labels"]])).loss
    assert rows[4]["response_loss"] == pytest.approx(expected.item(), rel=1e-4)
    means = compare.mean_losses(rows)
    chat = rows[3:]
    assert means["chat"] == pytest.approx(sum(r["response_loss"] * r["response_tokens"] for r in chat)
                                          / sum(r["response_tokens"] for r in chat))


def test_cached_and_logged_to_the_dag_run(model_dir, tmp_path, monkeypatch):
    models = {"base": (model_dir, "fp-base"), "chat": (model_dir, "fp-chat")}
    first = compare.cached_compare(models, str(tmp_path / "cache"))

    def recompute(*args):
        raise AssertionError("the same models and checks must come from the cache")

    monkeypatch.setattr(compare, "compare", recompute)
    assert compare.cached_compare(models, str(tmp_path / "cache")) == first
    with pytest.raises(AssertionError):  # another fingerprint is another comparison
        compare.cached_compare({**models, "chat": (model_dir, "fp-chat-2")}, str(tmp_path / "cache"))

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("compare", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        pass
    compare.log_to_parent(run.info.run_id, first, {"base": "pajama-base/1", "chat": "pajama-chat/1"})
    table = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path=compare.TABLE_FILE, dst_path=str(tmp_path / "dl"))).read_text())
    columns = table["columns"]
    records = [dict(zip(columns, values)) for values in table["data"]]
    assert len(records) == len(first) and {r["version"] for r in records} == {"pajama-base/1", "pajama-chat/1"}
    assert {"model", "prompt", "rendered_prompt", "generation", "finish_reason", "response_loss"} <= set(columns)
    metrics = mlflow.get_run(run.info.run_id).data.metrics
    assert metrics["compare/response_loss/chat"] == pytest.approx(compare.mean_losses(first)["chat"])
