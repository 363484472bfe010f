"""The sagittal T2 pelvis phantom (RCSegNeXt §3.1): spacing and axes of both storages, the same anatomy
in both, rectum and tumor labels, T2-like signal that no CT check accepts, and the MR input check."""
from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from CRCSegmentationLib.core.mr_checks import check_mr, thick_axis
from CRCSegmentationLib.demo.mr_phantom import (
    DEFAULT_SHAPE,
    LABELS,
    SAGITTAL_DIRECTION,
    TISSUES,
    MRPhantom,
    make_sagittal_t2_phantom,
)
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.phantom import make_abdominal_phantom
from OrganGuidanceLib.validation import InputError, check_ct


@pytest.fixture(scope="module")
def acquisition() -> MRPhantom:
    return make_sagittal_t2_phantom(seed=0)


@pytest.fixture(scope="module")
def resampled() -> MRPhantom:
    return make_sagittal_t2_phantom(seed=0, thick_axis="resampled")


def _points_lps(image: Image, mask: np.ndarray) -> np.ndarray:
    """LPS mm of the voxel centres where ``mask`` is set, sorted (so two storages compare point by point)."""
    zyx = np.argwhere(mask)
    xyz1 = np.concatenate([zyx[:, ::-1], np.ones((len(zyx), 1))], axis=1)
    points = (image.index_to_physical @ xyz1.T).T[:, :3]
    return points[np.lexsort(np.round(points, 3).T[::-1])]


def _centroid_lps(image: Image, mask: np.ndarray) -> np.ndarray:
    return _points_lps(image, mask).mean(axis=0)


def _tissue(phantom: MRPhantom, name: str) -> np.ndarray:
    return phantom.tissues.array == TISSUES[name]


# --- geometry ---------------------------------------------------------------------------------
def test_acquisition_storage_is_a_sagittal_series(acquisition):
    start = time.perf_counter()
    make_sagittal_t2_phantom(seed=5)
    assert time.perf_counter() - start < 5.0  # cheap enough for every test and the demo
    image, labels = acquisition.image, acquisition.labels
    assert image.array.dtype == np.int16 and labels.array.dtype == np.uint8
    assert image.shape == DEFAULT_SHAPE == (18, 192, 256)  # (slices L-R, rows S-I, columns A-P)
    assert image.spacing == (0.875, 0.875, 4.0)  # ITK (i, j, k): columns, rows, slices
    assert np.array_equal(image.direction, SAGITTAL_DIRECTION) and np.isclose(np.linalg.det(image.direction), 1.0)
    assert tuple(image.direction[:, 2]) == (-1.0, 0.0, 0.0)  # index k (array axis 0): to the patient's right
    assert tuple(image.direction[:, 1]) == (0.0, 0.0, -1.0)  # rows run inferior
    assert labels.same_grid(image) and acquisition.tissues.same_grid(image)
    axis = thick_axis(image)
    assert int(np.argmax(image.spacing_zyx)) == 0 == axis.array_axis
    assert axis.spacing_mm == 4.0 and axis.anatomical == "L-R" and axis.is_sagittal


def test_resampled_storage_puts_the_thick_axis_last(resampled):
    image = resampled.image
    assert image.shape == (192, 256, 18)  # (S-I, A-P, L-R) in LPS order
    assert image.spacing == (4.0, 0.875, 0.875) and np.array_equal(image.direction, np.eye(3))
    axis = thick_axis(image)
    assert int(np.argmax(image.spacing_zyx)) == 2 == axis.array_axis
    assert axis.anatomical == "L-R" and axis.is_sagittal
    assert resampled.labels.same_grid(image)


def test_both_storages_hold_the_same_physical_anatomy(acquisition, resampled):
    for value in (LABELS["rectum"], LABELS["tumor"]):
        a, b = acquisition.labels.array == value, resampled.labels.array == value
        assert a.sum() == b.sum() > 0
        assert np.linalg.norm(_centroid_lps(acquisition.labels, a) - _centroid_lps(resampled.labels, b)) < 0.875
        # Voxel for voxel: the same physical points carry the label.
        assert np.allclose(_points_lps(acquisition.labels, a), _points_lps(resampled.labels, b), atol=1e-3)
    assert np.allclose(acquisition.image.physical_bounds(), resampled.image.physical_bounds(), atol=1e-3)
    bright = 1200  # and the same signal there (urine)
    assert np.allclose(_points_lps(acquisition.image, acquisition.image.array > bright),
                       _points_lps(resampled.image, resampled.image.array > bright), atol=1e-3)


# --- labels and anatomy -----------------------------------------------------------------------
def test_rectum_and_tumor_labels(acquisition):
    labels = acquisition.labels.array
    rectum, tumor = labels == LABELS["rectum"], labels == LABELS["tumor"]
    assert set(np.unique(labels)) == {0, 1, 2}
    voxel_ml = float(np.prod(acquisition.image.spacing)) / 1000
    assert 10 < rectum.sum() * voxel_ml < 200 and 3 < tumor.sum() * voxel_ml < 80
    assert len(np.flatnonzero(tumor.any(axis=(1, 2)))) >= 3  # over several 4 mm slices
    # The tumor grows from the rectal wall: it touches the wall, and it is all inside the body.
    assert (ndimage.binary_dilation(tumor) & _tissue(acquisition, "rectal_wall") & rectum).any()
    assert np.array_equal(tumor, _tissue(acquisition, "tumor"))
    body = ndimage.binary_fill_holes(acquisition.tissues.array != TISSUES["air"])
    assert body[tumor].all() and not body[:, :3, :3].any()  # air in the corner
    # The rectum label is wall + lumen, without the anal canal below the anorectal junction.
    assert np.isin(acquisition.tissues.array[rectum],
                   [TISSUES[n] for n in ("rectal_wall", "lumen_fluid", "lumen_gas")]).all()
    assert not rectum[_tissue(acquisition, "anal_canal")].any()


