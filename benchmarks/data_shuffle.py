"""The data stage under Ray Data's default shuffle and under the sort-based shuffle the tiny recipe
picks (`data.shuffle_strategy`), side by side in one Ray session on the bundled corpus: the wall
time of each whole stage, their ratio, and whether the two runs wrote byte-identical shards. Both run
on the same signals (the signals stage, run once first without the model-based signals, not timed).

    python benchmarks/data_shuffle.py                 # about 3 minutes on 2 cores
    python benchmarks/data_shuffle.py --recipe my.yaml

Ray's default (shuffle_v2) runs each shuffle's map tasks in worker processes of their own, started
for the shuffle; the sort-based pull shuffle runs in the task workers that are already up. On a
small corpus the start-up is most of a shuffle's time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import ray

from pajama.artifacts import Artifact, StageContext
from pajama.config import load_config
from pajama.data import references, signal_stage
from pajama.data.stage import run as run_data_stage

STRATEGIES = ("shuffle_v2", "sort_shuffle_pull_based")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="tiny", help="recipe whose data section is run (default: tiny)")
    args = parser.parse_args()
    cfg = load_config(args.recipe, [])
    data_cfg = cfg.data.model_copy(update={"quality_models": None})

    ray.init(include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    # Start the task workers first, so that neither run pays for them.
    ray.data.range(1000).map_batches(lambda batch: batch).materialize()

    seconds, shards = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = {}
        for name, run in (("references", references.run), ("signals", signal_stage.run)):
            out = Path(tmp) / name
            out.mkdir()
            inputs = {name: Artifact(name, "bench", str(out),
                                     run(data_cfg, StageContext(out, Path(tmp), name, cfg.project.seed), inputs))}
        for strategy in STRATEGIES:
            out = Path(tmp) / strategy
            out.mkdir()
            started = time.perf_counter()
            run_data_stage(data_cfg.model_copy(update={"shuffle_strategy": strategy}),
                           StageContext(out, Path(tmp), strategy, cfg.project.seed), inputs)
            seconds[strategy] = time.perf_counter() - started
            shards[strategy] = _files(out / "shards")
            print(f"[bench] {strategy}: {seconds[strategy]:.1f} s", flush=True)

    default, sort = (seconds[s] for s in STRATEGIES)
    print(f"data stage, recipe {args.recipe}: shuffle_v2 {default:.1f} s, sort_shuffle_pull_based {sort:.1f} s "
          f"-> {default / sort:.2f}x faster with the sort shuffle")
    same = shards[STRATEGIES[0]] == shards[STRATEGIES[1]]
    print(f"shards byte-identical: {same} ({len(shards[STRATEGIES[0]])} files)")
    if not same:
        raise SystemExit("the shuffle strategy changed the shards")


if __name__ == "__main__":
    main()
