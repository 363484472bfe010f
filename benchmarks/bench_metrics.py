"""Speed and agreement of ``compute_metrics`` against DeepMind's and MONAI's implementations.

Input: the test data's word_label_map.nii.gz (512 x 512 x 178, 0.94 x 0.94 x 3 mm);
reference = colon (WORD label 10), prediction = colon eroded by 2 mm OR shifted by
6 voxels in x (a plausible imperfect segmentation). All three run on the full volume.

    .venv/bin/python benchmarks/bench_metrics.py [--repeats 3] [--json out.json]

DeepMind (``surface-distance``) is the definition we implement: HD95 and NSD must
agree. MONAI is printed for context: ``compute_surface_dice(use_subvoxels=True)``
uses the same surfels and should agree; ``compute_hausdorff_distance`` measures
between boundary *voxels* (not surfels), unweighted, with interpolated percentiles,
so its HD95 differs by a fraction of a voxel.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np

from CRCSegmentationLib.measurement.metrics import compute_metrics
from OrganGuidanceLib.io import read_image
from OrganGuidanceLib.morphology import erode_mm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Testing"))
from test_data import data_file_or_exit  # SLICERCRC_TEST_DATA, ../shared/data or the fetch cache

TOLERANCE_MM = 4.0


def timed(function: Callable[[], object], repeats: int) -> Tuple[float, object]:
    times: List[float] = []
    result = None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def deepmind_metrics(prediction: np.ndarray, reference: np.ndarray, spacing) -> Dict[str, float]:
    import surface_distance

    distances = surface_distance.compute_surface_distances(reference, prediction, spacing)
    return {"hd95": surface_distance.compute_robust_hausdorff(distances, 95),
            "nsd": surface_distance.compute_surface_dice_at_tolerance(distances, TOLERANCE_MM)}


def monai_metrics(prediction: np.ndarray, reference: np.ndarray, spacing) -> Dict[str, float]:
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    # One-hot (background, colon) with batch and channel axes, as MONAI expects.
    y_pred = torch.from_numpy(np.stack([~prediction, prediction])[None])
    y = torch.from_numpy(np.stack([~reference, reference])[None])
    hd95 = compute_hausdorff_distance(y_pred, y, percentile=95, spacing=list(spacing))
    nsd = compute_surface_dice(y_pred, y, [TOLERANCE_MM], spacing=list(spacing), use_subvoxels=True)
    return {"hd95": float(hd95[0, 0]), "nsd": float(nsd[0, 0])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=None, help="default: the test data's word_label_map.nii.gz")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    args.input = args.input or data_file_or_exit("word_label_map.nii.gz")
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # surface_distance uses old scipy namespaces

    labels = read_image(args.input, name="word")
    reference = labels.array == 10
    spacing = labels.spacing_zyx
    prediction = erode_mm(reference, 2.0, spacing)
    prediction[:, :, 6:] |= reference[:, :, :-6]
    print(f"{args.input.name}: {labels.shape} voxels, spacing (z, y, x) {spacing} mm, "
          f"colon {reference.sum()} voxels, prediction {prediction.sum()} voxels")

    rows: Dict[str, Dict[str, float]] = {}
    seconds, ours = timed(lambda: compute_metrics(prediction, reference, spacing, TOLERANCE_MM), args.repeats)
    rows["ours (edt)"] = {"seconds": seconds, "hd95": ours.hd95, "nsd": ours.nsd}
    seconds, result = timed(lambda: deepmind_metrics(prediction, reference, spacing), 1)
    rows["deepmind surface-distance"] = {"seconds": seconds, **result}
    try:
        seconds, result = timed(lambda: monai_metrics(prediction, reference, spacing), 1)
        rows["monai"] = {"seconds": seconds, **result}
    except ImportError:
        print("MONAI not installed: skipped")

    for name, row in rows.items():
        print(f"{name:28s} {row['seconds']:7.3f} s   HD95 {row['hd95']:.6f} mm   NSD@{TOLERANCE_MM:g}mm {row['nsd']:.10f}")
    reference_row = rows["deepmind surface-distance"]
    print(f"ours vs DeepMind: |dHD95| {abs(ours.hd95 - reference_row['hd95']):.2e} mm, "
          f"|dNSD| {abs(ours.nsd - reference_row['nsd']):.2e}; speed-up x{reference_row['seconds'] / rows['ours (edt)']['seconds']:.1f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
