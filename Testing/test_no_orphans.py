"""A SIGKILLed ``crcseg train`` leaves no process behind (``CRCTraining.worker_lifetime``, Linux).

``crcseg train`` runs in a child process (its own session) on a tiny MR phantom dataset with two nnU-Net
data-augmentation workers (``nnUNet_n_proc_DA=2``: two training workers and one validation worker, forked by
batchgenerators). Once they exist, every process of the run (found through /proc: the child's descendants)
is recorded, the child is SIGKILLed, and within 10 s none of them, and no other process of its session, may
still run. Without the parent-death signal the workers live on as orphans (their pids are killed at the end
of the test either way, so a failure leaves nothing behind either).

Two fast tests check the mechanism alone: a grandchild forked while ``workers_die_with_this_process`` is active
dies with its parent (and outlives it when not), and a spawned child that calls ``die_with_parent`` (a DDP
rank's trainer does) dies with the process that spawned it.
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
from crcseg_child import CHILD
from spawned_rank import rank

from CRCTraining.cli import main
from CRCTraining.data.phantoms_mr import make_mr_phantom_dataset
from CRCTraining.worker_lifetime import workers_die_with_this_process

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux only")

DATASET = 781
WORKERS = 2  # nnUNet_n_proc_DA: 2 training workers + max(1, 2 // 2) validation worker
GRACE_S = 10.0


# --- /proc ------------------------------------------------------------------------------------------
ProcessKey = Tuple[int, int]  # (pid, start time in clock ticks): a pid reused later is another process


def _stat(pid: int) -> Optional[Dict[str, object]]:
    """State, parent, session and start time of ``pid`` from /proc, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rfind(")") + 2:].split()  # after "pid (comm) "; comm may hold spaces
    return {"state": fields[0], "ppid": int(fields[1]), "session": int(fields[3]), "start": int(fields[19])}


def _all_processes() -> Dict[int, Dict[str, object]]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                found[int(entry.name)] = stat
    return found


def descendants(root: int) -> Dict[int, Dict[str, object]]:
    """Every living process whose parent chain leads to ``root`` (not ``root`` itself)."""
    processes = _all_processes()
    children: Dict[int, List[int]] = {}
    for pid, stat in processes.items():
        children.setdefault(int(stat["ppid"]), []).append(pid)  # type: ignore[arg-type]
    found, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if processes[pid]["state"] != "Z":
            found[pid] = processes[pid]
        todo.extend(children.get(pid, []))
    return found


def forked_copies(root: int, processes: Dict[int, Dict[str, object]]) -> List[int]:
    """Those of ``processes`` that run ``root``'s command line: forked from it (batchgenerators' workers)."""
    def cmdline(pid: int) -> bytes:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            return b""

    return [pid for pid in processes if cmdline(pid) and cmdline(pid) == cmdline(root)]


def still_running(keys: List[ProcessKey], session: int) -> List[int]:
    """The recorded processes that still run (zombies hold no memory and count as gone), and any other
    process of the killed run's session."""
    left = []
    for pid, start in keys:
        stat = _stat(pid)
        if stat is not None and stat["start"] == start and stat["state"] != "Z":
            left.append(pid)
    left += [pid for pid, stat in _all_processes().items()
             if stat["session"] == session and stat["state"] != "Z" and pid not in left]
    return left


