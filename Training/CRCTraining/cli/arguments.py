"""The options several ``crcseg`` commands share, written once (public: every command module imports them)."""
from __future__ import annotations

import argparse
from pathlib import Path

from OrganGuidanceLib.choices import DEFAULT_DEVICE, DEVICES


def add_device_argument(parser: argparse.ArgumentParser, help: str = "") -> None:
    """``--device auto|cuda|mps|cpu`` (``OrganGuidanceLib.choices.DEVICES``); ``auto``: CUDA, then MPS, then the CPU."""
    parser.add_argument("--device", choices=DEVICES, default=DEFAULT_DEVICE,
                        help=help or "where the network runs (auto: CUDA when present, else the CPU)")


def add_workdir_arguments(parser: argparse.ArgumentParser, dataset: bool = True) -> None:
    parser.add_argument("--workdir", type=Path, help="folder for nnU-Net's raw/preprocessed/results folders "
                        "(default: the nnUNet_raw, nnUNet_preprocessed, nnUNet_results environment variables)")
    if dataset:
        parser.add_argument("-d", "--dataset-id", type=int, required=True, help="nnU-Net dataset id, e.g. 501")


def add_schedule_arguments(parser: argparse.ArgumentParser, fold: str = "0") -> None:
    parser.add_argument("--fold", default=fold, help=f"cross-validation fold 0-4, or 'all' (default {fold})")
    add_device_argument(parser)
    parser.add_argument("--num-gpus", type=int, default=1, help="more than 1: nnU-Net's DDP training")
    parser.add_argument("--epochs", type=int, help="default: nnU-Net's 1000")
    parser.add_argument("--iterations", type=int, help="iterations per epoch (default: nnU-Net's 250)")
    parser.add_argument("--val-iterations", type=int, help="validation iterations per epoch (default 50)")
    parser.add_argument("--no-final-validation", action="store_true",
                        help="skip nnU-Net's sliding-window validation of the fold after training")
