"""3D Slicer module "CRC Segmentation": a thin shell over CRCSegmentationLib (no algorithm here)."""
from __future__ import annotations

import sys
from pathlib import Path

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

LIB_PACKAGE = "CRCSegmentationLib"


class CRCSegmentation(ScriptedLoadableModule):
    def __init__(self, parent) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("CRC Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation") + ".CRC"]
        self.parent.dependencies = ["OrganGuidance"]
        self.parent.contributors = ["SlicerCRC contributors"]
        self.parent.helpText = _(
            "Automatic colorectal tumor segmentation on CT:<ol>"
            "<li>organ guidance: an <b>Organ Guidance</b> result in the scene (organ masks and the "
            "organs-of-interest mask), or computed on the fly;</li>"
            "<li>a 3D nnU-Net tumor model that takes the CT, the organ masks (MOS) and the organs-of-interest "
            "mask (OOI) as input channels, run inside the body and the OOI bounding box (AG-CRC, FLARE24);</li>"
            "<li>a 'Tumor' segment (SNOMED CT terminology) and a statistics table: volume, largest axial "
            "diameter, cranio-caudal extent, number of components; export to .seg.nrrd and NIfTI, and to DICOM "
            "SEG, RTSTRUCT and SR when the CT was loaded from DICOM;</li>"
            "<li>interactive refinement with U-SAM: tumor / not-tumor points (P / N), a box (B), a scribble (S) "
            "or a lasso (L) on an axial slice; one prompt to 3D (on by default); Undo / Redo (Ctrl+Z / Ctrl+Y). "
            "The shipped demo_usam_phantom is a demonstration model, not for clinical use.</li></ol>"
            "HCF models (a slice classifier, then SANet on the slices it calls abnormal) segment the CT alone; "
            "their slice classifier can also clear another model's tumor on the slices it calls normal "
            "(Advanced: slice-classifier filter). "
            "Models come from the catalogue or a model folder. Demonstration models are not for clinical use. "
            "A running segmentation can be cancelled; a cancelled run leaves the scene as it was. "
            "From the Python console: <code>CRCSegmentationLib.logic.CRCSegmentationLogic(slicer.mrmlScene)"
            ".process(ctNode, settings)</code>."
        )
        self.parent.acknowledgementText = _(
            "Implements methods from:<ul>"
            "<li>AG-CRC: anatomy-guided colorectal cancer segmentation in CT (organ masks and organs-of-interest "
            "mask as input channels, OOI-restricted inference);</li>"
            "<li>J. Wasserthal et al.: TotalSegmentator: Robust segmentation of 104 anatomic structures in CT "
            "images, Radiology: Artificial Intelligence 5(5), e230024, 2023;</li>"
            "<li>F. Isensee et al.: nnU-Net: a self-configuring method for deep learning-based biomedical image "
            "segmentation, Nature Methods 18, 203-211, 2021;</li>"
            "<li>Y. Luo et al.: Crop and Segment: Efficient Whole body pan-cancer segmentation, MICCAI FLARE 2024;</li>"
            "<li>CARE / U-SAM: a U-shaped, point-prompted Segment Anything model for rectal cancer segmentation "
            "(A. Kirillov et al.: Segment Anything, ICCV 2023);</li>"
            "<li>J. Shi et al.: Rethinking automatic segmentation of gross target volume from a decoupling "
            "perspective (HCF: slice classifier + SANet), Computerized Medical Imaging and Graphics, 102323, "
            "2024.</li>"
            "</ul>The module layout follows Kitware's SlicerNNUnet extension."
        )


def _load_terminology() -> None:
    """Offer SlicerCRC's terminology context (the codes our segments and DICOM outputs carry) in Slicer's
    terminology selector, as SlicerMONAIAuto3DSeg does with its own; the segments themselves use Slicer's DICOM
    master list context, which is always loaded, so a failure here only logs."""
    try:
        from CRCSegmentationLib.dicom.terminology import terminology_file

        slicer.modules.terminologies.logic().LoadTerminologyFromFile(str(terminology_file()))
    except Exception as error:  # noqa: BLE001 - never stop the module from opening over a selector's list
        print(f"CRC Segmentation: the SlicerCRC terminology was not loaded ({error})", file=sys.stderr)


