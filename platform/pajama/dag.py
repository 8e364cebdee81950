"""The DAG: data -> pretrain -> {instruct, chat} -> serve, with fingerprint-based reuse.

Each stage's fingerprint covers its own config sub-tree, the project seed and its upstream
fingerprints, so an unchanged stage is reused (and says so) and a change re-runs that stage and
what is downstream of it, nothing else. Every stage, run or reused, is a child run of one MLflow
DAG run. Ray starts only when a stage has work to do, so a fully reused DAG takes seconds.
Once base, instruct and chat are all at hand, the DAG run also gets their side-by-side
comparison on a small generation check set (`pajama.compare`) and the lineage.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

import mlflow

from pajama import lineage, tracking
from pajama.artifacts import Artifact, ArtifactStore, fingerprint
from pajama.config import PajamaConfig, fingerprinted_fields


UPSTREAM = {
    "data": [],
    "pretrain": ["data"],
    "instruct": ["pretrain"],
    "chat": ["pretrain"],
    "serve": ["pretrain", "instruct", "chat"],
}
STAGES = list(UPSTREAM)
MODEL_STAGE_OF = {"base": "pretrain", "instruct": "instruct", "chat": "chat"}


def required_stages(targets: list[str]) -> list[str]:
    """The targets and everything upstream of them, in DAG order."""
    needed: set[str] = set()

    def visit(stage: str) -> None:
        if stage not in UPSTREAM:
            raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
        if stage not in needed:
            needed.add(stage)
            for up in UPSTREAM[stage]:
                visit(up)

    for target in targets:
        visit(target)
    return [s for s in STAGES if s in needed]


def stage_config(cfg: PajamaConfig, stage: str) -> dict:
    return {"stage": fingerprinted_fields(getattr(cfg, stage)), "seed": cfg.project.seed}


def upstream_of(cfg: PajamaConfig, stage: str) -> list[str]:
    if stage == "serve":
        return [MODEL_STAGE_OF[m] for m in cfg.serve.models]
    if stage in ("instruct", "chat") and getattr(cfg, stage).base_model:
        return []  # a base model chosen by path, run or registry URI, not by this DAG
    return UPSTREAM[stage]


class _RayOnDemand:
    """Start (or join) Ray the first time a stage needs it."""

    def __init__(self, cfg: PajamaConfig):
        self.cfg, self.started = cfg, False

    def __call__(self) -> None:
        if not self.started:
            from pajama.cluster import init_ray

            init_ray(self.cfg.project.ray_address)
            self.started = True


def _execute(stage: str, cfg: PajamaConfig, upstream: dict[str, Artifact], out: Path, fp: str,
             run_id: str) -> dict:
    storage = cfg.project.storage_path
    train_tracking = {"uri": cfg.project.resolved_tracking_uri, "run_id": run_id}
    seed = cfg.project.seed
    if stage == "data":
        from pajama.data.stage import run_data_stage

        manifest = run_data_stage(cfg.data, out, seed)
        _log_data_metrics(manifest["stats"])
        mlflow.log_artifact(str(out / "report.md"))
        mlflow.log_artifact(str(out / "report.png"))
        return manifest
    if stage == "pretrain":
        from pajama.train.pretrain import run_pretrain_stage

        return run_pretrain_stage(cfg.pretrain, upstream["data"], out, storage, fp, seed, train_tracking)
    if stage in ("instruct", "chat"):
        from pajama.models import resolve_model_dir
        from pajama.train.sft import run_sft_stage

        sft = getattr(cfg, stage)
        base = resolve_model_dir(sft.base_model, cfg.project.resolved_tracking_uri, storage / "models") \
            if sft.base_model else \
            upstream["pretrain"].path / upstream["pretrain"].manifest["model_dir"]
        manifest = run_sft_stage(sft, base, out, storage, fp, seed, train_tracking)
        manifest["base_model"] = sft.base_model or f"runs:/{upstream['pretrain'].run_id}"
        return manifest
    if stage == "serve":
        from pajama.serve.stage import run_serve_stage

        return run_serve_stage(cfg, upstream, out)
    raise ValueError(stage)


def _log_data_metrics(stats: dict) -> None:
    metrics = {}
    for name, e in stats["slices"].items():
        metrics[f"documents_in.{name}"] = e["documents_in"]
        metrics[f"documents_out.{name}"] = e["documents_out"]
        metrics[f"exact_duplicates.{name}"] = e["exact_duplicates"]
        metrics[f"near_duplicates.{name}"] = e["near_duplicates"]
        metrics[f"bad_input.{name}"] = e["bad_input"]
        metrics[f"train_tokens.{name}"] = e.get("train_tokens", 0)
        for rule, n in e["dropped"].items():
            metrics[f"dropped.{rule}.{name}"] = n
    totals = {k: sum(e[k] for e in stats["slices"].values())
              for k in ("documents_in", "documents_out", "exact_duplicates", "near_duplicates", "bad_input")}
    metrics.update({f"total.{k}": v for k, v in totals.items()})
    metrics["bad_input_without_slice"] = stats["bad_input_without_slice"]
    metrics["total.documents_dropped"] = sum(sum(e["dropped"].values()) for e in stats["slices"].values())
    metrics["train_sequences"] = stats["train_sequences"]
    metrics["eval_sequences"] = stats["eval_sequences"]
    mlflow.log_metrics(metrics)


def run_dag(cfg: PajamaConfig, recipe: str, targets: list[str] | None = None) -> dict[str, Artifact]:
    """Run (or reuse) the target stages and their upstream; returns each stage's artifact."""
    stages = required_stages(targets or STAGES)
    store = ArtifactStore(cfg.project.storage_path / "artifacts")
    tracking.setup(cfg)
    ensure_ray = _RayOnDemand(cfg)
    done: dict[str, Artifact] = {}
    with tracking.dag_run(cfg, recipe, stages) as parent:
        print(f"[pajama] DAG run {parent.info.run_id} (MLflow {cfg.project.resolved_tracking_uri})")
        for stage in stages:
            upstream = {up: done[up] for up in upstream_of(cfg, stage)}
            config = stage_config(cfg, stage)
            fp = fingerprint(stage, config, {up: a.fingerprint for up, a in upstream.items()})
            existing = store.find(stage, fp)
            if existing is not None:
                tracking.record_reuse(stage, existing, upstream)
                print(f"[pajama] {stage}: up to date, reusing {fp} (run {existing.run_id})")
                done[stage] = existing
                continue
            ensure_ray()
            print(f"[pajama] {stage}: running (fingerprint {fp})")
            started = time.time()
            staging = store.staging_dir(stage, fp)
            # A failed attempt leaves no partial artifact behind (its MLflow run is marked FAILED).
            with _discard_on_error(staging), tracking.stage_run(stage, config, fp, upstream) as run:
                manifest = _execute(stage, cfg, upstream, staging, fp, run.info.run_id)
                manifest.update(mlflow_run_id=run.info.run_id, duration_s=time.time() - started)
                if stage in tracking.REGISTERED_NAMES:
                    tags = {f"{tracking.TAG_UPSTREAM}{up}": a.run_id or "" for up, a in upstream.items()}
                    tags.update({f"pajama.fingerprint.{up}": a.fingerprint for up, a in upstream.items()})
                    tags["pajama.data_fingerprint"] = _data_fingerprint(stage, upstream)
                    manifest.update(tracking.log_hf_model(stage, staging / manifest["model_dir"], fp, tags))
                artifact = store.commit(staging, stage, fp, config, {u: a.fingerprint for u, a in upstream.items()},
                                        manifest)
                mlflow.set_tag(tracking.TAG_ARTIFACT, str(artifact.path))
            print(f"[pajama] {stage}: done in {time.time() - started:.0f}s -> {artifact.path}")
            done[stage] = artifact
        if all(stage in done for stage in MODEL_STAGE_OF.values()):
            _log_comparison(cfg, done, parent.info.run_id)
        lineage.log_to_parent(parent.info.run_id)
    return done


