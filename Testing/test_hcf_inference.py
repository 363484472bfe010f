"""HCF bundles and two-stage inference (paper Sec. 3.1): real networks with set weights, no mocks. CPU only.

The classifier's decision is made controllable by setting its weights: ``intensity_classifier`` turns the
ResNet18 into "mean input intensity above a threshold" (constant first convolution, residual branches
off, channel-averaging shortcuts, a two-logit readout), ``constant_classifier`` gives every slice the same
p(abnormal). ``constant_sanet`` makes SANet call every pixel tumor (or none). The synthetic CT has bright
slices (tissue at 300 HU, "abnormal") and dim ones (-150 HU, "normal") in two groups.
"""
from __future__ import annotations

import csv
import json
import shutil
import threading
from pathlib import Path
from typing import List, Sequence

import numpy as np
import pytest
import torch
from torch import nn

from CRCSegmentationLib.batch import segment_files
from CRCSegmentationLib.core.bundle import METADATA_FILE
from CRCSegmentationLib.core.errors import ModelError
from CRCSegmentationLib.core.segmentation import SegmentationParameters
from CRCSegmentationLib.hcf.bundle import HCF_FILE, write_hcf_bundle
from CRCSegmentationLib.hcf.preprocessing import (
    SliceDatasetConfig,
    body_box,
    input_to_slice,
    label_to_input,
    to_network_input,
)
from CRCSegmentationLib.hcf.segmenter import HCFSegmenter, majority_vote
from CRCSegmentationLib.models.open import open_model
from CRCSegmentationLib.networks.hcf import build_sanet, build_slice_classifier
from OrganGuidanceLib.checksum import sha256_of
from OrganGuidanceLib.crop import CropBox
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.io import read_image, write_image
from OrganGuidanceLib.progress import RunCancelled
from OrganGuidanceLib.validation import InputError

CONFIG = SliceDatasetConfig(size=64, body_margin_px=2)
SHAPE = (16, 64, 64)  # (z, y, x)
BRIGHT = (2, 3, 4, 9, 10, 11, 12, 13)  # "abnormal" slices: two groups, 3 and 5 slices
BODY = (slice(10, 54), slice(8, 56))  # rows, cols of the body on every slice
BOX = (8, 56, 6, 58)  # its body box with CONFIG's margin of 2 pixels
CPU = SegmentationParameters(device="cpu")


# --- networks with set weights ----------------------------------------------------------------------------------
def intensity_classifier(threshold: float = 0.1, gain: float = 100.0) -> nn.Module:
    """p(abnormal) = sigmoid(2 gain (f - threshold)), f ~ the mean of the (box-cropped, windowed) input."""
    net = build_slice_classifier(1, 2)
    with torch.no_grad():
        net.conv1.weight.fill_(1 / 49)
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.fill_(1)
                module.bias.zero_()
                module.running_mean.zero_()
                module.running_var.fill_(1)
        for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
            for block in layer:
                block.bn2.weight.zero_()  # residual branch off: the block passes its shortcut on
                if block.downsample is not None:
                    block.downsample[0].weight.fill_(1 / block.downsample[0].in_channels)
        net.fc.weight.zero_()
        net.fc.weight[1].fill_(gain / 512)
        net.fc.weight[0].fill_(-gain / 512)
        net.fc.bias.copy_(torch.tensor([gain * threshold, -gain * threshold]))
    return net


def constant_classifier(p_abnormal: float) -> nn.Module:
    net = build_slice_classifier(1, 2)
    logit = float(np.log(p_abnormal / (1 - p_abnormal)))
    with torch.no_grad():
        net.fc.weight.zero_()
        net.fc.bias.copy_(torch.tensor([0.0, logit]))
    return net


def constant_sanet(tumor: bool = True) -> nn.Module:
    net = build_sanet(2, 1)
    with torch.no_grad():
        net.classifier.weight.zero_()
        net.classifier.bias.copy_(torch.tensor([-10.0, 10.0] if tumor else [10.0, -10.0]))
    return net


def make_bundle(folder: Path, classifiers: Sequence[nn.Module], sanets: Sequence[nn.Module], **options) -> Path:
    options.setdefault("keep_components", 0)
    return write_hcf_bundle(folder, [c.state_dict() for c in classifiers], [s.state_dict() for s in sanets], CONFIG,
                            name=folder.name, **options)


