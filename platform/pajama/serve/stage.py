"""The DAG's serve stage: deploy the trained models, answer one chat request, shut down.

`pajama run` must end, so the stage proves the app end to end (deploy on Ray Serve, one
OpenAI-style chat request over HTTP, the answer and its latency recorded in MLflow) and then
shuts it down; `pajama serve` keeps the same app up.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow

from pajama.artifacts import Artifact
from pajama.config import PajamaConfig

KIND_OF_STAGE = {"pretrain": "base", "instruct": "instruct", "chat": "chat"}


def app_args(cfg: PajamaConfig, models: dict[str, Artifact]) -> dict:
    """The Serve application's args: each trained model by its registry version (for provenance)."""
    entries = []
    for stage, artifact in models.items():
        name, version = artifact.manifest.get("registered_model"), artifact.manifest.get("registered_version")
        source = f"models:/{name}/{version}" if name else str(artifact.path / artifact.manifest["model_dir"])
        entries.append({"name": name or f"pajama-{KIND_OF_STAGE[stage]}", "source": source,
                        "kind": KIND_OF_STAGE[stage]})
    return {"models": entries, "tracking_uri": cfg.project.resolved_tracking_uri,
            "api_key_env": cfg.serve.api_key_env, "num_cpus": cfg.serve.num_cpus,
            "ingress_num_cpus": cfg.serve.ingress_num_cpus}


def run_serve_stage(cfg: PajamaConfig, upstream: dict[str, Artifact], out: Path) -> dict:
    from pajama.serve.app import deploy, probe_chat, shutdown

    args = app_args(cfg, upstream)
    chat_model = next((m["name"] for m in args["models"] if m["kind"] == "chat"), args["models"][0]["name"])
    base_url = deploy(args, cfg.serve.host, cfg.serve.port)
    try:
        answer, latency = probe_chat(base_url, chat_model, [{"role": "user", "content": cfg.serve.probe_message}],
                                     api_key=os.environ.get(cfg.serve.api_key_env), max_tokens=cfg.serve.max_tokens)
    finally:
        shutdown()
    probe = {"model": chat_model, "question": cfg.serve.probe_message, "answer": answer, "latency_s": latency}
    print(f"[pajama] serve: {chat_model} answered in {latency:.2f}s: {answer!r}")
    (out / "probe.json").write_text(json.dumps(probe, indent=2))
    (out / "app_args.json").write_text(json.dumps(args, indent=2))
    mlflow.log_metric("probe_latency_s", latency)
    mlflow.log_dict(probe, "probe.json")
    return {"app_args": args, "probe": probe}
