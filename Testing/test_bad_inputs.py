"""Every bad input gets an error that names the input and the problem."""
from __future__ import annotations

import time

import numpy as np
import pytest

from OrganGuidanceLib.guidance import GuidanceParameters, MOSSource, run_guidance
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.labels import load_convention
from OrganGuidanceLib.providers import MissingWeightsError, TotalSegmentatorProvider
from OrganGuidanceLib.validation import InputError


@pytest.fixture(scope="module")
def case(ct, organs, ts):
    return ct, MOSSource(organs, ts)


def test_two_dimensional_ct(case):
    ct, source = case
    flat = Image(ct.array[50:51], ct.spacing, ct.origin, ct.direction, name="flat CT")
    with pytest.raises(InputError, match=r"flat CT.*single slice"):
        run_guidance(flat, [source])
    with pytest.raises(InputError, match=r"flat CT.*2D"):
        run_guidance(Image(ct.array[50], name="flat CT"), [source])


def test_label_map_without_overlap(case):
    ct, source = case
    far = source.label_map
    moved = Image(far.array, far.spacing, tuple(np.add(far.origin, (0, 0, 5000.0))), far.direction, name="moved labels")
    with pytest.raises(InputError, match=r"moved labels.*does not overlap"):
        run_guidance(ct, [MOSSource(moved, source.convention)])


def test_no_organ_of_interest_present(case):
    ct, source = case
    liver_only = np.where(source.label_map.array == 5, 5, 0).astype(np.uint8)
    with pytest.raises(InputError, match=r"liver only.*none of the organs of interest.*stomach.*labels present: \[5\]"):
        run_guidance(ct, [MOSSource(source.label_map.with_array(liver_only, "liver only"), source.convention)])
    empty = source.label_map.with_array(np.zeros_like(liver_only), "empty labels")
    with pytest.raises(InputError, match=r"empty labels.*empty mask"):
        run_guidance(ct, [MOSSource(empty, source.convention)])
    with pytest.raises(InputError, match="no MOS source"):
        run_guidance(ct, [])
    # A second source without OOI organs weakens the result but does not stop it.
    result = run_guidance(ct, [source, MOSSource(empty, source.convention)])
    assert result.ooi.array.any()
    assert len(result.warnings) == 1 and "empty labels" in result.warnings[0]


def test_nan_voxels(case):
    ct, source = case
    array = ct.array.astype(np.float32)
    array[10, 10, 10] = np.nan
    with pytest.raises(InputError, match=r"NaN CT.*1 NaN"):
        run_guidance(ct.with_array(array, "NaN CT"), [source])


@pytest.mark.parametrize(
    "transform,label",
    [
        (lambda a: (a + 1024) * 0.5, "MR-like intensities (no negative values)"),
        (lambda a: (a + 1024) / 4000.0, "CT rescaled to 0..1"),
        (lambda a: np.zeros_like(a), "constant image"),
    ],
)
def test_non_ct_intensity_range(case, transform, label):
    ct, source = case
    with pytest.raises(InputError, match="not a CT"):
        run_guidance(ct.with_array(transform(ct.array.astype(np.float32)), label), [source])


def test_non_integer_label_map(case):
    ct, source = case
    fractional = source.label_map.with_array(source.label_map.array * 0.5, "probabilities")
    with pytest.raises(InputError, match=r"probabilities.*non-integer"):
        run_guidance(ct, [MOSSource(fractional, source.convention)])


def test_invalid_parameters_and_conventions(case):
    ct, source = case
    with pytest.raises(InputError, match="dilation -1"):
        run_guidance(ct, [source], GuidanceParameters(dilation_mm=-1))
    with pytest.raises(ValueError, match="no-such-convention"):
        load_convention("no-such-convention")


def test_missing_totalsegmentator_weights_fail_fast(case, tmp_path, monkeypatch):
    ct, _ = case
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(tmp_path / "weights"))
    provider = TotalSegmentatorProvider(device="cpu")
    started = time.perf_counter()
    for run in (provider.segment, provider.segment_in_subprocess):
        with pytest.raises(MissingWeightsError, match=r"Dataset297.*totalseg_download_weights -t total_fast.*import organ masks"):
            run(ct)
    assert time.perf_counter() - started < 5, "must not wait for a download that cannot happen"
