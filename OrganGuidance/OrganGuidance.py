"""3D Slicer module "Organ Guidance": a thin shell over OrganGuidanceLib (no algorithm here)."""
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

LIB_PACKAGE = "OrganGuidanceLib"


class OrganGuidance(ScriptedLoadableModule):
    def __init__(self, parent) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Organ Guidance")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation") + ".CRC"]
        self.parent.dependencies = []
        self.parent.contributors = ["SlicerCRC contributors"]
        self.parent.helpText = _(
            "Anatomy guidance for colorectal cancer segmentation on CT:<ol>"
            "<li>organ masks (multi-organ segmentation, MOS) from TotalSegmentator, or imported from a label map "
            "or segmentation, optionally with a second source such as a WORD-style model;</li>"
            "<li>the organs-of-interest (OOI) mask: the union of the gastrointestinal organs, dilated by a radius "
            "in millimetres and OR-merged over the sources (AG-CRC, Algorithm 1);</li>"
            "<li>the bowel wall: dilation XOR erosion of the undilated organ union (AG-CRC, §III-D);</li>"
            "<li>the body crop: bounding box of the largest connected component above a HU threshold "
            "(FLARE24 \"Crop and Segment\").</li></ol>"
            "The result is a segmentation node. A running computation can be cancelled; a cancelled run leaves "
            "the scene as it was. Missing Python packages are installed on first use, after asking."
        )
        self.parent.acknowledgementText = _(
            "Implements methods from:<ul>"
            "<li>AG-CRC: anatomy-guided colorectal cancer segmentation in CT (organ masks, organs-of-interest "
            "mask, bowel-wall self-supervised pretraining);</li>"
            "<li>Y. Luo, Y. Liu, W. Liu, J. Dai, X. Xiao, G. Fang: Crop and Segment: Efficient Whole body "
            "pan-cancer segmentation, MICCAI FLARE 2024;</li>"
            "<li>J. Wasserthal et al.: TotalSegmentator: Robust segmentation of 104 anatomic structures in CT "
            "images, Radiology: Artificial Intelligence 5(5), e230024, 2023.</li></ul>"
            "The module layout follows Kitware's SlicerNNUnet extension."
        )


class OrganGuidanceWidget(ScriptedLoadableModuleWidget):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.panel = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        # Imported here so that a broken or half-installed Lib cannot stop Slicer from listing the module.
        from OrganGuidanceLib.widget import OrganGuidancePanel

        self.panel = OrganGuidancePanel()
        self.layout.addWidget(self.panel)

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


class OrganGuidanceTest(ScriptedLoadableModuleTest):
    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_process_imported_label_map()
        self.setUp()
        self.test_pytest_suite()

    def test_process_imported_label_map(self) -> None:
        """Guidance on a synthetic CT with an imported WORD-convention label map (no TotalSegmentator)."""
        import numpy as np

        from OrganGuidanceLib.guidance import GuidanceParameters
        from OrganGuidanceLib.logic import OrganGuidanceLogic, OrganGuidanceSettings, OrganSourceChoice

        self.delayDisplay("Building a synthetic CT and organ label map")
        ijkToRas = np.diag([1.5, 1.5, 3.0, 1.0])  # anisotropic, like abdominal CT: dilations must be in mm
        k, j, i = np.indices((24, 64, 64))
        body = ((j - 32) / 26.0) ** 2 + ((i - 32) / 28.0) ** 2 <= 1.0
        ct = np.where(body, 60, -1000).astype(np.int16)  # tissue above FLARE24's 50 HU body threshold
        labels = np.zeros(ct.shape, np.uint8)
        labels[((j - 32) ** 2 + (i - 20) ** 2 <= 16) & (k >= 2) & (k < 22)] = 10  # WORD colon
        labels[((j - 36) ** 2 + (i - 42) ** 2 <= 25) & (k >= 8) & (k < 16)] = 11  # WORD intestine
        ctNode = slicer.util.addVolumeFromArray(ct, ijkToRas, "Synthetic CT")
        labelNode = slicer.util.addVolumeFromArray(labels, ijkToRas, "Synthetic organs", "vtkMRMLLabelMapVolumeNode")

        settings = OrganGuidanceSettings(
            primary=OrganSourceChoice(kind="node", node=labelNode, convention="word"),
            secondary=OrganSourceChoice(kind="none", convention="word"),
            guidance=GuidanceParameters(organ_set="gi_tract", dilation_mm=5.0, wall_width_mm=3.0),
            fast=True,
            device="cpu",
        )
        valid, reason = settings.is_valid()
        self.assertTrue(valid, reason)
        self.delayDisplay("Running organ guidance")
        segmentation = OrganGuidanceLogic(slicer.mrmlScene).process(ctNode, settings)

        self.assertTrue(segmentation is not None and segmentation.IsA("vtkMRMLSegmentationNode"))
        self.assertIs(segmentation.GetScene(), slicer.mrmlScene)
        segments = segmentation.GetSegmentation()
        segmentIds = [segments.GetNthSegmentID(n) for n in range(segments.GetNumberOfSegments())]
        self.assertGreaterEqual(len(segmentIds), 2, "expected at least the OOI and the bowel wall")
        masks = {sid: slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, sid, ctNode) > 0 for sid in segmentIds}
        for sid, mask in masks.items():
            self.assertTrue(mask.any(), f"segment '{segments.GetSegment(sid).GetName()}' is empty")
        organs = labels > 0
        # The OOI is the organ union dilated by 5 mm: it holds every organ voxel and more.
        names = [segments.GetSegment(sid).GetName() for sid in segmentIds]
        self.assertTrue(
            any(mask[organs].all() and mask.sum() > organs.sum() for mask in masks.values()),
            f"no segment covers the dilated organ union; segments: {names}",
        )
        self.delayDisplay("Organ guidance on a synthetic CT passed")

    def test_pytest_suite(self) -> None:
        """Run the repository's pytest files of OrganGuidanceLib inside Slicer's Python.

        Needs a source checkout (Testing/ next to this module's folder) and pytest in Slicer's
        Python; tests on real CT read SLICERCRC_TEST_DATA like outside Slicer.
        """
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
        # Files that import the Lib; the static source checks run in CI, not inside Slicer.
        files = [
            str(path) for path in sorted(testing.glob("test_*.py"))
            if "OrganGuidanceLib" in path.read_text(encoding="utf-8") and path.name != "test_slicer_module_static.py"
        ]
        if not files:
            self.fail(f"the pytest suite did not run: no OrganGuidanceLib test files in {testing}")
        exitCode = pytest.main(["-q", "-p", "no:cacheprovider", "-m", "not slow and not network", *files])
        self.assertEqual(int(exitCode), 0, f"pytest exit code {int(exitCode)} for {files}")
        self.delayDisplay("OrganGuidanceLib pytest suite passed")