def _log_comparison(cfg: PajamaConfig, done: dict[str, Artifact], parent_run_id: str) -> None:
    """Base, instruct and chat on the generation check set, logged to the DAG run (pajama.compare)."""
    from pajama import compare

    artifacts = {kind: done[stage] for kind, stage in MODEL_STAGE_OF.items()}
    models = {kind: (a.path / a.manifest["model_dir"], a.fingerprint) for kind, a in artifacts.items()}
    cache_dir = cfg.project.storage_path / "comparisons"
    if cfg.pretrain.scaling.use_gpu:
        # A 3B/7B model on a GPU worker of the cluster, not on the driver (often CPU-only);
        # the storage is shared, so the cache is too.
        import ray

        from pajama.cluster import init_ray

        init_ray(cfg.project.ray_address)
        rows = ray.get(ray.remote(num_gpus=1)(compare.cached_compare).remote(models, cache_dir))
    else:
        rows = compare.cached_compare(models, cache_dir)
    versions = {kind: f"{a.manifest['registered_model']}/{a.manifest['registered_version']}"
                for kind, a in artifacts.items() if a.manifest.get("registered_model")}
    compare.log_to_parent(parent_run_id, rows, versions)
    losses = ", ".join(f"{kind} {loss:.3f}" for kind, loss in compare.mean_losses(rows).items())
    print(f"[pajama] compare: check-set response loss {losses} ({compare.TABLE_FILE} on the DAG run)")


@contextlib.contextmanager
def _discard_on_error(staging: Path):
    try:
        yield
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _data_fingerprint(stage: str, upstream: dict[str, Artifact]) -> str:
    """The data artifact a model descends from (directly for pretrain, through the base model)."""
    if "data" in upstream:
        return upstream["data"].fingerprint
    base = upstream.get("pretrain")
    return base.manifest["inputs"].get("data", "") if base else ""
