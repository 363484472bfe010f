"""DICOM SEG, RTSTRUCT and SR of CRCSegmentationLib.dicom, read back by independent readers: dcmqi's
segimage2itkimage and highdicom for the SEG, a pydicom + skimage rasteriser for the RTSTRUCT, pydicom for the SR."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

import numpy as np
import pydicom
import pytest
from dicom_readback import content_items, dice, on_ct_grid, rasterise, read_with_dcmqi
from dicom_writer import write_series

from CRCSegmentationLib.dicom.codes import SEGMENT_CODES, segment_code
from CRCSegmentationLib.dicom.export import write_dicom_outputs
from CRCSegmentationLib.dicom.terminology import terminology_entry, terminology_file, terminology_text
from CRCSegmentationLib.measurement.statistics import tumor_statistics
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.io import read_image
from OrganGuidanceLib.phantom import make_abdominal_phantom
from OrganGuidanceLib.validation import InputError

ALL_TYPES = ("dicom-seg", "rtstruct", "sr")


@pytest.fixture(scope="module")
def phantom_case(tmp_path_factory):
    """The phantom CT as a DICOM series, read back as the pipeline reads it, with a tumor and a rectum mask."""
    root = tmp_path_factory.mktemp("dicom_outputs")
    phantom = make_abdominal_phantom()
    ct = read_image(write_series(phantom.ct, root / "ct"))
    colon = phantom.labels.array == next(k for k, v in phantom.label_names.items() if v == "colon")
    rectum = colon & (np.arange(ct.shape[0]) < 20)[:, None, None]  # the lowest part of the colon
    segments = {"tumor": phantom.tumor.array.astype(np.uint8), "rectum": rectum.astype(np.uint8)}
    statistics = tumor_statistics(ct.with_array(segments["tumor"]))
    outputs = write_dicom_outputs(ALL_TYPES, root / "out", "case1", ct.source.files, ct, segments, "AG-CRC demo",
                                  "1.2", algorithm_type="SEMIAUTOMATIC", statistics=statistics)
    return ct, segments, statistics, outputs


def test_seg_read_by_dcmqi_equals_the_masks_voxel_for_voxel(phantom_case, tmp_path):
    ct, segments, _, outputs = phantom_case
    assert outputs.files["dicom-seg"].name == "case1_seg.dcm" and outputs.notes == []
    read = read_with_dcmqi(outputs.files["dicom-seg"], tmp_path / "dcmqi")
    assert sorted(read) == ["rectum", "tumor"]
    for label, image in read.items():
        np.testing.assert_array_equal(on_ct_grid(image, ct), segments[label] > 0, err_msg=label)


def test_seg_read_by_highdicom_by_source_instance(phantom_case):
    import highdicom as hd

    ct, segments, _, outputs = phantom_case
    seg = hd.seg.segread(outputs.files["dicom-seg"])
    numbers = {item.TrackingID: int(item.SegmentNumber) for item in seg.SegmentSequence}
    pixels = seg.get_pixels_by_source_instance(list(ct.source.sop_instance_uids), segment_numbers=[
        numbers["tumor"], numbers["rectum"]], assert_missing_frames_are_empty=True)
    np.testing.assert_array_equal(pixels[..., 0] > 0, segments["tumor"] > 0)
    np.testing.assert_array_equal(pixels[..., 1] > 0, segments["rectum"] > 0)


def test_seg_references_its_source_instances_codes_and_algorithm(phantom_case):
    ct, segments, _, outputs = phantom_case
    seg = pydicom.dcmread(outputs.files["dicom-seg"])
    source = ct.source
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.series_instance_uid
    assert seg.StudyInstanceUID == pydicom.dcmread(source.files[0], stop_before_pixels=True).StudyInstanceUID
    # each frame references the source instance at its own position
    positions = {uid: np.asarray(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient, float)
                 for uid, f in zip(source.sop_instance_uids, source.files)}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_allclose(frame.PlanePositionSequence[0].ImagePositionPatient, positions[uid], atol=1e-3)
    by_label = {item.TrackingID: item for item in seg.SegmentSequence}
    for label, item in by_label.items():
        row = segment_code(label)
        category, kind = item.SegmentedPropertyCategoryCodeSequence[0], item.SegmentedPropertyTypeCodeSequence[0]
        assert (category.CodingSchemeDesignator, category.CodeValue) == ("SCT", row.category.value)
        assert (kind.CodingSchemeDesignator, kind.CodeValue, kind.CodeMeaning) == ("SCT", row.type.value,
                                                                                   row.type.meaning)
        assert item.SegmentAlgorithmType == "SEMIAUTOMATIC"
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("AG-CRC demo", "1.2")
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"  # DCM: Artificial Intelligence
    assert by_label["tumor"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "86049000"
    assert by_label["rectum"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "34402009"


def test_rtstruct_rasterised_on_the_ct_grid_matches_the_masks(phantom_case):
    ct, segments, _, outputs = phantom_case
    rtstruct = pydicom.dcmread(outputs.files["rtstruct"])
    assert rtstruct.Modality == "RTSTRUCT" and rtstruct.FrameOfReferenceUID == \
        pydicom.dcmread(ct.source.files[0], stop_before_pixels=True).FrameOfReferenceUID
    types = {o.ReferencedROINumber: o.RTROIInterpretedType for o in rtstruct.RTROIObservationsSequence}
    names = {r.ROIName: types[r.ROINumber] for r in rtstruct.StructureSetROISequence}
    assert names == {"GTV": "GTV", "Rectum": "ORGAN"}
    referenced = rtstruct.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0] \
        .RTReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == ct.source.series_instance_uid
    assert {i.ReferencedSOPInstanceUID for i in referenced.ContourImageSequence} == set(ct.source.sop_instance_uids)
    assert dice(rasterise(rtstruct, "GTV", ct), segments["tumor"] > 0) >= 0.95
    assert dice(rasterise(rtstruct, "Rectum", ct), segments["rectum"] > 0) >= 0.95


def test_sr_holds_the_statistics_and_references_the_seg_segment(phantom_case):
    ct, _, statistics, outputs = phantom_case
    sr = pydicom.dcmread(outputs.files["sr"])
    seg = pydicom.dcmread(outputs.files["dicom-seg"], stop_before_pixels=True)
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    items = content_items(sr)
    values = {(i.ConceptNameCodeSequence[0].CodingSchemeDesignator, i.ConceptNameCodeSequence[0].CodeValue):
              float(i.MeasuredValueSequence[0].NumericValue) for i in items if i.ValueType == "NUM"}
    assert values[("SCT", "118565006")] == pytest.approx(statistics.volume_ml, abs=0.01)
    assert values[("SCT", "81827009")] == pytest.approx(statistics.largest_axial_diameter_mm, abs=0.01)
    assert values[("99SLICERCRC", "CCEXTENT")] == pytest.approx(statistics.craniocaudal_extent_mm, abs=0.01)
    assert values[("99SLICERCRC", "COMPONENTS")] == statistics.components
    segment = [i for i in items if i.ValueType == "IMAGE" and "ReferencedSegmentNumber" in i.ReferencedSOPSequence[0]]
    assert len(segment) == 1
    reference = segment[0].ReferencedSOPSequence[0]
    tumor_number = next(s.SegmentNumber for s in seg.SegmentSequence if s.TrackingID == "tumor")
    assert (reference.ReferencedSOPInstanceUID, reference.ReferencedSegmentNumber) == (seg.SOPInstanceUID,
                                                                                       tumor_number)
    assert 0.1 < statistics.volume_ml  # the phantom has a tumor, so the report is not of an empty mask


def test_an_empty_tumor_writes_no_sr_and_all_empty_writes_nothing(phantom_case, tmp_path):
    ct, segments, statistics, _ = phantom_case
    empty = np.zeros(ct.shape, np.uint8)
    organs_only = write_dicom_outputs(ALL_TYPES, tmp_path / "a", "case2", ct.source.files, ct,
                                      {"tumor": empty, "rectum": segments["rectum"]}, "m", "1", statistics=statistics)
    assert sorted(organs_only.files) == ["dicom-seg", "rtstruct"]
    assert organs_only.notes == ["case2: no tumor found: no SR written"]
    nothing = write_dicom_outputs(ALL_TYPES, tmp_path / "b", "case3", ct.source.files, ct, {"tumor": empty}, "m", "1")
    assert nothing.files == {} and "no tumor found" in nothing.notes[0] and not (tmp_path / "b").exists()
    uncoded = write_dicom_outputs(("dicom-seg",), tmp_path / "c", "case5", ct.source.files, ct,
                                  {"tumor": segments["tumor"], "sacrum": segments["rectum"]}, "m", "1")
    assert uncoded.notes == ["case5: segments sacrum have no DICOM code (CRCSegmentationLib.dicom.codes): left out of "
                             "the DICOM outputs"]
    seg = pydicom.dcmread(uncoded.files["dicom-seg"], stop_before_pixels=True)
    assert [item.TrackingID for item in seg.SegmentSequence] == ["tumor"]


def test_sr_without_seg_writes_only_the_sr_and_says_so(phantom_case, tmp_path):
    ct, segments, statistics, _ = phantom_case
    outputs = write_dicom_outputs(("sr",), tmp_path, "case4", ct.source.files, ct, segments, "m", "1",
                                  statistics=statistics)
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["case4_sr.dcm"]
    assert "not written" in outputs.notes[0]


def test_bad_inputs_are_named(phantom_case, tmp_path):
    ct, segments, _, _ = phantom_case
    files = ct.source.files

    def write(**changes):
        arguments = dict(types=("dicom-seg",), folder=tmp_path, case="c", source_files=files, ct=ct,
                         segments=segments, model_name="m", model_version="1")
        arguments.update(changes)
        return write_dicom_outputs(**arguments)

    with pytest.raises(InputError, match="segment 'tumor': shape"):
        write(segments={"tumor": segments["tumor"][:-1]})
    with pytest.raises(InputError, match="segments 'tumor' and 'GTV': both are tumor"):
        write(segments={"tumor": segments["tumor"], "GTV": segments["tumor"]})
    with pytest.raises(InputError, match="unknown"):
        write(types=("nifti",))
    with pytest.raises(InputError, match="algorithm type 'MANUAL'"):
        write(algorithm_type="MANUAL")
    with pytest.raises(InputError, match="slice 0 .* has no source DICOM file"):
        write(source_files=files[1:])
    with pytest.raises(InputError, match="c: a DICOM SR was asked for without tumor statistics"):
        write(types=("dicom-seg", "sr"), statistics=None)
    with pytest.raises(InputError, match="no source DICOM files"):
        write(source_files=[])
    assert list(tmp_path.iterdir()) == []


def test_a_ct_grid_in_reversed_slice_order_maps_to_the_same_instances(phantom_case, tmp_path):
    """ITK may order slices opposite to the files: the masks follow the CT grid, the frames their positions."""
    ct, segments, _, _ = phantom_case
    flipped_direction = ct.direction @ np.diag([1.0, 1.0, -1.0])
    last_origin = ct.index_to_physical @ np.array([0.0, 0.0, ct.shape[0] - 1, 1.0])
    flipped = Image(ct.array[::-1], ct.spacing, last_origin[:3], flipped_direction, "flipped CT", source=ct.source)
    outputs = write_dicom_outputs(("dicom-seg",), tmp_path, "flipped", ct.source.files, flipped,
                                  {"tumor": segments["tumor"][::-1]}, "m", "1")
    read = read_with_dcmqi(outputs.files["dicom-seg"], tmp_path / "dcmqi")["tumor"]
    # dcmqi writes the series' own grid (ascending positions): the original CT's
    np.testing.assert_array_equal(on_ct_grid(read, ct), segments["tumor"] > 0)


def test_a_wrong_spacing_between_slices_in_the_source_is_not_copied(phantom_case, tmp_path):
    """Writers often put 1 (or the gap) in SpacingBetweenSlices; the SEG gets the spacing of the slice positions."""
    ct, segments, _, _ = phantom_case
    (tmp_path / "ct").mkdir()
    for file in ct.source.files:
        dataset = pydicom.dcmread(file)
        dataset.SpacingBetweenSlices = 1
        dataset.save_as(tmp_path / "ct" / Path(file).name)
    wrong = read_image(tmp_path / "ct")
    outputs = write_dicom_outputs(("dicom-seg",), tmp_path / "out", "c", wrong.source.files, wrong,
                                  {"tumor": segments["tumor"]}, "m", "1")
    seg = pydicom.dcmread(outputs.files["dicom-seg"], stop_before_pixels=True)
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SpacingBetweenSlices) == pytest.approx(ct.spacing[2])
    read = read_with_dcmqi(outputs.files["dicom-seg"], tmp_path / "dcmqi")["tumor"]
    np.testing.assert_array_equal(on_ct_grid(read, wrong), segments["tumor"] > 0)


def with_study_and_series_uids(files: List[Path], folder: Path) -> List[Path]:
    """Copies of the real series' files with the study and series UIDs its anonymiser blanked (the SOP instance UIDs
    stay blank in the datasets: the writer takes them from the file meta)."""
    import highdicom as hd

    folder.mkdir()
    study, series = hd.UID(), hd.UID()
    copies = []
    for file in files:
        dataset = pydicom.dcmread(file)
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
        dataset.save_as(folder / Path(file).name)
        copies.append(folder / Path(file).name)
    return copies


def test_real_series_empty_tumor_writes_no_seg_and_blank_uids_are_refused(shared_data, tmp_path):
    ct = read_image(shared_data / "ts_example_ct_dicom")
    empty = write_dicom_outputs(("dicom-seg",), tmp_path, "real", ct.source.files, ct,
                                {"tumor": np.zeros(ct.shape, np.uint8)}, "m", "1")
    assert empty.files == {} and "no tumor found" in empty.notes[0] and list(tmp_path.iterdir()) == []
    tumor = np.zeros(ct.shape, np.uint8)
    tumor[5:9, 200:240, 200:240] = 1
    with pytest.raises(InputError, match="has no StudyInstanceUID .* must reference it"):
        write_dicom_outputs(("dicom-seg",), tmp_path, "real", ct.source.files, ct, {"tumor": tumor}, "m", "1")


def test_real_series_a_sphere_round_trips_through_dcmqi(shared_data, tmp_path):
    files = with_study_and_series_uids(list(read_image(shared_data / "ts_example_ct_dicom").source.files),
                                       tmp_path / "ct")
    ct = read_image(tmp_path / "ct")
    centre = np.array(ct.shape) // 2
    z, y, x = np.ogrid[:ct.shape[0], :ct.shape[1], :ct.shape[2]]
    sphere = (((z - centre[0]) * ct.spacing[2]) ** 2 + ((y - centre[1]) * ct.spacing[1]) ** 2
              + ((x - centre[2]) * ct.spacing[0]) ** 2) <= 15.0**2
    outputs = write_dicom_outputs(("dicom-seg", "rtstruct"), tmp_path / "out", "real", files, ct,
                                  {"tumor": sphere.astype(np.uint8)}, "m", "1")
    read = read_with_dcmqi(outputs.files["dicom-seg"], tmp_path / "dcmqi")["tumor"]
    np.testing.assert_array_equal(on_ct_grid(read, ct), sphere)  # frames on the CT's slices: nothing resampled
    stored = {pydicom.dcmread(f, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID for f in files}
    seg = pydicom.dcmread(outputs.files["dicom-seg"], stop_before_pixels=True)
    referenced = {frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
                  for frame in seg.PerFrameFunctionalGroupsSequence}
    assert referenced and referenced <= stored
    assert dice(rasterise(pydicom.dcmread(outputs.files["rtstruct"]), "GTV", ct), sphere) >= 0.95


def test_the_shipped_terminology_file_is_generated_from_the_codes():
    assert terminology_file().read_text(encoding="utf-8") == terminology_text()
    categories = json.loads(terminology_text())["SegmentationCodes"]["Category"]
    entries = {(c["CodeValue"], t["CodeValue"], m["CodeValue"] if m else None)
               for c in categories for t in c["Type"] for m in t.get("Modifier", [None])}
    assert entries == {(r.category.value, r.type.value, r.modifier.value if r.modifier else None) for r in SEGMENT_CODES}


def test_terminology_entry_and_code_lookup():
    assert terminology_entry("Tumor") == ("Segmentation category and type - SlicerCRC~SCT^49755003^Morphologically "
                                          "Altered Structure~SCT^86049000^Neoplasm, Primary~^^~~^^~^^")
    assert segment_code("Small intestine").label == "small_bowel" and segment_code("bladder").rt_roi_type == "ORGAN"
    assert segment_code("tumor").rt_roi_type == "GTV"
    assert segment_code("Right kidney").modifier.meaning == "Right"
    with pytest.raises(ValueError, match="segment 'sacrum': no DICOM code"):
        segment_code("sacrum")
