"""Tumor inference end to end on CPU: model sources, OOI-restricted prediction, bad inputs, batch CLI.

One small model per module (``inference_model.py``): the shipped demo bundle, or trained here.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import threading

import numpy as np
import pytest
import torch
from inference_model import load_or_train_model
from scipy import ndimage

from CRCSegmentationLib.core.errors import ModelError
from CRCSegmentationLib.core.segmentation import SegmentationParameters
from CRCSegmentationLib.models.open import open_model
from CRCSegmentationLib.nnunet.segmenter import (
    NNUNetSegmenter as TumorSegmenter,
)
from CRCSegmentationLib.nnunet.segmenter import (
    build_input_channels,
    guidance_convention,
)
from CRCTraining.data.phantoms_ct import make_phantom_case
from OrganGuidanceLib.crop import CropBox, body_crop_box
from OrganGuidanceLib.guidance import MOSSource, run_guidance
from OrganGuidanceLib.io import read_image, write_image
from OrganGuidanceLib.morphology import bounding_box
from OrganGuidanceLib.mos_codes import compact_mos
from OrganGuidanceLib.progress import RunCancelled
from OrganGuidanceLib.validation import InputError

pytestmark = pytest.mark.slow
FAST = dict(mirroring=False)  # mirroring is nnU-Net's; it multiplies the time by 8 in 3D


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    return load_or_train_model(tmp_path_factory.mktemp("inference_model"))


@pytest.fixture(scope="module")
def model(model_files):
    return open_model(model_files["bundle"])


@pytest.fixture(scope="module")
def segmenter(model):
    return TumorSegmenter(model, SegmentationParameters(**FAST))


@pytest.fixture(scope="module")
def case(ts):
    """A fresh phantom (not a training case) with its organ guidance."""
    phantom = make_phantom_case(7, seed=11)
    guidance = run_guidance(phantom.ct, [MOSSource(phantom.labels, ts)])
    return phantom, guidance


@pytest.fixture(scope="module")
def wide_case(ts):
    """A phantom with a long z range (80 slices): the tumor lies in the lower half of the tiles."""
    phantom = make_phantom_case(8, seed=11, shape_zyx=(80, 96, 96))
    return phantom, run_guidance(phantom.ct, [MOSSource(phantom.labels, ts)])


# --- model sources -----------------------------------------------------------------------------
def test_a_corrupt_shipped_demo_bundle_fails_the_tests(tmp_path, monkeypatch):
    """``load_or_train_model`` trains a model only when asked to or when no demo bundle is shipped."""
    import inference_model

    from CRCSegmentationLib.demo import ct as demo

    corrupt = tmp_path / "demo_phantom"
    shutil.copytree(demo.demo_model_path(), corrupt)
    with open(corrupt / "fold_all" / "checkpoint_final.pth", "ab") as stream:
        stream.write(b"\0")
    monkeypatch.delenv(inference_model.ENV_TEST_MODEL, raising=False)
    monkeypatch.setattr(demo, "demo_model_path", lambda: corrupt)
    trained = []
    monkeypatch.setattr(inference_model, "train_tiny_model", lambda root: trained.append(root) or {"bundle": root})
    with pytest.raises(AssertionError, match=r"demo_phantom fails verification.*checkpoint.*CRCSEG_TEST_MODEL=train"):
        inference_model.load_or_train_model(tmp_path / "model")
    assert trained == []

    def not_shipped():
        raise ModelError("model 'demo_phantom': its shipped folder is missing from this installation")

    monkeypatch.setattr(demo, "demo_model_path", not_shipped)
    assert inference_model.load_or_train_model(tmp_path / "model") == {"bundle": tmp_path / "model"}
    monkeypatch.setenv(inference_model.ENV_TEST_MODEL, "train")
    monkeypatch.setattr(demo, "demo_model_path", lambda: corrupt)
    assert inference_model.load_or_train_model(tmp_path / "asked") == {"bundle": tmp_path / "asked"}
    assert trained == [tmp_path / "model", tmp_path / "asked"]


def test_open_bundle_and_results_folder(model, model_files):
    assert model.is_bundle and model.input_channels == ["CT", "MOS", "OOI"] and model.tumor_label == 1
    plain = open_model(model_files["results"])
    assert not plain.is_bundle and plain.input_channels == ["CT", "MOS", "OOI"]
    assert plain.folds == model.folds and plain.trainer == model.trainer


def test_wrong_channel_count(model, model_files, tmp_path):
    with pytest.raises(ModelError, match=r"needs the input channels \['CT', 'MOS', 'OOI'\] \(3\).*only \['CT'\] \(1\)"):
        model.check_channels(["CT"])
    folder = tmp_path / model_files["results"].name
    shutil.copytree(model_files["results"], folder)
    dataset = json.loads((folder / "dataset.json").read_text())
    for key in ("channel_names", "channel_descriptions"):
        dataset[key] = {"0": "CT"}
    (folder / "dataset.json").write_text(json.dumps(dataset))
    with pytest.raises(ModelError, match="network takes 3 input channels but dataset.json describes 1"):
        open_model(folder)


def test_missing_plans_fold_and_checkpoint(model_files, tmp_path):
    folder = tmp_path / model_files["results"].name
    shutil.copytree(model_files["results"], folder)
    with pytest.raises(ModelError, match="fold 3 is missing"):
        open_model(folder, folds=[3])
    with pytest.raises(ModelError, match=r"no fold_\* folder holds checkpoint_9.pth"):
        open_model(folder, checkpoint="checkpoint_9.pth")
    with pytest.raises(ModelError, match="checkpoint checkpoint_9.pth is missing"):
        open_model(folder, folds=["all"], checkpoint="checkpoint_9.pth")
    (folder / "plans.json").unlink()
    with pytest.raises(ModelError, match="plans.json is missing"):
        open_model(folder)
    with pytest.raises(ModelError, match="neither a model bundle"):
        open_model(tmp_path)


def test_checkpoint_with_wrong_hash(model_files, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(model_files["bundle"], bundle)
    checkpoint = next(bundle.glob("fold_*/*.pth"))
    with open(checkpoint, "ab") as stream:
        stream.write(b"tampered")
    with pytest.raises(ModelError, match="SHA-256"):
        open_model(bundle)


def test_corrupt_or_code_carrying_checkpoint(model_files, tmp_path):
    folder = tmp_path / model_files["results"].name
    shutil.copytree(model_files["results"], folder)
    checkpoint = next(folder.glob("fold_*/*.pth"))
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])  # truncated download
    with pytest.raises(ModelError, match="cannot be loaded as a weights-only checkpoint"):
        open_model(folder)
    # A pickle that would call a function when loaded: weights_only refuses it, nothing runs.
    torch.save({"network_weights": {}, "trainer_name": "x", "init_args": {}, "hook": shutil.rmtree}, checkpoint)
    with pytest.raises(ModelError, match="cannot be loaded as a weights-only checkpoint"):
        open_model(folder)


# --- inference -----------------------------------------------------------------------------------
def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


@pytest.fixture(scope="module")
def small_ooi_case(wide_case):
    """``wide_case`` with a small OOI (the organs near the tumor), so that whole tiles fall outside it."""
    phantom, guidance = wide_case
    near = np.zeros(phantom.ct.shape, bool)
    near[tuple(slice(max(0, s.start - 2), s.stop + 2) for s in bounding_box(phantom.tumor.array))] = True
    return phantom, dataclasses.replace(guidance, ooi=guidance.ooi.with_array((guidance.ooi.array > 0) & near))


@pytest.fixture(scope="module")
def full_volume(model, small_ooi_case):
    """nnU-Net on the whole grid, every tile (no body crop, no OOI box), kept within the OOI as ours."""
    phantom, guidance = small_ooi_case
    full = TumorSegmenter(model, SegmentationParameters(restrict_to_ooi=False, body_crop=False, **FAST)).segment(
        phantom.ct, guidance)
    assert full.region == CropBox.full(phantom.ct.shape) and full.tiles[0] == full.tiles[1]
    return full


def test_restricted_result_agrees_with_full_volume(model, small_ooi_case, full_volume):
    """Exact mode: tiles outside the OOI box are skipped; inside it the result is nnU-Net's full-volume one."""
    phantom, guidance = small_ooi_case
    exact = TumorSegmenter(model, SegmentationParameters(min_tile_weight=0.0, **FAST))
    restricted = exact.segment(phantom.ct, guidance)
    assert restricted.tiles[0] < restricted.tiles[1] == full_volume.tiles[1]  # the restriction does skip tiles
    assert restricted.mask.same_grid(phantom.ct) and restricted.mask.array.dtype == np.uint8
    inside = np.zeros(phantom.ct.shape, bool)
    inside[restricted.region.slices] = True
    assert not restricted.mask.array[~inside].any() and not restricted.probabilities.array[~inside].any()
    a, b = restricted.mask.array[inside] > 0, full_volume.mask.array[inside] > 0
    assert dice(a, b) >= 0.99  # the bound; same tiles and weights make it exact here
    difference = np.abs(restricted.probabilities.array - full_volume.probabilities.array)[inside]
    assert difference.max() < 1e-3
    assert set(restricted.timings) >= {"inputs", "predict", "postprocess", "total"} and restricted.device == "cpu"


