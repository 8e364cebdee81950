"""One model on a set of lm-evaluation-harness tasks: lm-eval's HFLM on the exported directory.

Tasks are lm-eval task names: the harness's own (ARC, HellaSwag, MMLU, ... from the Hugging Face
hub) or the small ones bundled under `resources/eval_tasks/` in lm-eval's YAML task format over
local files, which need no network. Every model gets each task's own prompt, as lm-eval and the
INCITE model cards do; how the fine-tunes answer in their own prompt formats is `pajama.compare`.
The result is one row per task and metric, with lm-eval's standard error.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from pajama.config import RESOURCES_DIR

TASKS_DIR = RESOURCES_DIR / "eval_tasks"
# lm-eval bootstraps the stderr of metrics such as perplexity; its default of 100000 draws takes
# longer than the evaluation of a tiny model, and 1000 give the stderr to two digits.
BOOTSTRAP_ITERS = 1000


def bundled_tasks() -> set[str]:
    return {path.stem for path in TASKS_DIR.glob("*.yaml")}


def task_set_key(tasks: list[str], num_fewshot: dict[str, int], limit: int | None, dtype: str) -> dict:
    """What a model's scores depend on besides the model: the tasks (the bundled ones by content),
    the shots, the example limit, the dtype and lm-eval's version."""
    from importlib.metadata import version

    bundled = {path.name: hashlib.sha256(path.read_bytes()).hexdigest()[:16]
               for path in sorted(TASKS_DIR.iterdir()) if path.is_file()}
    return {"tasks": sorted(tasks), "num_fewshot": {t: num_fewshot[t] for t in sorted(tasks) if t in num_fewshot},
            "limit": limit, "dtype": dtype, "lm_eval": version("lm-eval"),
            "bundled": bundled if set(tasks) & bundled_tasks() else {}}


def evaluate_model(model_dir: str | Path, tasks: list[str], num_fewshot: dict[str, int], limit: int | None,
                   dtype: str = "float32", batch_size: int = 16) -> list[dict]:
    """Scores of the HF model in `model_dir` on `tasks`: one row per task and metric
    (`task`, `metric`, `value`, `stderr` (None where lm-eval has none), `n`, `num_fewshot`)."""
    import lm_eval
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    # lm-eval warns per request (a context cut to the model's length) and per custom-data task;
    # real problems raise.
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    unknown_to_pajama = set(tasks) - bundled_tasks()
    # Indexing lm-eval's own few thousand task files takes seconds: only when a task needs it.
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=bool(unknown_to_pajama))
    model = HFLM(pretrained=str(model_dir), dtype=dtype, batch_size=batch_size,
                 device="cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    # simple_evaluate takes one shot count for all its tasks: one call per count.
    by_shots: dict[int | None, list[str]] = {}
    for task in tasks:
        by_shots.setdefault(num_fewshot.get(task), []).append(task)
    for shots, group in by_shots.items():
        out = lm_eval.simple_evaluate(model, tasks=group, num_fewshot=shots, limit=limit, task_manager=manager,
                                      bootstrap_iters=BOOTSTRAP_ITERS, log_samples=False)
        rows += _rows(out, group)
    return rows


def _rows(out: dict, tasks: list[str]) -> list[dict]:
    """The requested tasks' (and groups', such as mmlu) metrics, without their subtasks'."""
    rows = []
    for task in tasks:
        scores = out["results"][task]
        n = out["n-samples"].get(task, {}).get("effective")
        if n is None:  # a group: the examples of its subtasks
            n = sum(out["n-samples"][sub]["effective"] for sub in _leaves(out, task))
        for key, value in scores.items():
            metric, _, filter_name = key.partition(",")
            if not filter_name or "_stderr" in metric or not isinstance(value, (int, float)):
                continue
            stderr = scores.get(f"{metric}_stderr,{filter_name}")
            rows.append({"task": task, "metric": metric if filter_name == "none" else f"{metric}_{filter_name}",
                         "value": float(value), "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
                         "n": n, "num_fewshot": out["n-shot"].get(task, 0)})
    return rows


def _leaves(out: dict, group: str) -> list[str]:
    subtasks = out.get("group_subtasks", {}).get(group, [])
    return [leaf for sub in subtasks for leaf in (_leaves(out, sub) if sub in out["group_subtasks"] else [sub])]


def cache_key(model_fingerprint: str, task_set: dict) -> str:
    payload = json.dumps({"model": model_fingerprint, "tasks": task_set}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]
