"""The Serve app's arguments (YAML and `serve run` CLI forms) and its summary log line, without Ray."""

import json
import logging
from pathlib import Path

import pytest
import yaml
from pajama.serve.app import build_app
from pajama.serve.ingress import Summary
from pajama.serve.options import REPLICA_ENV, ServeArgs, deployment_options
from ray.serve.schema import ServeDeploySchema

REPO = Path(__file__).resolve().parents[1]
SERVE_YAML = REPO / "pipelines" / "serve.yaml"
# The gpu overlay's serveConfigV2: pipelines/serve.yaml with engine vllm (tests/test_k8s.py).
GPU_SERVE_YAML = REPO / "k8s" / "overlays" / "gpu" / "serve-config.yaml"
CHAT = {"name": "chat", "source": "models:/pajama-chat@production", "kind": "chat"}


@pytest.mark.parametrize("path", [SERVE_YAML, GPU_SERVE_YAML], ids=["pipelines", "gpu-overlay"])
def test_serve_yaml_is_a_valid_serve_config_and_builds(path):
    config = yaml.safe_load(path.read_text())
    app_config = ServeDeploySchema.model_validate(config).applications[0]
    assert app_config.import_path == "pajama.serve.app:build_app"
    # Unset: the RayService listens on the pod's interfaces (k8s/ tests pin this); `pajama serve` binds 127.0.0.1.
    assert "host" not in config["http_options"]
    args = config["applications"][0]["args"]
    assert build_app(args) is not None  # builds without deploying (sources resolve in the replicas)
    parsed = ServeArgs.model_validate(args)
    by_name = {spec.name: parsed.replica_options(spec) for spec in parsed.models}
    assert by_name["pajama-chat"].autoscaling_config["max_replicas"] == 4
    base = deployment_options("model-pajama-base", by_name["pajama-base"])
    assert base["num_replicas"] == 1 and "autoscaling_config" not in base
    assert base["ray_actor_options"]["num_gpus"] in (0, 1)  # "auto"
    assert base["max_ongoing_requests"] == 4 * 16


def test_cli_arguments_arrive_as_strings():
    # serve run pajama.serve.app:build_app models='[...]' num_replicas=2
    parsed = ServeArgs.model_validate({"models": json.dumps([CHAT]), "num_replicas": "2", "num_gpus": "0"})
    assert parsed.models[0].kind == "chat" and parsed.num_replicas == 2 and parsed.num_gpus == 0
    options = deployment_options("model-chat", parsed.replica_options(parsed.models[0]))
    assert options["num_replicas"] == 2 and options["ray_actor_options"] == {
        "num_cpus": 1.0, "num_gpus": 0, "runtime_env": {"env_vars": REPLICA_ENV}}


@pytest.mark.parametrize(
    "args,message",
    [
        ({"models": "not json"}, "JSON list"),
        ({"models": []}, "at least 1"),
        ({"models": [CHAT, CHAT]}, "unique"),
        ({"models": [{**CHAT, "kind": "robot"}]}, "kind"),
        ({"models": [CHAT], "max_batch_size": 0}, "max_batch_size"),
        ({"models": [CHAT], "replicas": 2}, "replicas"),
        ({"models": [{**CHAT, "replica": {"num_gpu": 1}}]}, "num_gpu"),
    ],
)
def test_bad_arguments_are_refused_with_the_field_named(args, message):
    with pytest.raises(ValueError, match=f"(?s)invalid pajama serve args.*{message}"):
        build_app(args)


def test_vllm_without_vllm_or_gpu_falls_back_to_hf(caplog):
    caplog.set_level(logging.WARNING, logger="ray.serve")
    logging.getLogger("ray.serve").addHandler(caplog.handler)
    try:
        app = build_app({"models": [CHAT], "engine": "vllm", "num_gpus": 0})
    finally:
        logging.getLogger("ray.serve").removeHandler(caplog.handler)
    assert app is not None
    assert any("HF engine instead" in record.getMessage() for record in caplog.records)


