"""The process group ``torchrun`` asks for: NCCL on GPUs, gloo on CPU; one plain process without it."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from OrganGuidanceLib.device import resolve_device
from OrganGuidanceLib.validation import InputError

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class DistributedContext:
    """Where this process stands: its rank among ``world_size`` processes and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str = ""  # "" = no process group (a single plain process)
    owns_group: bool = False  # this context created the process group and destroys it

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes every file and shows the progress bar."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean of a float tensor over all processes (the tensor itself in a single process)."""
        if not self.distributed:
            return values
        values = values.detach().to(self.device, torch.float64).clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return (values / self.world_size).cpu()

    def broadcast_flag(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every process (e.g. "stop early")."""
        if not self.distributed:
            return flag
        value = torch.tensor([1 if flag else 0], dtype=torch.int64, device=self.device)
        dist.broadcast(value, src=0)
        return bool(value.item())

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def is_main_process() -> bool:
    """Rank 0 of a ``torchrun`` launch, or a plain process: the one that reports to the user."""
    return int(os.environ.get("RANK", "0")) == 0


def distributed_context(device: str = "auto", threads: Optional[int] = None) -> DistributedContext:
    """Join ``torchrun``'s process group (from its environment variables), or describe a single process.

    GPUs: one per process (``LOCAL_RANK``), NCCL. CPU: gloo; each process gets ``threads`` threads, by default
    its share of the cores, so that two processes on two cores do not fight over them.
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        chosen = resolve_device(device)
        if threads:
            torch.set_num_threads(int(threads))
        return DistributedContext(0, 1, 0, chosen)
    rank, world, local = (int(os.environ[name]) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    chosen = resolve_device(device)
    if chosen.type == "cuda":
        if local >= torch.cuda.device_count():
            raise InputError(f"torchrun: process {local} on this node, but only {torch.cuda.device_count()} GPUs; "
                             f"use --nproc_per_node {torch.cuda.device_count()} or fewer")
        chosen = torch.device("cuda", local)
        torch.cuda.set_device(chosen)
        backend = "nccl"
    else:
        backend = "gloo"
    torch.set_num_threads(int(threads) if threads else max(1, (os.cpu_count() or 1) // local_world))
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistributedContext(rank, world, local, chosen, backend, owns)
