"""The DAG's serve stage: deploy the trained models, answer one chat request, shut down.

`pajama run` must end, so the stage proves the app end to end (deploy on Ray Serve, one
OpenAI-style chat request over HTTP, the answer and its latency recorded in MLflow) and then
shuts it down; `pajama serve` keeps the same app up. What the stage records (app_args.json, its
manifest) carries the tracking URI with its credentials redacted; only the app itself gets them.
"""

from __future__ import annotations

import json
import logging
import os

from pajama.artifacts import Artifact, StageContext
from pajama.config import ServeAppOptions, ServeConfig
from pajama.kinds import kind, kind_of_stage
from pajama.redact import redact_uri

log = logging.getLogger(__name__)


def upstream(cfg: ServeConfig, stages: tuple[str, ...]) -> tuple[str, ...]:
    """The stages that train the models this config serves."""
    return tuple(kind(name).stage for name in cfg.models)


def app_args(cfg: ServeConfig, models: dict[str, Artifact], tracking_uri: str, storage_uri: str) -> dict:
    """The Serve application's args: each trained model by its registry version (for provenance)."""
    entries = []
    for stage, artifact in models.items():
        model_kind = kind_of_stage(stage)
        name, version = artifact.manifest.get("registered_model"), artifact.manifest.get("registered_version")
        source = f"models:/{name}/{version}" if name else str(artifact.local(artifact.manifest["model_dir"]))
        entries.append({"name": name or model_kind.registered_name, "source": source, "kind": model_kind.name})
    options = cfg.model_dump(mode="json", include=set(ServeAppOptions.model_fields))
    return {"models": entries, "tracking_uri": tracking_uri, "storage_uri": storage_uri, **options}


def run(cfg: ServeConfig, ctx: StageContext, inputs: dict[str, Artifact]) -> dict:
    from pajama.serve.app import deploy, probe_chat, shutdown

    args = app_args(cfg, inputs, ctx.tracking_uri, ctx.storage)
    chat_model = next((m["name"] for m in args["models"] if m["kind"] == "chat"), args["models"][0]["name"])
    base_url = deploy(args, cfg.host, cfg.port)
    try:
        answer, latency = probe_chat(base_url, chat_model, [{"role": "user", "content": cfg.probe_message}],
                                     api_key=os.environ.get(cfg.api_key_env), max_tokens=cfg.max_tokens)
    finally:
        shutdown()
    probe = {"model": chat_model, "question": cfg.probe_message, "answer": answer, "latency_s": latency}
    log.info("serve: %s answered in %.2fs: %r", chat_model, latency, answer)
    recorded = recorded_args(args)
    (ctx.out / "probe.json").write_text(json.dumps(probe, indent=2))
    (ctx.out / "app_args.json").write_text(json.dumps(recorded, indent=2))
    ctx.log_metrics({"probe/latency_s": latency})
    ctx.log_dict(probe, "probe.json")
    return {"app_args": recorded, "probe": probe}


def recorded_args(args: dict) -> dict:
    """The app args as artifacts and logs may show them: URIs without credentials."""
    models = [{**m, "source": redact_uri(m["source"])} for m in args["models"]]
    tracking_uri = args.get("tracking_uri")
    storage_uri = args.get("storage_uri")
    return {**args, "models": models, "tracking_uri": tracking_uri and redact_uri(tracking_uri),
            "storage_uri": storage_uri and redact_uri(storage_uri)}
