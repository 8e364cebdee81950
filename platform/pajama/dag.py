"""The DAG: references -> signals -> data -> pretrain -> {instruct, chat} -> evaluate, serve, with
fingerprint-based reuse.

Each stage's fingerprint covers its own config sub-tree, the project seed and its upstream
fingerprints, so an unchanged stage is reused (and says so) and a change re-runs that stage and
what is downstream of it, nothing else. Every stage, run or reused, is a child run of one MLflow
DAG run. Ray starts only when a stage has work to do, so a fully reused DAG takes seconds.
A stage may also `report` on every DAG run that has it, run or reused (the evaluate stage's
benchmark table). Once base, instruct and chat are all at hand, the DAG run also gets their
side-by-side comparison on a small generation check set (`pajama.compare`) and the lineage.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import time
from dataclasses import dataclass

import mlflow

from pajama import hub, kinds, lineage, storage, tracking
from pajama.artifacts import Artifact, ArtifactStore, StageContext, Staging, fingerprint
from pajama.config import REFERENCE_STAGE_FIELDS, SIGNAL_STAGE_FIELDS, PajamaConfig, fingerprinted_fields
from pajama.redact import redact_uri

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One row of the DAG. The config section is `PajamaConfig.<section>` (default: the stage's name),
    of which the stage reads and fingerprints `fields` (default: all) less `omit`: two stages can
    share a section, as the signals and data stages share `data`. `run` and `select_upstream` are
    "module:function" names, imported when needed (so `pajama config` does not import torch)."""

    name: str
    upstream: tuple[str, ...]
    run: str  # run(section, ctx: StageContext, inputs: dict[stage, Artifact]) -> manifest
    # (section, upstream) -> the upstream stages this config reads (e.g. none for a named base model)
    select_upstream: str | None = None
    # (section, artifact, DAG run id) -> None: what the stage shows on every DAG run that has it, run or reused
    report: str | None = None
    # Whether a re-run picks up the phases an interrupted attempt finished (the data stage's).
    resumes: bool = False
    # section -> what the stage reads beyond its config that its output depends on (the contents of
    # the filter recipes the config names), added to its fingerprint
    fingerprinted_inputs: str | None = None
    section: str | None = None
    fields: tuple[str, ...] | None = None
    omit: tuple[str, ...] = ()

    @property
    def kind(self) -> kinds.ModelKind | None:
        """The model kind this stage trains and registers, if any."""
        return kinds.kind_of_stage(self.name)


TABLE = (
    # Signals are computed once per corpus; filters, dedup and packing can be re-tuned on top of them.
    Stage("references", (), "pajama.data.references:run", section="data", fields=REFERENCE_STAGE_FIELDS),
    Stage("signals", ("references",), "pajama.data.signal_stage:run", resumes=True, section="data",
          fields=SIGNAL_STAGE_FIELDS),
    Stage("data", ("signals",), "pajama.data.stage:run", resumes=True,
          fingerprinted_inputs="pajama.data.filters:recipe_rules", omit=SIGNAL_STAGE_FIELDS),
    Stage("pretrain", ("data",), "pajama.train.pretrain:run"),
    Stage("instruct", ("pretrain",), "pajama.train.sft:run", "pajama.train.sft:upstream"),
    Stage("chat", ("pretrain",), "pajama.train.sft:run", "pajama.train.sft:upstream"),
    Stage("evaluate", ("pretrain", "instruct", "chat"), "pajama.evaluate.stage:run", "pajama.evaluate.stage:upstream",
          "pajama.evaluate.stage:report"),
    Stage("serve", ("pretrain", "instruct", "chat"), "pajama.serve.stage:run", "pajama.serve.stage:upstream"),
)
BY_NAME = {stage.name: stage for stage in TABLE}
STAGES = list(BY_NAME)


def _function(reference: str):
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


