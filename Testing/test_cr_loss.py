"""HCF's CR loss (Shi et al., CMIG 2024, §3.3, Eq. 4-8) and the nnU-Net trainer that trains with it."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from nnunet_tiny_plans import tiny_plans as nnunet_tiny_plans
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

from CRCTraining.hcf.cr_loss import CR_ALPHA, CRLoss, CRLossTrainerMixin, cr_losses, deep_supervision_weights

SMOOTH = 1e-5


# --- Eq. 4-8 written out independently (numpy, float64, explicit loops over images and classes) ----------------
def eq_4_to_8(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.1, include_background: bool = False,
              batch_dice: bool = False, ignore_label: Optional[int] = None) -> float:
    x = logits.detach().double().numpy()
    t = target.numpy().astype(np.int64)
    if t.ndim == x.ndim:
        t = t[:, 0]
    batch, classes = x.shape[:2]
    valid = np.ones(t.shape, bool) if ignore_label is None else t != ignore_label
    e = np.exp(x - x.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)  # softmax over the K classes
    first = 0 if include_background else 1
    # Eq. 5: 1 - mean over classes (and images) of 2 Σ p q / (Σ p + Σ q), smoothed as the public code
    dices = []
    groups = [list(range(batch))] if batch_dice else [[b] for b in range(batch)]
    for images in groups:
        for k in range(first, classes):
            inter = union = 0.0
            for b in images:
                pk, qk, m = p[b, k], (t[b] == k).astype(np.float64), valid[b]
                inter += np.sum(pk[m] * qk[m])
                union += np.sum(pk[m]) + np.sum(qk[m])
            dices.append((2 * inter + SMOOTH) / (union + SMOOTH))
    l_dice = 1 - np.mean(dices)
    # Eq. 7: -log p of the true class, averaged over the voxels; Eq. 8: -log p averaged over classes and voxels
    picked, uniform = [], []
    for b in range(batch):
        for index in zip(*np.nonzero(valid[b])):
            probabilities = p[(b, slice(None), *index)]
            picked.append(-np.log(probabilities[t[(b, *index)]]))
            uniform.append(np.mean(-np.log(probabilities)))
    l_ce = np.mean(picked) if picked else 0.0
    epsilon = np.mean(uniform) if uniform else 0.0
    return float(l_dice + (1 - alpha) * l_ce + alpha * epsilon)  # Eq. 4, 6


def random_case(shape, classes: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(shape[0], classes, *shape[1:], generator=generator)
    target = torch.randint(0, classes, shape, generator=generator)
    return logits, target


@pytest.mark.parametrize("shape, classes", [((2, 12, 10), 3), ((3, 4, 6, 5), 2), ((2, 3, 4, 4), 4)])
@pytest.mark.parametrize("batch_dice", [False, True])
@pytest.mark.parametrize("include_background", [False, True])
def test_cr_loss_is_eq_4_to_8(shape, classes, batch_dice, include_background):
    logits, target = random_case(shape, classes, seed=len(shape) * 10 + classes)
    loss = CRLoss(batch_dice=batch_dice, include_background=include_background)
    expected = eq_4_to_8(logits, target, 0.1, include_background, batch_dice)
    assert loss(logits, target).item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert loss(logits, target[:, None]).item() == pytest.approx(expected, rel=1e-5, abs=1e-6)  # (B, 1, ...) too


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5])
def test_alpha_and_the_label_smoothing_identity(alpha):
    """(1 - α) CE + α ε is cross-entropy with label smoothing α (PyTorch's), so α moves the loss by exactly that."""
    logits, target = random_case((2, 8, 8), 3, seed=5)
    value, plain = CRLoss(alpha=alpha)(logits, target).item(), CRLoss(alpha=0.0)(logits, target).item()
    assert value == pytest.approx(eq_4_to_8(logits, target, alpha), rel=1e-5, abs=1e-6)
    smoothing = (F.cross_entropy(logits.double(), target, label_smoothing=alpha)
                 - F.cross_entropy(logits.double(), target)).item()
    assert eq_4_to_8(logits, target, alpha) - eq_4_to_8(logits, target, 0.0) == pytest.approx(smoothing, abs=1e-9)
    assert value - plain == pytest.approx(smoothing, abs=1e-5)
    assert CR_ALPHA == 0.1 and CRLoss().alpha == 0.1


def test_ignore_label_voxels_count_in_no_term():
    logits, target = random_case((2, 3, 8, 8), 3, seed=7)
    target[0, :, :3] = 3  # nnU-Net's ignore label: the value after the last class
    target[1, 1] = 3
    loss = CRLoss(ignore_label=3)
    assert loss(logits, target).item() == pytest.approx(eq_4_to_8(logits, target, ignore_label=3), rel=1e-5)
    ignored = (target == 3)[:, None].expand_as(logits)
    changed = logits.clone()
    changed[ignored] = 30 * torch.randn(int(ignored.sum()))  # whatever is predicted there does not matter
    assert loss(changed, target).item() == pytest.approx(loss(logits, target).item(), rel=1e-6)
    everything_ignored = torch.full_like(target, 3)
    assert loss(logits, everything_ignored).item() == pytest.approx(0.0, abs=1e-7)


def test_gradients_flow_2d_and_3d():
    for shape in ((2, 16, 16), (2, 4, 8, 8)):
        logits, target = random_case(shape, 3, seed=11)
        logits.requires_grad_(True)
        value = CRLoss()(logits, target)
        value.backward()
        assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    for shape in ((2, 5, 4), (2, 2, 3, 3)):  # the analytic gradient (float64) is the numerical one
        logits, target = random_case(shape, 3, seed=12)
        assert torch.autograd.gradcheck(lambda x, target=target: CRLoss()(x, target), logits.double().requires_grad_(True))


def test_bad_shapes_are_refused():
    logits, target = random_case((2, 8, 8), 3, seed=13)
    with pytest.raises(ValueError, match="does not match"):
        CRLoss()(logits, target[:, :4])
    with pytest.raises(ValueError, match=r"\(B, 1, \.\.\.\)"):
        CRLoss()(logits, F.one_hot(target, 3).permute(0, 3, 1, 2))
    with pytest.raises(ValueError):
        CRLoss(alpha=1.5)


# --- the trainer mixin, without nnU-Net ----------------------------------------------------------------------------
def fake_trainer(has_regions=False, ignore_label=None, deep_supervision=False, is_ddp=False, levels=3):
    return SimpleNamespace(
        label_manager=SimpleNamespace(has_regions=has_regions, ignore_label=ignore_label),
        configuration_manager=SimpleNamespace(batch_dice=True), is_ddp=is_ddp, cr_alpha=CR_ALPHA,
        enable_deep_supervision=deep_supervision, _get_deep_supervision_scales=lambda: [[1, 1, 1]] * levels,
        _do_i_compile=lambda: False)


def test_mixin_builds_the_loss_and_refuses_regions():
    loss = CRLossTrainerMixin._build_loss(fake_trainer(ignore_label=2))
    assert isinstance(loss, CRLoss) and loss.ignore_label == 2 and loss.batch_dice and loss.alpha == 0.1
    wrapped = CRLossTrainerMixin._build_loss(fake_trainer(deep_supervision=True, levels=4))
    assert isinstance(wrapped, DeepSupervisionWrapper) and cr_losses(wrapped) == [wrapped.loss]
    np.testing.assert_allclose(wrapped.weight_factors, np.array([1, 0.5, 0.25, 0]) / 1.75)
    np.testing.assert_allclose(deep_supervision_weights(3, is_ddp=True), np.array([1, 0.5, 1e-6]) / 1.500001)
    with pytest.raises(ValueError, match="region-based"):
        CRLossTrainerMixin._build_loss(fake_trainer(has_regions=True))


# --- the trainer, found and built by nnU-Net, trains a step on tiny synthetic data ----------------------------------
SHAPE = (16, 24, 24)
PATCH = (8, 16, 16)
LABELS = {"background": 0, "tumor": 1}
DATASET_JSON = {"labels": LABELS, "channel_names": {"0": "CT"}, "numTraining": 4, "file_ending": ".nii.gz"}


def tiny_plans() -> dict:
    plans = nnunet_tiny_plans("Dataset996_CRLoss", SHAPE, (1.6, 1.29, 1.29), PATCH, [[3, 3, 3]] * 3,
                              [[1, 1, 1], [2, 2, 2], [2, 2, 2]], batch_dice=False)
    configuration = plans["configurations"]["3d_fullres"]
    configuration["normalization_schemes"], configuration["use_mask_for_norm"] = ["CTNormalization"], [False]
    return plans


def write_cases(folder: Path) -> Path:
    """Four one-channel preprocessed cases with a box of tumour each, written by nnU-Net's dataset class."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    for index in range(4):
        seg = np.zeros((1, *SHAPE), np.int8)
        seg[0, 4 + index:10 + index, 6:14, 5 + index:15] = 1
        data = (rng.normal(size=(1, *SHAPE)) + 2 * seg).astype(np.float32)
        properties = {"class_locations": DefaultPreprocessor._sample_foreground_locations(seg, [1], seed=index)}
        blocks, chunks = comp_blosc2_params(data.shape, PATCH)
        blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, PATCH, bytes_per_pixel=1)
        nnUNetDatasetBlosc2.save_case(data, seg, properties, str(folder / f"case_{index:03d}"), chunks=chunks,
                                      blocks=blocks, chunks_seg=chunks_seg, blocks_seg=blocks_seg)
    return folder


def test_trainer_found_by_nnunet_builds_and_trains_a_step(tmp_path, monkeypatch):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from CRCTraining.nnunet.env import TRAINERS_FOLDER, register_trainers

    cases = write_cases(tmp_path / "preprocessed" / "Dataset996_CRLoss" / "nnUNetPlans_3d_fullres")
    for variable, value in (("nnUNet_extTrainer", ""), ("nnUNet_preprocessed", str(cases.parents[1])),
                            ("nnUNet_results", str(tmp_path / "results")), ("nnUNet_n_proc_DA", "0")):
        monkeypatch.setenv(variable, value)
    register_trainers()
    trainer_class = recursive_find_trainer_class_by_name("nnUNetTrainerCRLoss")
    assert trainer_class.__name__ == "nnUNetTrainerCRLoss" and trainer_class.__module__ == "hcf_trainers"
    assert (TRAINERS_FOLDER / "hcf_trainers.py").is_file()
    torch.manual_seed(0)
    trainer = trainer_class(tiny_plans(), "3d_fullres", "all", DATASET_JSON, device=torch.device("cpu"))
    trainer.initialize()
    assert isinstance(trainer.loss, DeepSupervisionWrapper)
    (loss,) = cr_losses(trainer.loss)
    assert trainer.loss.loss is loss and loss.alpha == 0.1 and not loss.batch_dice and loss.ignore_label is None
    nnunet_default = nnUNetTrainer._build_loss(trainer)  # nnU-Net's own deep-supervision weights
    np.testing.assert_allclose(trainer.loss.weight_factors, nnunet_default.weight_factors)

    train, _ = trainer.get_dataloaders()
    batch = next(train)
    assert batch["data"].shape == (2, 1, *PATCH) and len(batch["target"]) == 2  # deep supervision: 2 of 3 stages
    before = [p.detach().clone() for p in trainer.network.parameters()]
    result = trainer.train_step(batch)
    assert np.isfinite(result["loss"]) and result["loss"] > 0
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.network.parameters()))
    # the logged loss is the CR loss of the network's outputs (deep-supervision weighted)
    trainer.network.eval()
    with torch.no_grad():
        outputs = trainer.network(batch["data"])
        weighted = sum(w * loss(o, t) for w, o, t in zip(trainer.loss.weight_factors, outputs, batch["target"]))
    assert float(weighted) == pytest.approx(float(trainer.loss(outputs, batch["target"])), rel=1e-6)
