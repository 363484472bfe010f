"""What both segmenters do around their network: the device, the CPU fallback, small components.

A GPU failure (CUDA or Apple MPS: out of memory, a missing operation) during a case is retried on the CPU, and the result says so
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


def is_gpu_failure(error: BaseException, device_type: str) -> bool:
    """Whether ``error`` is the GPU failing, not the input: on CUDA out of memory or a CUDA/cuDNN/cuBLAS error;
    on MPS out of memory or an operation Apple's backend lacks (``NotImplementedError`` naming MPS)."""
    import torch

    text = str(error)
    if device_type == "cuda":
        return isinstance(error, torch.cuda.OutOfMemoryError) or (
            isinstance(error, RuntimeError) and any(k in text for k in ("CUDA", "cuDNN", "CUBLAS", "out of memory")))
    if device_type == "mps":
        return isinstance(error, (RuntimeError, NotImplementedError)) and ("MPS" in text or "out of memory" in text)
    return False


def with_cpu_fallback(run: Callable[..., T], device, warnings: List[str]) -> Tuple[T, object]:
    """``run(device)``; a GPU failure (CUDA or MPS) is retried as ``run(cpu)`` with a warning.

    Returns (result, device used).
    """
    import torch

    try:
        return run(device), device
    except Exception as error:  # noqa: BLE001 - only GPU failures are retried; others re-raised
        if not is_gpu_failure(error, device.type):
            raise
        if device.type == "cuda":
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
