"""Learning-rate schedules of the 2D methods, as a factor of each parameter group's base rate.

- ``poly``: (1 - it / max_it)^power per iteration (U-SAM's public code, power 0.9; nnU-Net's poly);
- ``cosine_restarts``: SGDR (Loshchilov & Hutter 2016), the HCF paper's "cosine annealing strategy ... with
  an initial restart cycle of 20 epochs" (Sec. 4.2); PyTorch's ``CosineAnnealingWarmRestarts`` evaluated at
  the fractional epoch ``it / iterations_per_epoch``, so the rate changes every iteration;
- ``constant``.

Each factor is a function of the iteration number alone: a resumed run needs no scheduler state.
"""
from __future__ import annotations

from functools import lru_cache

import torch

SCHEDULES = ("poly", "cosine_restarts", "constant")


@lru_cache(maxsize=8)
def _sgdr(cycle_epochs: int, cycle_mult: int, min_factor: float):
    """PyTorch's SGDR scheduler on a base rate of 1, built once per schedule (``step(epoch)`` is stateless)."""
    probe = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([probe], lr=1.0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=int(cycle_epochs),
                                                                     T_mult=int(cycle_mult), eta_min=min_factor)
    return optimizer, scheduler


def _cosine_restarts_factor(epoch: float, cycle_epochs: int, cycle_mult: int, min_factor: float) -> float:
    """PyTorch's SGDR rate at fractional ``epoch`` for a base rate of 1 (its closed form for ``step(epoch)``)."""
    optimizer, scheduler = _sgdr(int(cycle_epochs), int(cycle_mult), float(min_factor))
    scheduler.step(epoch)
    return float(optimizer.param_groups[0]["lr"])


def learning_rate_factor(schedule: str, iteration: int, total: int, iterations_per_epoch: int,
                         poly_power: float = 0.9, cycle_epochs: int = 20, cycle_mult: int = 1,
                         min_factor: float = 0.0) -> float:
    if schedule == "poly":
        return (1.0 - iteration / total) ** poly_power
    if schedule == "cosine_restarts":
        return _cosine_restarts_factor(iteration / iterations_per_epoch, cycle_epochs, cycle_mult, min_factor)
    if schedule == "constant":
        return 1.0
    raise ValueError(f"schedule {schedule!r} is not one of {SCHEDULES}")
