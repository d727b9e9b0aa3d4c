"""Helpers shared by the benchmark scripts.

The scripts are run both as `python benchmarks/x.py` from the repository root and as
`cd benchmarks && python x.py`. Either way Python puts the script's own folder first on
`sys.path`, so `from common import ...` finds this file with no package, install or
path edit (the same way `sweep.py` already imports `pipeline.TokenCounter`).
"""

from __future__ import annotations

import statistics
import time

import torch


@torch.no_grad()
def prefill_rate(chat, rows: torch.Tensor, repeats: int = 3) -> float:
    """Prefill tokens/s of a plain forward of `rows` (batch × length ids, no hooks, no
    padding): one warm-up forward, then the median of `repeats` timed ones.

    `sweep.py` and `pipeline.py` both report a stage's speed against this roofline; they
    differ only in the rows they time (random ids, real prompt text), so the timing that
    makes their figures comparable is written once, here."""
    batch, length = rows.shape
    chat.model(input_ids=rows, use_cache=False, logits_to_keep=1)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        chat.model(input_ids=rows, use_cache=False, logits_to_keep=1)
        times.append(time.perf_counter() - start)
    return batch * length / statistics.median(times)
