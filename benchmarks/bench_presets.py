"""FLARE24's fast inference preset against nnU-Net's default settings: one run each, same CT and model.

    .venv/bin/python benchmarks/bench_presets.py [--model demo_phantom] [--ct CT --organs ORGANS] [--device auto]

Default CT: ts_example_ct (real, 3 mm) with its TotalSegmentator organs, through the test-data lookup.
Prints tiles run, model time, FLARE's efficiency measures (efficiency.py) and the Dice between the two
tumor masks; goal (issue 11): fast <= 0.3 x the default's time on the CPU with Dice >= 0.97.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from CRCSegmentationLib.core.segmentation import SegmentationParameters
from CRCSegmentationLib.models.open import open_model
from OrganGuidanceLib.choices import DEVICES
from OrganGuidanceLib.guidance import MOSSource, run_guidance
from OrganGuidanceLib.io import read_image
from OrganGuidanceLib.labels import load_convention

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Testing"))
from test_data import data_file_or_exit  # SLICERCRC_TEST_DATA, ../shared/data or the fetch cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo_phantom", help="model folder or catalogue name")
    parser.add_argument("--ct", type=Path)
    parser.add_argument("--organs", type=Path)
    parser.add_argument("--convention", default="totalsegmentator")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    args = parser.parse_args()
    ct = read_image(args.ct or data_file_or_exit("ts_example_ct.nii.gz"), name="CT")
    organs = read_image(args.organs or data_file_or_exit("ts_example_ct_seg_total_v2.nii.gz"), name="organs")
    guidance = run_guidance(ct, [MOSSource(organs, load_convention(args.convention))])
    model = open_model(args.model)
    results = {}
    for preset in ("default", "fast"):
        segmenter = model.segmenter(SegmentationParameters.for_preset(preset, device=args.device))
        results[preset] = segmenter.segment(ct, guidance)
        r = results[preset]
        print(f"{preset:8s} tiles {r.tiles[0]:3d}/{r.tiles[1]:3d}  model {r.timings['predict']:6.2f} s  "
              f"measures {r.efficiency}  tumor voxels {int(r.mask.array.sum())}")
    a, b = results["default"].mask.array > 0, results["fast"].mask.array > 0
    agreement = 1.0 if not (a.any() or b.any()) else 2.0 * np.sum(a & b) / (a.sum() + b.sum())
    ratio = results["fast"].timings["predict"] / results["default"].timings["predict"]
    print(f"fast / default time: {ratio:.2f} (goal <= 0.30); Dice between them: {agreement:.3f} (goal >= 0.97)")


if __name__ == "__main__":
    main()
