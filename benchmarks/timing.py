"""Shared timing helper for the benchmark scripts (run them from the repository root)."""
from __future__ import annotations

import statistics
import time
from typing import Callable, List


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls: robust to a busy neighbour on a shared machine."""
    times: List[float] = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)