def required_stages(targets: list[str]) -> list[str]:
    """The targets and everything upstream of them, in DAG order."""
    needed: set[str] = set()

    def visit(stage: str) -> None:
        if stage not in BY_NAME:
            raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
        if stage not in needed:
            needed.add(stage)
            for up in BY_NAME[stage].upstream:
                visit(up)

    for target in targets:
        visit(target)
    return [s for s in STAGES if s in needed]


def section_of(cfg: PajamaConfig, stage: str):
    """The config section `stage` runs with."""
    return getattr(cfg, BY_NAME[stage].section or stage)


def stage_config(cfg: PajamaConfig, stage: str) -> dict:
    section, row = section_of(cfg, stage), BY_NAME[stage]
    fields = fingerprinted_fields(section)
    if row.fields is not None:
        fields = {name: value for name, value in fields.items() if name in row.fields}
    fields = {name: value for name, value in fields.items() if name not in row.omit}
    config = {"stage": fields, "seed": cfg.project.seed}
    if row.fingerprinted_inputs:
        config["inputs"] = _function(row.fingerprinted_inputs)(section)
    return config


def upstream_of(cfg: PajamaConfig, stage: str) -> tuple[str, ...]:
    """The upstream stages `stage` reads under this config (a subset of its table entry's)."""
    row = BY_NAME[stage]
    if row.select_upstream is None:
        return row.upstream
    return _function(row.select_upstream)(section_of(cfg, stage), row.upstream)


class _RayOnDemand:
    """Start (or join) Ray the first time a stage needs it."""

    def __init__(self, cfg: PajamaConfig):
        self.cfg, self.started = cfg, False

    def __call__(self) -> None:
        if not self.started:
            from pajama.cluster import init_ray

            init_ray(self.cfg.project.ray_address)
            self.started = True


@dataclass(frozen=True)
class PlannedStage:
    stage: str
    config: dict  # what the fingerprint covers: the section's fingerprinted fields and the seed
    fingerprint: str
    upstream: tuple[str, ...]
    existing: Artifact | None  # the finished artifact a run would reuse


def plan(cfg: PajamaConfig, targets: list[str] | None = None) -> list[PlannedStage]:
    """What a run of `targets` would do: each stage's fingerprint and whether it is up to date.
    Reads only configs and manifests (no Ray, no MLflow); stops first, naming it, if the storage
    cannot be used."""
    storage.check_root(cfg.project.storage_uri)
    store = ArtifactStore.of(cfg.project.storage_uri)
    fingerprints: dict[str, str] = {}
    planned = []
    for stage in required_stages(targets or STAGES):
        upstream = upstream_of(cfg, stage)
        config = stage_config(cfg, stage)
        fp = fingerprint(stage, config, {up: fingerprints[up] for up in upstream})
        fingerprints[stage] = fp
        planned.append(PlannedStage(stage, config, fp, upstream, store.find(stage, fp)))
    return planned


