"""The ``evaluate`` step on a folder pair of real-organ masks written to tmp."""
from __future__ import annotations

import argparse
import csv
import json

import numpy as np
import pytest

from CRCSegmentationLib.measurement.metrics import HD95_EMPTY_MM, compute_metrics
from CRCTraining.cli.evaluate import add_evaluate_arguments, evaluate_main
from CRCTraining.evaluate import (
    BOXPLOT_PNG,
    METRIC_NAMES,
    METRICS_CSV,
    SUMMARY_JSON,
    EvaluationError,
    evaluate_folder,
)
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.io import write_image
from OrganGuidanceLib.morphology import dilate_mm, erode_mm

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def label_maps(organs, ts):
    """Reference label map: 1 = colon, 2 = small bowel, on the real TotalSegmentator grid (3 mm)."""
    ids = {name: value for value, name in ts.labels.items()}
    reference = np.zeros(organs.shape, np.uint8)
    reference[organs.array == ids["colon"]] = 1
    reference[organs.array == ids["small_bowel"]] = 2
    return organs, reference


def _write(grid: Image, array: np.ndarray, path):
    write_image(grid.with_array(array.astype(np.uint8), name=path.name), path)


@pytest.fixture
def folders(tmp_path, label_maps):
    """4 references; predictions: dilated colon, eroded colon (as NRRD), identical, one missing."""
    grid, reference = label_maps
    spacing = grid.spacing_zyx
    references, predictions = tmp_path / "labelsTs", tmp_path / "predictions"
    references.mkdir()
    predictions.mkdir()
    for case in ("crc_001", "crc_002", "crc_003", "crc_004"):
        _write(grid, reference, references / f"{case}.nii.gz")
    colon = reference == 1
    dilated = reference.copy()
    dilated[dilate_mm(colon, 4.0, spacing) & (reference == 0)] = 1
    eroded = reference.copy()
    eroded[colon & ~erode_mm(colon, 3.0, spacing)] = 0
    _write(grid, dilated, predictions / "crc_001.nii.gz")
    _write(grid, eroded, predictions / "crc_002.nrrd")  # formats may differ: pairing is by case name
    _write(grid, reference, predictions / "crc_003.nii.gz")
    (predictions / "plans.json").write_text("{}")  # nnU-Net writes these next to its predictions
    (predictions / "crc_001.npz").write_bytes(b"")
    expected = {
        "crc_001": dilated, "crc_002": eroded, "crc_003": reference, "crc_004": np.zeros_like(reference),
    }
    return predictions, references, tmp_path / "evaluation", expected, grid


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_outputs_are_written_and_consistent(folders):
    predictions, references, output, expected, grid = folders
    with pytest.warns(UserWarning) as caught:
        summary = evaluate_folder(predictions, references, output, missing_predictions="empty")
    messages = [str(w.message) for w in caught]
    assert any("crc_004" in m and "empty prediction" in m for m in messages)
    assert summary.missing_predictions == ["crc_004"]

    rows = _read_csv(output / METRICS_CSV)
    assert [row["case"] for row in rows] == ["crc_001", "crc_002", "crc_003", "crc_004"]
    for row in rows:
        direct = compute_metrics(expected[row["case"]] == 1, expected["crc_003"] == 1, grid.spacing_zyx)
        for name, value in direct.to_dict().items():
            assert float(row[name]) == pytest.approx(value, rel=1e-12, abs=1e-12), (row["case"], name)
    missing = rows[3]
    assert missing["prediction_missing"] == "1" and float(missing["dice"]) == 0.0
    assert float(missing["hd95"]) == HD95_EMPTY_MM
    assert rows[2]["dice"] == "1.0" and float(rows[2]["hd95"]) == 0.0

    document = json.loads((output / SUMMARY_JSON).read_text())
    assert document["n_cases"] == 4 and document["labels"] == [1]
    assert document["nsd_tolerance_mm"] == 4.0 and document["hd95_empty_mm"] == 1000.0
    assert document["missing_predictions"] == ["crc_004"]
    assert {"both_empty", "one_empty", "hd95", "nsd", "std"} <= set(document["conventions"])
    for name in METRIC_NAMES:
        values = np.array([float(row[name]) for row in rows])
        statistics = document["metrics"]["1"][name]
        assert statistics["mean"] == pytest.approx(values.mean())
        assert statistics["median"] == pytest.approx(np.median(values))
        assert statistics["std"] == pytest.approx(values.std(ddof=1))
        assert statistics["n"] == 4
        assert summary.statistics[1][name].mean == pytest.approx(values.mean())

    png = output / BOXPLOT_PNG
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
    assert summary.boxplot_png == png
    assert sorted(p.name for p in output.iterdir()) == sorted([METRICS_CSV, SUMMARY_JSON, BOXPLOT_PNG])  # no temp files


