"""A killed ``crcseg train`` / ``pretrain`` leaves no process behind: its workers die with it (Linux).

nnU-Net 2.8.1 augments data in worker processes: batchgenerators' ``NonDetMultiThreadedAugmenter`` starts
``nnUNet_n_proc_DA`` ``multiprocessing.Process`` es for training and half as many for validation, with the
platform's default start method (``fork`` on Linux with Python 3.11 and 3.12), from the thread that trains
(``on_train_start`` -> ``get_dataloaders`` -> ``next``). They are daemonic, which helps only when the parent
exits on its own; a SIGKILLed parent runs no code, and the workers, looping on a queue with an abort event
nobody sets, live on as orphans (about 0.9 GB each, seen).

Linux sends a child a signal when its parent dies once the child asks for it: ``prctl(PR_SET_PDEATHSIG,
SIGKILL)``. It is cleared on fork (each generation sets its own) and fires when the *thread* that forked the
child ends, not only the process; nnU-Net forks its workers from the training thread, which outlives them.

- ``workers_die_with_this_process()`` (a context manager around the training, ``train.train``) arms a fork
  hook (``os.register_at_fork``, installed once per process): every child forked while it is active sets
  its parent-death signal, then checks that its parent is still the process that forked it (a parent that
  died between fork and prctl sends no signal). The hook and the armed flag are inherited, so a worker's own
  children chain to it the same way.
- ``die_with_parent()`` does the same in a child started by ``spawn`` (fork hooks do not run there): the DDP
  ranks of ``num_gpus`` > 1, when their trainer is built (``trainer_mixins.ScheduleFromEnvironmentMixin``).
- nnU-Net's final-validation export pool is started by ``spawn`` after training: its workers read their tasks
  from a pipe and exit when the parent's end closes.

Elsewhere (macOS, Windows) there is no parent-death signal: these do nothing.
"""
from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
from typing import Iterator

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
IS_LINUX = sys.platform.startswith("linux")

_hook_installed = False
_armed = 0  # nesting depth of workers_die_with_this_process(); children inherit it with the memory
_forking_pid = 0  # set just before each fork: the pid the child must find as its parent


def _set_parent_death_signal(parent_pid: int) -> None:
    """SIGKILL this process when its parent dies; at once if the parent is already gone."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return  # cannot be set (a seccomp filter?): the process behaves as without this module
    if os.getppid() != parent_pid:  # reparented already: the parent died before prctl, no signal will come
        os.kill(os.getpid(), signal.SIGKILL)


def _before_fork() -> None:
    global _forking_pid
    _forking_pid = os.getpid()


def _after_fork_in_child() -> None:
    if _armed:
        _set_parent_death_signal(_forking_pid)


def _install_hook() -> None:
    global _hook_installed
    if not _hook_installed:  # a hook cannot be removed: installed once, it acts only while armed
        os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
        _hook_installed = True


@contextlib.contextmanager
def workers_die_with_this_process() -> Iterator[bool]:
    """While active, every process forked from this one (and from those) dies when its parent dies.

    Yields whether that holds here (Linux); elsewhere it yields False and changes nothing.
    """
    global _armed
    if not IS_LINUX:
        yield False
        return
    _install_hook()
    _armed += 1
    try:
        yield True
    finally:
        _armed -= 1


def die_with_parent() -> bool:
    """In a ``multiprocessing`` child (a DDP rank started by ``spawn``): die with the parent, and arm the fork hook
    for this process's own workers. Returns whether it did (False in a process that no ``multiprocessing`` started,
    such as ``crcseg train`` itself: a launcher must outlive the shell that started it, e.g. under ``nohup``)."""
    global _armed
    parent = multiprocessing.parent_process()
    if not IS_LINUX or parent is None or parent.pid is None:
        return False
    _set_parent_death_signal(parent.pid)
    _install_hook()
    _armed += 1  # for the rest of this process's life: it exists only to train
    return True
