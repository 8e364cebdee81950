"""A non-editable install works on its own: recipes, filter recipes and bundled data are package data.

The project is built as a wheel and installed from it (as `pip install .` does, not `-e`) into a fresh virtual environment
(a .pth file gives it the test environment's packages as its dependencies, whether the tests run in a
virtual environment or not; `--ignore-installed` puts Pajama itself in the venv), and `pajama config` and
`pajama data` run from a directory outside the checkout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_install_runs_config_and_data_outside_the_checkout(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    # The test environment's packages after the venv's own (a plain path line: the .pth files there, such
    # as the checkout's editable install, are not read, so Pajama comes from the wheel).
    venv_site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip()
    test_env = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (Path(venv_site) / "test-environment.pth").write_text("".join(f"{path}\n" for path in test_env))
    # The wheel is built with the test environment's setuptools (no package index is reached), then
    # installed into the venv as a user would install a released wheel.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(REPO)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("pajama_platform-*.whl"))
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", str(wheel)],
                   check=True, capture_output=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "PYTHONPATH")}
    env.update(PAJAMA_STORAGE_URI=str(tmp_path / "storage"), PYTHONUNBUFFERED="1")

    def pajama(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([venv / "bin" / "pajama", *args], cwd=work, env=env, capture_output=True, text=True,
                              timeout=900)

    where = subprocess.run([python, "-c", "import pajama; print(pajama.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(venv)), f"pajama imported from {where}, not from the wheel in the venv"

    tasks = subprocess.run([python, "-c", "from pajama.evaluate.harness import bundled_tasks; print(sorted(bundled_tasks()))"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout
    assert "pajama_stdlib_mc" in tasks and "pajama_stdlib_lambada" in tasks  # the evaluate stage's local tasks

    config = pajama("config", "--recipe", "3b")
    assert config.returncode == 0, config.stderr
    assert json.loads(config.stdout)["pretrain"]["model"]["hidden_size"] == 2560

    data = pajama("data")
    assert data.returncode == 0, data.stdout[-3000:] + data.stderr[-3000:]
    manifests = list((tmp_path / "storage" / "artifacts" / "data").glob("*/manifest.json"))
    assert len(manifests) == 1
    stats = json.loads(manifests[0].read_text())["stats"]
    assert stats["train_sequences"] > 0 and set(stats["slices"]) >= {"arxiv", "github", "wikipedia"}
    assert not (work / ".pajama").exists() and not list(work.iterdir()), "nothing is written to the cwd"
