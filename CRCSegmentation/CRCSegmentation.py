"""3D Slicer module "CRC Segmentation": placeholder shell until the tumour models ship (no algorithm here)."""
from __future__ import annotations

import qt
import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)


class CRCSegmentation(ScriptedLoadableModule):
    def __init__(self, parent) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("CRC Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation") + ".CRC"]
        self.parent.dependencies = ["OrganGuidance"]
        self.parent.contributors = ["SlicerCRC contributors"]
        self.parent.helpText = _(
            "Colorectal cancer segmentation on CT. Automatic tumour segmentation (an anatomy-guided 3D model "
            "that takes the CT with its organ masks) and point-prompted U-SAM refinement come in later releases; "
            "this release does not segment tumours yet.<br><br>"
            "What works now: the <b>Organ Guidance</b> module computes the organ masks, the organs-of-interest "
            "mask, the bowel wall and the body crop that the tumour model will use."
        )
        self.parent.acknowledgementText = _(
            "Will implement methods from AG-CRC (anatomy-guided colorectal cancer segmentation in CT) and "
            "CARE/U-SAM (point-prompted rectal cancer segmentation). The module layout follows Kitware's "
            "SlicerNNUnet extension."
        )


class CRCSegmentationWidget(ScriptedLoadableModuleWidget):
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        label = qt.QLabel(_(
            "Tumour segmentation is not available in this release.\n\n"
            "For now, run the Organ Guidance module on your CT: it computes the organ masks, "
            "the organs-of-interest mask, the bowel wall and the body crop."
        ))
        label.setWordWrap(True)
        self.layout.addWidget(label)
        self.openOrganGuidanceButton = qt.QPushButton(_("Open Organ Guidance"))
        self.openOrganGuidanceButton.setToolTip(_("Switch to the Organ Guidance module."))
        self.openOrganGuidanceButton.clicked.connect(self.onOpenOrganGuidance)
        self.layout.addWidget(self.openOrganGuidanceButton)
        self.layout.addStretch(1)

    def onOpenOrganGuidance(self) -> None:
        slicer.util.selectModule("OrganGuidance")


class CRCSegmentationTest(ScriptedLoadableModuleTest):
    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_open_organ_guidance()

    def test_open_organ_guidance(self) -> None:
        """The only action this release offers: the button switches to Organ Guidance."""
        slicer.util.selectModule("CRCSegmentation")
        widget = slicer.util.getModuleWidget("CRCSegmentation")
        widget.openOrganGuidanceButton.click()
        self.assertEqual(slicer.util.selectedModule(), "OrganGuidance")
        self.delayDisplay("CRC Segmentation opens Organ Guidance")
