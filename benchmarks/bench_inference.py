"""Our OOI-restricted tumor inference vs nnU-Net's predictor on the full volume: same model, same CT.

Baseline: ``nnUNetPredictor.predict_single_npy_array`` on the whole CT grid with the three
channels (what ``nnUNetv2_predict`` does per case), kept within the OOI as our post-processing
does. Ours, same predictor object and settings, one run each after one warm-up (as the issue asks):

- ``default``: ``TumorSegmenter.segment`` with its defaults: the full-volume tile grid, only the
  tiles whose Gaussian weight reaches 5 % of their peak on an OOI voxel run (min_tile_weight);
- ``exact``: min_tile_weight 0: every full-volume tile touching body crop ∩ OOI box + margin runs;
- ``crop_input``: only the box goes to nnU-Net (its own, tighter tile grid).

Prints wall times, tiles, ratios, and the Dice with the baseline inside the OOI (where the result
is defined) and against the phantom's ground truth when there is one.

    .venv/bin/python benchmarks/bench_inference.py --model BUNDLE_OR_RESULTS_FOLDER [--mirroring]
        [--ct CT --organs ORGANS | --phantom]
    default CT: ts_example_ct.nii.gz with its TotalSegmentator labels (real, 3 mm), from the test-data
    folder (Testing/test_data.py);
    --phantom: a generated 80 x 128 x 128 phantom (4 x 2.9 x 2.9 mm, the demo model's spacing)

Goal (issue #4): our time <= 0.6 x nnU-Net's on CPU, Dice >= 0.99 with it inside the OOI.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from CRCSegmentationLib.core.segmentation import SegmentationParameters
from CRCSegmentationLib.models.open import open_model
from CRCSegmentationLib.nnunet.segmenter import NNUNetSegmenter as TumorSegmenter
from CRCSegmentationLib.nnunet.segmenter import build_input_channels
from OrganGuidanceLib.crop import CropBox
from OrganGuidanceLib.guidance import MOSSource, run_guidance
from OrganGuidanceLib.io import read_image
from OrganGuidanceLib.labels import load_convention

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Testing"))
from test_data import data_file_or_exit  # SLICERCRC_TEST_DATA, ../shared/data or the fetch cache


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo_phantom", help="model folder or catalogue name")
    parser.add_argument("--ct", type=Path, default=None, help="default: the test data's ts_example_ct.nii.gz")
    parser.add_argument("--organs", type=Path, default=None, help="default: its ts_example_ct_seg_total_v2.nii.gz")
    parser.add_argument("--convention", default="totalsegmentator")
    parser.add_argument("--phantom", action="store_true", help="a generated phantom instead of --ct/--organs")
    parser.add_argument("--phantom-shape", type=int, nargs=3, default=(80, 128, 128), metavar=("Z", "Y", "X"),
                        help="phantom grid (voxels at 4 x 2.9 x 2.9 mm); a tall grid is a chest-to-pelvis scan")
    parser.add_argument("--mirroring", action="store_true", help="test-time mirroring in both runs")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each variant, interleaved; medians reported")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not args.phantom:  # real CT by default, from the test-data folder
        args.ct = args.ct or data_file_or_exit("ts_example_ct.nii.gz")
        args.organs = args.organs or data_file_or_exit("ts_example_ct_seg_total_v2.nii.gz")

    model = open_model(args.model)
    if args.phantom:
        from CRCTraining.data.phantoms_ct import make_phantom_case

        shape = tuple(args.phantom_shape)
        phantom = make_phantom_case(8, seed=11, shape_zyx=shape)
        ct, organs, args.ct = phantom.ct, phantom.labels, Path("phantom {}x{}x{}".format(*shape))
    else:
        ct, organs = read_image(args.ct, name=args.ct.name), read_image(args.organs, name="organs")
    truth = None
    if args.phantom:
        truth = phantom.tumor.array > 0
    guidance = run_guidance(ct, [MOSSource(organs, load_convention(args.convention))])
    parameters = SegmentationParameters(mirroring=args.mirroring, keep_probabilities=False)
    segmenter = TumorSegmenter(model, parameters)
    predictor = segmenter._predictor(segmenter.device)  # the very same nnU-Net predictor object
    properties = {"spacing": list(ct.spacing_zyx)}
    full_channels = build_input_channels(model.input_channels, ct, guidance, CropBox.full(ct.shape))
    ooi = guidance.ooi.array > 0

    predictor.predict_single_npy_array(full_channels[:, :8], properties)  # warm-up: threads, allocator

    def baseline_run():
        started = time.perf_counter()
        labels = np.asarray(predictor.predict_single_npy_array(full_channels, properties)) == model.tumor_label
        return labels & ooi, time.perf_counter() - started  # kept within the OOI, as our post-processing

    # Interleaved repeats, medians: a busy machine slows all variants alike instead of one of them.
    variants = {"default": {}, "exact": {"min_tile_weight": 0.0}, "crop_input": {"crop_input": True}}
    baseline_times, times, results = [], {name: [] for name in variants}, {}
    for _ in range(max(1, args.repeats)):
        baseline, seconds = baseline_run()
        baseline_times.append(seconds)
        for name, change in variants.items():
            segmenter.parameters = dataclasses.replace(parameters, **change)
            started = time.perf_counter()
            results[name] = segmenter.segment(ct, guidance)
            times[name].append(time.perf_counter() - started)
    reference_s = float(np.median(baseline_times))

    figures = {
        "ct": str(args.ct), "shape_zyx": list(ct.shape), "spacing_xyz": list(ct.spacing),
        "model": str(args.model), "device": results["default"].device, "mirroring": args.mirroring,
        "ooi_fraction_of_voxels": round(float(ooi.mean()), 4),
        "repeats": len(baseline_times), "nnunet_full_volume_s": round(reference_s, 2),
        "nnunet_full_volume_runs_s": [round(t, 2) for t in baseline_times],
        "tumor_voxels_nnunet_in_ooi": int(baseline.sum()),
    }
    if truth is not None:
        figures["dice_nnunet_vs_truth"] = round(dice(baseline, truth), 4)
    for name, result in results.items():
        seconds = float(np.median(times[name]))
        mask = result.mask.array > 0
        figures[name] = {
            "seconds": round(seconds, 2), "time_ratio_over_nnunet": round(seconds / reference_s, 3),
            "tiles_run_of_full": list(result.tiles),
            "dice_with_nnunet_inside_ooi": round(dice(mask & ooi, baseline), 4),
            "region_zyx": [list(result.region.start), list(result.region.stop)],
            "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
        }
        if truth is not None:
            figures[name]["dice_vs_truth"] = round(dice(mask, truth), 4)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
