"""Export to DICOM from the scene under slicer-core (issue 21): a CT volume that carries its DICOM instance UIDs
as Slicer's DICOM module leaves them, a tumor segment on it; the SEG, RTSTRUCT and SR are the batch's writers'
(read back by dcmqi), AUTOMATIC until point refinement marks the segment SEMIAUTOMATIC; the panel offers the
export only for a CT loaded from DICOM."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest
from dicom_readback import on_ct_grid, read_with_dcmqi
from dicom_writer import small_ct, write_series
from mrml_helpers import segmentation_from_masks
from test_panel_controllers import CRC_WIDGET, User, parameters_like

from CRCSegmentationLib.dicom_mrml import (
    INSTANCE_UIDS_ATTRIBUTE,
    SEMIAUTOMATIC,
    came_from_dicom,
    export_to_dicom,
    mark_refined,
    source_files,
)
from CRCSegmentationLib.logic import CRCSegmentationLogic
from CRCSegmentationLib.panel_state import CRCSegmentationController
from OrganGuidanceLib.io import read_image
from OrganGuidanceLib.mrml import add_volume_node
from OrganGuidanceLib.phantom import make_abdominal_phantom
from OrganGuidanceLib.validation import InputError


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """A small block of the phantom CT as a DICOM series, and a ball in it as the tumor."""
    block = small_ct(make_abdominal_phantom().ct, slices=10, size=64)
    tumor = np.zeros(block.shape, np.uint8)
    z, y, x = np.ogrid[:10, :64, :64]
    tumor[(z - 5) ** 2 + (y - 32) ** 2 + (x - 32) ** 2 <= 36] = 1  # a ball in the block's centre
    assert tumor.sum() > 100
    folder = write_series(block, tmp_path_factory.mktemp("export") / "ct", uid="1.2.826.0.1.3680043.2.1125.7.214",
                          patient_id="CRC^214", study_date="20250401")
    return read_image(folder), tumor


@pytest.fixture
def loaded(mrml_scene, series):
    """The CT as Slicer's DICOM module loads it (instance UIDs attribute) and a "Tumor" segment on it."""
    ct, tumor = series
    volume = add_volume_node(mrml_scene, ct, "3: phantom CT")
    volume.SetAttribute(INSTANCE_UIDS_ATTRIBUTE, " ".join(ct.source.sop_instance_uids))
    segmentation = segmentation_from_masks(mrml_scene, ct, {"Tumor": tumor}, "CT segmentation")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    lookup = dict(zip(ct.source.sop_instance_uids, map(str, ct.source.files))).get
    return volume, segmentation, lookup


def test_the_scene_exports_seg_rtstruct_and_sr_that_dcmqi_reads_back(loaded, series, tmp_path):
    volume, segmentation, lookup = loaded
    ct, tumor = series
    nodes_before = volume.GetScene().GetNumberOfNodes()
    written = export_to_dicom(volume, segmentation, tmp_path, ("dicom-seg", "rtstruct", "sr"), "demo_phantom", "1",
                              file_for_instance=lookup)
    assert sorted(written.files) == ["dicom-seg", "rtstruct", "sr"] and written.notes == []
    assert volume.GetScene().GetNumberOfNodes() == nodes_before  # touches no node
    read = read_with_dcmqi(written.files["dicom-seg"], tmp_path / "dcmqi")
    np.testing.assert_array_equal(on_ct_grid(read["tumor"], ct), tumor > 0)
    seg = pydicom.dcmread(written.files["dicom-seg"], stop_before_pixels=True)
    assert seg.PatientID == "CRC^214" and seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.source.series_instance_uid


def test_a_refined_segment_is_exported_as_semiautomatic(loaded, tmp_path):
    volume, segmentation, lookup = loaded
    mark_refined(segmentation, segmentation.GetSegmentation().GetNthSegmentID(0))
    written = export_to_dicom(volume, segmentation, tmp_path, ("dicom-seg",), "demo_usam_phantom",
                              file_for_instance=lookup)
    seg = pydicom.dcmread(written.files["dicom-seg"], stop_before_pixels=True)
    assert seg.SegmentSequence[0].SegmentAlgorithmType == SEMIAUTOMATIC


def test_a_volume_not_from_dicom_or_with_files_gone_is_refused_by_name(loaded, tmp_path):
    volume, segmentation, lookup = loaded
    assert came_from_dicom(volume)
    with pytest.raises(InputError, match="3: phantom CT: 1 of its 10 DICOM files are not in the DICOM database"):
        source_files(volume, lambda uid: "" if uid == volume.GetAttribute(INSTANCE_UIDS_ATTRIBUTE).split()[3]
                     else lookup(uid))
    volume.RemoveAttribute(INSTANCE_UIDS_ATTRIBUTE)
    assert not came_from_dicom(volume)
    with pytest.raises(InputError, match="3: phantom CT: was not loaded from DICOM"):
        export_to_dicom(volume, segmentation, tmp_path, ("dicom-seg",), "m", file_for_instance=lookup)
    assert list(tmp_path.iterdir()) == []


def test_the_panel_offers_dicom_export_only_for_a_ct_from_dicom(loaded, tmp_path):
    volume, segmentation, lookup = loaded
    controller = CRCSegmentationController(volume.GetScene(), dialogs=User().dialogs())
    parameters = parameters_like(CRC_WIDGET, inputVolume=volume, outputSegmentation=segmentation,
                                 exportFolder=tmp_path, exportDicom=True, modelName="demo_phantom")
    controller.setParameters(parameters)
    assert controller.canExport() and controller.canExportDicom()
    volume.RemoveAttribute(INSTANCE_UIDS_ATTRIBUTE)
    assert controller.canExport() and not controller.canExportDicom()


def test_the_logic_exports_beside_the_segmentation_files_named_alike(loaded, tmp_path):
    volume, segmentation, lookup = loaded
    logic = CRCSegmentationLogic(volume.GetScene())
    written = logic.export_dicom(segmentation, tmp_path, "demo_phantom", file_for_instance=lookup)
    names = sorted(path.name for path in written.files.values())
    assert names == ["CT_segmentation_rtstruct.dcm", "CT_segmentation_seg.dcm", "CT_segmentation_sr.dcm"]
    seg = pydicom.dcmread(written.files["dicom-seg"], stop_before_pixels=True)
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "demo_phantom" and algorithm.AlgorithmVersion  # the catalogue's version
    segmentation.RemoveNodeReferenceIDs(segmentation.GetReferenceImageGeometryReferenceRole())
    with pytest.raises(InputError, match="CT segmentation: has no reference CT volume"):
        logic.export_dicom(segmentation, tmp_path / "none", "demo_phantom", file_for_instance=lookup)
