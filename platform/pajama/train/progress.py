"""What rank 0 shows people while training runs: step of max_steps, loss, tokens/s and ETA.

One compact line, `[pajama] step N/M: loss=..., tokens_per_s=..., eta=...`, every `log_every` steps
or every `LINE_INTERVAL_S` seconds, whichever is rarer, and at every evaluation and the last step.
Lines, not a live bar: a worker's stdout is a log file that Ray forwards to the driver line by
line, and the same lines serve terminals, job logs and CI.
"""

from __future__ import annotations

import time
from typing import Callable

from tqdm import tqdm

LINE_INTERVAL_S = 10.0


class Progress:
    """Rank 0's progress lines for the steps from `start` (a resumed run) to `total`."""

    def __init__(self, start: int, total: int, log_every: int, clock: Callable[[], float] = time.monotonic):
        self.start, self.total, self.log_every = start, total, log_every
        self.clock = clock
        self.began = clock()
        self.last_line = -float("inf")

    def eta_s(self, step: int) -> float:
        """Seconds left at this attempt's mean step time (resumed steps took no time here)."""
        return (self.clock() - self.began) / max(1, step - self.start) * (self.total - step)

    def update(self, step: int, metrics: dict[str, float]) -> None:
        now = self.clock()
        due = step % self.log_every == 0 and now - self.last_line >= LINE_INTERVAL_S
        if due or step == self.total or "eval_loss" in metrics:
            self.last_line = now
            shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if "/" not in k)
            print(f"[pajama] step {step}/{self.total}: {shown}, eta={tqdm.format_interval(self.eta_s(step))}",
                  flush=True)
