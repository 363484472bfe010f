"""A stand-in for a DDP rank (``torch.multiprocessing.spawn``) in ``test_no_orphans``: a spawned child that asks
to die with its parent, as our trainers do when they are built, then waits."""
from __future__ import annotations

import os
import time
from pathlib import Path


def rank(pid_file: str) -> None:
    from CRCTraining.worker_lifetime import die_with_parent

    armed = die_with_parent()
    Path(pid_file).write_text(f"{os.getpid()} {int(armed)}")
    time.sleep(60)
