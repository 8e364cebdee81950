"""A data stage killed midway and re-run resumes after its last finished phase, without redoing
the earlier ones (nor the signals stage, finished before it), and writes shards byte-identical to an
uninterrupted run (the tiny DAG's data stage, same recipe): the same file names under shards/train and
shards/eval, with the same bytes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest

from conftest import REPO, Project

pytestmark = pytest.mark.slow

ARGS = ["data"]
# Logged once the tokenizer phase has finished: selection, dedup, quarantine and tokenizer are done.
MIDWAY = "[pajama] data: tokenizing and packing"
RESUMED = "[pajama] data: resuming: selection, dedup, quarantine, tokenizer done in an earlier attempt"
# Log lines of the work the re-run must not redo.
REDONE = ("[pajama] signals: reading sources", "[pajama] data: applying filters", "[pajama] data: exact dedup",
          "[pajama] data: MinHash LSH dedup", "[pajama] data: tokenizer\n")


def _shards(path) -> dict[str, bytes]:
    """Every file under the artifact's shards/ by its path there ("train/00000.parquet"), in name order."""
    return {str(file.relative_to(path / "shards")): file.read_bytes()
            for file in sorted((path / "shards").rglob("*")) if file.is_file()}


def _finished_phases(path) -> dict[str, int]:
    """The files of the phases before packing (their outputs and markers) with their mtimes."""
    return {str(file.relative_to(path)): file.stat().st_mtime_ns
            for folder in ("documents", "deduped", "quarantine", "tokenizer", "_phases")
            for file in sorted((path / folder).rglob("*")) if file.is_file()}


def _kill_midway(project: Project) -> str:
    """Start `pajama data`, SIGKILL its whole process group once it prints MIDWAY; its output."""
    proc = subprocess.Popen([sys.executable, "-m", "pajama", *ARGS], cwd=REPO, env=project.env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    output = []
    try:
        for line in proc.stdout:
            output.append(line)
            if line.startswith(MIDWAY):
                os.killpg(proc.pid, signal.SIGKILL)
                break
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stdout.close()
    return "".join(output)


def test_killed_and_rerun_data_stage_writes_the_shards_of_an_uninterrupted_run(tmp_path, tiny_project, tiny_dag):
    expected_path, _ = tiny_project.artifact("data")

    resumed = Project(tmp_path / "resumed")
    # The tiny DAG's models and signals, so that the killed run goes straight to the data stage.
    for stage in ("references", "signals"):
        path, _ = tiny_project.artifact(stage)
        shutil.copytree(path, resumed.storage / "artifacts" / stage / path.name)
    output = _kill_midway(resumed)
    assert MIDWAY in output, output[-4000:]
    data_dir = resumed.storage / "artifacts" / "data"
    assert not list(data_dir.glob("*/manifest.json")), "the killed run finished"
    [staging] = [p for p in data_dir.glob(".staging-*") if p.is_dir()]
    left = _finished_phases(staging)
    assert {f"_phases/{phase}.json" for phase in ("selection", "dedup", "quarantine", "tokenizer")} <= set(left)
    assert "_phases/packing.json" not in left

    run = resumed.pajama(*ARGS)
    assert run.returncode == 0, run.output[-4000:]
    path, _ = resumed.artifact("data")
    assert path.name == expected_path.name  # same fingerprint
    # Resumed after the tokenizer: the earlier phases neither ran again nor rewrote a file.
    assert RESUMED in run.output and "[pajama] signals: up to date, reusing" in run.output, run.output[-4000:]
    assert not [line for line in REDONE if line in run.output], run.output[-4000:]
    assert "[pajama] data: tokenizing and packing" in run.output
    assert {name: mtime for name, mtime in _finished_phases(path).items() if name in left} == left
    assert (path / "_phases" / "packing.json").is_file()

    expected, actual = _shards(expected_path), _shards(path)
    assert sum(name.startswith("train/") for name in expected) > 1 and any(name.startswith("eval/") for name in expected)
    assert list(actual) == list(expected)
    for name, data in expected.items():
        assert actual[name] == data, f"shards/{name} differs"
