"""Serving throughput and overhead of the Pajama Serve app, all measured in one run.

Prints, for the same model and the same greedy requests:
  * generated tokens/s through Serve at concurrency 1 and at concurrency 16, and their ratio
    (the batching gain; the target is >= 8x at 16), measured in alternating rounds so that both
    concurrencies see the same machine load;
  * the p50/p99 latency Serve adds over calling the model directly (the same `HFEngine`, in process,
    one request at a time), i.e. HTTP, the ingress and Serve's routing (target: <= 5 ms p50);
  * time to first token p50/p99 of streamed requests at concurrency 16;
  * a mixed workload (max_tokens drawn from 16 to 256) at concurrency 16: with in-flight batching
    a request's latency follows its own length (ms per generated token is about the same for short
    and long requests), not the length of the longest request it shares the batch with.

The app runs as a one-model app does (the model decodes in the ingress replica) behind Ray Serve's
high-throughput ingress, HAProxy, as the KubeRay RayService deploys it
(`pajama.serve.options.HIGH_THROUGHPUT_ENV`); `--ingress ray-proxy` measures Ray's default
Python proxy instead.

    python benchmarks/serve_throughput.py                      # a tiny random model built locally
    python benchmarks/serve_throughput.py --model-dir /ckpt    # any local HF checkpoint

The load generator is aiohttp, in this process: client and server share the machine's cores, and
aiohttp spends less CPU per request than httpx (on 2 cores, the same server measured a batching gain
of 7.5-8.1x under httpx, 9.0-9.2x under aiohttp; the client's CPU is what differs).

Without --model-dir the tiny model never emits EOS, so every request generates exactly --max-tokens.
"""

import argparse
import asyncio
import json
import os
import random
import socket
import tempfile
import time

import aiohttp
import ray
import torch
from pajama.serve import app as serve_app
from pajama.models import resolve_source
from pajama.serve.engine import HFEngine
from pajama.serve.options import HIGH_THROUGHPUT_ENV
from pajama.serve.tiny_model import make_tiny_model

from engine_throughput import percentile  # benchmarks/, this script's folder

PROMPT = "The capital of France is"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _session(concurrency: int = 1) -> aiohttp.ClientSession:
    """`concurrency` keep-alive connections; an HTTP error status raises."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                 timeout=aiohttp.ClientTimeout(total=600), raise_for_status=True)


async def _complete(http: aiohttp.ClientSession, url: str, body: dict, headers: dict) -> dict:
    async with http.post(url, json=body, headers=headers) as response:
        return await response.json()


async def one_by_one(base_url: str, model: str, engine: HFEngine, requests: int, max_tokens: int) -> dict:
    """Concurrency 1, alternating a direct engine call and the same request through Serve.

    Alternating keeps both series under the same machine load, so their difference is what Serve adds.
    """
    headers = _auth_headers()
    body = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0}
    direct, served, tokens = [], [], 0

    async def call_engine() -> None:
        job = engine.prepare(prompt=PROMPT, max_tokens=max_tokens, default_max_tokens=max_tokens, temperature=0, stream=False)
        async for _ in engine.generate([job]):
            pass

    url = f"{base_url}/v1/completions"
    async with _session() as http:
        await call_engine()  # warm-up
        await _complete(http, url, body, headers)
        for _ in range(requests):
            started = time.perf_counter()
            await call_engine()
            direct.append(time.perf_counter() - started)
            started = time.perf_counter()
            response = await _complete(http, url, body, headers)
            served.append(time.perf_counter() - started)
            tokens += response["usage"]["completion_tokens"]
    return {"direct": direct, "latencies": served, "tokens": tokens, "seconds": sum(served), "requests": requests}


async def concurrent(base_url: str, model: str, requests: int, concurrency: int, max_tokens: int) -> dict:
    """Send `requests` completions through Serve, `concurrency` at a time."""
    headers = _auth_headers()
    body = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0}
    tokens = 0
    remaining = iter(range(requests))

    async def worker(http: aiohttp.ClientSession) -> None:
        nonlocal tokens
        for _ in remaining:
            response = await _complete(http, f"{base_url}/v1/completions", body, headers)
            tokens += response["usage"]["completion_tokens"]

    async with _session(concurrency) as http:
        started = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return {"tokens": tokens, "seconds": wall, "requests": requests}


async def time_to_first_token(base_url: str, model: str, requests: int, concurrency: int, max_tokens: int) -> list[float]:
    """Stream `requests` completions, `concurrency` at a time; return each one's seconds to its first token."""
    headers = _auth_headers()
    body = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    ttfts = []
    remaining = iter(range(requests))

    async def worker(http: aiohttp.ClientSession) -> None:
        for _ in remaining:
            started, first = time.perf_counter(), None
            async with http.post(f"{base_url}/v1/completions", json=body, headers=headers) as response:
                async for line in response.content:
                    if first is None and line.startswith(b"data: {") and b'"text": ""' not in line:
                        first = time.perf_counter() - started
            ttfts.append(first)

    async with _session(concurrency) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    return ttfts


