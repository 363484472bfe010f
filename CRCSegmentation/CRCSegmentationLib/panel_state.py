"""What the CRC Segmentation panel shows, enables and runs, without Qt (``widget.py`` binds it to
the .ui; the tests drive it under slicer-core).

- ``CRCSegmentationController``: the automatic run (``OrganGuidanceLib.run_controller.RunController``
  with this panel's settings, packages and texts), the rows shown for each choice, export.

The refinement section's controller is ``refinement_controller.RefinementController``.

``parameters`` is the panel's parameter node (``widget.CRCSegmentationParameterNode``) or any object
with its fields. Nothing of the engine is imported at the top: it needs PyTorch and nnU-Net, which
may be installed only after Slicer has loaded the module.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from CRCSegmentationLib.choices import STATISTICS_REFERENCE_ROLE, USAM_KIND
from OrganGuidanceLib import install
from OrganGuidanceLib.run_controller import RunController, RunMessages, pathText
from OrganGuidanceLib.run_controller import tr as _

ORGAN_GUIDANCE_SEGMENT = "Organs of interest"  # how an Organ Guidance output is recognised in the scene


def settingsFromParameterNode(parameterNode: Any):
    """The parameter node as ``CRCSegmentationSettings`` (imports the engine: dependencies must be installed)."""
    from CRCSegmentationLib.core.segmentation import SegmentationParameters
    from CRCSegmentationLib.logic import CRCSegmentationSettings
    from OrganGuidanceLib.logic import OrganGuidanceSettings, OrganSourceChoice

    p = parameterNode
    model = p.modelName if p.modelSource == "catalogue" else pathText(p.modelFolder)
    organs = OrganSourceChoice(
        kind=p.organSource,
        node=p.organNode if p.organSource == "node" else None,
        file_path=pathText(p.organFile) if p.organSource == "file" else "",
        convention="totalsegmentator" if p.organSource == "totalsegmentator" else p.organConvention,
    )
    return CRCSegmentationSettings(
        model=model or "",
        guidance_source=p.guidanceSource,
        guidance_node=p.guidanceNode if p.guidanceSource == "scene" else None,
        organ_guidance=OrganGuidanceSettings(primary=organs, device=p.device),
        convention=p.guidanceConvention,
        slice_filter=pathText(p.sliceFilterModel) if p.sliceFilter else "",
        segmentation=SegmentationParameters.for_preset(
            "fast" if p.fastPreset else "default",
            device=p.device,
            restrict_to_ooi=p.restrictToOoi,
            ooi_margin_mm=p.ooiMarginMm,
            body_crop=p.bodyCrop,
            keep_within_ooi=p.keepWithinOoi,
            min_component_ml=p.minComponentMl,
            keep_organs=p.showOrgans,
            **({} if p.fastPreset else {"mirroring": p.mirroring}),
        ),
    )


def visibleRows(parameters: Any) -> Dict[str, bool]:
    """Which (label, field) rows are shown, by the parameter they edit."""
    p = parameters
    scene, compute = p.guidanceSource == "scene", p.guidanceSource == "compute"
    return {
        "guidanceNode": scene,
        "guidanceConvention": scene,
        "organSource": compute,
        "organNode": compute and p.organSource == "node",
        "organFile": compute and p.organSource == "file",
        "organConvention": compute and p.organSource in ("node", "file"),
        "modelName": p.modelSource == "catalogue",
        "modelFolder": p.modelSource == "folder",
    }


def enabledFields(parameters: Any) -> Dict[str, bool]:
    """Fields that only mean something when another choice is on."""
    return {"ooiMarginMm": bool(parameters.restrictToOoi), "sliceFilterModel": bool(parameters.sliceFilter)}


def statisticsTable(segmentationNode: Any) -> Any:
    """The statistics table node of a tumour segmentation (None when it has none)."""
    return segmentationNode.GetNodeReference(STATISTICS_REFERENCE_ROLE) if segmentationNode is not None else None


def organGuidanceNode(scene) -> Any:
    """The newest Organ Guidance output in ``scene`` (recognised by its organs-of-interest segment), or None."""
    count = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    for index in reversed(range(count)):
        node = scene.GetNthNodeByClass(index, "vtkMRMLSegmentationNode")
        if node.GetSegmentation().GetSegmentIdBySegmentName(ORGAN_GUIDANCE_SEGMENT):
            return node
    return None


class CRCSegmentationController(RunController):
    """The CRC Segmentation panel's automatic run: CT (+ organ guidance) -> "Tumor" segment + statistics."""

    who = _("CRC Segmentation")
    modelNames: Sequence[str] = ()  # the catalogue models the panel offers (its model combo box)

    def createLogic(self) -> Any:
        from CRCSegmentationLib.logic import CRCSegmentationLogic

        return CRCSegmentationLogic(self.scene)

    def settings(self) -> Any:
        return settingsFromParameterNode(self.parameters)

    def requirements(self) -> List[install.Requirement]:
        p = self.parameters
        totalsegmentator = p is not None and p.guidanceSource == "compute" and p.organSource == "totalsegmentator"
        return install.requirements(totalsegmentator=totalsegmentator, features=[install.TUMOR])

    def setParameters(self, parameters: Any) -> None:
        """Also pick the newest Organ Guidance output and, when none is chosen, the first offered model."""
        super().setParameters(parameters)
        if parameters is None:
            return
        if parameters.guidanceNode is None:
            parameters.guidanceNode = organGuidanceNode(self.scene)
        if not parameters.modelName and self.modelNames:
            parameters.modelName = self.modelNames[0]

    def canExport(self) -> bool:
        p = self.parameters
        return not self.running and p is not None and p.outputSegmentation is not None and bool(pathText(p.exportFolder))

    def canExportDicom(self) -> bool:
        """DICOM SEG, RTSTRUCT and SR reference the CT's series: offered when Slicer loaded the CT from DICOM."""
        from CRCSegmentationLib.dicom_mrml import came_from_dicom
        from CRCSegmentationLib.mrml import reference_volume

        return self.canExport() and came_from_dicom(reference_volume(self.parameters.outputSegmentation))

    def export(self) -> Optional[List[str]]:
        """Export the output segmentation to the export folder, and to DICOM when chosen and possible; the files
        written (None after a reported failure)."""
        p = self.parameters
        if p is None or p.outputSegmentation is None:
            return None
        notes: List[str] = []
        try:
            with self.dialogs.busy():
                files = self.getLogic().export(p.outputSegmentation, pathText(p.exportFolder))
                written = [str(path) for path in (files.segmentation, files.label_map, files.statistics)
                           if path is not None]
                if p.exportDicom and self.canExportDicom():
                    dicom = self.getLogic().export_dicom(p.outputSegmentation, pathText(p.exportFolder),
                                                         p.modelName if p.modelSource == "catalogue" else
                                                         pathText(p.modelFolder))
                    written += [str(path) for path in dicom.files.values()]
                    notes = list(dicom.notes)
        except Exception as error:
            self.reportError(_("Export failed."), error)
            return None
        self.setStatus(_("Exported: {files}").format(files=", ".join(written))
                       + "".join("\n" + note for note in notes))
        return written

    def messages(self) -> RunMessages:
        return RunMessages(
            applyTooltip=_("Segment the colorectal tumor on the CT."),
            preparing=_("Opening the model and reading the inputs..."),
            startFailed=_("Tumor segmentation could not start."),
            runFailed=_("Tumor segmentation failed."),
            applyFailed=_("The tumor segmentation could not be added to the scene."),
            overwriteQuestion=_("The output segmentation '{name}' already holds {count} segment(s). "
                                "Write the 'Tumor' segment into it (an existing 'Tumor' segment is replaced)?\n\n"
                                "Choose 'Create new segmentation' as output to leave it untouched."),
            title=_("CRC Segmentation"),
        )

    def doneText(self, seconds: float, job: Any, result: Any, segmentation: Any) -> str:
        text = _("Done in {seconds:.1f} s on {device}: 'Tumor' in '{name}'.").format(
            seconds=seconds, device=result.device, name=segmentation.GetName())
        # e.g. fallback to the CPU, empty OOI, an input the model was not trained for (model_fit): one line each
        return text + "".join("\n" + _("Warning: {message}").format(message=message) for message in job.messages)


def catalogueChoices() -> Tuple[List[Tuple[str, str]], str]:
    """(name, description) of the catalogue's segmentation models (U-SAM models are the refinement
    section's), and "" or why the catalogue is unavailable (engine not installed)."""
    try:
        from CRCSegmentationLib.logic import model_choices
        from CRCSegmentationLib.models.catalogue import list_models

        usam = {entry.name for entry in list_models() if entry.extra.get("kind") == USAM_KIND}
        return [(name, text) for name, text in model_choices() if name not in usam], ""
    except Exception as error:  # the folder choice still works
        return [], _("Model catalogue unavailable: {error}").format(error=error)
