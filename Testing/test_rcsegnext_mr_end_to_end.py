"""RCSegNeXt's MRI path end to end on sagittal T2 phantoms with tiny plans, through ``crcseg`` as a user runs it:
prepare (MR) -> plan (+ the RCSegNeXt configuration) -> train a few iterations -> export -> the bundle in a
process without ``CRCTraining`` -> rectum and tumor; ``crcseg segment`` on an MR file; CT and MR mix-ups refused."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from CRCSegmentationLib.core.bundle import read_metadata
from CRCSegmentationLib.core.errors import ModelError
from CRCSegmentationLib.core.segmentation import SegmentationParameters
from CRCSegmentationLib.models.open import open_model
from CRCTraining.cli import main
from CRCTraining.data.phantoms_mr import make_mr_phantom_dataset
from OrganGuidanceLib.io import read_image
from OrganGuidanceLib.validation import InputError

pytestmark = pytest.mark.slow

SHAPE = (12, 64, 96)  # sagittal slices x rows x columns: the phantom's pelvis, clipped, small enough for CI
DATASET = 741


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    saved = dict(os.environ)
    root = tmp_path_factory.mktemp("rcsegnext_mr")
    work = root / "work"
    source = make_mr_phantom_dataset(root / "source", cases=4, seed=11, thick_axis="resampled", shape=SHAPE)
    steps = [
        ["prepare", str(source), "-d", str(DATASET), "--name", "RectumPhantom", "--workdir", str(work),
         "--modality", "mr"],
        ["plan", "-d", str(DATASET), "--workdir", str(work), "--gpu-memory-gb", "0.5", "--processes", "1"],
        ["rcsegnext-plans", "-d", str(DATASET), "--workdir", str(work), "--width", "8", "--patch-size", "8", "32",
         "32"],
        ["train", "-d", str(DATASET), "--workdir", str(work), "--trainer", "nnUNetTrainerRCSegNeXt", "--fold", "all",
         "--epochs", "1", "--iterations", "2", "--val-iterations", "1", "--device", "cpu", "--no-final-validation"],
        ["export", "-d", str(DATASET), "--workdir", str(work), "--trainer", "nnUNetTrainerRCSegNeXt", "--folds", "all",
         "-o", str(root / "bundle")],
    ]
    codes = [main(step) for step in steps]
    yield {"codes": codes, "root": root, "work": work, "source": source, "bundle": root / "bundle"}
    os.environ.clear()
    os.environ.update(saved)


def test_the_recipe_runs_and_the_plans_put_the_thick_axis_first(trained):
    assert trained["codes"] == [0, 0, 0, 0, 0]
    preprocessed = trained["work"] / "nnUNet_preprocessed" / f"Dataset{DATASET}_RectumPhantom"
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    # the "resampled" phantoms store the thick left-right axis as ITK x = array axis 2; nnU-Net moves it first
    assert plans["transpose_forward"][0] == 2
    configuration = plans["configurations"]["3d_fullres_rcsegnext"]
    assert configuration["patch_size"] == [8, 32, 32] and configuration["rcsegnext"] == {"width": 8}
    spacing = plans["configurations"]["3d_fullres"]["spacing"]
    assert spacing[0] == pytest.approx(4.0) and spacing[1:] == pytest.approx([0.875, 0.875])
    dataset = json.loads((preprocessed / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "zscore"} and dataset["labels"] == {"background": 0, "rectum": 1,
                                                                                 "tumor": 2}


def test_the_bundle_is_an_mr_rcsegnext_bundle(trained):
    metadata = read_metadata(trained["bundle"])
    assert (metadata.kind, metadata.modality, metadata.network) == ("nnunet", "MR", "rcsegnext")
    assert metadata.input_channels == ["MR"] and metadata.configuration == "3d_fullres_rcsegnext"
    assert metadata.tumor_labels == ["tumor"] and metadata.organ_labels == ["rectum"]
    model = open_model(trained["bundle"])
    assert model.modality == "MR" and model.tumor_labels == [2] and model.organ_labels == {"rectum": 1}
    assert not model.uses_guidance
    # the network the bundle builds convolves in-plane only along the thick axis: its first two levels are
    # anisotropic (1x3x3, paper §2.1) on tensor axis D, which nnU-Net's transpose made the left-right axis
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from CRCSegmentationLib.networks.nnunet_architectures import network_builder
    from CRCSegmentationLib.networks.rcsegnext import level_is_anisotropic

    plans = PlansManager(json.loads((trained["bundle"] / "plans.json").read_text()))
    network = network_builder(metadata.trainer, metadata.network)(
        plans, plans.get_configuration("3d_fullres_rcsegnext"), 1, 3)
    assert network.config.spacing == (4.0, 0.875, 0.875) and network.anisotropic_axis == 0
    assert level_is_anisotropic(network.config)[:3] == [True, True, False]
    first = network.encoder[0][0].depthwise  # the first AniNeXt block's depthwise kernel: 1 x 3 x 3
    assert tuple(first.kernel_size) == (1, 3, 3)


def test_the_bundle_segments_an_mr_volume_without_the_training_package(trained, tmp_path):
    import shutil

    from test_installation import MODULES, run_isolated

    modules = tmp_path / "modules"
    for name, folder in MODULES.items():
        shutil.copytree(folder, modules / name, ignore=shutil.ignore_patterns("__pycache__"))
    image = trained["source"] / "imagesTr" / "rectum_001.nii.gz"
    found = run_isolated(f"""
        import importlib.util, json, sys
        assert importlib.util.find_spec("CRCTraining") is None
        import numpy as np
        from CRCSegmentationLib.core.segmentation import SegmentationParameters
        from CRCSegmentationLib import open_model
        from OrganGuidanceLib.io import read_image

        model = open_model({str(trained["bundle"])!r})
        result = model.segmenter(SegmentationParameters(device="cpu", mirroring=False)).segment(
            read_image({str(image)!r}))
        print(json.dumps({{"mask": sorted(np.unique(result.mask.array).tolist()),
                           "organs": None if result.organs is None else sorted(np.unique(result.organs.array).tolist()),
                           "shape": list(result.mask.shape),
                           "training_loaded": any(m.split(".")[0] == "CRCTraining" for m in sys.modules)}}))
    """, [modules / "OrganGuidance", modules / "CRCSegmentation"], cwd=tmp_path)
    assert not found["training_loaded"]
    assert found["shape"] == list(read_image(image).shape)
    assert set(found["mask"]) <= {0, 1} and found["organs"] is not None and set(found["organs"]) <= {0, 1}


def test_crcseg_segment_on_an_mr_file_gives_rectum_and_tumor_labels(trained):
    image = trained["source"] / "imagesTr" / "rectum_002.nii.gz"
    out = trained["root"] / "segment"
    assert main(["segment", str(image), "-m", str(trained["bundle"]), "-o", str(out), "--device", "cpu",
                 "--no-mirroring"]) == 0
    labels = read_image(out / "rectum_002_labels.nii.gz")
    tumor = read_image(out / "rectum_002_tumor.nii.gz")
    assert labels.same_grid(read_image(image)) and set(np.unique(labels.array)) <= {0, 1, 2}
    np.testing.assert_array_equal(labels.array == 2, tumor.array > 0)  # the tumor file is label 2 of the map
    assert (out / "summary.csv").is_file()


def test_a_ct_given_to_the_mr_model_and_an_mr_given_to_a_ct_model_are_refused(trained, tmp_path):
    from OrganGuidanceLib.phantom import make_abdominal_phantom

    ct = make_abdominal_phantom().ct
    mr = read_image(trained["source"] / "imagesTr" / "rectum_001.nii.gz")
    mr_model = open_model(trained["bundle"])
    with pytest.raises(InputError, match=r"segments MR images: .*looks like a CT"):
        mr_model.segmenter(SegmentationParameters(device="cpu", mirroring=False)).segment(ct)
    ct_model = open_model("demo_phantom")
    with pytest.raises(InputError, match=r"segments CT images: .*not a CT in Hounsfield units"):
        ct_model.segmenter(SegmentationParameters(device="cpu", mirroring=False)).segment(mr)
    # the command line says the same in one line, exit code 2, naming the file
    from OrganGuidanceLib.io import write_image

    ct_file = write_image(ct, tmp_path / "ct.nii.gz")
    assert main(["segment", str(ct_file), "-m", str(trained["bundle"]), "-o", str(tmp_path / "out")]) == 1
    summary = (tmp_path / "out" / "summary.csv").read_text()
    assert "looks like a CT" in summary
    with pytest.raises(InputError, match="takes no organ guidance"):
        from CRCSegmentationLib.batch import segment_files

        segment_files(ct_file, mr_model, tmp_path / "o2", organs=ct_file)


def test_an_mr_bundle_whose_channels_mix_ct_inputs_is_refused(trained, tmp_path):
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(trained["bundle"], bundle)
    metadata = json.loads((bundle / "crcseg_model.json").read_text())
    metadata["input_channels"] = ["CT"]
    (bundle / "crcseg_model.json").write_text(json.dumps(metadata))
    with pytest.raises(ModelError, match="an MR model's first input channel must be MR"):
        open_model(bundle)


def test_the_comparison_command_reports_both_networks_on_the_same_plans(trained):
    out = trained["root"] / "comparison.json"
    assert main(["rcsegnext-compare", "-d", str(DATASET), "--workdir", str(trained["work"]), "--fold", "all",
                 "--epochs", "1", "--iterations", "1", "--timing-iterations", "1", "--device", "cpu",
                 "-o", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["configuration"] == "3d_fullres_rcsegnext" and report["patch_size"] == [8, 32, 32]
    ours, base = report["networks"]
    assert (ours["trainer"], base["trainer"]) == ("nnUNetTrainerRCSegNeXt", "nnUNetTrainerBaseline")
    assert 0 < ours["parameters"] < base["parameters"] and 0 < ours["macs_per_patch"] < base["macs_per_patch"]
    for network in (ours, base):
        assert network["seconds_per_training_iteration"] > 0 and len(network["seconds_per_case"]) == 4
        assert set(network["dice_per_class"]) == {"rectum", "tumor"}
        assert all(0.0 <= d <= 1.0 for d in network["dice_per_class"].values())