def run_dag(cfg: PajamaConfig, recipe: str, targets: list[str] | None = None) -> dict[str, Artifact]:
    """Run (or reuse) the target stages and their upstream; returns each stage's artifact."""
    planned = plan(cfg, targets)
    # Remote datasets the stages to run read must be reachable before Ray starts (pajama.hub).
    hub.preflight(cfg, [step.stage for step in planned if step.existing is None])
    store = ArtifactStore.of(cfg.project.storage_uri)
    tracking.setup(cfg)
    ensure_ray = _RayOnDemand(cfg)
    done: dict[str, Artifact] = {}
    reused: list[str] = []
    with tracking.dag_run(cfg, recipe, [p.stage for p in planned]) as parent:
        log.info("DAG run %s, %s (storage %s, MLflow %s)", parent.info.run_name, parent.info.run_id,
                 redact_uri(cfg.project.storage_uri), redact_uri(cfg.project.resolved_tracking_uri))
        log.info("plan: %s", ", ".join(f"{p.stage} ({'reuse' if p.existing else 'run'})" for p in planned))
        for step in planned:
            stage, fp = step.stage, step.fingerprint
            upstream = {up: done[up] for up in step.upstream}
            config = step.config
            # Looked up again: a concurrent run may have finished the stage since the plan.
            existing = store.find(stage, fp)
            if existing is not None:
                reused.append(stage)
                tracking.record_reuse(stage, existing, upstream)
                log.info("%s: up to date, reusing %s (run %s)", stage, fp, existing.run_id)
                done[stage] = existing
                continue
            ensure_ray()
            log.info("%s: running (fingerprint %s)", stage, fp)
            started = time.time()
            row = BY_NAME[stage]
            staging = store.begin(stage, fp, resume=row.resumes)
            # A failed attempt leaves nothing that is taken for finished (its MLflow run is marked
            # FAILED); a resumable stage keeps its finished phases for the next attempt.
            with _abort_on_error(store, staging, keep=row.resumes), \
                    tracking.stage_run(stage, config, fp, upstream) as run:
                ctx = StageContext(out=staging.out, out_uri=staging.out_uri, storage=cfg.project.storage_uri,
                                   fingerprint=fp, seed=cfg.project.seed,
                                   tracking_uri=cfg.project.resolved_tracking_uri, run_id=run.info.run_id)
                manifest = _function(row.run)(section_of(cfg, stage), ctx, upstream)
                manifest.update(mlflow_run_id=run.info.run_id, duration_s=time.time() - started)
                if row.kind:
                    tags = {f"{tracking.TAG_UPSTREAM}{up}": a.run_id or "" for up, a in upstream.items()}
                    tags.update({f"pajama.fingerprint.{up}": a.fingerprint for up, a in upstream.items()})
                    tags["pajama.data_fingerprint"] = _data_fingerprint(upstream)
                    manifest.update(tracking.log_hf_model(stage, row.kind, staging.out / manifest["model_dir"], fp, tags))
                artifact = store.commit(staging, config, {u: a.fingerprint for u, a in upstream.items()}, manifest)
                mlflow.set_tag(tracking.TAG_ARTIFACT, artifact.uri)
            log.info("%s: done in %.0fs -> %s", stage, time.time() - started, artifact.uri)
            done[stage] = artifact
        for stage, artifact in done.items():
            if BY_NAME[stage].report:
                _function(BY_NAME[stage].report)(section_of(cfg, stage), artifact, parent.info.run_id)
        tracking.describe_dag_run(recipe, [s for s in done if s not in reused], reused)
        if cfg.project.promote_to and targets is None:
            promoted = tracking.dag_run_versions(parent.info.run_id)
            tracking.promote(promoted, cfg.project.promote_to)
            log.info("promoted %s to @%s", ", ".join(f"{n}/{v}" for n, v in promoted.items()), cfg.project.promote_to)
        if all(kind.stage in done for kind in kinds.KINDS.values()):
            _log_comparison(cfg, done, parent.info.run_id)
        lineage.log_to_parent(parent.info.run_id)
    return done


def _log_comparison(cfg: PajamaConfig, done: dict[str, Artifact], parent_run_id: str) -> None:
    """Base, instruct and chat on the generation check set, logged to the DAG run (pajama.compare)."""
    from pajama import compare

    artifacts = {name: done[kind.stage] for name, kind in kinds.KINDS.items()}
    models = {kind: (a.local(a.manifest["model_dir"]), a.fingerprint) for kind, a in artifacts.items()}
    cache_dir = storage.join(cfg.project.storage_uri, "comparisons")
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
    log.info("compare: check-set response loss %s (%s on the DAG run)", losses, compare.TABLE_FILE)


@contextlib.contextmanager
def _abort_on_error(store: ArtifactStore, staging: Staging, keep: bool):
    try:
        yield
    except BaseException:
        store.abort(staging, keep=keep)
        raise


def _data_fingerprint(upstream: dict[str, Artifact]) -> str:
    """The data artifact a model descends from: an input, or an input of its inputs (the base model)."""
    if "data" in upstream:
        return upstream["data"].fingerprint
    return next((a.manifest["inputs"]["data"] for a in upstream.values() if "data" in a.manifest["inputs"]), "")