def test_several_labels_give_one_row_per_case_and_label(folders):
    predictions, references, output, _, _ = folders
    with pytest.warns(UserWarning):
        summary = evaluate_folder(predictions, references, output, labels=(1, 2), nsd_tolerance_mm=2.0,
                                  missing_predictions="empty")
    rows = _read_csv(output / METRICS_CSV)
    assert [(row["case"], row["label"]) for row in rows][:2] == [("crc_001", "1"), ("crc_001", "2")]
    assert len(rows) == 8 and summary.n_cases == 4
    small_bowel = [row for row in rows if row["label"] == "2"]
    # Only the colon was changed (crc_001's dilation is limited to background): small bowel is perfect where predicted.
    assert [float(row["dice"]) for row in small_bowel] == [1.0, 1.0, 1.0, 0.0]
    document = json.loads((output / SUMMARY_JSON).read_text())
    assert document["labels"] == [1, 2] and document["nsd_tolerance_mm"] == 2.0


def test_geometry_mismatch_names_the_case(folders):
    predictions, references, output, expected, grid = folders
    moved = Image(expected["crc_003"], grid.spacing, tuple(o + 5.0 for o in grid.origin), grid.direction)
    write_image(moved, predictions / "crc_003.nii.gz")
    with pytest.warns(UserWarning), pytest.raises(EvaluationError, match=r"case crc_003: .*not on the reference grid"):
        evaluate_folder(predictions, references, output, missing_predictions="empty")
    resampled = Image(expected["crc_003"][:, ::2], (grid.spacing[0], grid.spacing[1] * 2, grid.spacing[2]),
                      grid.origin, grid.direction)
    write_image(resampled, predictions / "crc_003.nii.gz")
    with pytest.warns(UserWarning), pytest.raises(EvaluationError, match="crc_003.*shape"):
        evaluate_folder(predictions, references, output, missing_predictions="empty")
    assert not output.exists()  # nothing half-written


def test_bad_folders(tmp_path, folders):
    predictions, references, output, _, _ = folders
    with pytest.raises(EvaluationError, match="does not exist"):
        evaluate_folder(tmp_path / "nowhere", references, output)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EvaluationError, match="no image files"):
        evaluate_folder(predictions, empty, output)
    (predictions / "crc_003.mha").write_bytes((predictions / "crc_001.nii.gz").read_bytes())
    with pytest.raises(EvaluationError, match="crc_003.*two files"):
        evaluate_folder(predictions, references, output)
    with pytest.raises(EvaluationError, match="labels"):
        evaluate_folder(predictions, references, output, labels=())


def test_command_line_wrapper(folders, capsys):
    predictions, references, output, _, _ = folders
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    args = parser.parse_args([str(predictions), str(references), "-o", str(output), "--labels", "1",
                              "--missing-predictions", "empty"])
    with pytest.warns(UserWarning):
        assert evaluate_main(args) == 0
    printed = capsys.readouterr().out
    assert "label 1, 4 cases" in printed and "dice" in printed
    assert (output / METRICS_CSV).exists()