async def mixed(base_url: str, model: str, requests: int, concurrency: int, low: int, high: int) -> list[tuple]:
    """Requests with max_tokens drawn from [low, high], `concurrency` at a time: (max_tokens, start, end)."""
    headers = _auth_headers()
    draws = random.Random(0)
    budgets = iter([draws.randint(low, high) for _ in range(requests)])
    results = []

    async def worker(http: aiohttp.ClientSession) -> None:
        for max_tokens in budgets:
            body = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0}
            started = time.perf_counter()
            response = await _complete(http, f"{base_url}/v1/completions", body, headers)
            assert response["usage"]["completion_tokens"] == max_tokens
            results.append((max_tokens, started, time.perf_counter()))

    async with _session(concurrency) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    return results


def _pooled(runs: list[dict]) -> dict:
    """Several runs as one: their tokens over their seconds, their requests and latencies together."""
    pooled = {key: sum(run[key] for run in runs) for key in ("tokens", "seconds", "requests")}
    pooled["tokens_per_s"] = pooled["tokens"] / pooled["seconds"]
    for key in ("direct", "latencies"):
        if key in runs[0]:
            pooled[key] = [value for run in runs for value in run[key]]
    return pooled


def _mixed_summary(results: list[tuple], short_max: int) -> dict:
    """Short requests' latency next to that of the longest request each one overlapped."""
    short = [r for r in results if r[0] <= short_max]
    latency = [end - start for _, start, end in short]
    longest_beside = [
        max(e - s for t, s, e in results if s < end and e > start) for _, start, end in short
    ]
    ms_per_token = {}
    for low, high in ((16, 64), (65, 128), (129, 192), (193, 256)):
        per_token = [(e - s) / t for t, s, e in results if low <= t <= high]
        if len(per_token) > 1:
            ms_per_token[f"{low}-{high}"] = percentile(per_token, 50) * 1000
    return {
        "short": len(short), "short_p50": percentile(latency, 50), "short_p99": percentile(latency, 99),
        "longest_beside_p50": percentile(longest_beside, 50), "ms_per_token": ms_per_token,
    }


