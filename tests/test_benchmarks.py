"""The benchmarks run in the environment the README's test command creates (`.[test,bench]`).

A short run of `benchmarks/data_pipeline.py` (Pajama against datatrove on the same rules) must
complete and print its stable lines; the figures themselves are for people, not for asserts.
`benchmarks/pretrain_input.py` exits non-zero when it misses its targets, so its run checks them.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_data_pipeline_benchmark_runs_briefly():
    proc = subprocess.run([sys.executable, "benchmarks/data_pipeline.py", "--docs", "200", "--repeats", "1",
                           "--pack-copies", "1"], cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Pajama / datatrove documents per second:" in proc.stdout, proc.stdout[-3000:]
    assert "Pack / encode_batch throughput:" in proc.stdout, proc.stdout[-3000:]


@pytest.mark.slow
def test_pretrain_input_benchmark_meets_its_targets():
    proc = subprocess.run([sys.executable, "benchmarks/pretrain_input.py"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for workers in ("1 worker", "2 workers", "4 workers"):
        assert f"read amplification at {workers}: " in proc.stdout, proc.stdout
    assert "resume time at step 1000 / at step 10: " in proc.stdout, proc.stdout
