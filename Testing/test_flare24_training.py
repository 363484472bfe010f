"""FLARE24 organ-interference training (§2.2): class-weighted Dice + CE (Eq. 1-3), class-first patch sampling
through nnU-Net's real loader, and the trainers as nnU-Net finds and builds them."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
from scipy import stats

from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from CRCTraining.class_first_sampling import (
    ClassFirstDataLoader, ClassFirstDatasetBlosc2, class_first, class_presence,
    nnunet_trainer_loader, presence_path, sampling_weights)
from CRCTraining.flare24_losses import ClassWeightedDCandCELoss, weighted_losses
from CRCTraining.flare24_weights import class_weights, normalised, ramped_weights, tumor_label
from CRCTraining.losses import AnatomyFocalizedLoss
from nnunet_tiny_plans import tiny_plans as nnunet_tiny_plans  # noqa: E402

NNUNET_SMOOTH = 1e-5


# --- (a) Eq. 1-3 ------------------------------------------------------------------------------------------------
def eq_1_to_3(logits: torch.Tensor, target: torch.Tensor, weights, batch_dice: bool,
              ignore_label: Optional[int] = None, smooth: float = NNUNET_SMOOTH) -> float:
    """FLARE24 Eq. 1-3 written out in numpy (float64), α_dc = α_ce = 0.5, w normalised by its sum.

    Eq. 1 over the foreground classes (nnU-Net's do_bg=False, weights renormalised over them), soft Dice with
    nnU-Net's smooth, per sample (then averaged) or over the batch (batch_dice); Eq. 2 as categorical CE
    with each voxel weighted by its true class, Σ w_y·(-log p_y) / Σ w_y; ignored voxels count in neither.
    """
    x = logits.detach().double().numpy()
    t = target.numpy()[:, 0].astype(np.int64)
    valid = np.ones_like(t, bool) if ignore_label is None else t != ignore_label
    t = np.where(valid, t, 0)
    p = np.exp(x - x.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    classes = x.shape[1]
    y = np.stack([t == c for c in range(classes)], 1).astype(np.float64)
    m = valid[:, None].astype(np.float64)
    w = np.asarray(weights, np.float64)
    w_fg = w[1:] / w[1:].sum()
    spatial = tuple(range(2, x.ndim))
    intersect, denominator = (p * y * m).sum(spatial), ((p + y) * m).sum(spatial)  # (B, C)
    if batch_dice:
        intersect, denominator = intersect.sum(0, keepdims=True), denominator.sum(0, keepdims=True)
    dice = (2 * intersect + smooth) / (denominator + smooth)
    l_dice = np.mean(np.sum(w_fg * (1.0 - dice[:, 1:]), axis=1))  # Eq. 1
    picked = np.take_along_axis(p, t[:, None], 1)[:, 0]
    voxel_weight = w[t] * valid
    l_ce = np.sum(voxel_weight * -np.log(picked)) / np.sum(voxel_weight)  # Eq. 2
    return 0.5 * l_dice + 0.5 * l_ce  # Eq. 3


def random_batch(seed: int, classes: int = 5, shape=(2, 6, 10, 12), ignore: Optional[int] = None):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn((shape[0], classes, *shape[1:]), generator=generator) * 2
    target = torch.randint(0, classes, (shape[0], 1, *shape[1:]), generator=generator)
    if ignore is not None:
        target[torch.rand(target.shape, generator=generator) < 0.25] = ignore
    return logits.requires_grad_(True), target


def weighted_loss(weights, batch_dice: bool, ignore_label=None) -> ClassWeightedDCandCELoss:
    return ClassWeightedDCandCELoss({"batch_dice": batch_dice, "smooth": NNUNET_SMOOTH, "do_bg": False, "ddp": False},
                                    normalised(weights), ignore_label=ignore_label)


def nnunet_loss(batch_dice: bool, ignore_label=None) -> DC_and_CE_loss:
    """nnU-Net's own loss exactly as nnUNetTrainer._build_loss builds it (batch_dice from the plans, smooth 1e-5,
    do_bg False, MemoryEfficientSoftDiceLoss, the ignore label), with weight_ce = weight_dice = 0.5 (Eq. 3)."""
    return DC_and_CE_loss({"batch_dice": batch_dice, "smooth": NNUNET_SMOOTH, "do_bg": False, "ddp": False}, {},
                          weight_ce=0.5, weight_dice=0.5, ignore_label=ignore_label,
                          dice_class=MemoryEfficientSoftDiceLoss)


TUMOR_1_TO_5 = [1, 1, 1, 1, 5]  # background, three organs, tumor


@pytest.mark.parametrize("batch_dice", [False, True])
@pytest.mark.parametrize("ignore", [None, 5])
def test_weighted_loss_is_eq_1_to_3(batch_dice, ignore):
    logits, target = random_batch(1, ignore=ignore)
    value = weighted_loss(TUMOR_1_TO_5, batch_dice, ignore)(logits, target)
    # nnU-Net's sign convention: -Σ w·dice = Eq. 1 - Σ w (= 1), so the loss is Eq. 3 - α_dc
    assert value.item() + 0.5 == pytest.approx(eq_1_to_3(logits, target, TUMOR_1_TO_5, batch_dice, ignore), abs=2e-6)
    uniform = weighted_loss([1] * 5, batch_dice, ignore)(logits, target).item()
    assert abs(value.item() - uniform) > 1e-3  # the tumor weight changes the loss


@pytest.mark.parametrize("batch_dice", [False, True])
@pytest.mark.parametrize("ignore", [None, 5])
def test_uniform_weights_are_nnunets_own_loss(batch_dice, ignore):
    logits, target = random_batch(2, ignore=ignore)
    ours = weighted_loss([1] * 5, batch_dice, ignore)(logits, target)
    (gradient_ours,) = torch.autograd.grad(ours, logits)
    theirs = nnunet_loss(batch_dice, ignore)(logits, target.clone())
    (gradient_theirs,) = torch.autograd.grad(theirs, logits)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)
    torch.testing.assert_close(gradient_ours, gradient_theirs, rtol=1e-5, atol=1e-9)
    assert theirs.item() + 0.5 == pytest.approx(eq_1_to_3(logits, target, [1] * 5, batch_dice, ignore), abs=2e-6)


def test_deep_supervision_applies_eq_1_to_3_at_every_level():
    levels = [random_batch(3 + k, shape=(2, 8 // 2 ** k, 16 // 2 ** k, 16 // 2 ** k), ignore=5) for k in range(3)]
    factors = np.array([1, 0.5, 0.25]) / 1.75  # nnU-Net's 1/2^k, normalised
    loss = DeepSupervisionWrapper(weighted_loss(TUMOR_1_TO_5, False, 5), factors)
    value = loss([lg for lg, _ in levels], [t for _, t in levels])
    reference = sum(f * (eq_1_to_3(lg, t, TUMOR_1_TO_5, False, 5) - 0.5) for f, (lg, t) in zip(factors, levels))
    assert value.item() == pytest.approx(reference, abs=5e-6)


def test_ramp_and_in_place_weight_update():
    target = class_weights({"labels": {"background": 0, "liver": 1, "spleen": 2, "tumor": 3}})
    np.testing.assert_array_equal(target, [1, 1, 1, 5])
    np.testing.assert_allclose(ramped_weights(target, 0, 50), 0.25)
    np.testing.assert_allclose(ramped_weights(target, 25, 50), 0.5 * 0.25 + 0.5 * target / 8)
    np.testing.assert_allclose(ramped_weights(target, 80, 50), target / 8)
    np.testing.assert_allclose(ramped_weights(target, 0, 0), target / 8)
    loss = weighted_loss([1, 1, 1, 1], False)
    buffers = (loss.ce.weight, loss.dice.class_weights)
    loss.set_class_weights(target / 8)
    assert loss.ce.weight is buffers[0] and loss.dice.class_weights is buffers[1]
    np.testing.assert_allclose(loss.dice.class_weights.numpy(), target / 8)
    with pytest.raises(ValueError, match="5 class weights for a loss of 4"):
        loss.set_class_weights([1, 1, 1, 1, 1])


def test_tumor_label_from_dataset_json():
    assert tumor_label({"labels": {"background": 0, "Tumour": 1, "liver": 2}}) == 1  # named, not highest
    assert tumor_label({"labels": {"background": 0, "liver": 1, "lesion": 2, "ignore": 3}}) == 2  # ignore skipped
    assert sampling_weights({"labels": {"background": 0, "tumor": 1, "liver": 2}}) == {1: 5.0, 2: 1.0}
    with pytest.raises(ValueError, match="region"):
        tumor_label({"labels": {"background": 0, "whole": [1, 2], "tumor": 2}})
    with pytest.raises(ValueError, match="0, 1, ..., C-1"):
        tumor_label({"labels": {"background": 0, "tumor": 2}})


# --- (b) class-first sampling through nnU-Net's loader -------------------------------------------------------------
SHAPE = (16, 24, 24)
PATCH = (8, 8, 8)
LABELS = {"background": 0, "liver": 1, "spleen": 2, "kidney": 3, "tumor": 4}
# case -> classes it contains: the kidney (3) is missing from cases 0 and 1, the tumor (4) from cases 1, 3 and 5
CASE_CLASSES = {0: (1, 2, 4), 1: (1, 2), 2: (1, 2, 3, 4), 3: (1, 2, 3), 4: (1, 2, 3, 4), 5: (2, 3)}
BOXES = {1: np.s_[4:8, 4:12, 4:12], 2: np.s_[9:13, 4:10, 14:20], 3: np.s_[4:7, 14:20, 4:9], 4: np.s_[9:12, 14:18, 6:10]}
DATASET_JSON = {"labels": LABELS, "channel_names": {"0": "CT", "1": "noNorm", "2": "noNorm"}, "numTraining": 6,
                "file_ending": ".nii.gz"}


def write_cases(folder: Path) -> Path:
    """Six nnU-Net preprocessed cases (CT, MOS, OOI channels; organs + tumor), written by nnU-Net's dataset class.
    Every labelled voxel lies at least half a patch from the low edges, so a patch centre is the drawn voxel."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for index, present in CASE_CLASSES.items():
        seg = np.zeros((1, *SHAPE), np.int8)
        for label in present:
            seg[(0, *BOXES[label])] = label
        ooi = (seg[0] > 0).astype(np.float32)
        data = np.stack([rng.normal(size=SHAPE), seg[0] % 4, ooi]).astype(np.float32)
        properties = {"class_locations": DefaultPreprocessor._sample_foreground_locations(seg, [1, 2, 3, 4],
                                                                                          seed=index)}
        blocks, chunks = comp_blosc2_params(data.shape, PATCH)
        blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, PATCH, bytes_per_pixel=1)
        nnUNetDatasetBlosc2.save_case(data, seg, properties, str(folder / f"case_{index:03d}"), chunks=chunks,
                                      blocks=blocks, chunks_seg=chunks_seg, blocks_seg=blocks_seg)
    return folder


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> Path:
    return write_cases(tmp_path_factory.mktemp("flare24") / "Dataset997_OrganInterference" / "nnUNetPlans_3d_fullres")


