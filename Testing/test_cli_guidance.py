"""`crcseg guidance` end to end on the real CT, and its error handling."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from CRCTraining.cli import main
from OrganGuidanceLib.crop import CropBox
from OrganGuidanceLib.io import read_image, write_image


def test_guidance_command_writes_every_output(shared_data, tmp_path):
    ct_path = shared_data / "ts_example_ct.nii.gz"
    out = tmp_path / "out"
    code = main(["guidance", str(ct_path), "--organs", str(shared_data / "ts_example_ct_seg_total_v2.nii.gz"),
                 "-o", str(out), "--write-cropped", "--dilation-mm", "6"])
    assert code == 0
    ct = read_image(ct_path)
    for name in ("mos", "ooi", "ooi0", "bowel_wall"):
        image = read_image(out / f"{name}.nii.gz")
        assert image.same_grid(ct) and image.array.any(), name
    ooi, ooi0 = read_image(out / "ooi.nii.gz").array, read_image(out / "ooi0.nii.gz").array
    assert ooi[ooi0 > 0].all() and ooi.sum() > ooi0.sum()
    box = CropBox.from_dict(json.loads((out / "crop_box.json").read_text()))
    cropped = read_image(out / "cropped" / "ct.nii.gz")
    np.testing.assert_array_equal(cropped.array, ct.array[box.slices])
    summary = json.loads((out / "guidance.json").read_text())
    assert summary["parameters"]["dilation_mm"] == 6.0
    assert set(summary["organs_present"].values()) >= {"colon", "small_bowel", "stomach"}
    assert (out / "guidance_overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_guidance_command_reports_bad_input_in_one_line(shared_data, tmp_path):
    ct = read_image(shared_data / "ts_example_ct.nii.gz")
    mr_like = write_image(ct.with_array((ct.array + 1024).astype(np.int16)), tmp_path / "mr_like.nii.gz")
    result = subprocess.run(
        [sys.executable, "-m", "CRCTraining.cli", "guidance", str(mr_like), "--organs",
         str(shared_data / "ts_example_ct_seg_total_v2.nii.gz"), "-o", str(tmp_path / "out"), "--no-png"],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert "crcseg guidance: error: CT mr_like.nii.gz" in result.stderr and "not a CT" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()  # a failed run writes nothing
