"""`crcseg demo`: phantom end to end, and the public-sample path (download, checksum, fallbacks)."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from CRCTraining.cli.demo import add_demo_arguments, demo_main
from OrganGuidanceLib.checksum import sha256_of
from OrganGuidanceLib.demo import TS_EXAMPLE_SHA256, run_demo
from OrganGuidanceLib.download import ChecksumMismatch, download_verified
from OrganGuidanceLib.io import read_image

UNREACHABLE_URL = "http://127.0.0.1:9/x.nii.gz"  # the discard port: connection refused at once


@pytest.fixture
def sample_url(shared_data) -> str:
    return (shared_data / "ts_example_ct.nii.gz").resolve().as_uri()


@pytest.fixture
def no_weights(tmp_path, monkeypatch) -> Path:
    empty = tmp_path / "no-weights"
    empty.mkdir()
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(empty))
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(empty))
    return empty


def test_phantom_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    report = run_demo(out)
    assert report.source == "phantom" and report.fallback_reason is None
    assert report.tumor_coverage == 1.0
    ct = read_image(out / "ct.nii.gz")
    assert ct.array.dtype == np.int16 and ct.shape == report.full_shape
    for name in ("labels_total", "tumor_gt", "mos", "ooi", "ooi0", "bowel_wall"):
        image = read_image(out / f"{name}.nii.gz")
        assert image.same_grid(ct) and image.array.any(), name
    tumor, ooi = read_image(out / "tumor_gt.nii.gz").array, read_image(out / "ooi.nii.gz").array
    assert ooi[tumor > 0].all()
    png = out / "guidance_overlay.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and 30_000 < png.stat().st_size < 2_000_000
    with PILImage.open(png) as picture:
        assert picture.width >= 800 and picture.height >= 800
    summary = (out / "summary.txt").read_text()
    assert "OOI covers the tumor: yes (100.0 %" in summary and "Body crop box" in summary
    assert "colon" in summary and "ml" in summary
    assert summary.strip() in capsys.readouterr().out
    assert not list(out.glob(".tmp-*"))  # atomic writes leave no temporary files


def test_sample_downloads_then_falls_back_without_weights(tmp_path, sample_url, no_weights):
    messages = []
    report = run_demo(tmp_path / "demo", sample="ts-example", sample_url=sample_url, log=messages.append)
    cached = tmp_path / "demo" / "ts_example_ct.nii.gz"
    assert cached.exists() and sha256_of(cached) == TS_EXAMPLE_SHA256  # download and checksum succeeded
    assert report.source == "phantom"
    assert "weights" in report.fallback_reason and str(no_weights) in report.fallback_reason
    assert any("using the synthetic phantom" in m for m in messages)
    assert "fallback" in (tmp_path / "demo" / "summary.txt").read_text()


def test_wrong_checksum_is_an_error_and_leaves_no_file(tmp_path, sample_url):
    out = tmp_path / "demo"
    wrong = "0" * 64
    with pytest.raises(ChecksumMismatch) as raised:
        run_demo(out, sample="ts-example", sample_url=sample_url, sample_sha256=wrong, log=None)
    assert wrong in str(raised.value) and TS_EXAMPLE_SHA256 in str(raised.value)
    assert not out.exists() or not any(out.iterdir())


def test_cached_sample_is_reused_without_network(tmp_path, sample_url):
    destination = tmp_path / "ts_example_ct.nii.gz"
    assert download_verified(sample_url, TS_EXAMPLE_SHA256, destination) == destination
    modified = destination.stat().st_mtime_ns
    assert download_verified(UNREACHABLE_URL, TS_EXAMPLE_SHA256, destination) == destination
    assert destination.stat().st_mtime_ns == modified


def test_unreachable_url_falls_back_to_the_phantom(tmp_path):
    report = run_demo(tmp_path / "demo", sample="ts-example", sample_url=UNREACHABLE_URL, log=None)
    assert report.source == "phantom" and report.fallback_reason.startswith("no network")
    assert (tmp_path / "demo" / "guidance_overlay.png").exists()


def test_command_line(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="crcseg demo")
    add_demo_arguments(parser)
    args = parser.parse_args(["-o", str(tmp_path / "demo"), "--sample-url", UNREACHABLE_URL])
    assert demo_main(args) == 0  # --sample-url implies --sample ts-example
    out = capsys.readouterr().out
    assert "no network" in out and "OOI covers the tumor: yes" in out
    assert parser.parse_args([]).output == Path("demo_output") and parser.parse_args([]).sample is None