def test_tiles_chosen_by_the_ooi_agree_with_full_volume(model, segmenter, small_ooi_case, full_volume):
    """Default mode: only tiles that weigh >= 5 % of their peak on an OOI voxel run; inside the OOI the
    result stays nnU-Net's full-volume one (issue bound: Dice >= 0.99), with fewer tiles than exact mode."""
    phantom, guidance = small_ooi_case
    assert segmenter.parameters.min_tile_weight > 0
    focused = segmenter.segment(phantom.ct, guidance)
    exact_tiles = TumorSegmenter(model, SegmentationParameters(min_tile_weight=0.0, **FAST)).segment(
        phantom.ct, guidance).tiles
    assert focused.tiles[0] < exact_tiles[0]
    ooi = guidance.ooi.array > 0
    assert not focused.mask.array[~ooi].any() and not focused.probabilities.array[~ooi].any()
    assert dice(focused.mask.array[ooi] > 0, full_volume.mask.array[ooi] > 0) >= 0.99
    difference = np.abs(focused.probabilities.array - full_volume.probabilities.array)[ooi]
    print("probability difference in the OOI: p99", np.percentile(difference, 99), "max", difference.max())
    assert np.percentile(difference, 99) < 0.03 and difference.max() < 0.25  # rim contributions only


