"""The DAG's evaluate stage: base, instruct and chat on the recipe's lm-evaluation-harness tasks.

Each model's scores are cached under the storage directory by the model's fingerprint and the
task set (`evaluations/<key>.json`): when one upstream model changes (say, chat's learning rate),
the stage re-runs but evaluates only that model, and its manifest says which models came from the
cache. On a GPU recipe every model to evaluate gets its own Ray task on a GPU worker (the driver is
often CPU-only), all at once; on CPU they run one after another in the driver's process.

In MLflow, per model, task and metric: the score and its stderr as metrics of the stage run
(`chat/pajama_stdlib_mc/acc`, `chat/pajama_stdlib_mc/acc_stderr`), linked to the model's
LoggedModel, and as tags of its registered version (`pajama.eval.pajama_stdlib_mc.acc`). Every DAG
run that has the stage, run or reused, gets the models side by side (`report`): a table with one
row per model (`evaluation/benchmarks.json`), RedPajama-INCITE's published scores as reference rows
on the 3B and 7B recipes, and a chart (`evaluation/benchmarks.png`).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from pajama import storage
from pajama.artifacts import Artifact, StageContext
from pajama.config import EvaluateConfig
from pajama.evaluate import harness, reference
from pajama.kinds import kind, kind_of_stage

RESULTS_DIR = "evaluations"  # under the project storage: the per-model cache
TABLE_FILE = "evaluation/benchmarks.json"
CHART_FILE = "evaluation/benchmarks.png"
TAG_PREFIX = "pajama.eval."


def upstream(cfg: EvaluateConfig, stages: tuple[str, ...]) -> tuple[str, ...]:
    """The stages that train the models this config evaluates."""
    return tuple(kind(name).stage for name in cfg.models)


def run(cfg: EvaluateConfig, ctx: StageContext, inputs: dict[str, Artifact]) -> dict:
    models = {kind_of_stage(stage).name: artifact for stage, artifact in inputs.items()}
    task_set = harness.task_set_key(cfg.tasks, cfg.num_fewshot, cfg.limit, cfg.dtype)
    cache = {name: storage.join(ctx.storage, RESULTS_DIR, f"{harness.cache_key(a.fingerprint, task_set)}.json")
             for name, a in models.items()}
    results = {name: json.loads(storage.read_text(uri)) for name, uri in cache.items() if storage.exists(uri)}
    todo = {name: a.local(a.manifest["model_dir"]) for name, a in models.items() if name not in results}
    started = time.time()
    results.update(_evaluate(cfg, todo))
    for name in todo:
        storage.write_text(cache[name], json.dumps(results[name], indent=1))
    print(f"[pajama] evaluate: {', '.join(todo) or 'no model'} evaluated in {time.time() - started:.0f}s"
          + (f"; {', '.join(n for n in models if n not in todo)} from the cache" if len(todo) < len(models) else ""))
    rows = [{"model": name, **row} for name in models for row in results[name]]
    print(format_table(rows))
    if ctx.run_id:
        for name, artifact in models.items():
            _log_model(ctx, name, artifact, results[name])
        ctx.log_dict({"task_set": task_set, "results": rows}, "evaluation/results.json")
    return {"results": rows, "task_set": task_set,
            "models": {name: {"fingerprint": a.fingerprint, "cache": "miss" if name in todo else "hit",
                              "version": _version(a)} for name, a in models.items()}}


def _evaluate(cfg: EvaluateConfig, model_dirs: dict[str, Path]) -> dict[str, list[dict]]:
    args = (cfg.tasks, cfg.num_fewshot, cfg.limit, cfg.dtype, cfg.batch_size)
    if not cfg.num_gpus:
        return {name: harness.evaluate_model(model_dir, *args) for name, model_dir in model_dirs.items()}
    import ray

    task = ray.remote(num_gpus=cfg.num_gpus)(harness.evaluate_model)
    refs = {name: task.remote(str(model_dir), *args) for name, model_dir in model_dirs.items()}
    return dict(zip(refs, ray.get(list(refs.values()))))


def _version(artifact: Artifact) -> str:
    name = artifact.manifest.get("registered_model")
    return f"{name}/{artifact.manifest['registered_version']}" if name else ""


def metric_values(model: str, rows: list[dict]) -> dict[str, float]:
    """`<model>/<task>/<metric>` and `..._stderr` for every score with a finite value."""
    metrics = {}
    for row in rows:
        name = f"{model}/{row['task']}/{row['metric']}"
        for key, value in ((name, row["value"]), (f"{name}_stderr", row["stderr"])):
            if value is not None and math.isfinite(value):
                metrics[key] = value
    return metrics


def _log_model(ctx: StageContext, model: str, artifact: Artifact, rows: list[dict]) -> None:
    """The model's scores on the stage run (linked to its LoggedModel) and its registered version."""
    import mlflow
    from mlflow.tracking import MlflowClient

    metrics = metric_values(model, rows)
    mlflow.log_metrics(metrics, run_id=ctx.run_id, model_id=artifact.manifest.get("mlflow_model_id"))
    name, version = artifact.manifest.get("registered_model"), artifact.manifest.get("registered_version")
    if name:
        client = MlflowClient(ctx.tracking_uri, registry_uri=ctx.tracking_uri)
        for key, value in metrics.items():
            tag = TAG_PREFIX + key.split("/", 1)[1].replace("/", ".")
            client.set_model_version_tag(name, version, tag, f"{value:.6g}")
        client.set_model_version_tag(name, version, f"{TAG_PREFIX}run_id", ctx.run_id)


