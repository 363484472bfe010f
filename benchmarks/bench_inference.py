"""Our OOI-restricted tumor inference vs nnU-Net's predictor on the full volume: same model, same CT.

Baseline: ``nnUNetPredictor.predict_single_npy_array`` on the whole CT grid with the three
channels (what ``nnUNetv2_predict`` does per case). Ours: ``TumorSegmenter.segment`` (body crop
∩ OOI box + margin; the full-volume tiles that touch it run), and its ``crop_input`` variant
(only the box goes to nnU-Net). Same predictor object and settings. Prints wall times, ratios
and the Dice between the masks inside the restricted box and inside the OOI (one run each,
after one warm-up of the predictor, as the issue asks).

    .venv/bin/python benchmarks/bench_inference.py --model BUNDLE_OR_RESULTS_FOLDER [--mirroring]
        [--ct CT --organs ORGANS | --phantom]
    default CT: ../shared/data/ts_example_ct.nii.gz with its TotalSegmentator labels (real, 3 mm);
    --phantom: a generated 80 x 128 x 128 phantom (4 x 2.9 x 2.9 mm, the demo model's spacing)

Goal (issue #4): our time <= 0.6 x nnU-Net's on CPU, Dice >= 0.99 inside the OOI box.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from CRCSegmentationLib.inference import SegmentationParameters, TumorSegmenter, build_input_channels
from CRCSegmentationLib.model_source import open_model
from OrganGuidanceLib.crop import CropBox
from OrganGuidanceLib.guidance import MOSSource, run_guidance
from OrganGuidanceLib.io import read_image
from OrganGuidanceLib.labels import load_convention

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEMO_MODEL = Path(__file__).resolve().parents[1] / "Resources" / "models" / "demo_phantom"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEMO_MODEL)
    parser.add_argument("--ct", type=Path, default=SHARED / "ts_example_ct.nii.gz")
    parser.add_argument("--organs", type=Path, default=SHARED / "ts_example_ct_seg_total_v2.nii.gz")
    parser.add_argument("--convention", default="totalsegmentator")
    parser.add_argument("--phantom", action="store_true", help="a generated phantom instead of --ct/--organs")
    parser.add_argument("--phantom-shape", type=int, nargs=3, default=(80, 128, 128), metavar=("Z", "Y", "X"),
                        help="phantom grid (voxels at 4 x 2.9 x 2.9 mm); a tall grid is a chest-to-pelvis scan")
    parser.add_argument("--mirroring", action="store_true", help="test-time mirroring in both runs")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    model = open_model(args.model)
    if args.phantom:
        from CRCTraining.phantom_dataset import make_phantom_case

        shape = tuple(args.phantom_shape)
        phantom = make_phantom_case(8, seed=11, shape_zyx=shape)
        ct, organs, args.ct = phantom.ct, phantom.labels, Path("phantom {}x{}x{}".format(*shape))
    else:
        ct, organs = read_image(args.ct, name=args.ct.name), read_image(args.organs, name="organs")
    guidance = run_guidance(ct, [MOSSource(organs, load_convention(args.convention))])
    # keep_within_ooi off: both runs are compared as raw network outputs (the post-processing takes ms).
    parameters = SegmentationParameters(mirroring=args.mirroring, keep_probabilities=False, keep_within_ooi=False)
    segmenter = TumorSegmenter(model, parameters)
    predictor = segmenter._predictor(segmenter.device)  # the very same nnU-Net predictor object
    properties = {"spacing": list(ct.spacing_zyx)}
    full_channels = build_input_channels(model.input_channels, ct, guidance, CropBox.full(ct.shape))

    predictor.predict_single_npy_array(full_channels[:, :8], properties)  # warm-up: threads, allocator

    started = time.perf_counter()
    baseline = np.asarray(predictor.predict_single_npy_array(full_channels, properties)) == model.tumor_label
    baseline_s = time.perf_counter() - started

    started = time.perf_counter()
    ours = segmenter.segment(ct, guidance)
    ours_s = time.perf_counter() - started

    # The faster variant: only the region goes to nnU-Net (its tiles fall elsewhere than on the full volume).
    segmenter.parameters = dataclasses.replace(parameters, crop_input=True)
    started = time.perf_counter()
    cropped = segmenter.segment(ct, guidance)
    cropped_s = time.perf_counter() - started

    # The baseline again, last: the first run of a process pays for allocations and caches the others reuse.
    started = time.perf_counter()
    predictor.predict_single_npy_array(full_channels, properties)
    baseline_again_s = time.perf_counter() - started

    reference_s = (baseline_s + baseline_again_s) / 2  # ratios against the mean of both baseline runs
    inside = np.zeros(ct.shape, bool)
    inside[ours.region.slices] = True
    ooi = guidance.ooi.array > 0
    figures = {
        "ct": str(args.ct), "shape_zyx": list(ct.shape), "spacing_xyz": list(ct.spacing),
        "model": str(args.model), "device": ours.device, "mirroring": args.mirroring,
        "restricted_box_zyx": [list(ours.region.start), list(ours.region.stop)],
        "restricted_fraction_of_voxels": float(np.prod(ours.region.shape) / np.prod(ct.shape)),
        "nnunet_full_volume_s": round(baseline_s, 2), "nnunet_full_volume_again_s": round(baseline_again_s, 2), "ours_restricted_s": round(ours_s, 2),
        "time_ratio_ours_over_nnunet": round(ours_s / reference_s, 3),
        "dice_inside_box": round(dice(ours.mask.array[inside] > 0, baseline[inside]), 4),
        "dice_inside_ooi": round(dice((ours.mask.array > 0) & ooi, baseline & ooi), 4),
        "tumor_voxels_ours": int(ours.mask.array.sum()), "tumor_voxels_nnunet": int(baseline.sum()),
        "tumor_voxels_nnunet_outside_box": int(baseline[~inside].sum()),
        "tiles_ours_of_full": list(ours.tiles),
        "crop_input_s": round(cropped_s, 2), "time_ratio_crop_input_over_nnunet": round(cropped_s / reference_s, 3),
        "dice_inside_box_crop_input": round(dice(cropped.mask.array[inside] > 0, baseline[inside]), 4),
        "dice_inside_ooi_crop_input": round(dice((cropped.mask.array > 0) & ooi, baseline & ooi), 4),
        "timings_ours_s": {k: round(v, 3) for k, v in ours.timings.items()},
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