def test_crop_input_variant_stays_in_the_region(model, wide_case):
    phantom, guidance = wide_case
    result = TumorSegmenter(model, SegmentationParameters(crop_input=True, **FAST)).segment(phantom.ct, guidance)
    inside = np.zeros(phantom.ct.shape, bool)
    inside[result.region.slices] = True
    assert result.mask.same_grid(phantom.ct) and not result.mask.array[~inside].any()
    assert result.probabilities.same_grid(phantom.ct) and not result.probabilities.array[~inside].any()


def test_tumor_is_kept_within_the_ooi(segmenter, case):
    phantom, guidance = case
    result = segmenter.segment(phantom.ct, guidance)
    assert not (result.mask.array.astype(bool) & ~guidance.ooi.array.astype(bool)).any()


def test_ct_only_model_gets_only_the_ct_channel(case):
    phantom, guidance = case
    region = CropBox.full(phantom.ct.shape)
    ct_only = build_input_channels(["CT"], phantom.ct, guidance, region)
    assert ct_only.shape == (1, *phantom.ct.shape) and ct_only.dtype == np.float32
    three = build_input_channels(["CT", "MOS", "OOI"], phantom.ct, guidance, region)
    assert np.array_equal(three[0], phantom.ct.array) and set(np.unique(three[2])) <= {0.0, 1.0}


def test_mos_code_from_guidance_equals_the_training_code(case, ts):
    """``prepare`` codes the MOS with the source convention; inference with the guidance's label names."""
    phantom, guidance = case
    assert np.array_equal(compact_mos(guidance.mos, ts).array, compact_mos(guidance.mos, guidance_convention(guidance)).array)


def test_ct_of_another_modality_is_refused(segmenter, case):
    phantom, guidance = case
    mr = phantom.ct.with_array(np.clip(phantom.ct.array + 1024, 0, None).astype(np.float32) / 4, "T2 MR")
    with pytest.raises(InputError, match="T2 MR.*not a CT"):
        segmenter.segment(mr, guidance)


def test_missing_guidance_for_a_guided_model(segmenter, case):
    with pytest.raises(ModelError, match="run organ guidance first"):
        segmenter.segment(case[0].ct, None)


def test_empty_ooi_falls_back_to_the_body_crop(segmenter, case):
    phantom, guidance = case
    empty = dataclasses.replace(guidance, ooi=guidance.ooi.with_array(np.zeros(phantom.ct.shape, np.uint8)))
    result = segmenter.segment(phantom.ct, empty)
    assert any("OOI is empty" in w and "body crop" in w for w in result.warnings)
    assert result.region == guidance.crop_box == body_crop_box(phantom.ct, margin_mm=10.0)