def centre_classes_and_cases(loader: nnUNetDataLoader, batches: int):
    classes, keys = [], []
    for _ in range(batches):
        batch = loader.generate_train_batch()
        classes.extend(batch["target"][:, 0, PATCH[0] // 2, PATCH[1] // 2, PATCH[2] // 2].tolist())
        keys.extend(batch["keys"])
    return np.asarray(classes), [int(k[-3:]) for k in keys]


def test_class_first_frequencies_follow_5_to_1_and_cases_contain_the_class(cases):
    weights = sampling_weights(DATASET_JSON)
    assert weights == {1: 1.0, 2: 1.0, 3: 1.0, 4: 5.0}
    dataset = ClassFirstDatasetBlosc2(str(cases), weights=weights)
    loader = ClassFirstDataLoader(dataset, 100, PATCH, PATCH, LabelManager(LABELS, None),
                                  oversample_foreground_percent=0.0)  # forced to 1: every patch foreground
    np.random.seed(0)
    classes, keys = centre_classes_and_cases(loader, 40)
    counts = np.bincount(classes, minlength=5)[1:]
    assert stats.chisquare(counts, np.array([1, 1, 1, 5]) / 8 * counts.sum()).pvalue > 0.001
    joint = np.zeros((4, 6))
    np.add.at(joint, (classes - 1, keys), 1)
    containing = {c: [i for i, present in CASE_CLASSES.items() if c in present] for c in range(1, 5)}
    expected = np.zeros_like(joint)
    for c, found in containing.items():
        expected[c - 1, found] = weights[c] / 8 / len(found)  # P(c, case) = w_c / Σw · 1 / n_c
    assert joint[expected == 0].sum() == 0  # a case is drawn only among those containing the class
    assert stats.chisquare(joint[expected > 0], expected[expected > 0] * joint.sum()).pvalue > 0.001
    # power check: nnU-Net's own foreground sampling (case first, then class) is far from these frequencies
    nnunet = nnUNetDataLoader(nnUNetDatasetBlosc2(str(cases)), 100, PATCH, PATCH, LabelManager(LABELS, None),
                              oversample_foreground_percent=1.0)
    nnunet_counts = np.bincount(centre_classes_and_cases(nnunet, 10)[0], minlength=5)[1:]
    assert stats.chisquare(nnunet_counts, np.array([1, 1, 1, 5]) / 8 * nnunet_counts.sum()).pvalue < 1e-6


def test_class_presence_summary_is_written_reused_and_refreshed(cases):
    identifiers = [f"case_{i:03d}" for i in CASE_CLASSES]
    presence = class_presence(cases, identifiers)
    assert {i: tuple(sorted(presence[f"case_{i:03d}"])) for i in CASE_CLASSES} == CASE_CLASSES
    summary = presence_path(cases)
    stored = json.loads(summary.read_text())
    stamp = summary.stat().st_mtime_ns
    assert class_presence(cases, identifiers) == presence and summary.stat().st_mtime_ns == stamp  # reused
    stored["cases"]["case_000"]["stamp"] = [0, 0]  # as if the case had been preprocessed again
    summary.write_text(json.dumps(stored))
    assert class_presence(cases, identifiers) == presence
    assert json.loads(summary.read_text())["cases"]["case_000"]["stamp"] != [0, 0]
    assert summary.parent != cases  # nnU-Net's infer_dataset_class would refuse a .json among the cases
    assert sorted(nnUNetDatasetBlosc2.get_identifiers(str(cases))) == identifiers


def test_class_first_refuses_ag_sampling_datasets_and_other_loaders(cases):
    from CRCTraining.sampling import CentreSampledDatasetBlosc2

    with pytest.raises(TypeError, match="both choose the patch centres"):
        class_first(CentreSampledDatasetBlosc2(str(cases), strategy="uniform"), weights={1: 1.0})
    with pytest.raises(TypeError, match="needs a ClassFirstDataset"):
        ClassFirstDataLoader(nnUNetDatasetBlosc2(str(cases)), 2, PATCH, PATCH, LabelManager(LABELS, None))
    with pytest.warns(UserWarning, match=r"no case contains class\(es\) \[4\]"):
        dataset = ClassFirstDatasetBlosc2(str(cases), ["case_001", "case_003"], weights={1: 1.0, 2: 1.0, 4: 5.0})
    assert dataset.class_first.classes == (1, 2)


# --- (c) the trainers, found and built by nnU-Net ---------------------------------------------------------------------
def tiny_plans() -> dict:
    return nnunet_tiny_plans("Dataset997_OrganInterference", SHAPE, (1.6, 1.29, 1.29), (8, 16, 16),
                             [[3, 3, 3]] * 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2]], batch_dice=True)


