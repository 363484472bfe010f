"""RCSegNeXt vs nnU-Net's default 3D network on the same patch and device (prints figures and ratios; not a test).

Both networks for the paper's Dataset A setting (§3.1: spacing 4.0 x 0.875 x 0.875 mm, patch 16 x 320 x 320,
batch 2, 1 input channel, 3 classes). nnU-Net's network is the one its planner makes for that spacing and
patch (``get_pool_and_conv_props``: strides, kernels and stages; 32 features doubling to 320, two convs per
stage, instance norm, deep supervision as it trains). Figures per network:

- parameters; multiply-accumulates for one patch (``torch.utils.flop_counter``);
- seconds per training iteration (forward, CE, backward, nnU-Net's SGD step) on a random batch;
- inference seconds per case: nnU-Net's sliding-window tile count for a ``--case`` volume (step 0.5, no
  mirroring) times the measured forward time of one tile.

    .venv/bin/python benchmarks/bench_rcsegnext.py [--patch 16 320 320] [--batch 2] [--case 20 320 320]
        [--threads 2] [--iterations 2] [--device cpu|cuda] [--json OUT.json]

Goals (issue 12): at most 1/20 of the parameters, and faster per training iteration.
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Dict, Sequence

import numpy as np
import torch

from CRCSegmentationLib.networks.rcsegnext import RCSegNeXtConfig, build_rcsegnext, total_downsampling
from CRCTraining.rcsegnext.compare import multiply_accumulates, seconds_per_iteration

PAPER_SPACING = (4.0, 0.875, 0.875)
PARAMETER_GOAL = 1 / 20


def nnunet_default_network(spacing: Sequence[float], patch: Sequence[int], in_channels: int, classes: int):
    """nnU-Net v2's planned PlainConvUNet for this spacing and patch (ExperimentPlanner's rules)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    _, pools, kernels, fitted, _ = get_pool_and_conv_props(spacing, patch, 4, 999999)
    if tuple(int(p) for p in fitted) != tuple(patch):
        raise SystemExit(f"patch {list(patch)}: nnU-Net's poolings need {list(map(int, fitted))}")
    stages = len(pools)
    return PlainConvUNet(in_channels, stages, [min(32 * 2 ** i, 320) for i in range(stages)], torch.nn.Conv3d,
                         kernels, pools, [2] * stages, classes, [2] * (stages - 1), True, torch.nn.InstanceNorm3d,
                         {"eps": 1e-5, "affine": True}, None, None, torch.nn.LeakyReLU, {"inplace": True},
                         deep_supervision=True)


def seconds_per_case(network: torch.nn.Module, patch: Sequence[int], case: Sequence[int], in_channels: int,
                     device: torch.device) -> Dict[str, float]:
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    steps = compute_steps_for_sliding_window(tuple(case), tuple(patch), 0.5)
    tiles = int(np.prod([len(s) for s in steps]))
    network = network.to(device).eval()
    if hasattr(network, "decoder") and hasattr(network.decoder, "deep_supervision"):
        network.decoder.deep_supervision = False  # as nnU-Net's predictor runs it
    tile = torch.randn(1, in_channels, *patch, device=device)
    with torch.no_grad():
        network(tile)  # warm-up
        start = time.perf_counter()
        network(tile)
        if device.type == "cuda":
            torch.cuda.synchronize()
        per_tile = time.perf_counter() - start
    return {"tiles": tiles, "seconds_per_tile": per_tile, "seconds_per_case": tiles * per_tile}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patch", type=int, nargs=3, default=[16, 320, 320])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--case", type=int, nargs=3, default=[20, 320, 320], help="volume for the inference figure")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=2, help="timed training steps per network")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    in_channels, classes = 1, 3
    rcsegnext = build_rcsegnext(RCSegNeXtConfig(in_channels, classes, spacing=PAPER_SPACING))
    if any(p % d for p, d in zip(args.patch, total_downsampling(rcsegnext.config))):
        raise SystemExit(f"patch {args.patch}: RCSegNeXt needs multiples of {total_downsampling(rcsegnext.config)}")
    networks = {"RCSegNeXt": rcsegnext,
                "nnU-Net 3D": nnunet_default_network(PAPER_SPACING, args.patch, in_channels, classes)}
    figures: Dict[str, Dict[str, float]] = {}
    for name, network in networks.items():
        sample = torch.randn(1, in_channels, *args.patch)
        batch = torch.randn(args.batch, in_channels, *args.patch)
        figures[name] = {
            "parameters": float(sum(p.numel() for p in network.parameters())),
            "gmacs_per_patch": multiply_accumulates(network.eval(), sample) / 1e9,
            "seconds_per_training_iteration": seconds_per_iteration(network, batch, classes, device, args.iterations),
            **seconds_per_case(network, args.patch, args.case, in_channels, device),
        }
        print(f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in figures[name].items()), flush=True)
    ours, base = figures["RCSegNeXt"], figures["nnU-Net 3D"]
    print(f"\npatch {args.patch}, batch {args.batch}, case {args.case}, {device.type}, {args.threads} threads")
    print(f"{'':34}{'RCSegNeXt':>14}{'nnU-Net 3D':>14}{'ratio':>9}")
    rows = (("parameters (M)", "parameters", 1e-6), ("GMACs per patch", "gmacs_per_patch", 1.0),
            ("s per training iteration", "seconds_per_training_iteration", 1.0),
            ("s per case (inference)", "seconds_per_case", 1.0))
    for label, key, scale in rows:
        print(f"{label:34}{ours[key] * scale:14.3f}{base[key] * scale:14.3f}{ours[key] / base[key]:9.3f}")
    ratio = ours["parameters"] / base["parameters"]
    print(f"goal parameters <= 1/20 of nnU-Net's: {ratio:.4f} {'met' if ratio <= PARAMETER_GOAL else 'NOT met'}; "
          f"faster per training iteration: "
          f"{'met' if ours['seconds_per_training_iteration'] < base['seconds_per_training_iteration'] else 'NOT met'}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"arguments": vars(args), "figures": figures}, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
