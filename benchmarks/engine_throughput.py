"""Generated tokens/s and time to first token of Pajama's generation engine on its own.

`HFEngine` (the engine behind the Serve app) runs in this process on the GPU when there is one,
without Serve or HTTP in front (benchmarks/serve_throughput.py measures what those add). The model
has a preset's shape (default 160m: 12 layers, hidden 768, its 50k vocabulary) with random
weights; the output rows of EOS and of ids past the small bundled tokenizer are zeroed, so greedy
decoding always generates exactly --max-tokens. For each concurrency, `--requests` streamed
greedy completions are sent that many at a time; printed: generated tokens/s over the wall time,
and the time from submitting a request to its first generated text, p50 and p99.

    python benchmarks/engine_throughput.py                          # 160m, concurrency 1 and 16
    python benchmarks/engine_throughput.py --preset 1b --concurrency 1 8 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time

import torch

from pajama.config import load_config
from pajama.models import resolve_source
from pajama.serve.engine import HFEngine
from pajama.serve.events import Delta, Failed, Finished
from pajama.serve.tiny_model import make_tiny_model

PROMPT = "The capital of France is Paris. " * 8


def percentile(values: list[float], q: int) -> float:
    """The q-th percentile (1..99), inclusive method; a single value is every percentile."""
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def measure(engine: HFEngine, concurrency: int, requests: int, max_tokens: int) -> dict:
    """`requests` streamed completions, `concurrency` at a time: tokens/s and times to first text."""
    remaining = iter(range(requests))
    ttfts, tokens = [], 0

    async def client() -> None:
        nonlocal tokens
        for _ in remaining:
            started, first = time.perf_counter(), None
            job = engine.prepare(prompt=PROMPT, max_tokens=max_tokens, default_max_tokens=max_tokens,
                                 temperature=0, stream=True)
            async for events in engine.generate([job]):
                for event in events:
                    if isinstance(event, Failed):
                        raise RuntimeError(event.message)
                    if first is None and isinstance(event, (Delta, Finished)):
                        first = time.perf_counter() - started
                    if isinstance(event, Finished):
                        tokens += event.completion_tokens
            ttfts.append(first)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    return {"concurrency": concurrency, "requests": requests, "tokens_per_s": tokens / wall,
            "ttft_p50_ms": percentile(ttfts, 50) * 1000, "ttft_p99_ms": percentile(ttfts, 99) * 1000}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="160m", help="recipe whose pretrain.model shape to build")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    p.add_argument("--requests", type=int, default=None, help="requests per concurrency (default: 4 x concurrency, at least 8)")
    p.add_argument("--max-tokens", type=int, default=128)
    args = p.parse_args()

    cfg = load_config(args.preset)
    shape = cfg.pretrain.model
    with tempfile.TemporaryDirectory(prefix="pajama-engine-") as scratch:
        model_dir = make_tiny_model(
            scratch, hidden_size=shape.hidden_size, num_layers=shape.num_hidden_layers,
            num_heads=shape.num_attention_heads, intermediate_size=shape.intermediate_size,
            model_vocab_size=shape.vocab_size or cfg.data.tokenizer.vocab_size, context_length=2048,
            suppress_eos=True)
        engine = HFEngine(resolve_source(str(model_dir)), kind="base", max_batch_size=max(args.concurrency))
        params = sum(p.numel() for p in engine.model.parameters())
        device = torch.cuda.get_device_name() if engine.device.type == "cuda" else "cpu"
        asyncio.run(measure(engine, 1, 2, 8))  # warm-up: kernels, allocator
        results = [asyncio.run(measure(engine, c, args.requests or max(8, 4 * c), args.max_tokens))
                   for c in args.concurrency]
    print(f"engine: {device}, {args.preset} shape ({params / 1e6:.0f}M parameters, {engine.model.dtype}), "
          f"prompt {len(engine.tokenizer(PROMPT)['input_ids'])} tokens, {args.max_tokens} generated, greedy")
    for r in results:
        print(f"engine, concurrency {r['concurrency']:>2}: {r['tokens_per_s']:9.1f} generated tokens/s, "
              f"time to first token p50 {r['ttft_p50_ms']:.1f} ms, p99 {r['ttft_p99_ms']:.1f} ms ({r['requests']} requests)")
    if len(results) > 1:
        print(f"batching gain at concurrency {results[-1]['concurrency']}: "
              f"{results[-1]['tokens_per_s'] / results[0]['tokens_per_s']:.1f}x")
    print("JSON " + json.dumps({"device": device, "preset": args.preset, "results": results}))


if __name__ == "__main__":
    main()
