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


def add_shard_argument(parser: argparse.ArgumentParser) -> None:
    """``--shard I/N`` (``OrganGuidanceLib.shards``); else a SLURM job array's or torchrun's, else the whole run."""
    parser.add_argument("--shard", metavar="I/N", default=None,
                        help="take shard I of N of the cases (sorted by name, round robin) and write into the same "
                             "output folder as the other shards (default: from SLURM_ARRAY_TASK_ID/"
                             "SLURM_ARRAY_TASK_COUNT, or torchrun's RANK/WORLD_SIZE with one GPU per process "
                             "(LOCAL_RANK); else all cases). `crcseg summarize OUT` merges the shards' summaries")


def shard_from_arguments(args: argparse.Namespace):
    """The run's ``Shard`` (``--shard`` wins over the environment), or None; under torchrun, pins this process's GPU
    (``LOCAL_RANK``) when the device is cuda or auto and GPUs are present."""
    from OrganGuidanceLib.shards import Shard

    shard = Shard.resolve(getattr(args, "shard", None))
    on_cpu_or_mps = getattr(args, "device", DEFAULT_DEVICE) in ("cpu", "mps")
    if shard is not None and shard.gpu is not None and not on_cpu_or_mps:  # cuda, or auto
        import torch

        if torch.cuda.is_available() and shard.gpu < torch.cuda.device_count():
            torch.cuda.set_device(shard.gpu)  # "cuda" then means this process's GPU
    return shard
