"""What both segmenters do around their network: the device, the CPU fallback, small components.

A CUDA failure or out-of-memory during a case is retried on the CPU, and the result says so
(DESIGN.md: GPU when present, the CPU always works). torch is imported when called.
"""
from __future__ import annotations

from typing import Callable, List, Tuple, TypeVar

import cc3d
import numpy as np

T = TypeVar("T")


def torch_device(name: str):
    import torch

    return torch.device(name)


def is_cuda_failure(error: BaseException) -> bool:
    """Whether ``error`` is the GPU failing (out of memory, a CUDA/cuDNN/cuBLAS error), not the input."""
    import torch

    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(k in text for k in ("CUDA", "cuDNN", "CUBLAS", "out of memory"))


def with_cpu_fallback(run: Callable[..., T], device, warnings: List[str]) -> Tuple[T, object]:
    """``run(device)``; a CUDA failure is retried as ``run(cpu)`` with a warning. Returns (result, device used)."""
    import torch

    try:
        return run(device), device
    except Exception as error:  # noqa: BLE001 - only CUDA failures are retried; others re-raised
        if device.type != "cuda" or not is_cuda_failure(error):
            raise
        torch.cuda.empty_cache()
        warnings.append(f"the GPU failed ({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
                        "this case was run on the CPU instead (slower, same result)")
        cpu = torch.device("cpu")
        return run(cpu), cpu


def remove_small_components(mask: np.ndarray, spacing, min_ml: float) -> np.ndarray:
    """``mask`` (bool) without its 26-connected components smaller than ``min_ml`` millilitres (0: all kept)."""
    if min_ml <= 0 or not mask.any():
        return mask
    voxel_ml = float(np.prod(spacing)) / 1000.0
    threshold = int(np.ceil(min_ml / voxel_ml))
    return cc3d.dust(mask.astype(np.uint8), threshold=threshold, connectivity=26) > 0