def synthetic_ct(bright: Sequence[int] = BRIGHT, shape=SHAPE) -> Image:
    """Air around a rectangular body; tissue at 300 HU on the ``bright`` slices, -150 HU on the others."""
    array = np.full(shape, -1000.0, np.float32)
    for k in range(shape[0]):
        array[(k, *BODY)] = 300.0 if k in bright else -150.0
    return Image(array, spacing=(1.0, 1.0, 3.0), name="synthetic CT")


def box_mask(slices: Sequence[int], shape=SHAPE) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    r0, r1, c0, c1 = BOX
    for k in slices:
        mask[k, r0:r1, c0:c1] = 1
    return mask


class ForwardCount:
    """Slices each network of ``networks`` saw (a forward hook on the real modules)."""

    def __init__(self, networks: Sequence[nn.Module]) -> None:
        self.slices: List[int] = [0] * len(networks)
        self.handles = [network.register_forward_hook(self._hook(i)) for i, network in enumerate(networks)]

    def _hook(self, index: int):
        def hook(module, inputs, output) -> None:
            self.slices[index] += int(inputs[0].shape[0])
        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


@pytest.fixture(scope="module")
def ct() -> Image:  # the name shadows conftest's real CT on purpose: these tests need no shared data
    return synthetic_ct()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """2 classifier folds (both the intensity rule), 1 SANet fold that calls every pixel tumor; all components kept."""
    return make_bundle(tmp_path_factory.mktemp("hcf") / "hcf_intensity", [intensity_classifier()] * 2,
                       [constant_sanet(True)])


@pytest.fixture(scope="module")
def segmenter(bundle) -> HCFSegmenter:
    return open_model(bundle).segmenter(CPU)


