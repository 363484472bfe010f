"""Speed of the anatomy-guidance steps at clinical size, against scipy baselines.

Input: the test data's word_label_map.nii.gz (512 x 512 x 178, 0.94 x 0.94 x 3 mm).
Prints median wall times (seconds) and speed-ups, all measured in one run:

    .venv/bin/python benchmarks/bench_guidance.py [--repeats 5] [--json out.json]

Targets (issue #2): OOI derivation (union + 5 mm dilation) <= 0.3 s median on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict

import numpy as np
from scipy import ndimage
from timing import median_seconds  # benchmarks/timing.py

from OrganGuidanceLib.crop import body_crop_box
from OrganGuidanceLib.guidance import bowel_wall_mask, organ_union
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.io import read_image
from OrganGuidanceLib.labels import word_convention
from OrganGuidanceLib.morphology import ball, dilate_mm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Testing"))
from test_data import data_file_or_exit  # SLICERCRC_TEST_DATA, ../shared/data or the fetch cache

DILATION_MM = 5.0
WALL_MM = 3.0



def pseudo_ct(labels: Image, seed: int = 0) -> Image:
    """A CT-like volume for the body crop: air outside an elliptic body, fat, organs at 60 HU."""
    nz, ny, nx = labels.shape
    y, x = np.ogrid[:ny, :nx]
    body = ((y - ny / 2) / (0.42 * ny)) ** 2 + ((x - nx / 2) / (0.47 * nx)) ** 2 <= 1
    ct = np.full(labels.shape, -1000, np.int16)
    ct[:, body] = -90
    ct[labels.array > 0] = 60
    ct[:, body & (((y - ny / 2) / (0.40 * ny)) ** 2 + ((x - nx / 2) / (0.45 * nx)) ** 2 > 1)] = 55  # muscle rim
    noise = np.random.default_rng(seed).normal(0, 15, size=ct.shape[1:]).astype(np.int16)
    return labels.with_array(ct + noise, "pseudo CT")


def scipy_largest_component_box(ct: Image) -> tuple:
    components, count = ndimage.label(ct.array > 50, structure=np.ones((3, 3, 3)))
    largest = np.argmax(np.bincount(components.ravel())[1:]) + 1
    return ndimage.find_objects((components == largest).astype(np.uint8))[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, default=None, help="default: the test data's word_label_map.nii.gz")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline-repeats", type=int, default=1, help="scipy baselines are slow")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    args.input = args.input or data_file_or_exit("word_label_map.nii.gz")

    labels = read_image(args.input)
    values = word_convention().ooi_label_values()
    spacing = labels.spacing_zyx
    kernel = ball(DILATION_MM, spacing)
    print(f"input {args.input.name}: {labels.shape[::-1]} voxels (x,y,z), spacing {labels.spacing} mm, "
          f"{labels.array.size / 1e6:.1f} M voxels; OOI labels {values}")

    def ours_ooi() -> np.ndarray:
        return dilate_mm(organ_union(labels.array, values), DILATION_MM, spacing)

    def scipy_ooi_ball() -> np.ndarray:
        return ndimage.binary_dilation(np.isin(labels.array, values), structure=kernel)

    # Algorithm 1 read literally: a 6-connected cross repeated t times (t = 5 mm / in-plane spacing).
    repeats_t = int(round(DILATION_MM / min(spacing)))

    def scipy_ooi_iterative() -> np.ndarray:
        cross = ndimage.generate_binary_structure(3, 1)
        return ndimage.binary_dilation(np.isin(labels.array, values), structure=cross, iterations=repeats_t)

    np.testing.assert_array_equal(ours_ooi(), scipy_ooi_ball())  # same answer before timing it
    ooi0 = labels.with_array(organ_union(labels.array, values), "OOI0")

    def scipy_wall() -> np.ndarray:
        wall_kernel = ball(WALL_MM, spacing)
        mask = ooi0.array
        return ndimage.binary_dilation(mask, wall_kernel) ^ ndimage.binary_erosion(mask, wall_kernel, border_value=1)

    np.testing.assert_array_equal(bowel_wall_mask(ooi0, WALL_MM).array, scipy_wall())
    ct = pseudo_ct(labels)
    ours_box = body_crop_box(ct, margin_mm=0).slices
    assert ours_box == scipy_largest_component_box(ct), (ours_box, scipy_largest_component_box(ct))

    rows: Dict[str, Dict[str, float]] = {}
    cases = [
        ("OOI: union + 5 mm dilation", ours_ooi, [("scipy binary_dilation, same ball", scipy_ooi_ball),
                                                 (f"scipy iterative cross x{repeats_t}", scipy_ooi_iterative)]),
        ("bowel wall: 3 mm dilate XOR erode", lambda: bowel_wall_mask(ooi0, WALL_MM),
         [("scipy dilation/erosion, same ball", scipy_wall)]),
        ("body crop: HU>50 largest CC box", lambda: body_crop_box(ct, margin_mm=0),
         [("scipy label + bincount", lambda: scipy_largest_component_box(ct))]),
    ]
    print(f"\n{'step':38s} {'ours (s)':>9s}  {'baseline':36s} {'base (s)':>9s} {'speed-up':>9s}")
    for name, ours, baselines in cases:
        ours_time = median_seconds(ours, args.repeats)
        rows[name] = {"ours_s": ours_time}
        for base_name, base in baselines:
            base_time = median_seconds(base, args.baseline_repeats)
            rows[name][base_name] = base_time
            print(f"{name:38s} {ours_time:9.3f}  {base_name:36s} {base_time:9.3f} {base_time / ours_time:8.1f}x")
    target = rows["OOI: union + 5 mm dilation"]["ours_s"]
    print(f"\nOOI derivation median {target:.3f} s (target <= 0.300 s): {'OK' if target <= 0.3 else 'OVER TARGET'}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
