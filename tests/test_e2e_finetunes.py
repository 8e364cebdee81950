"""The tiny DAG's fine-tunes from the user's side: the base model picked from MLflow by run, version
or alias; the comparison of base, instruct and chat on the DAG run. (The served chat model's
answers are checked in test_serve_config.py, on the RayService's own serve config.)

Uses the session fixture `tiny_dag` (one real run of the whole tiny DAG, shared with test_e2e.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(tiny_project, tiny_dag):
    mlflow.set_tracking_uri(tiny_project.tracking_uri)
    return MlflowClient(tiny_project.tracking_uri, registry_uri=tiny_project.tracking_uri)


def _state_dict(model_dir) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir).state_dict()


def test_base_model_is_chosen_by_run_id_version_or_alias(tiny_project, client):
    from pajama.models import resolve_model_dir
    from transformers import AutoTokenizer

    path, pretrain = tiny_project.artifact("pretrain")
    version = pretrain["registered_version"]
    client.set_registered_model_alias("pajama-base", "champion", version)
    expected = _state_dict(path / "model")
    vocab = AutoTokenizer.from_pretrained(path / "model").get_vocab()
    sources = [f"runs:/{pretrain['mlflow_run_id']}", f"models:/pajama-base/{version}", "models:/pajama-base@champion"]
    for source in sources:
        model_dir = resolve_model_dir(source, tiny_project.tracking_uri)
        weights = _state_dict(model_dir)
        assert weights.keys() == expected.keys(), source
        assert all(torch.equal(weights[k], expected[k]) for k in expected), source
        assert AutoTokenizer.from_pretrained(model_dir).get_vocab() == vocab, source

    # The SFT stage starts from the model the alias names (a short run: the wiring is under test).
    run = tiny_project.pajama("instruct", "--set", "instruct.base_model=models:/pajama-base@champion",
                              "--set", "instruct.max_steps=2")
    assert run.returncode == 0, run.output[-4000:]
    assert "[pajama] instruct: running" in run.output
    _, manifest = tiny_project.artifact("instruct")
    assert manifest["base_model"] == "models:/pajama-base@champion"
    assert manifest["inputs"] == {}  # not the DAG's pretrain stage: the registry's model


def _comparison(client, parent_id, tmp_path) -> list[dict]:
    from pajama.compare import TABLE_FILE

    local = client.download_artifacts(parent_id, TABLE_FILE, str(tmp_path))
    table = json.loads(Path(local).read_text())
    return [dict(zip(table["columns"], values)) for values in table["data"]]


def test_dag_run_holds_the_comparison_of_base_instruct_and_chat(tiny_project, tiny_dag, client, tmp_path):
    from pajama.compare import load_checks

    exp = client.get_experiment_by_name("pajama")
    parent = client.search_runs([exp.experiment_id], "tags.`pajama.dag` = 'true'",
                                order_by=["attributes.start_time ASC"])[0]
    rows = _comparison(client, parent.info.run_id, tmp_path)
    prompts = [c["messages"][0]["content"] for c in load_checks()]
    assert sorted((r["model"], r["prompt"]) for r in rows) == sorted(
        (m, p) for m in ("base", "instruct", "chat") for p in prompts)
    versions = {r["model"]: r["version"] for r in rows}
    for kind, stage in {"base": "pretrain", "instruct": "instruct", "chat": "chat"}.items():
        manifest = _first_manifest(tiny_project, stage)
        assert versions[kind] == f"{manifest['registered_model']}/{manifest['registered_version']}"
    for row in rows:
        assert "<human>:" not in row["generation"] and row["finish_reason"] in ("stop", "length")
        if row["model"] == "chat":
            assert row["rendered_prompt"] == f"<human>: {row['prompt']}\n<bot>:"
    losses = parent.data.metrics
    print("check-set response loss:", {k: round(v, 3) for k, v in losses.items() if k.startswith("compare.")})
    # Fine-tuning on stdlib questions in the model's own format beats the base model on held-out ones.
    assert losses["compare/response_loss/instruct"] < losses["compare/response_loss/base"]
    assert losses["compare/response_loss/chat"] < losses["compare/response_loss/base"]
    assert "[pajama] compare: check-set response loss" in tiny_dag.output


def _first_manifest(tiny_project, stage: str) -> dict:
    """The manifest of the first DAG run's artifact of `stage` (other tests train more)."""
    manifests = [json.loads(p.read_text()) for p in (tiny_project.storage / "artifacts" / stage).glob("*/manifest.json")]
    return min(manifests, key=lambda m: m["created"])
