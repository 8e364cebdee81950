"""Throughput of exact and fuzzy dedup on a synthetic corpus, at growing corpus sizes.

Each document is 100-300 words from a seeded Zipfian vocabulary; 10% are near-duplicate copies
(one word replaced) and 5% exact copies. Prints one line per (size, stage): seconds, documents
per second and documents marked, so scaling with corpus size and with workers can be read off.

    python benchmarks/dedup_scaling.py --sizes 10000 50000 --num-cpus 8 --partitions 16
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import ray
from ray.data.expressions import col

from pajama.data.dedup import exact_dedup, fuzzy_dedup


def synthetic_corpus(size: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    vocabulary = np.array([f"w{i}" for i in range(50_000)])
    zipf = 1.0 / np.arange(1, vocabulary.size + 1)
    zipf /= zipf.sum()
    texts: list[str] = []
    for _ in range(size):
        roll = rng.random()
        if texts and roll < 0.10:
            words = rng.choice(texts).split()
            words[int(rng.integers(len(words)))] = "edited"
            texts.append(" ".join(words))
        elif texts and roll < 0.15:
            texts.append(str(rng.choice(texts)).upper())
        else:
            texts.append(" ".join(rng.choice(vocabulary, size=int(rng.integers(100, 301)), p=zipf)))
    return [
        {"doc_id": f"{i:09d}", "slice": "common_crawl", "text": text, "meta": "{}"}
        for i, text in enumerate(texts)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000])
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--blocks", type=int, default=8)
    args = parser.parse_args()

    ray.init(num_cpus=args.num_cpus, include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    for size in args.sizes:
        corpus = ray.data.from_items(synthetic_corpus(size), override_num_blocks=args.blocks)
        for name, stage, column in [
            ("exact", exact_dedup, "exact_dup_of"),
            ("fuzzy", fuzzy_dedup, "fuzzy_dup_of"),
        ]:
            start = time.perf_counter()
            marked = stage(corpus, num_partitions=args.partitions).materialize()
            seconds = time.perf_counter() - start
            removed = marked.filter(expr=col(column).is_not_null()).count()
            print(
                f"docs={size} stage={name} seconds={seconds:.1f} "
                f"docs_per_s={size / seconds:.0f} removed={removed}",
                flush=True,
            )
    ray.shutdown()


if __name__ == "__main__":
    main()
