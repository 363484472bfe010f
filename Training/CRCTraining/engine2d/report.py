"""What a 2D training command prints when it ends (rank 0 only: one report per run, not one per process)."""
from __future__ import annotations

from CRCTraining.engine2d.distributed import is_main_process


def print_training_result(result, prefix: str = "", details: str = "") -> None:
    """Warnings, then "already finished" or the iterations, the final loss and the file (an ``EngineResult``-like)."""
    if not is_main_process():
        return
    for warning in result.warnings:
        print(f"warning: {warning}")
    if result.skipped:
        print(f"{prefix}already finished ({result.iterations} iterations): {result.final}")
        return
    last = result.history[-10:, 1].mean() if len(result.history) else float("nan")
    print(f"{prefix}{result.iterations} iterations (from {result.resumed_from}){details}, final loss {last:.4f}: "
          f"{result.final}")
