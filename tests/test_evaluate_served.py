"""The evaluation tasks run against what is deployed: lm-evaluation-harness's `local-completions`
model against Pajama's Serve app gives the loglikelihoods of the direct (in-process HFLM) run.

lm-eval scores a multiple-choice example by asking the server to echo the tokenized context and
continuation with their logprobs (`echo`, `logprobs`, `max_tokens` 0 or 1) and summing the
continuation's; the same numbers must come out as when lm-eval runs the model itself.
"""

from __future__ import annotations


import pytest

from pajama.evaluate.harness import TASKS_DIR
from pajama.serve import app as serve_app
from pajama.serve.tiny_model import make_tiny_model

from conftest import free_port

TASK = "pajama_stdlib_mc"
LIMIT = 6


def _loglikelihoods(out: dict) -> dict[int, list[float]]:
    """Per example (doc_id), the loglikelihood of each answer choice."""
    return {s["doc_id"]: [float(resp[0][0]) for resp in s["resps"]] for s in out["samples"][TASK]}


@pytest.mark.slow
def test_local_completions_against_pajama_serve_matches_the_direct_evaluation(tmp_path):
    import lm_eval
    import ray
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model_dir = make_tiny_model(tmp_path / "model")
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    direct = lm_eval.simple_evaluate(HFLM(pretrained=str(model_dir), dtype="float32", batch_size=8, device="cpu"),
                                     tasks=[TASK], limit=LIMIT, task_manager=manager, log_samples=True,
                                     bootstrap_iters=0)

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        base_url = serve_app.deploy({"models": [{"name": "tiny", "source": str(model_dir), "kind": "base"}],
                                     "num_cpus": 1, "num_gpus": 0, "ingress_num_cpus": 0.5}, port=free_port())
        served = lm_eval.simple_evaluate(
            model="local-completions",
            model_args={"base_url": f"{base_url}/v1/completions", "model": "tiny", "tokenizer": str(model_dir),
                        "tokenizer_backend": "huggingface", "tokenized_requests": True, "num_concurrent": 2,
                        "max_retries": 1, "max_length": 256},
            tasks=[TASK], limit=LIMIT, task_manager=manager, log_samples=True, bootstrap_iters=0)
    finally:
        serve_app.shutdown()
        ray.shutdown()

    expected, got = _loglikelihoods(direct), _loglikelihoods(served)
    assert len(expected) == LIMIT and set(got) == set(expected)
    for doc_id, values in expected.items():
        assert len(got[doc_id]) == len(values) == 4
        assert got[doc_id] == pytest.approx(values, abs=1e-3), doc_id
    assert served["results"][TASK]["acc,none"] == direct["results"][TASK]["acc,none"]
