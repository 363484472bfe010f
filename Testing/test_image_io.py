"""Image IO keeps voxels and geometry exact (NIfTI, NRRD, MHA, DICOM series)."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from OrganGuidanceLib.image import Image
from OrganGuidanceLib.io import ImageReadError, read_image, write_image
from OrganGuidanceLib.validation import InputError


def test_reads_real_ct_with_flipped_direction(shared_data):
    ct = read_image(shared_data / "ts_example_ct.nii.gz")
    assert ct.shape == (112, 101, 122)  # (z, y, x) of a 122 x 101 x 112 volume
    assert ct.spacing == (3.0, 3.0, 3.0)
    np.testing.assert_array_equal(ct.direction, np.diag([-1.0, -1.0, 1.0]))
    # Our physical mapping agrees with SimpleITK's for an arbitrary voxel.
    reference = sitk.ReadImage(str(shared_data / "ts_example_ct.nii.gz"))
    index = (7, 50, 90)  # (x, y, z)
    expected = reference.TransformIndexToPhysicalPoint(index)
    np.testing.assert_allclose((ct.index_to_physical @ [*index, 1])[:3], expected)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_round_trip_through_files_is_exact(shared_data, tmp_path, suffix):
    ct = read_image(shared_data / "ts_example_ct.nii.gz")
    path = write_image(ct, tmp_path / f"copy{suffix}")
    back = read_image(path)
    np.testing.assert_array_equal(back.array, ct.array)
    assert back.same_grid(ct)
    np.testing.assert_allclose(back.physical_bounds(), ct.physical_bounds())
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_reads_dicom_series_and_matches_its_label_map(shared_data):
    ct = read_image(shared_data / "ts_example_ct_dicom")
    labels = read_image(shared_data / "ts_example_ct_dicom_seg_total_v2.nii.gz")
    assert ct.shape == (20, 512, 512)
    np.testing.assert_allclose(ct.spacing, (0.9765625, 0.9765625, 2.0))
    np.testing.assert_allclose(ct.direction, np.eye(3))
    # The label map stores the same grid with its y axis flipped: same physical box.
    np.testing.assert_allclose(ct.physical_bounds(), labels.physical_bounds(), atol=1e-3)
    assert ct.array.min() <= -1000 and ct.array.max() > 1000


def test_two_dimensional_file_is_rejected_with_its_name(tmp_path):
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((32, 32), np.int16)), str(path))
    with pytest.raises(ImageReadError, match=r"slice\.nrrd.*2D"):
        read_image(path)


def test_corrupt_and_missing_files_are_named(tmp_path):
    corrupt = tmp_path / "broken.nii.gz"
    corrupt.write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="broken.nii.gz"):
        read_image(corrupt)
    with pytest.raises(InputError, match="no such file"):
        read_image(tmp_path / "absent.nii.gz")
    empty_folder = tmp_path / "dicom"
    empty_folder.mkdir()
    with pytest.raises(InputError, match="no DICOM series"):
        read_image(empty_folder)


def test_failed_write_leaves_existing_file_untouched(tmp_path):
    image = Image(np.ones((3, 4, 5), np.uint8))
    target = write_image(image, tmp_path / "mask.nii.gz")
    before = target.read_bytes()
    with pytest.raises(ValueError, match="unsupported output format"):
        write_image(image, tmp_path / "mask.png")
    with pytest.raises(Exception):  # noqa: B017 - whatever SimpleITK raises; the test is that nothing is left
        write_image(Image(np.ones((3, 4, 5), object)), target)  # SimpleITK cannot store it
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.nii.gz"]