@pytest.mark.parametrize("name", ["nnUNetTrainerOrganInterference", "nnUNetTrainerOrganInterferenceAFLoss"])
def test_trainer_found_by_nnunet_builds_and_trains_a_step(cases, tmp_path, monkeypatch, name):
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as trainer_module
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from CRCTraining.nnunet_env import TRAINERS_FOLDER, register_trainers

    for variable, value in (("nnUNet_extTrainer", ""), ("nnUNet_preprocessed", str(cases.parents[1])),
                            ("nnUNet_results", str(tmp_path / "results")), ("nnUNet_n_proc_DA", "0")):
        monkeypatch.setenv(variable, value)  # restored after the test, also what register_trainers sets
    register_trainers()
    trainer_class = recursive_find_trainer_class_by_name(name)
    assert trainer_class.__name__ == name and trainer_class.__module__ == "flare24_trainers"  # a top-level module
    assert (TRAINERS_FOLDER / "flare24_trainers.py").is_file()
    trainer = trainer_class(tiny_plans(), "3d_fullres", "all", DATASET_JSON, device=torch.device("cpu"))
    trainer.initialize()
    assert trainer.oversample_foreground_percent == 1.0
    assert isinstance(trainer.loss, DeepSupervisionWrapper)
    (weighted,) = weighted_losses(trainer.loss)
    if name.endswith("AFLoss"):  # AG-CRC Eq. 8 around Eq. 1-3, at every deep-supervision level
        assert isinstance(trainer.loss.loss, AnatomyFocalizedLoss) and trainer.loss.loss.base_loss is weighted
    else:
        assert trainer.loss.loss is weighted
    assert weighted.weight_dice == weighted.weight_ce == 0.5 and weighted.dice.batch_dice and not weighted.dice.do_bg
    np.testing.assert_allclose(weighted.class_weights.numpy(), 0.2)  # epoch 0 of the 50-epoch ramp: uniform
    trainer.current_epoch = 50
    trainer.on_train_epoch_start()
    np.testing.assert_allclose(weighted.class_weights.numpy(), np.array([1, 1, 1, 1, 5]) / 9)

    original_loader = trainer_module.nnUNetDataLoader
    train, validation = trainer.get_dataloaders()
    assert trainer_module.nnUNetDataLoader is original_loader  # nnU-Net's name is restored
    assert isinstance(train.data_loader, ClassFirstDataLoader) and isinstance(validation.data_loader,
                                                                             ClassFirstDataLoader)
    batch = next(train)
    assert batch["data"].shape == (2, 3, 8, 16, 16) and len(batch["target"]) == 2  # deep supervision: 2 of 3 stages
    result = trainer.train_step(batch)
    assert np.isfinite(result["loss"])
    with nnunet_trainer_loader(ClassFirstDataLoader):
        assert trainer_module.nnUNetDataLoader is ClassFirstDataLoader
    assert trainer_module.nnUNetDataLoader is original_loader


def test_every_flare24_trainer_is_in_the_architecture_table():
    from CRCSegmentationLib.networks.nnunet_architectures import NNUNET_DEFAULT, TRAINER_ARCHITECTURES
    import CRCTraining.trainers.flare24_trainers as flare24

    for name in ("nnUNetTrainerOrganInterference", "nnUNetTrainerOrganInterferenceAFLoss"):
        assert hasattr(flare24, name) and TRAINER_ARCHITECTURES[name] == NNUNET_DEFAULT