def test_cuda_requested_without_a_gpu(model):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(InputError, match="no CUDA GPU is available"):
        TumorSegmenter(model, SegmentationParameters(device="cuda"))


def test_cuda_failure_is_retried_on_the_cpu(segmenter, case):
    """A GPU that runs out of memory mid-run: the case is redone on the CPU and the user is told."""
    class OutOfMemoryPredictor:
        def predict_in_box(self, *args, **kwargs):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    phantom, guidance = case
    saved = segmenter.device, dict(segmenter._predictors)
    segmenter.device = torch.device("cuda")
    segmenter._predictors["cuda"] = OutOfMemoryPredictor()
    try:
        result = segmenter.segment(phantom.ct, guidance)
    finally:
        segmenter.device, segmenter._predictors = saved[0], saved[1]
    assert result.device == "cpu" and any("run on the CPU" in w for w in result.warnings)


def test_cancel_stops_before_the_model_runs(segmenter, case):
    cancel = threading.Event()
    stages = []

    def progress(stage, fraction):
        stages.append(stage)
        cancel.set()

    with pytest.raises(RunCancelled):
        segmenter.segment(case[0].ct, case[1], progress=progress, cancel=cancel)
    assert stages == ["checking inputs"]


def test_min_component_volume(model, case):
    phantom, guidance = case
    result = TumorSegmenter(model, SegmentationParameters(min_component_ml=1e6, **FAST)).segment(phantom.ct, guidance)
    assert not result.mask.array.any()


# --- batch and command line ----------------------------------------------------------------------
def test_batch_cli_isolates_a_bad_case(model_files, tmp_path):
    from CRCSegmentationLib.demo.ct import demo_model_path
    from CRCTraining.cli import main

    images, organs, references = (tmp_path / n for n in ("images", "organs", "references"))
    for index, name in ((5, "case_a"), (6, "case_b")):
        phantom = make_phantom_case(index, seed=21)
        write_image(phantom.ct, images / f"{name}_0000.nii.gz")  # nnU-Net naming is understood
        write_image(phantom.labels, organs / f"{name}.nii.gz")
        write_image(phantom.tumor, references / f"{name}.nii.gz")
    bad = phantom.ct.with_array(np.full(phantom.ct.shape, 7, np.int16), "flat")
    write_image(bad, images / "case_c.nii.gz")  # not a CT: reported, skipped
    write_image(phantom.labels, organs / "case_c.nii.gz")
    output = tmp_path / "out"
    code = main(["segment", str(images), "-m", str(model_files["bundle"]), "-o", str(output), "--organs", str(organs),
                 "--references", str(references), "--device", "cpu", "--no-mirroring"])
    assert code == 1  # one case failed
    rows = {row["case"]: row for row in csv.DictReader(open(output / "summary.csv"))}
    assert set(rows) == {"case_a", "case_b", "case_c"}
    assert rows["case_c"]["status"] == "failed" and "not a CT" in rows["case_c"]["error"]
    shipped_demo = model_files["bundle"] == demo_model_path()  # not a model of CRCSEG_TEST_MODEL
    for name in ("case_a", "case_b"):
        assert rows[name]["status"] == "ok" and (output / f"{name}_tumor.nii.gz").is_file()
        # The summary's numbers, recomputed from the files it describes with numpy/scipy (not the Lib's metrics).
        predicted = read_image(output / f"{name}_tumor.nii.gz")
        mask, reference = predicted.array > 0, read_image(references / f"{name}.nii.gz").array > 0
        overlap = np.count_nonzero(mask & reference)
        expected = {
            "dice": 2 * overlap / (mask.sum() + reference.sum()),
            "precision": overlap / mask.sum() if mask.any() else 0.0,
            "recall": overlap / reference.sum(),
            "volume_ml": mask.sum() * np.prod(predicted.spacing) / 1000.0,
        }
        for column, value in expected.items():
            assert float(rows[name][column]) == pytest.approx(value, abs=6e-5), (name, column)  # 4 decimals
        components = ndimage.label(mask, structure=np.ones((3, 3, 3)))[1]  # 26-connected
        assert int(rows[name]["components"]) == components
        if shipped_demo:  # measured with it: Dice 0.92 and 0.94, HD95 2.9 mm (one voxel), one component
            assert expected["dice"] >= 0.75 and 0 < float(rows[name]["hd95"]) < 15.0 and components == 1, rows[name]