def benchmark_table(rows: list[dict], versions: dict[str, str], reference_name: str | None) -> list[dict]:
    """One row per model (and per published reference model): its version and, per task and
    metric, `<task>/<metric>` and `<task>/<metric>_stderr` (None where there is none)."""
    columns = list(dict.fromkeys((row["task"], row["metric"]) for row in rows))
    table = []
    for model in dict.fromkeys(row["model"] for row in rows):
        scores = {(r["task"], r["metric"]): r for r in rows if r["model"] == model}
        entry = {"model": model, "version": versions.get(model, "")}
        for task, metric in columns:
            score = scores.get((task, metric), {})
            entry[f"{task}/{metric}"], entry[f"{task}/{metric}_stderr"] = score.get("value"), score.get("stderr")
        table.append(entry)
    for label, scores in reference.SCORES.get(reference_name, {}).items():
        entry = {"model": label, "version": "published"}
        for task, metric in columns:
            entry[f"{task}/{metric}"], entry[f"{task}/{metric}_stderr"] = scores.get((task, metric)), None
        table.append(entry)
    return table


def format_table(rows: list[dict]) -> str:
    """The scores as text: one line per task and metric, one column per model (value ± stderr)."""
    models = list(dict.fromkeys(row["model"] for row in rows))
    cells = {(r["task"], r["metric"], r["model"]):
             f"{r['value']:.4g}" + ("" if r["stderr"] is None else f" ± {r['stderr']:.2g}") for r in rows}
    lines = [[""] + models] + [[f"{task}/{metric} (n={n})"] + [cells.get((task, metric, m), "") for m in models]
                               for task, metric, n in dict.fromkeys((r["task"], r["metric"], r["n"]) for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(models) + 1)]
    return "\n".join(line[0].ljust(widths[0]) + "".join(f"  {cell:>{w}}" for cell, w in zip(line[1:], widths[1:]))
                     for line in lines)


def chart(table: list[dict]):
    """One panel per task and metric, a bar per model with its stderr (references hatched)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [c for c in table[0] if "/" in c and not c.endswith("_stderr")]
    ncols = min(4, len(columns))
    nrows = math.ceil(len(columns) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.8 * nrows), squeeze=False)
    for ax, column in zip(axes.flat, columns):
        shown = [e for e in table if e[column] is not None]
        ax.bar(range(len(shown)), [e[column] for e in shown],
               yerr=[e[f"{column}_stderr"] or 0 for e in shown], capsize=3,
               color=[f"C{table.index(e)}" for e in shown],
               hatch=[("//" if e["version"] == "published" else "") for e in shown])
        ax.set_xticks(range(len(shown)), [e["model"] for e in shown], rotation=30, ha="right", fontsize=7)
        ax.set_title(column, fontsize=8)
        if column.endswith("/perplexity"):
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def report(cfg: EvaluateConfig, artifact: Artifact, dag_run_id: str) -> None:
    """The models side by side on the DAG run: the table and the chart."""
    import matplotlib.pyplot as plt
    import mlflow
    from mlflow.tracking import MlflowClient

    versions = {name: info["version"] for name, info in artifact.manifest["models"].items()}
    table = benchmark_table(artifact.manifest["results"], versions, cfg.reference)
    mlflow.log_table({column: [entry[column] for entry in table] for column in table[0]}, TABLE_FILE,
                     run_id=dag_run_id)
    fig = chart(table)
    MlflowClient().log_figure(dag_run_id, fig, CHART_FILE)
    plt.close(fig)


def evaluate_source(cfg: EvaluateConfig, source: str, tracking_uri: str, storage_uri: str) -> list[dict]:
    """`pajama evaluate --model`: one model, by registry version, run or directory, in this process."""
    from pajama.models import resolve_model_dir

    model_dir = resolve_model_dir(source, tracking_uri, storage_uri)
    rows = harness.evaluate_model(model_dir, cfg.tasks, cfg.num_fewshot, cfg.limit, cfg.dtype, cfg.batch_size)
    return [{"model": source, **row} for row in rows]
