"""``crcseg`` in a child process, for the faults one process cannot stage on itself: a file-size
limit, a dropped capability, or a SIGKILL at a chosen point."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

CHILD = "import json, sys\nfrom CRCTraining.cli import main\nsys.exit(main(json.loads(sys.argv[1])))\n"


def run_crcseg(argv: List[str], cwd: Path, preexec_fn: Optional[Callable[[], None]] = None,
               kill_when: Optional[Callable[[], bool]] = None, env: Optional[Dict[str, str]] = None,
               timeout_s: float = 600) -> Tuple[int, str]:
    """Run ``crcseg argv``; SIGKILL it as soon as ``kill_when()`` holds. (return code, stdout + stderr).

    The output comes through a pipe, not a file: a file-size limit in ``preexec_fn`` must not cut it short.
    """
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(argv)], cwd=cwd, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, preexec_fn=preexec_fn, env=env)
    chunks: List[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: child.stdout.read(1 << 16), b"")), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout_s
    while child.poll() is None and time.monotonic() < deadline:
        if kill_when is not None and kill_when():
            child.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    if child.poll() is None and kill_when is None:
        child.kill()
    code = child.wait()
    reader.join(timeout=10)  # a killed child's orphaned grandchildren could hold the pipe open
    return code, b"".join(chunks).decode("utf-8", "replace")


def files_at_least(folder: Path, pattern: str, count: int) -> Callable[[], bool]:
    """A ``kill_when``: once ``count`` files matching ``pattern`` exist in ``folder``."""
    return lambda: len(list(folder.glob(pattern))) >= count
