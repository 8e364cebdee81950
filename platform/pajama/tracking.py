"""MLflow tracking: one parent run per DAG run, one child run per stage, models in the registry.

The default store is SQLite under the project's storage directory (so the registry works with no
server); `MLFLOW_TRACKING_URI` points a team at `mlflow server`. Each stage run carries its
resolved config as params, its fingerprint and upstream runs as tags, and its inputs as MLflow
dataset inputs (the upstream artifacts) or model inputs (the upstream logged model), so the DAG
can be browsed in the MLflow UI and rebuilt by `pajama lineage`.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from pathlib import Path
from typing import Iterator

import mlflow
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import LoggedModelInput
from mlflow.tracking import MlflowClient

from pajama import storage
from pajama.artifacts import Artifact, dataset_source
from pajama.config import PajamaConfig
from pajama.kinds import ModelKind
from pajama.redact import redact_uri


TAG_STAGE = "pajama.stage"
TAG_FINGERPRINT = "pajama.fingerprint"
TAG_ARTIFACT = "pajama.artifact"
TAG_REUSED_FROM = "pajama.reused_from_run"
TAG_UPSTREAM = "pajama.upstream."  # + stage name -> the upstream stage's run id
TAG_DAG = "pajama.dag"
TAG_MODEL_ID = "pajama.model_id"
PARENT_TAG = "mlflow.parentRunId"
CANDIDATE_ALIAS = "candidate"


def setup(cfg: PajamaConfig) -> str:
    """Point MLflow at the project's store and make sure the experiment exists."""
    uri = cfg.project.resolved_tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if mlflow.get_experiment_by_name(cfg.project.experiment) is None:
        # A local store keeps artifacts beside the database instead of in ./mlruns of the cwd.
        location = None
        if uri.startswith("sqlite:///"):
            root = cfg.project.storage_uri
            location = storage.join(root, "mlartifacts") if not storage.is_local(root) else \
                Path(root, "mlartifacts").as_uri()
        mlflow.create_experiment(cfg.project.experiment, artifact_location=location)
    mlflow.set_experiment(cfg.project.experiment)
    return uri


def flatten(config: dict, prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value, default=str)
    return flat


def dag_run_name(recipe: str) -> str:
    """`<recipe>-<UTC date and time>-<short id>`: runs of one recipe told apart in the UI."""
    stem = Path(recipe).stem if recipe.endswith((".yaml", ".yml")) else recipe
    return f"{stem}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:4]}"


@contextlib.contextmanager
def dag_run(cfg: PajamaConfig, recipe: str, stages: list[str]) -> Iterator[mlflow.ActiveRun]:
    with mlflow.start_run(run_name=dag_run_name(recipe)) as run:
        mlflow.set_tags({TAG_DAG: "true", "pajama.recipe": recipe, "pajama.project": cfg.project.name,
                         "pajama.stages": ",".join(stages)})
        mlflow.log_params({"recipe": recipe, "storage": redact_uri(cfg.project.storage_uri)})
        yield run


def describe_dag_run(recipe: str, ran: list[str], reused: list[str]) -> None:
    """The run's description in the MLflow UI: what ran and what was reused."""
    lines = [f"Pajama DAG, recipe `{recipe}`.", "",
             f"- ran: {', '.join(ran) or 'nothing (everything was up to date)'}",
             f"- reused: {', '.join(reused) or 'nothing'}"]
    mlflow.set_tag("mlflow.note.content", "\n".join(lines))


def _log_upstream_inputs(upstream: dict[str, Artifact]) -> None:
    datasets, contexts, tags, models = [], [], [], []
    for stage, artifact in upstream.items():
        mlflow.set_tag(f"{TAG_UPSTREAM}{stage}", artifact.run_id or "")
        model_id = artifact.manifest.get("mlflow_model_id")
        if model_id:
            models.append(LoggedModelInput(model_id))
        source = dataset_source(artifact.uri)
        datasets.append(MetaDataset(source, name=f"{stage}:{artifact.fingerprint}", digest=artifact.fingerprint[:16]))
        contexts.append(stage)
        tags.append({"pajama.upstream_run_id": artifact.run_id or "", "pajama.upstream_stage": stage})
    if datasets:
        mlflow.log_inputs(datasets=datasets, contexts=contexts, tags_list=tags)
    # log_inputs(models=...) is Databricks-only; log_input(model=...) works on every store.
    for model in models:
        mlflow.log_input(model=model)


@contextlib.contextmanager
def stage_run(stage: str, config: dict, fp: str, upstream: dict[str, Artifact]) -> Iterator[mlflow.ActiveRun]:
    """A child run of the active DAG run for one stage that is about to execute."""
    # System metrics (CPU, memory, GPU of the node running the stage) beside the stage's own.
    with mlflow.start_run(run_name=stage, nested=True, log_system_metrics=True) as run:
        mlflow.set_tags({TAG_STAGE: stage, TAG_FINGERPRINT: fp})
        params = flatten(config)
        items = list(params.items())
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            mlflow.log_params(dict(items[i : i + 100]))
        _log_upstream_inputs(upstream)
        yield run