@pytest.fixture
def copy(bundle, tmp_path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(bundle, target)
    return target


# --- preprocessing, moved into the Lib ----------------------------------------------------------------------------
def test_training_code_uses_the_lib_preprocessing():
    from CRCTraining.hcf import slices as hcf_slices

    assert hcf_slices.to_network_input is to_network_input and hcf_slices.SliceDatasetConfig is SliceDatasetConfig
    assert hcf_slices.body_box is body_box and hcf_slices.label_to_input is label_to_input


def test_input_to_slice_inverts_label_to_input():
    label = np.zeros((60, 70), np.uint8)
    label[20:40, 25:45] = 1
    box = (10, 50, 15, 55)
    on_input = label_to_input(label, box, 80)  # 40 x 40 box -> 80 x 80: exactly 2 x 2 per pixel
    np.testing.assert_array_equal(input_to_slice(on_input, box, label.shape, order=0), label)
    probability = input_to_slice(on_input.astype(np.float32), box, label.shape, order=1)
    assert probability.dtype == np.float32 and probability[:10].max() == 0 and probability[30, 35] == 1.0
    with pytest.raises(ValueError, match="does not lie in"):
        input_to_slice(on_input, (0, 80, 0, 10), label.shape)


def test_axial_axis_follows_the_direction():
    assert Image(np.zeros((3, 4, 5))).axial_axis == 0
    assert Image(np.zeros((3, 4, 5)), direction=np.diag([-1.0, -1.0, 1.0])).axial_axis == 0
    # index x points superior (a volume stored sagittal-first): array axis 2
    assert Image(np.zeros((3, 4, 5)), direction=[[0, 0, 1], [0, 1, 0], [1, 0, 0]]).axial_axis == 2
    assert Image(np.zeros((3, 4, 5)), direction=[[1, 0, 0], [0, 0, 1], [0, -1, 0]]).axial_axis == 1


# --- the bundle -----------------------------------------------------------------------------------------------------
def test_bundle_layout_and_round_trip(tmp_path):
    classifiers = [build_slice_classifier(1, 2) for _ in range(3)]
    sanets = [build_sanet(2, 1) for _ in range(2)]
    folder = write_hcf_bundle(tmp_path / "hcf", [c.state_dict() for c in classifiers],
                              [s.state_dict() for s in sanets], CONFIG, name="round trip", description="test",
                              classifier_threshold=0.4, keep_components=2)
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert files == ["classifier/fold_0.pt", "classifier/fold_1.pt", "classifier/fold_2.pt", METADATA_FILE,
                     HCF_FILE, "sanet/fold_0.pt", "sanet/fold_1.pt"]
    assert [p.name for p in tmp_path.iterdir()] == ["hcf"]  # no staging folder left
    metadata = json.loads((folder / METADATA_FILE).read_text())
    assert (metadata["kind"], metadata["modality"], metadata["input_channels"], metadata["format_version"]) == \
        ("hcf", "CT", ["CT"], 2)
    assert metadata["labels"] == {"background": 0, "tumor": 1} and metadata["tumor_labels"] == ["tumor"]
    assert metadata["folds"] == ["0", "1", "2"]
    assert {k: sha256_of(folder / k) for k in files if k.endswith(".pt")} == metadata["checkpoint_sha256"]
    hcf = json.loads((folder / HCF_FILE).read_text())
    assert hcf["slice_config"] == {"hu_window": [-160.0, 240.0], "size": 64, "body_threshold_hu": -300.0,
                                   "body_margin_px": 2}
    assert hcf["classifier"]["folds"] == ["0", "1", "2"] and hcf["sanet"]["folds"] == ["0", "1"]
    assert hcf["classifier"]["threshold"] == 0.4 and hcf["keep_components"] == 2

    model = open_model(folder)
    assert (model.kind, model.modality, model.input_channels, model.tumor_labels, model.folds) == \
        ("hcf", "CT", ["CT"], [1], ["0", "1", "2"])
    assert model.hcf.slice_config == SliceDatasetConfig((-160.0, 240.0), 64, -300.0, 2)
    assert model.checkpoint_paths() == [folder / f for f in files if f.endswith(".pt")]
    assert set(model.loaded_checkpoints) == set(model.checkpoint_paths())  # validated by open_model
    for path, network in zip(model.checkpoint_paths(), [*classifiers, *sanets]):
        loaded = model.loaded_checkpoints[path]
        assert all(torch.equal(loaded[k], v) for k, v in network.state_dict().items())
    segmenter = model.segmenter(CPU)
    assert isinstance(segmenter, HCFSegmenter) and len(segmenter.classifier.networks) == 3 and len(segmenter.sanets) == 2
    result = segmenter.segment(synthetic_ct())
    assert result.mask.array.dtype == np.uint8 and result.mask.same_grid(synthetic_ct())
    assert set(np.unique(result.mask.array)) <= {0, 1}

    # folds choose in both stages; a stage left without folds is refused
    chosen = open_model(folder, folds=["1", "2"])
    assert chosen.hcf.classifier.folds == ["1", "2"] and chosen.hcf.sanet.folds == ["1"]
    assert len(chosen.checkpoint_paths()) == 3
    with pytest.raises(ModelError, match=r"leave the sanet without any fold"):
        open_model(folder, folds=["2"])
    with pytest.raises(ModelError, match=r"folds \['7'\] are not part"):
        open_model(folder, folds=["7"])


def test_the_writer_checks_its_inputs_and_leaves_nothing_behind(tmp_path):
    sanet = build_sanet(2, 1).state_dict()
    with pytest.raises(ValueError, match="classifier fold 0: not the state dict of slice_classifier"):
        write_hcf_bundle(tmp_path / "bad", [sanet], [sanet], CONFIG, name="bad")
    with pytest.raises(ValueError, match="multiple of 16"):
        write_hcf_bundle(tmp_path / "bad", [build_slice_classifier().state_dict()], [], SliceDatasetConfig(size=50),
                         name="bad")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="taken: exists already"):
        write_hcf_bundle(tmp_path / "taken", [build_slice_classifier().state_dict()], [], CONFIG, name="x")


def test_a_changed_weight_file_is_refused(copy):
    with open(copy / "sanet" / "fold_0.pt", "ab") as stream:
        stream.write(b"\0")
    with pytest.raises(ModelError, match=r"sanet/fold_0\.pt: SHA-256 .* differs from the recorded"):
        open_model(copy)


def rerecord(folder: Path, relative: str) -> None:
    """Record the file's new SHA-256, as if the bundle had been written with it (to reach the later checks)."""
    path = folder / METADATA_FILE
    data = json.loads(path.read_text())
    data["checkpoint_sha256"][relative] = sha256_of(folder / relative)
    path.write_text(json.dumps(data))


