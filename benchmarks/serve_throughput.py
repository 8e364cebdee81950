"""Serving throughput and overhead of the Pajama Serve app, all measured in one run.

Prints, for the same model and the same greedy requests:
  * generated tokens/s through Serve at concurrency 1 and at concurrency 16, and their ratio
    (the dynamic-batching gain; the target is >= 4x at 16);
  * the p50/p99 latency Serve adds over calling the model directly (the same `HFEngine`, in process,
    one request at a time), i.e. HTTP + ingress + handle routing + batching wait.

    python benchmarks/serve_throughput.py                      # a tiny random model built locally
    python benchmarks/serve_throughput.py --model-dir /ckpt    # any local HF checkpoint

Without --model-dir the tiny model never emits EOS, so every request generates exactly --max-tokens.
"""

import argparse
import asyncio
import json
import os
import socket
import statistics
import tempfile
import time

import httpx
import ray
import torch
from pajama.serve import app as serve_app
from pajama.models import resolve_source
from pajama.serve.engine import HFEngine
from pajama.serve.tiny_model import make_tiny_model

PROMPT = "The capital of France is"


def _percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def one_by_one(base_url: str, model: str, engine: HFEngine, requests: int, max_tokens: int) -> dict:
    """Concurrency 1, alternating a direct engine call and the same request through Serve.

    Alternating keeps both series under the same machine load, so their difference is what Serve adds.
    """
    headers = _auth_headers()
    body = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0}
    direct, served, tokens = [], [], 0

    async def call_engine() -> None:
        job = engine.prepare(prompt=PROMPT, max_tokens=max_tokens, default_max_tokens=max_tokens, temperature=0, stream=False)
        async for _ in engine.generate_stream([job]):
            pass

    async with httpx.AsyncClient(timeout=600) as http:
        await call_engine()  # warm-up
        await http.post(f"{base_url}/v1/completions", json=body, headers=headers)
        for _ in range(requests):
            started = time.perf_counter()
            await call_engine()
            direct.append(time.perf_counter() - started)
            started = time.perf_counter()
            response = await http.post(f"{base_url}/v1/completions", json=body, headers=headers)
            response.raise_for_status()
            served.append(time.perf_counter() - started)
            tokens += response.json()["usage"]["completion_tokens"]
    return {"direct": direct, "latencies": served, "tokens_per_s": tokens / sum(served), "requests": requests}


async def concurrent(base_url: str, model: str, requests: int, concurrency: int, max_tokens: int) -> dict:
    """Send `requests` completions through Serve, `concurrency` at a time."""
    headers = _auth_headers()
    body = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0}
    tokens = 0
    remaining = iter(range(requests))

    async def worker(http: httpx.AsyncClient) -> None:
        nonlocal tokens
        for _ in remaining:
            response = await http.post(f"{base_url}/v1/completions", json=body, headers=headers)
            response.raise_for_status()
            tokens += response.json()["usage"]["completion_tokens"]

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return {"tokens_per_s": tokens / wall, "requests": requests}


def _auth_headers() -> dict:
    key = os.environ.get("PAJAMA_API_KEY")  # the app requires it when it is set
    return {"Authorization": f"Bearer {key}"} if key else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", help="a local HF model directory (default: build a tiny random model)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--requests", type=int, default=32, help="requests at concurrency 1 (and as many directly)")
    parser.add_argument("--concurrent-requests", type=int, default=128, help="requests at concurrency 16")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--num-cpus", type=float, default=None, help="logical CPUs for ray.init (default: all)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pajama-bench-") as scratch:
        model_dir = args.model_dir or str(make_tiny_model(scratch, suppress_eos=True))
        # The direct baseline: the same engine in this process, with the one torch thread that Ray
        # gives the 1-CPU model replica (OMP_NUM_THREADS).
        torch.set_num_threads(1)
        engine = HFEngine(resolve_source(model_dir))
        ray.init(num_cpus=args.num_cpus, include_dashboard=False)
        try:
            base_url = serve_app.deploy(
                {
                    "models": [{"name": "bench", "source": model_dir, "kind": "base"}],
                    "max_batch_size": args.concurrency,
                    "ingress_num_cpus": 0,
                },
                port=_free_port(),
            )
            single = asyncio.run(one_by_one(base_url, "bench", engine, args.requests, args.max_tokens))
            batched = asyncio.run(
                concurrent(base_url, "bench", args.concurrent_requests, args.concurrency, args.max_tokens)
            )
        finally:
            serve_app.shutdown()
            ray.shutdown()
        direct = single["direct"]

    ratio = batched["tokens_per_s"] / single["tokens_per_s"]
    added = {q: _percentile(single["latencies"], q) - _percentile(direct, q) for q in (50, 99)}
    print(f"model: {args.model_dir or 'tiny random GPT-NeoX'}, max_tokens {args.max_tokens}, greedy")
    print(f"Serve, concurrency 1:  {single['tokens_per_s']:9.1f} generated tokens/s ({single['requests']} requests)")
    print(f"Serve, concurrency {args.concurrency}: {batched['tokens_per_s']:9.1f} generated tokens/s ({batched['requests']} requests)")
    print(f"batching gain: {ratio:.1f}x (target >= 4x)")
    print(
        f"latency at concurrency 1: direct p50 {_percentile(direct, 50) * 1000:.1f} ms p99 {_percentile(direct, 99) * 1000:.1f} ms; "
        f"Serve p50 {_percentile(single['latencies'], 50) * 1000:.1f} ms p99 {_percentile(single['latencies'], 99) * 1000:.1f} ms"
    )
    print(f"Serve adds: p50 {added[50] * 1000:.1f} ms, p99 {added[99] * 1000:.1f} ms")
    print(json.dumps({
        "tokens_per_s_c1": round(single["tokens_per_s"], 1),
        f"tokens_per_s_c{args.concurrency}": round(batched["tokens_per_s"], 1),
        "batching_gain": round(ratio, 2),
        "serve_added_p50_ms": round(added[50] * 1000, 1),
        "serve_added_p99_ms": round(added[99] * 1000, 1),
    }))


if __name__ == "__main__":
    main()