def record_reuse(stage: str, artifact: Artifact, upstream: dict[str, Artifact]) -> str:
    """A child run that says this DAG run reused a finished stage (and which run produced it)."""
    with mlflow.start_run(run_name=stage, nested=True) as run:
        mlflow.set_tags({TAG_STAGE: stage, TAG_FINGERPRINT: artifact.fingerprint,
                         TAG_ARTIFACT: artifact.uri, TAG_REUSED_FROM: artifact.run_id or ""})
        for up_stage, up in upstream.items():
            mlflow.set_tag(f"{TAG_UPSTREAM}{up_stage}", up.run_id or "")
        return run.info.run_id


def log_hf_model(stage: str, kind: ModelKind, hf_dir: Path, fp: str, lineage_tags: dict[str, str]) -> dict[str, str]:
    """Log an exported Hugging Face directory with the transformers flavour and register it under
    the kind's name, as the OpenAI-style task that fits it (chat or completions) with an example
    request in its own prompt format.

    Returns the logged model id and the registered version, which go into the stage manifest.
    """
    name = kind.registered_name
    question = "What does the json module do?"
    if kind.style.name == "chat":
        task, example = "llm/v1/chat", {"messages": [{"role": "user", "content": question}], "max_tokens": 64}
    else:
        task, example = "llm/v1/completions", {"prompt": kind.style.render_prompt(question), "max_tokens": 64}
    info = mlflow.transformers.log_model(
        transformers_model=str(hf_dir),
        name="model",
        task=task,
        input_example=example,
        registered_model_name=name,
        # Inference of requirements imports torchvision, which a CPU install lacks; state them.
        pip_requirements=["torch", "transformers>=4.57,<4.58", "tokenizers", "safetensors", "accelerate"],
        tags={TAG_FINGERPRINT: fp, TAG_STAGE: stage},
    )
    client = MlflowClient()
    version = str(info.registered_model_version)
    for key, value in {TAG_FINGERPRINT: fp, TAG_STAGE: stage, **lineage_tags}.items():
        client.set_model_version_tag(name, version, key, value)
    run = mlflow.active_run()
    client.update_model_version(name, version, description=(
        f"Pajama {kind.name} model ({kind.style.name} prompt format), trained by the `{stage}` stage "
        f"(fingerprint {fp}) in run {run.info.run_id}; data {lineage_tags.get('pajama.data_fingerprint', '?')}."))
    # The newest version of every kind is the candidate; `pajama promote` moves `production`.
    client.set_registered_model_alias(name, CANDIDATE_ALIAS, version)
    mlflow.set_tag(TAG_MODEL_ID, info.model_id)
    return {"mlflow_model_id": info.model_id, "registered_model": name, "registered_version": version}


def latest_dag_run(experiment: str, covering: tuple[str, ...] = ()) -> str:
    """The newest DAG run (that ran or reused every stage in `covering`)."""
    runs = mlflow.search_runs(experiment_names=[experiment], filter_string=f"tags.`{TAG_DAG}` = 'true'",
                              order_by=["attributes.start_time DESC"], output_format="list")
    for run in runs:
        if set(covering) <= set(run.data.tags.get("pajama.stages", "").split(",")):
            return run.info.run_id
    what = f"that ran {', '.join(covering)}" if covering else "in MLflow experiment " + repr(experiment)
    raise LookupError(f"no DAG run {what}; run `pajama run` first")


def dag_run_versions(parent_run_id: str) -> dict[str, str]:
    """The registered versions a DAG run trained or reused, by registered name: {name: version}."""
    from pajama.kinds import kind_of_stage

    client = MlflowClient()
    versions = {}
    for child in child_runs(parent_run_id):
        kind = kind_of_stage(child.data.tags.get(TAG_STAGE, ""))
        if kind is None:
            continue
        trained_by = child.data.tags.get(TAG_REUSED_FROM) or child.info.run_id
        found = [v for v in client.search_model_versions(f"run_id = '{trained_by}'") if v.name == kind.registered_name]
        if found:
            versions[kind.registered_name] = max(found, key=lambda v: int(v.version)).version
    return versions


def promote(versions: dict[str, str], alias: str) -> None:
    """Point `alias` (e.g. production) at each {registered name: version}."""
    client = MlflowClient()
    for name, version in versions.items():
        client.set_registered_model_alias(name, alias, version)


def child_runs(parent_run_id: str) -> list[mlflow.entities.Run]:
    parent = mlflow.get_run(parent_run_id)
    return mlflow.search_runs(experiment_ids=[parent.info.experiment_id],
                              filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                              order_by=["attributes.start_time ASC"], output_format="list")