def _auth_headers() -> dict:
    key = os.environ.get("PAJAMA_API_KEY")  # the app requires it when it is set
    return {"Authorization": f"Bearer {key}"} if key else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", help="a local HF model directory (default: build a tiny random model)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--requests", type=int, default=48, help="requests at concurrency 1 (and as many directly)")
    parser.add_argument("--concurrent-requests", type=int, default=512, help="requests at concurrency 16")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4, help="alternate the two concurrencies this many times")
    parser.add_argument("--ttft-requests", type=int, default=64, help="streamed requests for time to first token")
    parser.add_argument("--mixed-requests", type=int, default=96, help="requests of the mixed workload")
    parser.add_argument("--num-cpus", type=float, default=None, help="logical CPUs for ray.init (default: all)")
    parser.add_argument("--ingress", choices=["haproxy", "ray-proxy"], default="haproxy",
                        help="Serve's HTTP ingress: HAProxy (Ray's high-throughput mode, as on KubeRay) or Ray's proxy actor")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pajama-bench-") as scratch:
        # A context of 512 fits the mixed workload's 256 new tokens after the prompt.
        model_dir = args.model_dir or str(make_tiny_model(scratch, suppress_eos=True, context_length=512))
        # The direct baseline: the same engine in this process, with the one torch thread that Ray
        # gives the 1-CPU model replica (OMP_NUM_THREADS).
        torch.set_num_threads(1)
        engine = HFEngine(resolve_source(model_dir))
        if args.ingress == "haproxy":
            os.environ.update(HIGH_THROUGHPUT_ENV)  # before ray.init: the local Ray's processes inherit it
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
            # Rounds of concurrency 1 and 16 in turn, so both see the same (changing) machine load.
            rounds = [
                (
                    asyncio.run(one_by_one(base_url, "bench", engine, args.requests // args.rounds, args.max_tokens)),
                    asyncio.run(concurrent(
                        base_url, "bench", args.concurrent_requests // args.rounds, args.concurrency, args.max_tokens
                    )),
                )
                for _ in range(args.rounds)
            ]
            single, batched = (_pooled([r[i] for r in rounds]) for i in (0, 1))
            ttfts = asyncio.run(time_to_first_token(base_url, "bench", args.ttft_requests, args.concurrency, args.max_tokens))
            mix = _mixed_summary(asyncio.run(mixed(base_url, "bench", args.mixed_requests, args.concurrency, 16, 256)), 64)
        finally:
            serve_app.shutdown()
            ray.shutdown()
        direct = single["direct"]

    ratio = batched["tokens_per_s"] / single["tokens_per_s"]
    added = {q: percentile(single["latencies"], q) - percentile(direct, q) for q in (50, 99)}
    print(f"model: {args.model_dir or 'tiny random GPT-NeoX'}, max_tokens {args.max_tokens}, greedy, ingress {args.ingress}")
    print(f"Serve, concurrency 1:  {single['tokens_per_s']:9.1f} generated tokens/s ({single['requests']} requests)")
    print(f"Serve, concurrency {args.concurrency}: {batched['tokens_per_s']:9.1f} generated tokens/s ({batched['requests']} requests)")
    print(f"batching gain: {ratio:.1f}x (target >= 8x)")
    print(
        f"latency at concurrency 1: direct p50 {percentile(direct, 50) * 1000:.1f} ms p99 {percentile(direct, 99) * 1000:.1f} ms; "
        f"Serve p50 {percentile(single['latencies'], 50) * 1000:.1f} ms p99 {percentile(single['latencies'], 99) * 1000:.1f} ms"
    )
    print(f"Serve adds: p50 {added[50] * 1000:.1f} ms, p99 {added[99] * 1000:.1f} ms")
    print(
        f"time to first token at concurrency {args.concurrency}: p50 {percentile(ttfts, 50) * 1000:.1f} ms, "
        f"p99 {percentile(ttfts, 99) * 1000:.1f} ms ({len(ttfts)} streamed requests)"
    )
    print(
        f"mixed workload (max_tokens 16-256, concurrency {args.concurrency}): {mix['short']} short requests "
        f"(<= 64 tokens) p50 {mix['short_p50'] * 1000:.0f} ms, p99 {mix['short_p99'] * 1000:.0f} ms; "
        f"the longest request beside each one p50 {mix['longest_beside_p50'] * 1000:.0f} ms"
    )
    per_token = ", ".join(f"{band} tokens {ms:.2f}" for band, ms in mix["ms_per_token"].items())
    print(f"mixed workload, ms per generated token (p50) by max_tokens: {per_token}")
    print(json.dumps({
        "tokens_per_s_c1": round(single["tokens_per_s"], 1),
        f"tokens_per_s_c{args.concurrency}": round(batched["tokens_per_s"], 1),
        "batching_gain": round(ratio, 2),
        "serve_added_p50_ms": round(added[50] * 1000, 1),
        "serve_added_p99_ms": round(added[99] * 1000, 1),
        f"ttft_p50_ms_c{args.concurrency}": round(percentile(ttfts, 50) * 1000, 1),
        f"ttft_p99_ms_c{args.concurrency}": round(percentile(ttfts, 99) * 1000, 1),
        "mixed_short_p50_ms": round(mix["short_p50"] * 1000, 1),
        "mixed_longest_beside_p50_ms": round(mix["longest_beside_p50"] * 1000, 1),
        "mixed_ms_per_token_p50": {band: round(ms, 3) for band, ms in mix["ms_per_token"].items()},
    }))


if __name__ == "__main__":
    main()