class CRCSegmentationWidget(ScriptedLoadableModuleWidget):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.panel = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        # Imported here so that a broken or half-installed Lib cannot stop Slicer from listing the module.
        from CRCSegmentationLib.widget import CRCSegmentationPanel

        self.panel = CRCSegmentationPanel()
        self.layout.addWidget(self.panel)
        _load_terminology()

    def cleanup(self) -> None:
        if self.panel is not None:
            self.panel.cleanup()

    def onReload(self) -> None:
        """Reload the Lib's submodules too: drop them so that the module file imports them afresh."""
        for name in sorted(sys.modules):
            if name == LIB_PACKAGE or name.startswith(LIB_PACKAGE + "."):
                print(f"Reloading {name}")
                del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)


class CRCSegmentationTest(ScriptedLoadableModuleTest):
    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_tumor_segment_from_known_mask()
        self.setUp()
        self.test_pytest_suite()

    def test_tumor_segment_from_known_mask(self) -> None:
        """A mask on a cropped grid becomes a 'Tumor' segment at the same place, with its statistics."""
        import numpy as np

        from CRCSegmentationLib.measurement.statistics import tumor_statistics
        from CRCSegmentationLib.mrml import (
            STATISTICS_REFERENCE_ROLE,
            statistics_to_table_node,
            table_row,
            tumor_segment_id,
            tumor_to_segmentation_node,
        )
        from OrganGuidanceLib.crop import CropBox
        from OrganGuidanceLib.mrml import image_from_volume_node

        self.delayDisplay("Building a synthetic CT and a tumor mask")
        ijkToRas = np.diag([1.0, 1.0, 2.5, 1.0])
        ctNode = slicer.util.addVolumeFromArray(np.full((20, 40, 40), 40, np.int16), ijkToRas, "Synthetic CT")
        ct = image_from_volume_node(ctNode)
        mask = np.zeros(ct.shape, np.uint8)
        mask[8:12, 10:20, 15:25] = 1  # 4 x 10 x 10 voxels = 1 ml
        box = CropBox((5, 5, 5), (15, 30, 30), ct.shape)
        segmentation = tumor_to_segmentation_node(slicer.mrmlScene, box.apply(ct.with_array(mask)), ctNode)
        segmentId = tumor_segment_id(segmentation)
        exported = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, ctNode)
        self.assertTrue(np.array_equal(exported > 0, mask > 0))
        table = statistics_to_table_node(slicer.mrmlScene, tumor_statistics(ct.with_array(mask)), "statistics")
        segmentation.SetNodeReferenceID(STATISTICS_REFERENCE_ROLE, table.GetID())
        self.assertAlmostEqual(table_row(table)["Volume"], 1.0, places=6)
        self.delayDisplay("Tumor segment and statistics passed")

    def test_pytest_suite(self) -> None:
        """Run the repository's pytest files of CRCSegmentationLib inside Slicer's Python (source checkout only)."""
        # A suite that did not run has not passed: without its tests or pytest this test fails, saying why.
        testing = Path(__file__).resolve().parent.parent / "Testing"
        if not testing.is_dir():
            self.fail(f"the pytest suite did not run: no Testing folder at {testing} (it needs a source checkout "
                      "of SlicerCRC; an installed extension carries no tests)")
        try:
            import pytest
        except ImportError:
            self.fail("the pytest suite did not run: pytest is not installed in Slicer's Python "
                      "(slicer.util.pip_install('pytest'))")
        files = [str(path) for path in sorted(testing.glob("test_crcsegmentation_*.py"))]
        if not files:
            self.fail(f"the pytest suite did not run: no CRCSegmentation test files in {testing}")
        exitCode = pytest.main(["-q", "-p", "no:cacheprovider", "-m", "not slow and not network", *files])
        self.assertEqual(int(exitCode), 0, f"pytest exit code {int(exitCode)} for {files}")
        self.delayDisplay("CRCSegmentationLib pytest suite passed")
