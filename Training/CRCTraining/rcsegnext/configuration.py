"""``crcseg rcsegnext-plans``: the nnU-Net configuration RCSegNeXt trains on, written into the dataset's plans.

nnU-Net's planner sizes the patch for its own network (a multiple of that network's poolings). RCSegNeXt
pools by its own rule (§2.1: 1 x 2 x 2 while the slices are at least twice as thick as the in-plane
spacing, then 2 x 2 x 2; total (4, 16, 16) on Dataset A), so it needs a patch that its total downsampling
divides. Following nnU-Net's own recipe for custom configurations ("inherits_from" in the plans file), a
configuration ``3d_fullres_rcsegnext`` is added next to ``3d_fullres``:

- it inherits everything (spacing, normalisation, preprocessed data: nothing is preprocessed again);
- its patch is the parent's, rounded down per axis to a multiple of both RCSegNeXt's and nnU-Net's
  default network's total downsampling, so both networks train on the very same patches (the paper's
  comparison, ``crcseg rcsegnext-compare``);
- ``"rcsegnext"`` holds the network options (width, r, s, the Table 3 block variants), which the trainer
  and our inference engine read (``CRCSegmentationLib.networks.rcsegnext.plans``).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from CRCSegmentationLib.networks.rcsegnext import total_downsampling
from CRCSegmentationLib.networks.rcsegnext.plans import (
    PLANS_OPTIONS_KEY,
    PatchSizeError,
    check_patch_size,
    config_for,
)
from CRCTraining.nnunet.planning import CONFIGURATION, PLANS
from OrganGuidanceLib.atomic import write_text_atomic
from OrganGuidanceLib.json_files import read_json
from OrganGuidanceLib.validation import InputError

RCSEGNEXT_CONFIGURATION = "3d_fullres_rcsegnext"
PAPER_PATCH_SIZE = (16, 320, 320)  # RCSegNeXt §3.1, Dataset A (z, y, x)
PAPER_BATCH_SIZE = 2  # §3.1, 3D networks


@dataclass
class RCSegNeXtPlan:
    """What ``crcseg rcsegnext-plans`` writes; the network options are RCSegNeXtConfig's fields."""

    network: Dict[str, Any] = field(default_factory=dict)  # e.g. {"isotropic_block": "res2next"}; {} = paper
    patch_size: Optional[Tuple[int, int, int]] = None  # None: the parent's, fitted
    batch_size: Optional[int] = None  # None: the parent's
    parent: str = CONFIGURATION
    name: str = RCSEGNEXT_CONFIGURATION

    @classmethod
    def paper(cls, **changes) -> "RCSegNeXtPlan":
        return cls(patch_size=PAPER_PATCH_SIZE, batch_size=PAPER_BATCH_SIZE, **changes)


def default_network_divisor(configuration: Dict[str, Any]) -> Tuple[int, ...]:
    """Total downsampling of nnU-Net's plans network: the product of its stage strides per axis."""
    strides = configuration["architecture"]["arch_kwargs"]["strides"]
    return tuple(int(math.prod(int(s[axis]) for s in strides)) for axis in range(len(strides[0])))


def fitted_patch(patch: Sequence[int], divisor: Sequence[int]) -> Tuple[int, ...]:
    """``patch`` rounded down to a multiple of ``divisor`` per axis (at least one multiple)."""
    return tuple(max(d, (int(p) // d) * d) for p, d in zip(patch, divisor))


def plans_file(dataset_id: int) -> Path:
    from CRCTraining.nnunet.env import dataset_name

    return Path(os.environ["nnUNet_preprocessed"]) / dataset_name(dataset_id) / f"{PLANS}.json"


def add_rcsegnext_configuration(path: Path, plan: RCSegNeXtPlan) -> Dict[str, Any]:
    """Add (or replace) ``plan.name`` in the plans file ``path``; returns the resolved configuration."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no nnU-Net plans; run `crcseg plan` first")
    plans = read_json(path)
    if plan.parent not in plans.get("configurations", {}):
        raise InputError(f"{path}: has no configuration '{plan.parent}' to inherit from "
                         f"(it has {sorted(plans.get('configurations', {}))})")
    parent = PlansManager(plans).get_configuration(plan.parent).configuration
    if len(parent["patch_size"]) != 3:
        raise InputError(f"{path}: '{plan.parent}' is a 2D configuration; RCSegNeXt is a 3D network")
    try:
        config = config_for(parent["spacing"], 1, 2, plan.network)
    except (TypeError, ValueError) as error:
        raise InputError(f"RCSegNeXt options {plan.network}: {error}") from error
    rcsegnext = total_downsampling(config)
    if plan.patch_size is not None:
        patch = tuple(int(p) for p in plan.patch_size)
        try:
            check_patch_size(patch, config, f"--patch-size for {path.parent.name}")
        except PatchSizeError as error:
            raise InputError(str(error)) from error
    else:
        both = tuple(math.lcm(a, b) for a, b in zip(rcsegnext, default_network_divisor(parent)))
        patch = fitted_patch(parent["patch_size"], both)
        if patch == tuple(both):  # a one-voxel deepest level: double the in-plane axes (the cheapest to grow)
            patch = (patch[0], *(2 * p for p in patch[1:]))
    entry: Dict[str, Any] = {"inherits_from": plan.parent, "patch_size": list(patch), PLANS_OPTIONS_KEY: plan.network}
    if plan.batch_size is not None:
        if plan.batch_size < 1:
            raise InputError(f"--batch-size {plan.batch_size}: must be at least 1")
        entry["batch_size"] = int(plan.batch_size)
    plans["configurations"][plan.name] = entry
    write_text_atomic(path, json.dumps(plans, indent=4))
    return PlansManager(plans).get_configuration(plan.name).configuration
