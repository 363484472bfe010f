"""Speed of U-SAM prompting: clicks on a 512 x 512 CT slice and one prompt to 3D (prints figures; not a test).

Cold click: HU window + resize, image encoder (CNN + ViT), prompt encoder + decoder, logits back to
the slice, the prompted components (the first click on a slice, nothing cached). Warm click: the same
with the slice's encoding cached, the points moved a little at each click. Both through
``InteractiveSegmenter.segment_prompt``, the panel's path. Medians after warm-up. Models: SAM ViT-B's
size (random weights: the time does not depend on them) and the shipped demonstration model.

One prompt to 3D: 3 points on the central slice of a phantom tumor (512 x 512 pixels, 3 mm slices, a
~60 mm tumor: ~20 slices) with the demonstration model, propagated both ways, nothing cached
(``prompt_to_3d``). ViT-B's cost per slice of such a walk: an encoding + a decoding per slice,
measured on 20 slices of the phantom.

    .venv/bin/python benchmarks/bench_usam.py [--checkpoint VIT_B.pt] [--demo-model demo_usam_phantom|none]
        [--ct DICOM_FOLDER_OR_FILE] [--clicks 20] [--cold 5] [--threads 2] [--device cpu|cuda|all] [--amp]
        [--json OUT.json]
    default CT: ts_example_ct_dicom (real, 512 x 512 x 20) from the test-data folder (Testing/test_data.py).

Goals (issues 5 and 20, on a 2-core CPU): warm click <= 100 ms, cold click <= 1 s (ViT-B and the
demonstration model), one prompt to 3D over ~20 slices <= 5 s (demonstration model).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch

from CRCSegmentationLib.networks.usam import USAM, USAMConfig
from CRCSegmentationLib.usam.refinement import InteractiveSegmenter, SlicePoints
from OrganGuidanceLib.io import read_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Testing"))
from test_data import data_file_or_exit  # SLICERCRC_TEST_DATA, ../shared/data or the fetch cache

WARM_GOAL_S = 0.100
COLD_GOAL_S = 1.0
PROMPT_TO_3D_GOAL_S = 5.0
# The 3D phantom: 512 x 512 pixels over the demonstration model's training field of view (96 x 2.9 mm),
# 3 mm slices; 110 slices reach the pelvis (the phantom is centred at z = 160 mm), then a crop around the tumor.
PHANTOM_SHAPE = (110, 512, 512)
PHANTOM_SPACING = (0.545, 0.545, 3.0)
PHANTOM_SEED = 2026
PHANTOM_MARGIN_SLICES = 8
VIT_B_SLICES = 20


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def autocast(device: str, amp: bool):
    """bfloat16/float16 autocast on CUDA when asked (AMP), else nothing."""
    if amp and device == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def centre_prompt(image, k: int, offset: int) -> SlicePoints:
    """A positive and a negative point near the slice centre, moved by ``offset`` pixels (every click differs)."""
    _, ny, nx = image.shape
    xy = np.array([[nx // 2 + offset % 7, ny // 2 + offset % 5], [nx // 2 + 40 + offset % 3, ny // 2 - 40]], float)
    return SlicePoints(k, xy, np.array([1, 0]))


def measure_clicks(model, image, device: str, clicks: int, cold_repeats: int, amp: bool) -> Dict[str, float]:
    engine = InteractiveSegmenter(model, device=device, cache_size=2)
    k = image.shape[0] // 2
    cold: List[float] = []
    with autocast(device, amp):
        for n in range(cold_repeats + 1):  # the first one warms the kernels up and is not counted
            slice_index = (k + n) % image.shape[0]
            engine.cache.clear()
            synchronize(device)
            started = time.perf_counter()
            engine.segment_prompt(image, centre_prompt(image, slice_index, 0))
            synchronize(device)
            if n:
                cold.append(time.perf_counter() - started)
        warm: List[float] = []
        for n in range(clicks + 3):  # 3 warm-up clicks
            synchronize(device)
            started = time.perf_counter()
            engine.segment_prompt(image, centre_prompt(image, k, n))
            synchronize(device)
            if n >= 3:
                warm.append(time.perf_counter() - started)
    return {"cold_median_s": statistics.median(cold), "warm_median_s": statistics.median(warm),
            "warm_p90_s": float(np.percentile(warm, 90)), "encoder_runs": engine.cache.misses, "clicks": clicks}


def tumor_phantom():
    """A 512 x 512 phantom with 3 mm slices, cropped in z around its tumor (CT, tumor mask)."""
    from OrganGuidanceLib.crop import CropBox
    from OrganGuidanceLib.image import as_index3
    from OrganGuidanceLib.phantom import make_abdominal_phantom

    phantom = make_abdominal_phantom(PHANTOM_SHAPE, PHANTOM_SPACING, seed=PHANTOM_SEED)
    slices = np.flatnonzero(phantom.tumor.array.any(axis=(1, 2)))
    low = max(0, slices[0] - PHANTOM_MARGIN_SLICES)
    high = min(phantom.ct.shape[0], slices[-1] + PHANTOM_MARGIN_SLICES + 1)
    shape = phantom.ct.shape
    box = CropBox(as_index3((low, 0, 0)), as_index3((high, shape[1], shape[2])), as_index3(shape))
    return box.apply(phantom.ct), box.apply(phantom.tumor).array > 0


def measure_prompt_to_3d(model, ct, tumor, device: str, amp: bool, repeats: int = 3) -> Dict[str, float]:
    """One prompt (3 points on the central tumor slice) to 3D, nothing cached; median of ``repeats``."""
    from CRCSegmentationLib.usam.simulated_prompts import central_slice, positive_clicks

    k = central_slice(tumor)
    clicks = positive_clicks(tumor[k], 3)
    prompt = SlicePoints(k, clicks.xy, clicks.labels)
    engine = InteractiveSegmenter(model, device=device, cache_size=64)
    times: List[float] = []
    with autocast(device, amp):
        for n in range(repeats + 1):  # the first one warms up
            engine.cache.clear()
            synchronize(device)
            started = time.perf_counter()
            result = engine.prompt_to_3d(ct, prompt)
            synchronize(device)
            if n:
                times.append(time.perf_counter() - started)
    volume = np.zeros(tumor.shape, bool)
    for z, mask in result.slices.items():
        volume[z] = mask
    dice = 2 * float((volume & tumor).sum()) / max(1, int(volume.sum() + tumor.sum()))
    return {"median_s": statistics.median(times), "slices": len(result.slices), "encoder_runs": engine.cache.misses,
            "tumor_slices": int(tumor.any(axis=(1, 2)).sum()), "dice": dice}


def measure_slices(model, ct, tumor, device: str, amp: bool, count: int = VIT_B_SLICES) -> float:
    """Seconds per slice of a walk: an encoding + a 3-point decoding on ``count`` slices of the tumor, uncached."""
    from CRCSegmentationLib.usam.simulated_prompts import positive_clicks

    engine = InteractiveSegmenter(model, device=device, cache_size=2)
    slices = np.flatnonzero(tumor.any(axis=(1, 2)))
    slices = [int(slices[n % len(slices)]) for n in range(count + 1)]
    with autocast(device, amp):
        synchronize(device)
        started = 0.0
        for n, k in enumerate(slices):
            if n == 1:  # the first slice warms up
                synchronize(device)
                started = time.perf_counter()
            engine.cache.clear()
            clicks = positive_clicks(tumor[k], 3)
            engine.segment_slice(ct, SlicePoints(k, clicks.xy, clicks.labels))
        synchronize(device)
    return (time.perf_counter() - started) / count


def goal(seconds: float, limit: float) -> str:
    return f"{seconds * 1000:8.1f} ms  (goal <= {limit * 1000:.0f} ms: {'met' if seconds <= limit else 'NOT met'})"


def print_clicks(label: str, figures: Dict[str, float]) -> None:
    print(f"  {label}")
    print(f"    cold click (preprocess + encoder + decoder): {goal(figures['cold_median_s'], COLD_GOAL_S)}")
    print(f"    warm click (decoder, cached encoding):       {goal(figures['warm_median_s'], WARM_GOAL_S)}"
          f"  p90 {figures['warm_p90_s'] * 1000:.1f} ms over {figures['clicks']} clicks")


def load_models(args) -> Dict[str, Tuple[torch.nn.Module, bool]]:
    """label -> (model, trained): a walk to 3D is timed only with trained weights (random ones find no tumor)."""
    from CRCSegmentationLib.models.usam import load_usam_model

    models: Dict[str, Tuple[torch.nn.Module, bool]] = {}
    if args.checkpoint is not None:
        models[f"ViT-B ({args.checkpoint})"] = (load_usam_model(args.checkpoint), True)
    else:
        torch.manual_seed(0)
        models["ViT-B (random weights)"] = (USAM(USAMConfig.preset("vit-b")), False)
    if args.demo_model != "none":
        models[f"demonstration model ({args.demo_model})"] = (load_usam_model(args.demo_model), True)
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None, help="a ViT-B U-SAM checkpoint (default: random)")
    parser.add_argument("--demo-model", default="demo_usam_phantom",
                        help="the demonstration model (source: file, bundle, catalogue name); 'none' skips it")
    parser.add_argument("--ct", type=Path, default=None, help="default: the test data's ts_example_ct_dicom")
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--cold", type=int, default=5, help="cold clicks measured (each on a fresh slice)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2: the goals' CPU)")
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    parser.add_argument("--amp", action="store_true", help="float16 autocast on CUDA (AMP)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.ct = args.ct or data_file_or_exit("ts_example_ct_dicom")

    torch.set_num_threads(args.threads)
    image = read_image(args.ct, name=args.ct.name)
    print(f"CT {args.ct.name}: {image.shape[2]} x {image.shape[1]} pixels per slice, {image.shape[0]} slices; "
          f"torch {torch.__version__}, torch threads {torch.get_num_threads()} (interop "
          f"{torch.get_num_interop_threads()}); {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    if os.getloadavg()[0] + torch.get_num_threads() > (os.cpu_count() or 1) + 0.5:
        # Each of PyTorch's parallel operations waits for its slowest thread: a thread that shares its core
        # with another process makes every operation wait for that process's time slice.
        print("  warning: busy CPU: fewer threads than free cores give steadier figures (--threads)")
    models = load_models(args)
    started = time.perf_counter()
    ct, tumor = tumor_phantom()
    print(f"3D phantom: {ct.shape[2]} x {ct.shape[1]} pixels, {ct.shape[0]} slices of {ct.spacing[2]:g} mm, tumor on "
          f"{int(tumor.any(axis=(1, 2)).sum())} slices ({time.perf_counter() - started:.1f} s to generate)")
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    results: Dict[str, dict] = {}
    for device in devices:
        if device == "cuda" and not torch.cuda.is_available():
            print("cuda: not available, skipped")
            continue
        amp = args.amp and device == "cuda"
        name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
        print(f"{device} ({name}{', AMP float16' if amp else ''}):")
        figures: Dict[str, dict] = {}
        for label, (model, trained) in models.items():
            model.to(device)
            figures[label] = {"clicks": measure_clicks(model, image, device, args.clicks, args.cold, amp)}
            print_clicks(label, figures[label]["clicks"])
            per_slice = measure_slices(model, ct, tumor, device, amp)
            figures[label]["seconds_per_slice"] = per_slice
            print(f"    per slice of a walk (encode + 3-point decode, {VIT_B_SLICES} slices): {per_slice * 1000:.0f} ms"
                  f" -> {VIT_B_SLICES} slices ~ {per_slice * VIT_B_SLICES:.1f} s")
            if not trained:
                continue
            walk = measure_prompt_to_3d(model, ct, tumor, device, amp)
            figures[label]["prompt_to_3d"] = walk
            print(f"    one prompt to 3D: {walk['median_s']:.2f} s  (goal <= {PROMPT_TO_3D_GOAL_S:g} s: "
                  f"{'met' if walk['median_s'] <= PROMPT_TO_3D_GOAL_S else 'NOT met'}) for {walk['slices']} slices "
                  f"(tumor on {walk['tumor_slices']}; {walk['encoder_runs']} encodings; 3D Dice {walk['dice']:.3f})")
        results[device] = figures
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
