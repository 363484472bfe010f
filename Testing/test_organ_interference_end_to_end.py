"""FLARE24 end to end on phantoms with tiny plans: ``crcseg flare24-ablation`` prepares, plans, trains and
exports a tumor-only and an organ-interference model and runs both on test cases (two of them
tumor-free); the organ-interference bundle then predicts like any other bundle, reporting tumor only."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from CRCSegmentationLib.core.bundle import read_metadata
from CRCSegmentationLib.core.segmentation import SegmentationParameters
from CRCSegmentationLib.models.open import open_model
from CRCTraining.cli import main
from CRCTraining.data.phantoms_ct import make_phantom_dataset
from OrganGuidanceLib.guidance import MOSSource, run_guidance
from OrganGuidanceLib.io import read_image
from OrganGuidanceLib.labels import totalsegmentator_convention

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    import os

    saved = dict(os.environ)
    root = tmp_path_factory.mktemp("flare24")
    train_source = make_phantom_dataset(root / "train", num_cases=4, seed=5)
    test_source = make_phantom_dataset(root / "test", num_cases=1, seed=6, tumor_free_cases=2)
    code = main(["flare24-ablation", str(train_source), str(test_source), "-o", str(root / "out"), "-d", "681",
                 "--organs", str(train_source / "organsTr"), "--test-organs", str(test_source / "organsTr"),
                 "--epochs", "1", "--iterations", "2", "--val-iterations", "1", "--device", "cpu",
                 "--gpu-memory-gb", "0.5", "--processes", "1", "--preset", "fast"])
    yield {"code": code, "root": root, "test": test_source, "out": root / "out"}
    os.environ.clear()
    os.environ.update(saved)


def test_ablation_reports_both_arms(ablation):
    assert ablation["code"] == 0
    rows = {row["arm"]: row for row in csv.DictReader(open(ablation["out"] / "ablation.csv"))}
    assert set(rows) == {"base", "organ_interference"}
    for row in rows.values():  # one tumor case and two tumor-free ones, scored from the written predictions
        assert (row["tumor_cases"], row["tumor_free_cases"]) == ("1", "2")
        assert 0.0 <= float(row["dice"]) <= 1.0 and float(row["false_positive_ml"]) >= 0.0
    detail = json.loads((ablation["out"] / "ablation.json").read_text())
    for arm in detail:  # the false-positive volume is the predicted tumor volume on the tumor-free cases
        for case, volume in zip(("colon_002", "colon_003"), arm["false_positive_ml"]):
            predicted = read_image(ablation["out"] / "predictions" / arm["arm"] / f"{case}_tumor.nii.gz")
            assert volume == pytest.approx(predicted.array.sum() * np.prod(predicted.spacing) / 1000.0, abs=1e-3)


def test_the_organ_interference_bundle_reports_only_the_tumor(ablation):
    bundle = ablation["out"] / "bundles" / "organ_interference"
    metadata = read_metadata(bundle)
    assert metadata.trainer == "nnUNetTrainerOrganInterference" and metadata.tumor_labels == ["tumor"]
    assert {"liver", "spleen", "stomach", "aorta"} <= set(metadata.organ_labels)  # FLARE22 organs (colon is none)
    model = open_model(bundle)
    assert model.tumor_labels == [metadata.labels["tumor"]] and model.tumor_labels[0] == len(metadata.organ_labels) + 1
    test = ablation["test"]
    ct = read_image(test / "imagesTr" / "colon_001.nii.gz")
    organs = read_image(test / "organsTr" / "colon_001.nii.gz")
    guidance = run_guidance(ct, [MOSSource(organs, totalsegmentator_convention())])
    result = model.segmenter(SegmentationParameters(device="cpu", mirroring=False, keep_organs=True)).segment(
        ct, guidance)
    assert set(np.unique(result.mask.array)) <= {0, 1}  # organ labels are never reported as tumor
    assert result.organs is not None and set(np.unique(result.organs.array)) <= {0, *model.organ_labels.values()}
    assert not (result.organs.array.astype(bool) & result.mask.array.astype(bool)).any()
    # ... and `crcseg segment` runs it like any other bundle
    out = ablation["root"] / "segment"
    assert main(["segment", str(test / "imagesTr" / "colon_001.nii.gz"), "-m", str(bundle), "-o", str(out),
                 "--organs", str(test / "organsTr" / "colon_001.nii.gz"), "--preset", "fast", "--device", "cpu"]) == 0
    written = read_image(out / "colon_001_tumor.nii.gz")
    assert set(np.unique(written.array)) <= {0, 1}