def test_pelvic_anatomy_is_in_place(resampled):
    """Bladder in front of the rectum, sacrum behind it, tumor between the anal canal and the sacral top."""
    image = resampled.image
    rectum = _centroid_lps(image, resampled.labels.array == LABELS["rectum"])
    tumor = _centroid_lps(image, resampled.labels.array == LABELS["tumor"])
    urine = _centroid_lps(image, _tissue(resampled, "urine"))
    marrow = _centroid_lps(image, _tissue(resampled, "bone_marrow") & (image.array > 0))
    anal = _centroid_lps(image, _tissue(resampled, "anal_canal"))
    assert urine[1] < rectum[1] - 30  # LPS y grows posteriorly
    assert marrow[1] > rectum[1] + 20
    assert anal[2] < rectum[2] and anal[2] < tumor[2]
    assert abs(rectum[0]) < 10  # midline


def test_t2_signal_is_ordered_like_t2_and_not_a_ct(acquisition):
    image = acquisition.image.array.astype(float)

    def median(name: str) -> float:
        return float(np.median(image[_tissue(acquisition, name)]))

    assert image.min() >= 0 and image.max() < 2000  # scanner units, no negative (CT) values
    assert median("air") < 25 and image[:, :4, :4].mean() < 25  # Rician noise floor
    assert median("urine") > median("fat") > 700  # fluid brightest, fat bright on T2
    for middle in ("rectal_wall", "tumor"):
        assert median("fat") > median(middle) > median("muscle") + 100
    assert median("tumor") > median("rectal_wall")  # intermediate-high
    assert median("lumen_gas") < 60 < 900 < median("lumen_fluid")
    assert median("bone_cortex") < median("muscle") < median("bone_marrow")
    # Not separable by intensity: most voxels within the tumor's central intensity range are other tissues.
    tumor = acquisition.labels.array == LABELS["tumor"]
    low, high = np.percentile(image[tumor], [10, 90])
    window = (image >= low) & (image <= high)
    assert tumor[window].mean() < 0.25


# --- the MR check -------------------------------------------------------------------------------
def test_check_mr_accepts_the_phantom_and_check_ct_refuses_it(acquisition, resampled):
    check_mr(acquisition.image)
    check_mr(resampled.image)
    for phantom in (acquisition, resampled):
        with pytest.raises(InputError, match="not a CT in Hounsfield units"):
            check_ct(phantom.image)


def test_check_mr_refuses_ct_2d_constant_and_nan():
    ct = make_abdominal_phantom((48, 40, 40), (8.0, 8.0, 7.0)).ct
    check_ct(ct)
    with pytest.raises(InputError, match=r"looks like a CT in Hounsfield units, not an MR volume"):
        check_mr(ct)
    padded = ct.with_array(np.where(ct.array < -900, -3024, ct.array).astype(np.int16), "padded CT")
    with pytest.raises(InputError, match=r"padded CT: .*looks like a CT"):
        check_mr(padded)
    with pytest.raises(InputError, match=r"flat: is 2D"):
        check_mr(Image(np.ones((64, 64), dtype=np.float32), name="flat"))
    with pytest.raises(InputError, match="every voxel has the value 7"):
        check_mr(Image(np.full((4, 8, 8), 7, dtype=np.int16), name="constant"))
    broken = np.ones((4, 8, 8), dtype=np.float32)
    broken[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        check_mr(Image(broken, name="nan"))
    zscored = np.random.default_rng(0).normal(0.0, 1.0, (4, 8, 8)).astype(np.float32)
    check_mr(Image(zscored, name="normalised MR"))  # negative, but nowhere near CT air


# --- seeds and arguments ------------------------------------------------------------------------
def test_seed_varies_the_patient_and_is_deterministic(acquisition):
    again = make_sagittal_t2_phantom(seed=0)
    assert np.array_equal(again.image.array, acquisition.image.array)
    assert np.array_equal(again.labels.array, acquisition.labels.array)
    other = make_sagittal_t2_phantom(seed=1)
    assert not np.array_equal(other.labels.array, acquisition.labels.array)
    centroids = [_centroid_lps(p.labels, p.labels.array == LABELS["tumor"]) for p in (acquisition, other)]
    sizes = [int((p.labels.array == LABELS["tumor"]).sum()) for p in (acquisition, other)]
    assert np.linalg.norm(centroids[0] - centroids[1]) > 3.0 or abs(sizes[0] - sizes[1]) > 0.2 * max(sizes)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="thick_axis 'axial'"):
        make_sagittal_t2_phantom(thick_axis="axial")
    with pytest.raises(ValueError, match="shape"):
        make_sagittal_t2_phantom(shape=(1, 192, 256))
