"""FLARE24 organ-interference training (§2.2): the class-weighted Dice + CE (Eq. 1-3) as the public code trains it
(weights 1 and 1, per-sample CE, warm-up by loss mixing), class-first patch sampling through nnU-Net's real loader,
and the trainers as nnU-Net finds and builds them."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from nnunet_tiny_plans import tiny_plans as nnunet_tiny_plans
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from scipy import stats

from CRCTraining.agcrc.af_loss import AnatomyFocalizedLoss
from CRCTraining.flare24.class_first_sampling import (
    ClassFirstDataLoader,
    ClassFirstDatasetBlosc2,
    class_first,
    class_presence,
    nnunet_trainer_loader,
    presence_path,
    sampling_weights,
)
from CRCTraining.flare24.class_weights import class_weights, normalised, tumor_label, warmup_share
from CRCTraining.flare24.losses import (
    ENV_WARMUP_EPOCHS,
    PAPER_ALPHA,
    PUBLIC_ALPHA,
    ClassWeightedDCandCELoss,
    weighted_losses,
)

NNUNET_SMOOTH = 1e-5


# --- (a) the loss: Eq. 1-3 as the public code trains it ----------------------------------------------------------
def public_rule(logits: torch.Tensor, target: torch.Tensor, weights, batch_dice: bool, share: float = 1.0,
                alpha: float = 1.0, ignore_label: Optional[int] = None, smooth: float = NNUNET_SMOOTH) -> float:
    """The public FLARE24 code's loss (lay-john/FLARE24-Task1: ``MultipleOutputLoss2`` around its weighted
    ``DC_and_CE_loss``) written out in numpy float64, sample by sample:

        L = (1 - t) · L(uniform) + t · L(w),   L(w) = α · Dice(w) + α · CE(w),   α = 1 (nnU-Net's default)

    Dice(w) = -Σ_{i>=1} w_i dc_i (nnU-Net's sign), per sample then averaged, or over the batch (batch_dice), with
    the weights renormalised over the foreground classes (our one documented change: the public code leaves them
    normalised over all classes). CE(w): for each sample, Σ_j w_{y_j} (-log p_j^{y_j}) / Σ_j w_{y_j} over its
    non-ignored voxels (``F.cross_entropy(weight=w)`` on that sample alone), then the mean over the samples.
    """
    x = logits.detach().double().numpy()
    labels = target.numpy()[:, 0].astype(np.int64)
    classes = x.shape[1]
    uniform = np.full(classes, 1.0 / classes)

    def one_loss(w: np.ndarray) -> float:
        w_fg = w[1:] / w[1:].sum()
        dice_rows, ce_samples = [], []
        intersect_total, denominator_total = np.zeros(classes - 1), np.zeros(classes - 1)
        for b in range(x.shape[0]):
            valid = np.ones_like(labels[b], bool) if ignore_label is None else labels[b] != ignore_label
            t = np.where(valid, labels[b], 0)
            p = np.exp(x[b] - x[b].max(0, keepdims=True))
            p /= p.sum(0, keepdims=True)
            intersect = np.array([np.sum(p[c] * (t == c) * valid) for c in range(1, classes)])
            denominator = np.array([np.sum((p[c] + (t == c)) * valid) for c in range(1, classes)])
            intersect_total += intersect
            denominator_total += denominator
            dice_rows.append(-np.sum(w_fg * (2 * intersect + smooth) / (denominator + smooth)))
            picked = np.take_along_axis(p, t[None], 0)[0]
            voxel_weight = w[t] * valid
            if voxel_weight.sum() > 0:
                ce_samples.append(np.sum(voxel_weight * -np.log(picked)) / np.sum(voxel_weight))
        dice = -np.sum(w_fg * (2 * intersect_total + smooth) / (denominator_total + smooth)) if batch_dice \
            else np.mean(dice_rows)
        return alpha * dice + alpha * (np.mean(ce_samples) if ce_samples else 0.0)

    w = np.asarray(weights, np.float64) / np.sum(weights)
    return (1 - share) * one_loss(uniform) + share * one_loss(w)


def random_batch(seed: int, classes: int = 5, shape=(2, 6, 10, 12), ignore: Optional[int] = None):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn((shape[0], classes, *shape[1:]), generator=generator) * 2
    target = torch.randint(0, classes, (shape[0], 1, *shape[1:]), generator=generator)
    if ignore is not None:
        target[torch.rand(target.shape, generator=generator) < 0.25] = ignore
    return logits.requires_grad_(True), target


NNUNET_DICE_KWARGS = {"smooth": NNUNET_SMOOTH, "do_bg": False, "ddp": False}  # nnUNetTrainer._build_loss


def weighted_loss(weights, batch_dice: bool, ignore_label=None, share: float = 1.0,
                  **alphas) -> ClassWeightedDCandCELoss:
    return ClassWeightedDCandCELoss({"batch_dice": batch_dice, **NNUNET_DICE_KWARGS}, normalised(weights),
                                    ignore_label=ignore_label, weighted_share=share, **alphas)


def nnunet_default_loss(batch_dice: bool, ignore_label=None) -> DC_and_CE_loss:
    """nnU-Net's own loss as nnUNetTrainer._build_loss builds it (batch_dice from the plans, smooth 1e-5, do_bg
    False, MemoryEfficientSoftDiceLoss, the ignore label), with DC_and_CE_loss's default weights (1 and 1)."""
    return DC_and_CE_loss({"batch_dice": batch_dice, **NNUNET_DICE_KWARGS}, {}, ignore_label=ignore_label,
                          dice_class=MemoryEfficientSoftDiceLoss)


TUMOR_1_TO_5 = [1, 1, 1, 1, 5]  # background, three organs, tumor


@pytest.mark.parametrize("batch_dice", [False, True])
@pytest.mark.parametrize("ignore", [None, 5])
@pytest.mark.parametrize("share", [0.0, 0.3, 1.0])
def test_loss_is_the_public_codes_rule(batch_dice, ignore, share):
    logits, target = random_batch(1, ignore=ignore)
    value = weighted_loss(TUMOR_1_TO_5, batch_dice, ignore, share)(logits, target.clone()).item()
    assert value == pytest.approx(public_rule(logits, target, TUMOR_1_TO_5, batch_dice, share, 1.0, ignore), abs=3e-6)
    if share > 0:  # the tumor weight changes the loss
        assert abs(value - weighted_loss([1] * 5, batch_dice, ignore, share)(logits, target.clone()).item()) > 1e-3


def tumor_heavy_batch() -> tuple:
    """Two samples of unequal tumor content: sample 0 is half tumor (class 4), sample 1 holds none; the network
    favours the background (as early in training), so tumor voxels cost much more CE than the others."""
    logits, target = random_batch(11)
    with torch.no_grad():
        logits[:, 0] += 4
    target[0, 0, :3] = 4
    target[1][target[1] == 4] = 1
    return logits, target


def test_ce_is_averaged_per_sample_not_over_the_batch():
    logits, target = tumor_heavy_batch()
    ours = weighted_loss(TUMOR_1_TO_5, False, weight_dice=0.0)(logits, target).item()
    weights = torch.tensor(TUMOR_1_TO_5, dtype=torch.float32)
    per_sample = np.mean([F.cross_entropy(logits[b:b + 1], target[b:b + 1, 0].long(), weight=weights).item()
                          for b in range(2)])  # the public code's loop over samples
    batch_weighted_mean = F.cross_entropy(logits, target[:, 0].long(), weight=weights).item()
    assert ours == pytest.approx(per_sample, abs=1e-6)
    assert abs(per_sample - batch_weighted_mean) > 1e-2  # the two rules do differ on this batch


def test_warm_up_mixes_two_losses_not_two_weight_vectors():
    logits, target = tumor_heavy_batch()
    at = {t: weighted_loss(TUMOR_1_TO_5, False, share=t)(logits, target.clone()).item() for t in (0.0, 0.4, 1.0)}
    assert at[0.4] == pytest.approx(0.6 * at[0.0] + 0.4 * at[1.0], abs=1e-6)
    target_weights = normalised(TUMOR_1_TO_5)
    ramped_vector = 0.6 * np.full(5, 0.2) + 0.4 * target_weights  # ramping the weights instead
    ramped = weighted_loss(ramped_vector, False)(logits, target.clone()).item()
    assert abs(ramped - at[0.4]) > 1e-3


@pytest.mark.parametrize("batch_dice", [False, True])
def test_uniform_weights_are_nnunets_default_dc_and_ce_loss(batch_dice):
    logits, target = random_batch(2)
    theirs = nnunet_default_loss(batch_dice)(logits, target.clone())
    (gradient_theirs,) = torch.autograd.grad(theirs, logits)
    for loss in (weighted_loss([1] * 5, batch_dice),  # uniform class weights
                 weighted_loss(TUMOR_1_TO_5, batch_dice, share=0.0)):  # epoch 0 of the warm-up: uniform loss alone
        ours = loss(logits, target.clone())
        (gradient_ours,) = torch.autograd.grad(ours, logits)
        assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)
        torch.testing.assert_close(gradient_ours, gradient_theirs, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("ignore", [None, 5])
def test_paper_alpha_halves_the_loss_and_its_gradient(ignore):
    logits, target = random_batch(4, ignore=ignore)
    public = weighted_loss(TUMOR_1_TO_5, True, ignore, 0.5)(logits, target.clone())
    paper = weighted_loss(TUMOR_1_TO_5, True, ignore, 0.5, weight_dice=PAPER_ALPHA, weight_ce=PAPER_ALPHA)
    value = paper(logits, target.clone())
    assert value.item() == pytest.approx(0.5 * public.item(), abs=1e-6)
    torch.testing.assert_close(torch.autograd.grad(value, logits)[0], 0.5 * torch.autograd.grad(public, logits)[0],
                               rtol=1e-5, atol=1e-9)
    assert value.item() == pytest.approx(public_rule(logits, target, TUMOR_1_TO_5, True, 0.5, 0.5, ignore), abs=3e-6)


def test_deep_supervision_applies_the_rule_at_every_level():
    levels = [random_batch(3 + k, shape=(2, 8 // 2 ** k, 16 // 2 ** k, 16 // 2 ** k), ignore=5) for k in range(3)]
    factors = np.array([1, 0.5, 0.25]) / 1.75  # nnU-Net's 1/2^k, normalised
    loss = DeepSupervisionWrapper(weighted_loss(TUMOR_1_TO_5, False, 5, 0.3), factors)
    value = loss([lg for lg, _ in levels], [t.clone() for _, t in levels])
    reference = sum(f * public_rule(lg, t, TUMOR_1_TO_5, False, 0.3, 1.0, 5) for f, (lg, t) in zip(factors, levels))
    assert value.item() == pytest.approx(reference, abs=5e-6)


def test_a_batch_of_ignored_voxels_gets_no_ce():
    logits, target = random_batch(5)
    target[:] = 5  # every voxel ignored
    loss = weighted_loss(TUMOR_1_TO_5, False, 5, 0.5)
    value = loss(logits, target.clone())
    assert torch.isfinite(value)
    assert value.item() == pytest.approx(public_rule(logits, target, TUMOR_1_TO_5, False, 0.5, 1.0, 5), abs=1e-6)


def test_warmup_share_and_in_place_updates():
    assert [warmup_share(e, 50) for e in (0, 25, 49, 50, 80)] == [0.0, 0.5, 0.98, 1.0, 1.0]
    assert warmup_share(0, 0) == 1.0  # no warm-up: the class-weighted loss from the start
    with pytest.raises(ValueError, match="warm-up epochs"):
        warmup_share(3, -1)
    target = class_weights({"labels": {"background": 0, "liver": 1, "spleen": 2, "tumor": 3}})
    np.testing.assert_array_equal(target, [1, 1, 1, 5])
    loss = weighted_loss([1, 1, 1, 1], False, share=0.0)
    buffers = (loss.ce.class_weights, loss.dice.class_weights, loss.ce.weighted_share, loss.dice.weighted_share)
    loss.set_class_weights(target / 8)
    loss.set_weighted_share(0.25)
    assert all(a is b for a, b in zip(buffers, (loss.ce.class_weights, loss.dice.class_weights,
                                                 loss.ce.weighted_share, loss.dice.weighted_share)))
    np.testing.assert_allclose(loss.dice.class_weights.numpy(), target / 8)
    assert loss.weighted_share == loss.dice.weighted_share.item() == 0.25
    with pytest.raises(ValueError, match="5 class weights for a loss of 4"):
        loss.set_class_weights([1, 1, 1, 1, 1])
    with pytest.raises(ValueError, match=r"share t must be in \[0, 1\]"):
        loss.set_weighted_share(1.5)


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
    from CRCTraining.agcrc.nnunet_sampling import CentreSampledDatasetBlosc2

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


@pytest.mark.parametrize("name, alpha", [("nnUNetTrainerOrganInterference", PUBLIC_ALPHA),
                                         ("nnUNetTrainerOrganInterferencePaperAlpha", PAPER_ALPHA),
                                         ("nnUNetTrainerOrganInterferenceAFLoss", PUBLIC_ALPHA)])
def test_trainer_found_by_nnunet_builds_and_trains_a_step(cases, tmp_path, monkeypatch, name, alpha):
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as trainer_module
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from CRCTraining.nnunet.env import TRAINERS_FOLDER, register_trainers

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
    assert weighted.weight_dice == weighted.weight_ce == alpha and weighted.dice.batch_dice and not weighted.dice.do_bg
    assert isinstance(trainer.optimizer, torch.optim.SGD) and trainer.optimizer.param_groups[0]["lr"] == 1e-2
    np.testing.assert_allclose(weighted.class_weights.numpy(), np.array([1, 1, 1, 1, 5]) / 9)  # fixed
    assert weighted.weighted_share == 0.0  # epoch 0 of the 50-epoch warm-up: the uniform-weighted loss alone
    for epoch, share in ((25, 0.5), (50, 1.0)):
        trainer.current_epoch = epoch
        trainer.on_train_epoch_start()
        assert weighted.weighted_share == share and weighted.dice.weighted_share.item() == share
    np.testing.assert_allclose(weighted.class_weights.numpy(), np.array([1, 1, 1, 1, 5]) / 9)
    monkeypatch.setenv(ENV_WARMUP_EPOCHS, "4")  # what `crcseg flare24-ablation --warmup-epochs 4` sets
    trainer.current_epoch = 2
    trainer.on_train_epoch_start()
    assert weighted.weighted_share == 0.5

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
    import CRCTraining.trainers.flare24_trainers as flare24
    from CRCSegmentationLib.networks.nnunet_architectures import NNUNET_DEFAULT, TRAINER_ARCHITECTURES

    for name in ("nnUNetTrainerOrganInterference", "nnUNetTrainerOrganInterferencePaperAlpha",
                 "nnUNetTrainerOrganInterferenceAFLoss"):
        assert hasattr(flare24, name) and TRAINER_ARCHITECTURES[name] == NNUNET_DEFAULT


def test_ablation_refuses_a_negative_warmup_before_writing(tmp_path, capsys):
    from CRCTraining.cli import main

    output = tmp_path / "out"
    code = main(["flare24-ablation", str(tmp_path / "train"), str(tmp_path / "test"), "-o", str(output), "-d", "790",
                 "--organs", str(tmp_path / "organs"), "--test-organs", str(tmp_path / "organs"),
                 "--warmup-epochs", "-1"])
    message = capsys.readouterr().err
    assert code == 2 and "--warmup-epochs -1" in message and "Traceback" not in message
    assert not output.exists()