def test_vllm_when_every_model_asks_for_gpus_before_the_cluster_has_them(monkeypatch):
    """GPU nodes that autoscale from zero are not in the cluster when the app is built: an explicit
    num_gpus still selects vLLM (its replicas bring the GPU nodes up); auto needs a GPU now."""
    import importlib.util

    from pajama.serve import app

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "vllm" else find_spec(name))
    monkeypatch.setattr(app, "cluster_has_gpu", lambda: False)
    gpu_overlay = yaml.safe_load(GPU_SERVE_YAML.read_text())["applications"][0]["args"]
    assert app._vllm_usable(app.parse_args(gpu_overlay))
    assert not app._vllm_usable(app.parse_args({**gpu_overlay, "num_gpus": "auto"}))
    some_on_cpu = [*gpu_overlay["models"][:-1], {**gpu_overlay["models"][-1], "replica": {"num_gpus": 0}}]
    assert not app._vllm_usable(app.parse_args({**gpu_overlay, "models": some_on_cpu}))
    monkeypatch.setattr(app, "cluster_has_gpu", lambda: True)
    assert app._vllm_usable(app.parse_args({**gpu_overlay, "num_gpus": "auto"}))


@pytest.mark.parametrize(
    "path,override", [(SERVE_YAML, {"engine": "vllm"}), (GPU_SERVE_YAML, {})], ids=["pipelines", "gpu-overlay"]
)
def test_vllm_llm_configs_build_from_the_serve_config(tmp_path, path, override):
    """engine: vllm turns the serve config's models (pipelines/serve.yaml, and the gpu overlay's copy,
    which sets it) into Ray Serve LLM configs with the same replica options (the LLMServer
    deployments themselves need vLLM, which CI lacks)."""
    from pajama.models import ResolvedModel
    from pajama.serve.vllm_backend import llm_config

    args = {**yaml.safe_load(path.read_text())["applications"][0]["args"], **override}
    parsed = ServeArgs.model_validate(args)
    assert parsed.engine == "vllm"
    resolved = ResolvedModel(tmp_path / "weights", tmp_path / "tokenizer", "pajama-chat/3", "run-1")
    configs = {spec.name: llm_config(spec.name, resolved, parsed.replica_options(spec)) for spec in parsed.models}
    assert sorted(configs) == ["pajama-base", "pajama-chat", "pajama-instruct"]
    chat = configs["pajama-chat"]
    assert chat.model_id == "pajama-chat"
    assert chat.model_loading_config.model_source == str(tmp_path / "weights")
    assert chat.engine_kwargs == {"tokenizer": str(tmp_path / "tokenizer"), "max_num_seqs": 16, "trust_remote_code": False}
    assert chat.deployment_config["autoscaling_config"]["max_replicas"] == 4
    assert chat.deployment_config["max_ongoing_requests"] == 64
    assert "ray_actor_options" not in chat.deployment_config  # vLLM places its own GPU workers
    assert configs["pajama-base"].deployment_config["num_replicas"] == 1


def test_vllm_streams_pass_through_with_one_done_and_errors_in_band():
    import asyncio

    from pajama.serve.vllm_backend import _sse_stream

    class Response:  # what Ray Serve LLM streams besides ready `data:` strings (e.g. an ErrorResponse)
        def model_dump(self):
            return {"error": {"message": "out of memory", "code": 500}}

    async def rest():
        yield ['data: {"id": "2"}\n\n']
        yield Response()

    class Stream:  # a Serve response stream: async iteration and cancel()
        def __init__(self):
            self.items, self.cancelled = rest(), False

        def __anext__(self):
            return self.items.__anext__()

        def cancel(self):
            self.cancelled = True

    async def collect(stream):
        return [packet async for packet in _sse_stream(['data: {"id": "1"}\n\n'], stream)]

    stream = Stream()
    packets = asyncio.run(collect(stream))
    assert packets == [
        'data: {"id": "1"}\n\n', 'data: {"id": "2"}\n\n',
        'data: {"error": {"message": "out of memory", "code": 500}}\n\n', "data: [DONE]\n\n",
    ]
    assert stream.cancelled


def test_summary_line_reports_counts_rates_and_latency(caplog):
    summary = Summary(interval_s=3600)
    logging.getLogger("ray.serve").addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="ray.serve")
    try:
        for latency in (0.1, 0.2, 0.3):
            summary.record(200, latency, 10)
        summary.record(400, 0.01, 0)
        assert not caplog.records  # not yet: the interval has not passed
        summary.since -= 3600
        summary.record(200, 0.4, 10)
    finally:
        logging.getLogger("ray.serve").removeHandler(caplog.handler)
    (line,) = [r.getMessage() for r in caplog.records]
    assert "5 requests (1 errors)" in line and "40 completion tokens" in line and "p50 0.200 s" in line
    assert summary.requests == 0  # counts restart for the next interval