def test_missing_corrupt_and_wrong_weights_name_the_file(bundle, copy):
    (copy / "classifier" / "fold_1.pt").unlink()
    with pytest.raises(ModelError, match=r"checkpoint classifier/fold_1\.pt is missing"):
        open_model(copy)
    shutil.copy(bundle / "classifier" / "fold_1.pt", copy / "classifier" / "fold_1.pt")

    (copy / "sanet" / "fold_0.pt").write_bytes(b"not a torch file")
    rerecord(copy, "sanet/fold_0.pt")
    with pytest.raises(ModelError, match=r"sanet/fold_0\.pt: cannot be loaded as a weights-only torch file"):
        open_model(copy)

    shutil.copy(copy / "classifier" / "fold_0.pt", copy / "sanet" / "fold_0.pt")  # a classifier where SANet belongs
    rerecord(copy, "sanet/fold_0.pt")
    with pytest.raises(ModelError, match=r"sanet/fold_0\.pt: holds the weights of 'slice_classifier'"):
        open_model(copy)

    state = build_sanet(2, 1).state_dict()
    del state["classifier.bias"]
    torch.save({"format": 1, "network": "sanet", "builder": {}, "fold": "0", "state_dict": state},
               str(copy / "sanet" / "fold_0.pt"))
    rerecord(copy, "sanet/fold_0.pt")
    with pytest.raises(ModelError, match=r"sanet/fold_0\.pt: the weights do not fit sanet .*classifier\.bias"):
        open_model(copy)
    model = open_model(copy, load_checkpoints=False)  # the segmenter checks them too, when open_model did not
    with pytest.raises(ModelError, match=r"sanet/fold_0\.pt: the weights do not fit"):
        model.segmenter(CPU)


def edit_hcf(folder: Path, change) -> None:
    path = folder / HCF_FILE
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("change, words", [
    (lambda d: d["slice_config"].update(size=50), "slice_config size 50 must be a positive multiple of 16"),
    (lambda d: d["classifier"].update(threshold=1.5), "classifier threshold 1.5 is outside (0, 1)"),
    (lambda d: d["sanet"].update(folds=["0", "1"]), "which crcseg_model.json has no SHA-256"),
    (lambda d: d["classifier"].update(folds=["0"]), "records ['classifier/fold_1.pt'], which hcf.json does not list"),
    (lambda d: d["sanet"].update(builder={"num_classes": 3, "in_channels": 1}), "sanet builder arguments"),
    (lambda d: d.update(keep_components=-1), "keep_components -1"),
    (lambda d: d.pop("slice_config"), "'slice_config' is missing"),
])
def test_an_inconsistent_hcf_json_is_refused(copy, change, words):
    edit_hcf(copy, change)
    with pytest.raises(ModelError) as raised:
        open_model(copy)
    assert words in str(raised.value) and str(copy) in str(raised.value), str(raised.value)


def test_a_missing_hcf_json_is_named(copy):
    (copy / HCF_FILE).unlink()
    with pytest.raises(ModelError, match=r"hcf\.json is missing; a model of kind 'hcf' needs it"):
        open_model(copy)
    (copy / HCF_FILE).write_text("{not json")
    with pytest.raises(ModelError, match=r"hcf\.json: is not valid JSON"):
        open_model(copy)


def test_a_classifier_only_bundle_opens_but_cannot_segment(tmp_path):
    folder = make_bundle(tmp_path / "classifier_only", [intensity_classifier()], [])
    model = open_model(folder)
    assert model.hcf.sanet.folds == [] and model.checkpoint_paths() == [folder / "classifier" / "fold_0.pt"]
    with pytest.raises(ModelError, match="classifier-only HCF bundle .* use it as a slice filter"):
        model.segmenter(CPU)


