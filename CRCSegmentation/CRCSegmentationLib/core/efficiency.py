"""FLARE's efficiency measures, sampled while a case runs: wall time, peak memory, GPU memory x time.

FLARE 2024 scores inference by the wall time per case and the area under the GPU-memory-time curve
(MB·s; its limits: 45 s and 4 GB). On CUDA a sampler thread reads the memory PyTorch's allocator
holds on the device (``torch.cuda.memory_reserved``: what the process has taken from the GPU,
close to what nvidia-smi shows minus the CUDA context) every ``interval_s``; the area is the
trapezoid integral. On the CPU the sampler reads the process's resident memory instead.
"""
from __future__ import annotations

import os
import resource
import sys
import threading
import time
from typing import Dict, List, Optional, Tuple

MB = 1024.0 * 1024.0


def resident_mb() -> Optional[float]:
    """This process's resident memory now (Linux ``/proc``), else None."""
    try:
        with open("/proc/self/statm") as stream:
            return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB
    except (OSError, ValueError, IndexError):
        return None


def peak_resident_mb() -> float:
    """The process's peak resident memory so far (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MB if sys.platform == "darwin" else peak / 1024.0


class EfficiencyMonitor:
    """``with EfficiencyMonitor(device) as monitor: ...``; then ``monitor.measures()``."""

    def __init__(self, device: str = "cpu", interval_s: float = 0.1) -> None:
        import torch

        # GPU measures only where a GPU is there to measure (a CUDA run that fell back reads the CPU's)
        self.device = "cuda" if device == "cuda" and torch.cuda.is_available() else "cpu"
        self.interval_s = interval_s
        self.samples: List[Tuple[float, float]] = []  # (seconds since start, MB)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._start = 0.0
        self._end = 0.0

    def _read(self) -> Optional[float]:
        if self.device == "cuda":
            import torch

            return torch.cuda.memory_reserved() / MB
        return resident_mb()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._record()

    def _record(self) -> None:
        value = self._read()
        if value is not None:
            self.samples.append((time.perf_counter() - self._start, value))

    def __enter__(self) -> "EfficiencyMonitor":
        if self.device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
        self._start = time.perf_counter()
        self._record()
        self._thread = threading.Thread(target=self._sample, name="EfficiencyMonitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._record()
        self._end = time.perf_counter()

    def measures(self) -> Dict[str, float]:
        """``wall_s`` and, on CUDA, ``gpu_peak_mb`` and ``gpu_memory_time_mb_s``; on the CPU ``peak_rss_mb``."""
        measures = {"wall_s": round(self._end - self._start, 3)}
        if self.device == "cuda":
            import torch

            area = sum((t1 - t0) * (m0 + m1) / 2.0 for (t0, m0), (t1, m1) in zip(self.samples, self.samples[1:]))
            measures["gpu_peak_mb"] = round(torch.cuda.max_memory_reserved() / MB, 1)
            measures["gpu_memory_time_mb_s"] = round(area, 1)
        else:
            sampled = max((m for _, m in self.samples), default=0.0)
            measures["peak_rss_mb"] = round(max(sampled, 0.0), 1)
        return measures