def _gone(pid: int, start: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        stat = _stat(pid)
        if stat is None or stat["start"] != start or stat["state"] == "Z":
            return True
        time.sleep(0.05)
    return False


# --- the mechanism: a grandchild outlives its dead parent only without it ---------------------------------
def _grandchild_outlives_its_parent(armed: bool) -> bool:
    """Fork a parent that forks a sleeping child and exits at once; is the child still there 2 s later?"""
    read, write = os.pipe()
    parent = os.fork()
    if parent == 0:  # the parent: what batchgenerators' workers are to crcseg train
        try:
            with workers_die_with_this_process() if armed else contextlib.nullcontext():
                child = os.fork()
                if child == 0:
                    os.close(write)  # the test reads the pipe to its end: only the parent may hold it open
                    time.sleep(30)
                    os._exit(0)
            os.write(write, str(child).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as stream:
        child = int(stream.read())
    os.waitpid(parent, 0)
    start = int(_stat(child)["start"]) if _stat(child) else -1  # type: ignore[index]
    survived = not _gone(child, start, 2.0)
    if survived:
        os.kill(child, signal.SIGKILL)
    return survived


def test_a_worker_forked_while_armed_dies_with_its_parent():
    assert _grandchild_outlives_its_parent(armed=False)  # the orphan the issue saw
    assert not _grandchild_outlives_its_parent(armed=True)
    assert not _grandchild_outlives_its_parent(armed=True)  # the hook is installed once, armed each time
    assert _grandchild_outlives_its_parent(armed=False)  # disarmed after the training: other forks are left alone


def test_a_spawned_rank_dies_with_the_process_that_spawned_it(tmp_path):
    pid_file = tmp_path / "rank"
    parent = os.fork()
    if parent == 0:  # the launcher: spawns a rank (as nnU-Net's DDP path does), then dies without a word
        try:
            multiprocessing.get_context("spawn").Process(target=rank, args=(str(pid_file),)).start()
            deadline = time.monotonic() + 60
            while not pid_file.is_file() and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            os._exit(0)
    os.waitpid(parent, 0)
    pid, armed = (int(v) for v in pid_file.read_text().split())
    assert armed == 1
    stat = _stat(pid)
    gone = stat is None or _gone(pid, int(stat["start"]), 5.0)  # type: ignore[arg-type]
    if not gone:
        os.kill(pid, signal.SIGKILL)
    assert gone, "the spawned rank outlived the process that spawned it"


# --- the run ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    saved = dict(os.environ)
    root = tmp_path_factory.mktemp("no_orphans")
    source = make_mr_phantom_dataset(root / "source", cases=3, seed=5, shape=(12, 64, 96))
    work = root / "work"
    try:
        assert main(["prepare", str(source), "-d", str(DATASET), "--name", "Orphans", "--workdir", str(work),
                     "--modality", "mr"]) == 0
        assert main(["plan", "-d", str(DATASET), "--workdir", str(work), "--gpu-memory-gb", "0.5",
                     "--processes", "1"]) == 0
    finally:
        os.environ.clear()  # the commands export nnU-Net's folders into this process
        os.environ.update(saved)
    return work


def test_a_killed_training_leaves_no_process_behind(workdir, tmp_path):
    argv = ["train", "-d", str(DATASET), "--workdir", str(workdir), "--trainer", "nnUNetTrainerBaseline",
            "--fold", "all", "--epochs", "100", "--iterations", "1000", "--val-iterations", "1", "--device", "cpu",
            "--no-final-validation"]
    env = {**os.environ, "nnUNet_n_proc_DA": str(WORKERS)}
    log = tmp_path / "train.log"
    recorded: List[ProcessKey] = []
    with open(log, "w") as output:
        child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(argv)], cwd=tmp_path, stdout=output,
                                 stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while child.poll() is None and time.monotonic() < deadline:
            workers = descendants(child.pid)
            if len(forked_copies(child.pid, workers)) >= WORKERS + 1:  # training and validation workers are up
                break
            time.sleep(0.1)
        assert child.poll() is None, f"crcseg train ended before its workers started:\n{log.read_text()[-3000:]}"
        workers = descendants(child.pid)
        assert len(forked_copies(child.pid, workers)) >= WORKERS + 1, \
            f"no data-augmentation workers after 120 s:\n{log.read_text()[-3000:]}"
        recorded = [(pid, int(stat["start"])) for pid, stat in workers.items()]  # type: ignore[arg-type]
        child.send_signal(signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
        killed = time.monotonic()
        left = still_running(recorded, child.pid)
        while left and time.monotonic() - killed < GRACE_S:
            time.sleep(0.1)
            left = still_running(recorded, child.pid)
        assert not left, f"{len(left)} of {len(recorded)} processes of the killed run still run after {GRACE_S:g} s"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for pid in still_running(recorded, child.pid):  # never leave orphans, even when the test fails
            os.kill(pid, signal.SIGKILL)
