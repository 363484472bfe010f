"""RCSegNeXt in nnU-Net v2: the plans command, the trainers found and built by nnU-Net, their composition with the
AG-CRC and FLARE24 mixins, the paper's schedule, and a clear error for a patch the network cannot divide."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
from nnunet_tiny_plans import tiny_plans as nnunet_tiny_plans

from CRCSegmentationLib.networks.rcsegnext import RCSegNeXt, total_downsampling
from CRCSegmentationLib.networks.rcsegnext.plans import PatchSizeError
from CRCTraining.rcsegnext.configuration import (
    RCSEGNEXT_CONFIGURATION,
    RCSegNeXtPlan,
    add_rcsegnext_configuration,
    default_network_divisor,
)
from OrganGuidanceLib.validation import InputError

AG_SHAPE, AG_SPACING = (24, 64, 64), (5.0, 0.78, 0.78)  # test_psm_sampling's cases (CT + MOS + OOI, tumor)


def ag_plans(patch=(16, 32, 32)) -> dict:
    return nnunet_tiny_plans("Dataset998_AGSampling", AG_SHAPE, AG_SPACING, patch,
                             [[1, 3, 3], [3, 3, 3], [3, 3, 3]], [[1, 1, 1], [1, 2, 2], [2, 2, 2]])


def plans_with_rcsegnext(folder: Path, plans: dict, plan: Optional[RCSegNeXtPlan] = None) -> dict:
    plan = plan or RCSegNeXtPlan()
    path = folder / "nnUNetPlans.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plans))
    add_rcsegnext_configuration(path, plan)
    return json.loads(path.read_text())


def test_plans_command_fits_the_patch_to_both_networks(tmp_path):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = plans_with_rcsegnext(tmp_path, ag_plans(patch=(20, 40, 56)), RCSegNeXtPlan(network={"width": 16}))
    entry = plans["configurations"][RCSEGNEXT_CONFIGURATION]
    assert entry["inherits_from"] == "3d_fullres" and entry["rcsegnext"] == {"width": 16}
    resolved = PlansManager(plans).get_configuration(RCSEGNEXT_CONFIGURATION)
    # (5.0, 0.78, 0.78): two anisotropic levels, total downsampling (4, 16, 16); nnU-Net's tiny network (2, 4, 4)
    assert default_network_divisor(resolved.configuration) == (2, 4, 4)
    assert list(resolved.patch_size) == [20, 32, 48]  # rounded down to multiples of (4, 16, 16)
    assert resolved.spacing == list(AG_SPACING) and resolved.data_identifier == "nnUNetPlans_3d_fullres"
    assert plans["configurations"]["3d_fullres"]["patch_size"] == [20, 40, 56]  # the parent is untouched

    paper = plans_with_rcsegnext(tmp_path / "paper", ag_plans(), RCSegNeXtPlan.paper())
    assert paper["configurations"][RCSEGNEXT_CONFIGURATION]["patch_size"] == [16, 320, 320]
    assert paper["configurations"][RCSEGNEXT_CONFIGURATION]["batch_size"] == 2


def test_plans_command_refuses_a_patch_or_options_the_network_cannot_take(tmp_path):
    with pytest.raises(InputError, match=r"patch size \[16, 24, 32\] is not divisible by RCSegNeXt's total "
                                         r"downsampling \[4, 16, 16\]"):
        plans_with_rcsegnext(tmp_path, ag_plans(), RCSegNeXtPlan(patch_size=(16, 24, 32)))
    with pytest.raises(InputError, match="deepest level would be a single voxel"):
        plans_with_rcsegnext(tmp_path / "a", ag_plans(), RCSegNeXtPlan(patch_size=(4, 16, 16)))
    with pytest.raises(InputError, match="isotropic_block"):
        plans_with_rcsegnext(tmp_path / "b", ag_plans(), RCSegNeXtPlan(network={"isotropic_block": "mamba"}))
    with pytest.raises(InputError, match="no nnU-Net plans"):
        add_rcsegnext_configuration(tmp_path / "missing" / "nnUNetPlans.json", RCSegNeXtPlan())


def _trainer(tmp_path, monkeypatch, name: str, plans: dict, cases_writer, dataset_json: dict,
             configuration: str = RCSEGNEXT_CONFIGURATION):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from CRCTraining.nnunet.env import register_trainers

    preprocessed = tmp_path / "preprocessed" / plans["dataset_name"]
    cases_writer(preprocessed / "nnUNetPlans_3d_fullres")
    for variable, value in (("nnUNet_extTrainer", ""), ("nnUNet_preprocessed", str(preprocessed.parent)),
                            ("nnUNet_results", str(tmp_path / "results")), ("nnUNet_n_proc_DA", "0")):
        monkeypatch.setenv(variable, value)
    register_trainers()
    trainer_class = recursive_find_trainer_class_by_name(name)
    assert trainer_class.__module__ == "rcsegnext_trainers"  # found by nnU-Net as a top-level module
    return trainer_class(plans, configuration, "all", dataset_json, device=torch.device("cpu"))


AG_DATASET = {"labels": {"background": 0, "tumor": 1}, "channel_names": {"0": "CT", "1": "noNorm", "2": "noNorm"},
              "numTraining": 2, "file_ending": ".nii.gz"}


@pytest.mark.parametrize("name", ["nnUNetTrainerRCSegNeXt", "nnUNetTrainerRCSegNeXtAGCRC",
                                  "nnUNetTrainerRCSegNeXtOrganInterference"])
def test_trainer_builds_rcsegnext_without_deep_supervision_and_trains_a_step(tmp_path, monkeypatch, name):
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    from CRCTraining.agcrc.af_loss import AnatomyFocalizedLoss

    if name.endswith("OrganInterference"):  # FLARE24's cases: organs 1-3 + tumor 4
        from test_flare24_training import DATASET_JSON as dataset_json
        from test_flare24_training import SHAPE
        from test_flare24_training import write_cases as writer

        plans = nnunet_tiny_plans("Dataset997_OrganInterference", SHAPE, (1.6, 1.29, 1.29), (16, 16, 16),
                                  [[3, 3, 3]] * 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2]], batch_dice=True)
    else:
        from test_psm_sampling import write_preprocessed_cases

        plans, dataset_json = ag_plans(), AG_DATASET

        def writer(folder):
            return write_preprocessed_cases(folder, cases=2)

    plans = plans_with_rcsegnext(tmp_path / "plans", plans, RCSegNeXtPlan(network={"width": 8}))
    trainer = _trainer(tmp_path, monkeypatch, name, plans, writer, dataset_json)
    trainer.initialize()
    assert isinstance(trainer.network, RCSegNeXt) and not trainer.enable_deep_supervision
    assert trainer.network.config.width == 8 and trainer.network.config.spacing == tuple(trainer.configuration_manager.spacing)
    assert not isinstance(trainer.loss, DeepSupervisionWrapper)
    assert isinstance(trainer.loss, AnatomyFocalizedLoss) == name.endswith("AGCRC")
    train_loader, _ = trainer.get_dataloaders()
    batch = next(train_loader)
    assert torch.is_tensor(batch["target"])  # one target, not nnU-Net's deep-supervision list
    trainer.on_train_start = lambda: None  # noqa: E731 - train_step only needs the network, loss and optimiser
    before = [p.detach().clone() for p in trainer.network.parameters()]
    result = trainer.train_step(batch)
    assert np.isfinite(result["loss"])
    changed = [not torch.equal(a, b.detach()) for a, b in zip(before, trainer.network.parameters())]
    assert all(changed)  # every parameter got a gradient: nothing dead (DDP would refuse unused parameters)
    trainer.set_deep_supervision_enabled(True)  # nnU-Net calls it after validation: must be harmless


def test_paper_schedule_is_sgd_099_lr_001_poly_100_epochs(tmp_path, monkeypatch):
    from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
    from test_psm_sampling import write_preprocessed_cases

    plans = plans_with_rcsegnext(tmp_path / "plans", ag_plans(), RCSegNeXtPlan(network={"width": 8}))
    plans_copy = json.loads(json.dumps(plans))  # nnU-Net's trainer consumes keys of the dict it is given
    monkeypatch.delenv("CRCSEG_EPOCHS", raising=False)
    trainer = _trainer(tmp_path, monkeypatch, "nnUNetTrainerRCSegNeXtPaperSchedule", plans,
                       lambda f: write_preprocessed_cases(f, cases=2), AG_DATASET)
    assert trainer.num_epochs == 100
    trainer.initialize()
    optimizer, scheduler = trainer.optimizer, trainer.lr_scheduler
    assert type(optimizer) is torch.optim.SGD
    assert optimizer.defaults["lr"] == 0.01 and optimizer.defaults["momentum"] == 0.99
    assert isinstance(scheduler, PolyLRScheduler) and scheduler.max_steps == 100
    monkeypatch.setenv("CRCSEG_EPOCHS", "3")  # our schedule knob still wins over the paper's 100
    again = _trainer(tmp_path / "again", monkeypatch, "nnUNetTrainerRCSegNeXtPaperSchedule", plans_copy,
                     lambda f: write_preprocessed_cases(f, cases=2), AG_DATASET)
    assert again.num_epochs == 3


def test_a_patch_the_network_cannot_divide_fails_when_the_network_is_built(tmp_path, monkeypatch):
    """``nnUNetv2_train ... 3d_fullres -tr nnUNetTrainerRCSegNeXt`` on nnU-Net's own patch: a clear error at once."""
    from test_psm_sampling import write_preprocessed_cases

    plans = ag_plans(patch=(8, 24, 24))  # nnU-Net's tiny network divides it, RCSegNeXt (4, 16, 16) does not
    trainer = _trainer(tmp_path, monkeypatch, "nnUNetTrainerRCSegNeXt", plans,
                       lambda f: write_preprocessed_cases(f, cases=2), AG_DATASET, configuration="3d_fullres")
    with pytest.raises(PatchSizeError, match=r"patch size \[8, 24, 24\] is not divisible .* \[4, 16, 16\].*"
                                             r"crcseg rcsegnext-plans"):
        trainer.initialize()


def test_total_downsampling_follows_the_configuration_spacing():
    from CRCSegmentationLib.networks.rcsegnext import RCSegNeXtConfig

    assert total_downsampling(RCSegNeXtConfig(spacing=AG_SPACING)) == (4, 16, 16)
    assert total_downsampling(RCSegNeXtConfig(spacing=(1.6, 1.29, 1.29))) == (16, 16, 16)


def test_table3_command_prints_every_variant_against_the_paper(capsys):
    from CRCTraining.cli import main

    assert main(["rcsegnext-table3"]) == 0
    printed = capsys.readouterr().out
    rows = [line.split() for line in printed.splitlines() if line.split()[:1] in (["conv"], ["aninext"])]
    assert [(r[0], r[1]) for r in rows] == [("conv", "conv"), ("aninext", "conv"), ("aninext", "convnext"),
                                             ("aninext", "res2net"), ("aninext", "res2next"), ("aninext", "isonext")]
    assert rows[-1][2:5] == ["2,320,611", "2,759,363", "2.76"]  # ours (no dead shortcuts), public-code rule, paper
    assert all(abs(float(r[5])) < 1.0 for r in rows)  # within 1 % of Table 3 (percent column)
