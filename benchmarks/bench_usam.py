"""Click latency of U-SAM point refinement on one 512 x 512 axial CT slice (prints figures; not a test).

Cold click: HU window + resize, image encoder (CNN + ViT-B), prompt encoder + decoder,
logits back to the slice, argmax (the first click on a slice, nothing cached).
Warm click: the same with the slice's encoding cached (prompt encoder + decoder + resize back),
the points moved a little at each click. Medians after warm-up; torch threads fixed.

    .venv/bin/python benchmarks/bench_usam.py [--checkpoint USAM.pt] [--ct DICOM_FOLDER_OR_FILE]
        [--clicks 20] [--cold 5] [--threads 2] [--device cpu|cuda|all] [--json OUT.json]
    default CT: ts_example_ct_dicom (real, 512 x 512 x 20) from the test-data folder, see
    Testing/test_data.py; no checkpoint: random
    init (the timing does not depend on the weights)

Goal (issue #5): warm click <= 100 ms median, cold click <= 1 s, on this CPU with 2 threads.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from CRCSegmentationLib.usam import load_usam_checkpoint, usam_with_sam_weights
from CRCSegmentationLib.usam.refinement import InteractiveSegmenter
from OrganGuidanceLib.io import read_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Testing"))
from test_data import data_file_or_exit  # SLICERCRC_TEST_DATA, ../shared/data or the fetch cache

WARM_GOAL_S = 0.100
COLD_GOAL_S = 1.0


def click_ras(image, k: int, offset: int) -> np.ndarray:
    """A point near the slice centre, moved by ``offset`` voxels (so every click differs)."""
    nz, ny, nx = image.shape
    return (image.index_to_ras @ np.array([nx // 2 + offset % 7, ny // 2 + offset % 5, k, 1.0]))[:3]


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(model, image, device: str, clicks: int, cold_repeats: int) -> Dict[str, float]:
    engine = InteractiveSegmenter(model, device=device, cache_size=2)
    k = image.shape[0] // 2
    slices = [(k + n) % image.shape[0] for n in range(cold_repeats + 1)]
    cold: List[float] = []
    for n, slice_index in enumerate(slices):  # the first one warms the kernels up and is not counted
        engine.cache.clear()
        synchronize(device)
        started = time.perf_counter()
        engine.refine(image, click_ras(image, slice_index, 0)[None], [1])
        synchronize(device)
        if n:
            cold.append(time.perf_counter() - started)
    warm: List[float] = []
    for n in range(clicks + 3):  # 3 warm-up clicks
        points = np.array([click_ras(image, k, n), click_ras(image, k, n + 3)])
        synchronize(device)
        started = time.perf_counter()
        engine.refine(image, points, [1, 0])
        synchronize(device)
        if n >= 3:
            warm.append(time.perf_counter() - started)
    encoder_runs = engine.cache.misses
    return {
        "cold_median_s": statistics.median(cold),
        "warm_median_s": statistics.median(warm),
        "warm_p90_s": float(np.percentile(warm, 90)),
        "encoder_runs": encoder_runs,
        "clicks": clicks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--ct", type=Path, default=None, help="default: the test data's ts_example_ct_dicom")
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--cold", type=int, default=5, help="cold clicks measured (each on a fresh slice)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.ct = args.ct or data_file_or_exit("ts_example_ct_dicom")

    torch.set_num_threads(args.threads)
    image = read_image(args.ct, name=args.ct.name)
    print(f"CT {args.ct.name}: {image.shape[2]} x {image.shape[1]} pixels per slice, {image.shape[0]} slices; "
          f"torch {torch.__version__}, {args.threads} threads")
    if args.checkpoint is not None:
        model = load_usam_checkpoint(args.checkpoint)
        print(f"model: {args.checkpoint}")
    else:
        torch.manual_seed(0)
        model, _ = usam_with_sam_weights()
        print("model: random init (timing does not depend on the weights)")
    model.eval()
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    results = {}
    for device in devices:
        if device == "cuda" and not torch.cuda.is_available():
            print("cuda: not available, skipped")
            continue
        figures = measure(model.to(device), image, device, args.clicks, args.cold)
        results[device] = figures
        name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
        print(f"{device} ({name}):")
        print(f"  cold click (preprocess + encoder + decoder): median {figures['cold_median_s'] * 1000:8.1f} ms"
              f"  = {figures['cold_median_s'] / COLD_GOAL_S:.2f} x the {COLD_GOAL_S * 1000:.0f} ms goal")
        print(f"  warm click (decoder, cached encoding):       median {figures['warm_median_s'] * 1000:8.1f} ms"
              f"  = {figures['warm_median_s'] / WARM_GOAL_S:.2f} x the {WARM_GOAL_S * 1000:.0f} ms goal"
              f"  (p90 {figures['warm_p90_s'] * 1000:.1f} ms, {figures['clicks']} clicks)")
        print(f"  encoder runs: {figures['encoder_runs']} ({args.cold + 1} cold clicks, warm clicks reuse one)")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