# --- inference ------------------------------------------------------------------------------------------------------
def test_sanet_runs_only_on_the_slices_the_classifier_passes(segmenter, ct):
    decisions = segmenter.classifier.classify(ct)
    assert decisions.abnormal_slices == list(BRIGHT)  # the intensity rule, both folds
    assert np.all(decisions.probabilities[:, list(BRIGHT)] > 0.99) and np.all(decisions.probabilities[:, [0, 5, 15]] < 0.01)
    count = ForwardCount(segmenter.sanets)
    stages = []
    try:
        result = segmenter.segment(ct, progress=lambda stage, fraction: stages.append((stage, fraction)))
    finally:
        count.close()
    assert count.slices == [len(BRIGHT)] and segmenter.sanet_slices_run == len(BRIGHT)
    assert result.slice_counts == {"slices": 16, "abnormal": len(BRIGHT)}
    normal = [k for k in range(16) if k not in BRIGHT]
    assert not result.mask.array[normal].any()  # rejected slices are all zero
    np.testing.assert_array_equal(result.mask.array, box_mask(BRIGHT))  # SANet: all tumor, inside the body box
    probability = result.probabilities.array
    assert probability.dtype == np.float32 and not probability[normal].any() and probability[list(BRIGHT)].max() > 0.99
    assert result.region == CropBox.full(ct.shape) and result.device == "cpu" and result.warnings == []
    assert {"inputs", "predict", "postprocess", "total"} <= set(result.timings) and result.efficiency["wall_s"] > 0
    fractions = [f for _, f in stages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {"slice classifier", "SANet", "post-processing", "done"} <= {s for s, _ in stages}


def test_the_largest_component_is_kept(tmp_path, ct):
    folder = make_bundle(tmp_path / "largest", [intensity_classifier()], [constant_sanet(True)], keep_components=1)
    result = open_model(folder).segmenter(CPU).segment(ct)
    np.testing.assert_array_equal(result.mask.array, box_mask((9, 10, 11, 12, 13)))  # 5 slices beat 3
    assert result.slice_counts["abnormal"] == len(BRIGHT)  # SANet saw both groups; post-processing chose


def test_the_folds_vote_and_a_tie_passes_the_slice(tmp_path, ct):
    votes = np.array([[0.9, 0.2, 0.6], [0.1, 0.2, 0.6]])
    assert majority_vote(votes, 0.5).tolist() == [True, False, True]  # 1 of 2 is a tie: abnormal
    assert majority_vote(votes, 0.65).tolist() == [True, False, False]
    assert majority_vote(np.array([[0.9], [0.1], [0.1]]), 0.5).tolist() == [False]  # 1 of 3

    def run(classifiers, **options):
        folder = make_bundle(tmp_path / f"vote{len(list(tmp_path.iterdir()))}", classifiers, [constant_sanet(True)],
                             **options)
        segmenter = open_model(folder).segmenter(CPU)
        count = ForwardCount(segmenter.sanets)
        try:
            return segmenter.segment(ct), count.slices[0]
        finally:
            count.close()

    result, seen = run([constant_classifier(0.99), constant_classifier(0.01)])  # a tie on every slice
    assert result.slice_counts["abnormal"] == 16 and seen == 16 and result.mask.array.any()
    result, seen = run([constant_classifier(0.99), constant_classifier(0.01), constant_classifier(0.01)])
    assert result.slice_counts["abnormal"] == 0 and seen == 0 and not result.mask.array.any()
    result, seen = run([constant_classifier(0.7)], classifier_threshold=0.8)  # the bundle's threshold decides
    assert seen == 0 and not result.mask.array.any()


def test_the_folds_of_sanet_are_averaged(tmp_path, ct):
    """All-tumor and no-tumor SANet folds average to 0.5 everywhere: not above 0.5, so no tumor."""
    folder = make_bundle(tmp_path / "average", [constant_classifier(0.99)], [constant_sanet(True), constant_sanet(False)])
    result = open_model(folder).segmenter(CPU).segment(ct)
    assert not result.mask.array.any()
    r0, r1, c0, c1 = BOX
    np.testing.assert_allclose(result.probabilities.array[:, r0:r1, c0:c1], 0.5, atol=1e-6)


def test_slices_follow_the_superior_inferior_axis(segmenter, ct):
    """The same CT stored with x as the superior axis gives the same mask, moved with the array."""
    turned = Image(np.ascontiguousarray(np.moveaxis(ct.array, 0, 2)), spacing=(3.0, 1.0, 1.0),
                   direction=[[0, 0, 1], [0, 1, 0], [1, 0, 0]], name="sagittal-first CT")
    assert turned.axial_axis == 2
    result = segmenter.segment(turned)
    assert result.slice_counts == {"slices": 16, "abnormal": len(BRIGHT)}
    np.testing.assert_array_equal(result.mask.array, np.moveaxis(box_mask(BRIGHT), 0, 2))


def test_a_ct_is_required(segmenter, ct):
    mr_like = Image(np.random.default_rng(0).uniform(0, 800, SHAPE).astype(np.float32), name="T2 volume")
    with pytest.raises(InputError, match="model 'hcf_intensity' segments CT images: T2 volume: intensities"):
        segmenter.segment(mr_like)
    with pytest.raises(InputError, match="single slice"):
        segmenter.segment(Image(ct.array[:1], name="one slice"))
    with pytest.raises(InputError, match="2D"):
        segmenter.segment(Image(ct.array[0], name="2D image"))


def test_cancel_stops_before_sanet_and_the_segmenter_still_works(segmenter, ct):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(RunCancelled):
        segmenter.segment(ct, cancel=cancel)
    cancel = threading.Event()

    def press_cancel(stage: str, fraction: float) -> None:
        if stage == "slice classifier" and fraction > 0.05:
            cancel.set()  # during the classifier: SANet must not start

    count = ForwardCount(segmenter.sanets)
    try:
        with pytest.raises(RunCancelled, match="cancelled (during|before)"):
            segmenter.segment(ct, progress=press_cancel, cancel=cancel)
        assert count.slices == [0]
    finally:
        count.close()
    np.testing.assert_array_equal(segmenter.segment(ct).mask.array, box_mask(BRIGHT))


def test_organ_guidance_is_not_used_and_said_so(segmenter, ct):
    from OrganGuidanceLib.guidance import GuidanceResult

    empty = ct.with_array(np.zeros(SHAPE, np.uint8))
    guidance = GuidanceResult(mos=empty, ooi0=empty, ooi=empty, bowel_wall=empty, crop_box=None)
    result = segmenter.segment(ct, guidance)
    assert any("takes none: it was not used" in w for w in result.warnings)
    np.testing.assert_array_equal(result.mask.array, box_mask(BRIGHT))


# --- the three routes: console API, crcseg segment, module logic --------------------------------------------------
@pytest.fixture(scope="module")
def ct_file(tmp_path_factory, ct) -> Path:
    return write_image(ct, tmp_path_factory.mktemp("hcf_images") / "case1.nii.gz")


def test_console_batch_api(bundle, ct_file, tmp_path):
    report = segment_files(ct_file, bundle, tmp_path / "out", parameters=CPU)
    assert [c.status for c in report.cases] == ["ok"], report.summary()
    written = read_image(tmp_path / "out" / "case1_tumor.nii.gz")
    np.testing.assert_array_equal(written.array, box_mask(BRIGHT))
    assert report.cases[0].slices == {"slices": 16, "sanet_slices": len(BRIGHT)}
    with pytest.raises(InputError, match="--organs: model 'hcf_intensity' segments CT slices .* takes no organ guidance"):
        segment_files(ct_file, bundle, tmp_path / "other", organs=ct_file, parameters=CPU)


def test_crcseg_segment_command(bundle, ct_file, tmp_path, capsys):
    from CRCTraining.cli import main as crcseg

    out = tmp_path / "segment"
    assert crcseg(["segment", str(ct_file), "-m", str(bundle), "-o", str(out), "--device", "cpu"]) == 0
    with open(out / "summary.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [(r["case"], r["status"], r["slices"], r["sanet_slices"]) for r in rows] == \
        [("case1", "ok", "16", str(len(BRIGHT)))]
    np.testing.assert_array_equal(read_image(out / "case1_tumor.nii.gz").array, box_mask(BRIGHT))
    assert float(rows[0]["volume_ml"]) == pytest.approx(box_mask(BRIGHT).sum() * 3.0 / 1000.0)
    # an HCF bundle has no checkpoint to choose: a usage error (exit code 2) with the reason
    assert crcseg(["segment", str(ct_file), "-m", str(bundle), "-o", str(tmp_path / "x"), "--checkpoint", "a.pth"]) == 2
    assert "no checkpoint 'a.pth' to choose" in capsys.readouterr().err


def test_module_logic_with_mrml(mrml_scene, bundle, ct):
    from CRCSegmentationLib.logic import CRCSegmentationLogic, CRCSegmentationSettings
    from CRCSegmentationLib.mrml import STATISTICS_REFERENCE_ROLE, table_row, tumor_segment_id
    from OrganGuidanceLib.mrml import add_volume_node, segment_mask

    logic = CRCSegmentationLogic(mrml_scene)
    node = add_volume_node(mrml_scene, ct, "synthetic CT")
    settings = CRCSegmentationSettings(model=str(bundle), guidance_source="compute", segmentation=CPU)
    job = logic.prepare(node, settings)
    assert job.guidance_job is None and any("without organ guidance" in m for m in job.messages)
    segmentation = logic.apply(job, logic.compute(job))
    np.testing.assert_array_equal(segment_mask(segmentation, tumor_segment_id(segmentation), ct), box_mask(BRIGHT) > 0)
    row = table_row(segmentation.GetNodeReference(STATISTICS_REFERENCE_ROLE))
    assert row["Volume"] == pytest.approx(box_mask(BRIGHT).sum() * 3.0 / 1000.0)
