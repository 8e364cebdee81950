"""The evaluate stage: lm-evaluation-harness scores with stderr for base, instruct and chat.

A tiny random model on the bundled tasks (no network: the hub is switched off), then the tiny DAG
(the session fixture `tiny_dag`, shared with test_e2e.py): scores in MLflow on the stage run, the
registered versions and the logged models, the side-by-side table and chart on the DAG run, reuse
of the stage, and a chat-only change that re-evaluates chat alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CHAT_ONLY_CHANGE, REPO, dag_runs, stage_runs

BUNDLED = {"pajama_stdlib_mc": ["acc", "acc_norm"], "pajama_stdlib_lambada": ["perplexity", "acc"]}
KINDS = {"base": "pretrain", "instruct": "instruct", "chat": "chat"}
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _assert_scores(rows: list[dict], models) -> None:
    scored = {(r["model"], r["task"], r["metric"]): r for r in rows}
    for model in models:
        for task, metrics in BUNDLED.items():
            for metric in metrics:
                row = scored[(model, task, metric)]
                assert row["value"] >= 0 and row["stderr"] is not None and row["stderr"] >= 0, row
                assert row["n"] > 0


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from pajama.serve.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("eval") / "model")


def test_stage_scores_a_model_on_the_bundled_tasks_and_caches_them(tiny_model, tmp_path):
    from pajama.artifacts import Artifact, StageContext
    from pajama.config import EvaluateConfig
    from pajama.evaluate import stage

    cfg = EvaluateConfig(models=["base"], limit=8)
    ctx = StageContext(out=tmp_path / "out", storage=tmp_path, fingerprint="e")
    inputs = {"pretrain": Artifact("pretrain", "base-fp", str(tiny_model.parent), {"model_dir": tiny_model.name})}
    first = stage.run(cfg, ctx, inputs)
    _assert_scores(first["results"], ["base"])
    assert {r["n"] for r in first["results"]} == {8} and first["models"]["base"]["cache"] == "miss"
    again = stage.run(cfg, ctx, inputs)
    assert again["models"]["base"]["cache"] == "hit" and again["results"] == first["results"]
    table = stage.benchmark_table(first["results"], {"base": "pajama-base/1"}, "incite-3b")
    assert [e["model"] for e in table] == ["base", "RedPajama-INCITE-Base-3B-v1"]
    assert table[0]["pajama_stdlib_mc/acc_stderr"] == first["results"][0]["stderr"]


def test_cli_evaluates_a_directory_offline(tiny_model, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env.update(PYTHONPATH=str(REPO / "platform"), PAJAMA_STORAGE_URI=str(tmp_path), **OFFLINE)
    proc = subprocess.run([sys.executable, "-m", "pajama", "evaluate", "--model", str(tiny_model),
                           "--tasks", "pajama_stdlib_mc", "--limit", "5"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pajama_stdlib_mc/acc (n=5)" in proc.stdout and " ± " in proc.stdout
    assert "pajama_stdlib_lambada" not in proc.stdout


def _benchmarks(client, run_id, tmp_path) -> list[dict]:
    from pajama.evaluate.stage import TABLE_FILE

    table = json.loads(Path(client.download_artifacts(run_id, TABLE_FILE, str(tmp_path))).read_text())
    return [dict(zip(table["columns"], values)) for values in table["data"]]


@pytest.mark.slow
def test_dag_evaluates_base_instruct_and_chat_into_mlflow(tiny_project, tiny_dag, client, tmp_path):
    assert "[pajama] evaluate: running" in tiny_dag.output
    parent = dag_runs(client)[0]
    run = stage_runs(client, parent.info.run_id)["evaluate"]
    metrics = run.data.metrics
    for kind, stage in KINDS.items():
        for task, names in BUNDLED.items():
            for metric in names:
                assert f"{kind}/{task}/{metric}" in metrics and f"{kind}/{task}/{metric}_stderr" in metrics
        # The same scores on the registered version (tags) and on its logged model (metrics).
        trained_by = stage_runs(client, parent.info.run_id)[stage]
        [version] = client.search_model_versions(f"run_id = '{trained_by.info.run_id}'")
        assert float(version.tags["pajama.eval.pajama_stdlib_mc.acc"]) == pytest.approx(
            metrics[f"{kind}/pajama_stdlib_mc/acc"], rel=1e-5)
        assert "pajama.eval.pajama_stdlib_mc.acc_stderr" in version.tags
        logged = client.get_logged_model(trained_by.data.tags["pajama.model_id"])
        assert {m.key for m in logged.metrics} >= {f"{kind}/pajama_stdlib_mc/acc",
                                                   f"{kind}/pajama_stdlib_mc/acc_stderr"}
    print("tiny DAG evaluation:", {k: round(v, 3) for k, v in sorted(metrics.items()) if not k.endswith("_stderr")})
    # Side by side on the DAG run: one row per model, with stderr columns, and the chart.
    table = _benchmarks(client, parent.info.run_id, tmp_path)
    assert [e["model"] for e in table] == list(KINDS)
    assert all(e["pajama_stdlib_mc/acc_stderr"] is not None for e in table)
    assert all(e["version"].startswith(f"pajama-{kind}/") for e, kind in zip(table, KINDS))
    artifacts = [a.path for a in client.list_artifacts(parent.info.run_id, "evaluation")]
    assert "evaluation/benchmarks.png" in artifacts


@pytest.mark.slow
def test_evaluate_rerun_reuses_the_stage_and_reports_again(tiny_project, tiny_dag, client, tmp_path):
    run = tiny_project.pajama("evaluate")
    assert run.returncode == 0, run.output[-4000:]
    assert "[pajama] evaluate: up to date, reusing" in run.output
    assert "pajama_stdlib_mc/acc (n=" in run.output and "Started a local Ray instance" not in run.output
    assert [e["model"] for e in _benchmarks(client, dag_runs(client)[-1].info.run_id, tmp_path)] == list(KINDS)


@pytest.mark.slow
def test_changing_chat_reevaluates_chat_only(tiny_project, tiny_dag):
    # test_e2e.py's chat-only re-run makes the same change: when it ran first, this reuses its chat model.
    override = CHAT_ONLY_CHANGE
    run = tiny_project.pajama("evaluate", *override)
    assert run.returncode == 0, run.output[-4000:]
    plan = tiny_project.pajama("plan", "--json", *override, "evaluate")
    fingerprint = json.loads(plan.output[plan.output.index("{"):])["evaluate"]["fingerprint"]
    manifest = json.loads((tiny_project.storage / "artifacts" / "evaluate" / fingerprint / "manifest.json").read_text())
    cache = {kind: m["cache"] for kind, m in manifest["models"].items()}
    assert cache == {"base": "hit", "instruct": "hit", "chat": "miss"}
    _assert_scores(manifest["results"], KINDS)
