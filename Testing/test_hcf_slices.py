"""HCF slice data: body box, resize, slice records, balance sampling (theta ratios), slice dataset. CPU only."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from CRCTraining.hcf.slices import (
    BalanceSampler,
    SliceDataset,
    SliceDatasetConfig,
    SliceRecord,
    body_box,
    label_to_input,
    slice_records,
    to_network_input,
)
from CRCTraining.usam.data import write_case_slices
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.io import write_image

AIR, TISSUE, BONE = -1000.0, 40.0, 1000.0


def disc_slice(shape=(64, 80), center=(30, 36), radius=15) -> np.ndarray:
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    slice_hu = np.full(shape, AIR, dtype=np.float32)
    slice_hu[(rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius ** 2] = TISSUE
    slice_hu[58:61, 72:75] = BONE  # a separate small bright blob, not the body
    return slice_hu


def test_body_box_is_largest_region_plus_margin():
    slice_hu = disc_slice()
    # disc rows 15..45, cols 21..51 inclusive -> half-open (15, 46, 21, 52), plus margin 4
    assert body_box(slice_hu, -300, 4) == (11, 50, 17, 56)
    assert body_box(slice_hu, -300, 0) == (15, 46, 21, 52)
    assert body_box(slice_hu, -300, 100) == (0, 64, 0, 80)  # clipped
    assert body_box(np.full((20, 30), AIR), -300, 5) == (0, 20, 0, 30)  # nothing foreground: whole slice


def test_slice_and_label_to_input_shapes_and_range():
    config = SliceDatasetConfig(size=32, body_margin_px=2)
    slice_hu = disc_slice()
    image, box = to_network_input(slice_hu, config)
    assert image.shape == (32, 32) and image.dtype == np.float32
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert box == body_box(slice_hu, config.body_threshold_hu, config.body_margin_px)
    label = np.zeros(slice_hu.shape, dtype=np.uint8)
    label[25:35, 30:40] = 1
    resized = label_to_input(label, box, 32)
    assert resized.shape == (32, 32) and set(np.unique(resized)) == {0, 1}  # nearest: no new values
    # window: soft tissue (40 HU) maps to (40 + 160) / 400 = 0.5 at the disc's centre
    assert image[16, 16] == pytest.approx(0.5, abs=1e-6)


def make_records(abnormal: int, normal: int) -> list:
    flags = [True] * abnormal + [False] * normal
    np.random.default_rng(3).shuffle(flags)
    return [SliceRecord("c", k, flag) for k, flag in enumerate(flags)]


@pytest.mark.parametrize("ratio", [0, 1, 2, 4, "n"])
@pytest.mark.parametrize("per_epoch", [True, False])
def test_balance_ratios_are_exact(ratio, per_epoch):
    records = make_records(abnormal=10, normal=100)
    abnormal = {i for i, r in enumerate(records) if r.abnormal}
    sampler = BalanceSampler(records, ratio, seed=5, per_epoch=per_epoch)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        indices = list(sampler)
        assert indices == sampler.epoch_indices(epoch)
        assert len(indices) == len(set(indices)) == len(sampler)  # no duplicates
        assert abnormal <= set(indices)  # every abnormal slice, every epoch
        normals = [i for i in indices if not records[i].abnormal]
        assert len(normals) == (100 if ratio == "n" else 10 * ratio)


def test_per_epoch_redraws_and_fixed_subset():
    records = make_records(abnormal=10, normal=200)
    redraw = BalanceSampler(records, 2, seed=1, per_epoch=True)
    fixed = BalanceSampler(records, 2, seed=1, per_epoch=False)
    assert redraw.normal_subset(0) != redraw.normal_subset(1)
    assert fixed.normal_subset(0) == fixed.normal_subset(1) == fixed.normal_subset(7)
    assert set(fixed.epoch_indices(0)) == set(fixed.epoch_indices(1))
    assert fixed.epoch_indices(0) != fixed.epoch_indices(1)  # the order is still reshuffled
    # deterministic from the seed
    again = BalanceSampler(records, 2, seed=1, per_epoch=True)
    assert again.epoch_indices(3) == redraw.epoch_indices(3)
    assert BalanceSampler(records, 2, seed=2, per_epoch=True).epoch_indices(3) != redraw.epoch_indices(3)


def test_fewer_normals_than_asked_warns_and_takes_all():
    records = make_records(abnormal=10, normal=15)
    with pytest.warns(RuntimeWarning, match="only 15 exist"):
        sampler = BalanceSampler(records, 4, seed=0)
    assert len(sampler) == 25 and sorted(sampler.epoch_indices(0)) == list(range(25))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BalanceSampler(records, 1, seed=0)  # 10 of 15: enough, no warning
    with pytest.raises(ValueError):
        BalanceSampler(records, "all", seed=0)


def synthetic_case(z=12, size=64, tumor_slices=(4, 5, 6)):
    rows, cols = np.mgrid[:size, :size]
    body = (rows - 32) ** 2 + (cols - 32) ** 2 <= 24 ** 2
    ct = np.where(body, TISSUE, AIR).astype(np.float32)[None].repeat(z, axis=0)
    label = np.zeros(ct.shape, dtype=np.uint8)
    label[:, 28:36, 20:30] = 1  # an organ in every slice (not tumor when tumor_label=2)
    for k in tumor_slices:
        label[k, 30:36, 34:40] = 2
        ct[k, 30:36, 34:40] = 80.0
    return ct, label


def check_item(item, size):
    assert item["image"].shape == (1, size, size) and item["image"].dtype == torch.float32
    assert float(item["image"].min()) >= 0.0 and float(item["image"].max()) <= 1.0
    assert item["label"].shape == (size, size) and item["label"].dtype == torch.int64
    assert item["abnormal"] in (0, 1) and isinstance(item["case"], str) and isinstance(item["index"], int)
    assert bool(item["label"].any()) == bool(item["abnormal"])


def test_slice_records_and_dataset_items():
    ct, label = synthetic_case()
    records = slice_records({"a": label}, tumor_label=2)
    assert [r.index for r in records if r.abnormal] == [4, 5, 6] and len(records) == 12
    assert all(r.abnormal for r in slice_records({"a": label}))  # default: label > 0
    dataset = SliceDataset({"a": (ct, label)}, SliceDatasetConfig(size=32), tumor_label=2)
    assert len(dataset) == 12 and sum(r.abnormal for r in dataset.records) == 3
    for i in (0, 5):
        check_item(dataset[i], 32)
    assert dataset[5]["abnormal"] == 1 and dataset[5]["index"] == 5 and dataset[0]["abnormal"] == 0
    sampler = BalanceSampler(dataset.records, 1, seed=0)
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=6, sampler=sampler)))
    assert batch["image"].shape == (6, 1, 32, 32) and int(batch["abnormal"].sum()) == 3


def test_dataset_from_files(tmp_path):
    ct, label = synthetic_case()
    images, labels = [], []
    for case in ("case1", "case2"):
        images.append(write_image(Image(ct.astype(np.int16), spacing=(0.8, 0.8, 3.0)), tmp_path / f"{case}.nii.gz"))
        labels.append(write_image(Image(label, spacing=(0.8, 0.8, 3.0)), tmp_path / f"{case}_label.nii.gz"))
    dataset = SliceDataset.from_files(images, labels, SliceDatasetConfig(size=32), tumor_label=2)
    assert len(dataset) == 24 and {r.case for r in dataset.records} == {"case1", "case2"}
    assert sum(r.abnormal for r in dataset.records) == 6
    check_item(dataset[17], 32)


def test_dataset_from_npz_folder(tmp_path):
    ct, label = synthetic_case()
    write_case_slices(tmp_path, "p1", ct.astype(np.int16), label, (0.8, 0.8))
    dataset = SliceDataset.from_npz_folder(tmp_path, SliceDatasetConfig(size=32))
    assert len(dataset) == 12 and {r.case for r in dataset.records} == {"p1"}
    assert sorted(r.index for r in dataset.records if r.abnormal) == [4, 5, 6]
    check_item(dataset[5], 32)
