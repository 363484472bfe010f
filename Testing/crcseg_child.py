"""``crcseg`` in a child process, for the faults one process cannot stage on itself: a file-size
limit, a dropped capability, or a SIGKILL at a chosen point."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

CHILD = "import json, sys\nfrom CRCTraining.cli import main\nsys.exit(main(json.loads(sys.argv[1])))\n"


def run_crcseg(argv: List[str], cwd: Path, preexec_fn: Optional[Callable[[], None]] = None,
               kill_when: Optional[Callable[[], bool]] = None, env: Optional[Dict[str, str]] = None,
               timeout_s: float = 600) -> Tuple[int, str]:
    """Run ``crcseg argv``; SIGKILL it as soon as ``kill_when()`` holds. (return code, stdout + stderr)."""
    with tempfile.TemporaryFile("w+") as output:
        child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(argv)], cwd=cwd, stdout=output,
                                 stderr=subprocess.STDOUT, preexec_fn=preexec_fn, env=env, text=True)
        deadline = time.monotonic() + timeout_s
        while child.poll() is None and time.monotonic() < deadline:
            if kill_when is not None and kill_when():
                child.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        if child.poll() is None and kill_when is None:
            child.kill()
        code = child.wait()
        output.seek(0)
        return code, output.read()


def files_at_least(folder: Path, pattern: str, count: int) -> Callable[[], bool]:
    """A ``kill_when``: once ``count`` files matching ``pattern`` exist in ``folder``."""
    return lambda: len(list(folder.glob(pattern))) >= count
