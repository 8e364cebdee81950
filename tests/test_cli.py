"""The `pajama` command as a user meets it: expected failures are one line and a non-zero exit, no
traceback (`-v` shows it); `--version`; `plan` shows fingerprints without running anything."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _pajama(tmp_path: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PAJAMA_STORAGE_URI"] = str(tmp_path / "storage")
    return subprocess.run([sys.executable, "-m", "pajama", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The single `pajama: ...` line of a failed command, which must name each needle."""
    assert proc.returncode not in (0, None), proc.stdout + proc.stderr
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output
    errors = [line for line in proc.stderr.splitlines() if line.startswith("pajama: ")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def test_version(tmp_path):
    import pajama

    proc = _pajama(tmp_path, "--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"pajama {pajama.__version__}"


def test_lineage_on_empty_storage(tmp_path):
    _one_line_error(_pajama(tmp_path, "lineage"), "no DAG run", "pajama run")


def test_serve_a_model_that_does_not_exist(tmp_path):
    _one_line_error(_pajama(tmp_path, "serve", "--model", "x=/nonexistent"), "/nonexistent", "config.json")
    _one_line_error(_pajama(tmp_path, "serve", "--model", "pajama-chat=models:/pajama-chat@production"),
                    "models:/pajama-chat@production", "registry")


def test_unreachable_data_path(tmp_path):
    override = "data.sources=[{format: jsonl, path: /no/such/corpus/*.jsonl}]"
    _one_line_error(_pajama(tmp_path, "data", "--set", override), "data.sources.0.path", "/no/such/corpus")


def test_verbose_shows_the_traceback(tmp_path):
    proc = _pajama(tmp_path, "-v", "lineage")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "LookupError" in proc.stderr


@pytest.mark.slow
def test_broken_file_with_on_bad_input_fail(tmp_path):
    broken = tmp_path / "corpus" / "broken.jsonl.gz"
    broken.parent.mkdir()
    good = "\n".join(json.dumps({"text": f"A good document number {i} about Python modules."}) for i in range(5))
    broken.write_bytes(gzip.compress((good + "\n{not json\n").encode()))
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(f"""inherit: tiny
data:
  on_bad_input: fail
  sources:
    - {{format: jsonl, path: {broken}, slice: c4}}
""")
    proc = _pajama(tmp_path, "data", "--recipe", str(recipe), "--set", "data.fuzzy_dedup.enabled=false")
    _one_line_error(proc, str(broken), "could not be read")
    # The failed stage left no artifact that a later run could take for finished.
    assert not list((tmp_path / "storage" / "artifacts").glob("*/*/manifest.json"))


def test_plan_prints_fingerprints_without_running_anything(tmp_path):
    proc = _pajama(tmp_path, "plan", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert list(plan) == ["references", "signals", "data", "pretrain", "instruct", "chat", "evaluate", "serve"]
    assert all(not step["up_to_date"] and len(step["fingerprint"]) == 20 for step in plan.values())
    assert plan["serve"]["upstream"] == ["pretrain", "instruct", "chat"]
    assert not (tmp_path / "storage").exists(), "plan reads configs and manifests only"


def test_config_explain_documents_every_field(tmp_path):
    proc = _pajama(tmp_path, "config", "--explain")
    assert proc.returncode == 0, proc.stderr
    from pajama.config import PajamaConfig, explain

    paths = [row[0] for row in explain()]
    assert {"project.promote_to", "data.fuzzy_dedup.threshold", "pretrain.learning_rate", "serve.port"} <= set(paths)
    assert all(f"{path}  (" in proc.stdout for path in paths)
    assert "RedPajama-V2's published LSH settings" in proc.stdout
    assert set(PajamaConfig.model_fields) <= set(paths)
