"""One way to report progress and to cancel, for every engine and panel of the project.

- ``ProgressCallback(stage, fraction)``: ``fraction`` in 0..1, or None while unknown (a panel then shows
  a busy bar);
- ``progress_step(progress, cancel)``: the step each engine calls between its stages: it raises
  ``RunCancelled`` once ``cancel`` is set, then reports;
- ``run_cancellable``: a subprocess (TotalSegmentator) that a cancel kills with its whole process group.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence

ProgressCallback = Callable[[str, Optional[float]], None]  # (stage, fraction 0..1, None while unknown)


class RunCancelled(RuntimeError):
    """The user cancelled a running segmentation."""


def progress_step(progress: Optional[ProgressCallback],
                  cancel: Optional[threading.Event]) -> Callable[[str, float], None]:
    """``step(stage, fraction)`` of an engine: stop if cancelled (``RunCancelled``), then report progress."""
    report = progress or (lambda stage, fraction: None)

    def step(stage: str, fraction: float) -> None:
        if cancel is not None and cancel.is_set():
            raise RunCancelled(f"cancelled before '{stage}'")
        report(stage, fraction)

    return step


def run_cancellable(
    command: Sequence[str],
    cancel: Optional[threading.Event] = None,
    on_output: Optional[Callable[[str], None]] = None,
    poll_seconds: float = 0.2,
) -> None:
    """Run ``command``, forwarding its output lines; kill it when ``cancel`` is set."""
    process = subprocess.Popen(
        list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,  # its own process group, so cancelling also stops nnU-Net's workers
    )
    lines: List[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip())
            if on_output:
                on_output(line.rstrip())

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    while process.poll() is None:
        if cancel is not None and cancel.is_set():
            _kill_group(process)
            raise RunCancelled(f"cancelled: {Path(command[0]).name} was stopped")
        time.sleep(poll_seconds)
    reader.join(timeout=5)
    if process.returncode != 0:
        tail = "\n".join(lines[-15:])
        raise RuntimeError(f"{Path(command[0]).name} failed with exit code {process.returncode}:\n{tail}")


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (AttributeError, ProcessLookupError, PermissionError):  # Windows has no process groups
        process.kill()
    process.wait()
