"""HCF time per CT: slice classifier on every slice + SANet on the slices it passes, vs SANet on every slice.

The paper's case for the cascade (Sec. 3.1) is accuracy, but it also saves time: SANet (the expensive
network) runs only on the slices the ResNet18 classifier passes. Figures, on one phantom CT
(``phantom_dataset.make_phantom_case``) at the network input ``--size`` (512 in the paper):

- HCF: ``open_model(bundle).segmenter(...).segment(ct)``, the Lib's inference (``hcf_segmenter``), at the
  bundle's own threshold and, with ``--pass-fraction F``, at the threshold that lets F of the slices pass;
- SANet on every slice: the same preprocessing, SANet over all slices in batches and the masks back on
  the slice grid (``hcf_preprocessing``), no classifier;
- the fraction of slices passed and the time ratio HCF / SANet-only.

With random (or briefly trained) weights the classifier's pass fraction is arbitrary: ``--pass-fraction``
sets it (paper Table 1: 10-18 % of slices are abnormal), or ``--model`` times a trained bundle.

    .venv/bin/python benchmarks/bench_hcf.py [--size 512] [--pass-fraction 0.2] [--model BUNDLE]
        [--slices 40] [--threads 2] [--device cpu|cuda] [--repeats 1] [--json OUT.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

from CRCSegmentationLib.core.segmentation import SegmentationParameters
from CRCSegmentationLib.hcf.bundle import write_hcf_bundle
from CRCSegmentationLib.hcf.preprocessing import SliceDatasetConfig, input_to_slice, to_network_input
from CRCSegmentationLib.hcf.segmenter import majority_vote
from CRCSegmentationLib.models.open import open_model
from CRCSegmentationLib.networks.hcf import build_sanet, build_slice_classifier

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import median_seconds

BATCH = 16  # hcf.segmenter.DEFAULT_BATCH_SIZE


def random_bundle(folder: Path, size: int) -> Path:
    torch.manual_seed(0)
    classifier, sanet = build_slice_classifier(1, 2), build_sanet(2, 1)
    return write_hcf_bundle(folder, [classifier.state_dict()], [sanet.state_dict()], SliceDatasetConfig(size=size),
                            "HCF benchmark (random weights)")


def bundle_with_threshold(source: Path, folder: Path, threshold: float) -> Path:
    """A copy of the bundle ``source`` whose classifier threshold is ``threshold``."""
    model = open_model(source)
    states = [[model.loaded_checkpoints[model.folder / relative] for relative in stage.weight_files()]
              for stage in (model.hcf.classifier, model.hcf.sanet)]
    return write_hcf_bundle(folder, states[0], states[1], model.hcf.slice_config, model.name,
                            classifier_threshold=threshold, keep_components=model.hcf.keep_components)


def threshold_for(probabilities: np.ndarray, fraction: float) -> float:
    """The threshold in (0, 1) whose majority vote passes the fraction of slices closest to ``fraction``."""
    values = np.unique(np.clip(probabilities, 1e-6, 1 - 1e-6))
    candidates = np.concatenate([[1e-6], (values[:-1] + values[1:]) / 2, values, [1 - 1e-6]])
    passed = np.array([majority_vote(probabilities, t).mean() for t in candidates])
    return float(candidates[int(np.argmin(np.abs(passed - fraction)))])


def sanet_every_slice(sanet: torch.nn.Module, ct, config: SliceDatasetConfig, device: torch.device) -> np.ndarray:
    """SANet alone: every axial slice preprocessed, segmented in batches and put back on the slice grid."""
    volume = np.moveaxis(ct.array, ct.axial_axis, 0)
    mask = np.zeros(volume.shape, np.uint8)
    with torch.inference_mode():
        for start in range(0, volume.shape[0], BATCH):
            indices = range(start, min(start + BATCH, volume.shape[0]))
            inputs = [to_network_input(volume[k], config) for k in indices]
            x = torch.from_numpy(np.stack([image for image, _ in inputs])[:, None]).to(device)
            tumor = (torch.softmax(sanet(x).float(), dim=1)[:, 1] > 0.5).cpu().numpy().astype(np.uint8)
            for k, (_, box), prediction in zip(indices, inputs, tumor):
                mask[k] = input_to_slice(prediction, box, volume.shape[1:], order=0)
    return mask


def time_hcf(bundle: Path, ct, device: str, repeats: int) -> Dict[str, float]:
    segmenter = open_model(bundle).segmenter(SegmentationParameters(device=device, keep_probabilities=False))
    result = {}

    def run():
        result["segmentation"] = segmenter.segment(ct)

    seconds = median_seconds(run, repeats)
    counts = result["segmentation"].slice_counts
    return {"seconds": seconds, "slices": counts["slices"], "passed": counts["abnormal"],
            "pass_fraction": counts["abnormal"] / counts["slices"],
            "threshold": segmenter.model.hcf.classifier_threshold}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="network input (paper: 512)")
    parser.add_argument("--pass-fraction", type=float, default=0.2,
                        help="also time HCF at the threshold passing this fraction of slices (default 0.2; "
                        "negative: only the bundle's own threshold)")
    parser.add_argument("--model", type=Path, help="a trained HCF bundle (default: random weights)")
    parser.add_argument("--slices", type=int, default=40, help="axial slices of the phantom CT (default 40)")
    parser.add_argument("--in-plane", type=int, default=128, help="phantom voxels in x and y (default 128)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per figure (median)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from CRCTraining.data.phantoms_ct import make_phantom_case

    spacing = 280.0 / args.in_plane  # a 280 mm field of view, as the default phantom's
    ct = make_phantom_case(0, seed=0, shape_zyx=(args.slices, args.in_plane, args.in_plane),
                           spacing_xyz=(spacing, spacing, 4.0)).ct
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as work:
        bundle = args.model or random_bundle(Path(work) / "random", args.size)
        model = open_model(bundle)
        config = model.hcf.slice_config
        segmenter = model.segmenter(SegmentationParameters(device=args.device, keep_probabilities=False))
        segmenter.segment(ct)  # warm-up (kernels, allocator)
        figures: Dict[str, object] = {"ct_shape": list(ct.shape), "size": config.size, "device": args.device,
                                      "threads": args.threads, "weights": str(args.model or "random")}
        figures["hcf"] = time_hcf(bundle, ct, args.device, args.repeats)
        fraction: Optional[float] = args.pass_fraction if args.pass_fraction >= 0 else None
        if fraction is not None:
            probabilities = segmenter.classifier.classify(ct).probabilities
            forced = bundle_with_threshold(bundle, Path(work) / "forced", threshold_for(probabilities, fraction))
            figures["hcf_forced"] = time_hcf(forced, ct, args.device, args.repeats)
        sanet = build_sanet(2, 1)
        sanet.load_state_dict(model.loaded_checkpoints[model.folder / model.hcf.sanet.weight_files()[0]])
        sanet = sanet.eval().to(device)
        figures["sanet_only_seconds"] = median_seconds(lambda: sanet_every_slice(sanet, ct, config, device),
                                                       args.repeats)
    print(f"HCF per CT: phantom {ct.shape[0]} x {ct.shape[1]} x {ct.shape[2]}, input {config.size} x {config.size}, "
          f"{args.device} ({args.threads} threads), weights: {figures['weights']}")
    sanet_seconds = figures["sanet_only_seconds"]
    print(f"  SANet on every slice ({ct.shape[0]} slices):           {sanet_seconds:8.2f} s")
    for key, label in (("hcf", "bundle threshold"), ("hcf_forced", f"pass fraction {fraction}")):
        if key in figures:
            f = figures[key]
            print(f"  HCF, {label:<22} (threshold {f['threshold']:.4f}): {f['seconds']:8.2f} s, classifier passes "
                  f"{f['passed']}/{f['slices']} slices ({f['pass_fraction']:.2f}), time ratio HCF / SANet-only "
                  f"{f['seconds'] / sanet_seconds:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
