"""What the Organ Guidance panel shows, enables and runs, without Qt (``widget.py`` binds it to the .ui).

``parameters`` is the panel's parameter node (``widget.OrganGuidanceParameterNode``) or any object
with its fields. Only dependency-free modules are imported at the top: the engine (edt, cc3d) may be
installed only after Slicer has loaded the module.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from OrganGuidanceLib import install
from OrganGuidanceLib.run_controller import RunController, RunMessages, pathText
from OrganGuidanceLib.run_controller import tr as _


def sourceChoice(kind: str, node: Any, filePath: Any, convention: str, mappingFile: Any):
    """One organ source of the GUI as the logic's ``OrganSourceChoice``."""
    from OrganGuidanceLib.logic import OrganSourceChoice

    if kind == "totalsegmentator":
        convention = "totalsegmentator"  # its own labels, whatever the hidden combo box says
    elif convention == "json":
        convention = pathText(mappingFile)
    return OrganSourceChoice(
        kind=kind,
        node=node if kind == "node" else None,
        file_path=pathText(filePath) if kind == "file" else "",
        convention=convention,
    )


def settingsFromParameterNode(parameterNode: Any):
    """The parameter node as ``OrganGuidanceSettings`` (imports the engine: dependencies must be installed)."""
    from OrganGuidanceLib.guidance import GuidanceParameters
    from OrganGuidanceLib.logic import OrganGuidanceSettings

    p = parameterNode
    return OrganGuidanceSettings(
        primary=sourceChoice(p.primaryKind, p.primaryNode, p.primaryFile, p.primaryConvention, p.primaryMappingFile),
        secondary=sourceChoice(
            p.secondaryKind, p.secondaryNode, p.secondaryFile, p.secondaryConvention, p.secondaryMappingFile
        ),
        guidance=GuidanceParameters(
            organ_set=p.organSet,
            dilation_mm=p.dilationMm,
            wall_width_mm=p.wallWidthMm,
            body_crop=p.bodyCrop,
            body_threshold_hu=p.bodyThresholdHu,
            crop_margin_mm=p.cropMarginMm,
        ),
        fast=p.fast,
        device=p.device,
    )


def usesTotalSegmentator(parameters: Any) -> bool:
    p = parameters
    return p is not None and "totalsegmentator" in (p.primaryKind, p.secondaryKind)


def visibleRows(parameters: Any) -> Dict[str, bool]:
    """Which (label, field) rows of the organ-source section are shown, by the parameter they edit."""
    p = parameters
    rows: Dict[str, bool] = {}
    for role in ("primary", "secondary"):
        kind, convention = getattr(p, f"{role}Kind"), getattr(p, f"{role}Convention")
        imported = kind in ("node", "file")
        rows[f"{role}Node"] = kind == "node"
        rows[f"{role}File"] = kind == "file"
        rows[f"{role}Convention"] = imported
        rows[f"{role}MappingFile"] = imported and convention == "json"
    return rows


def enabledGroups(parameters: Any) -> Dict[str, bool]:
    """``totalSegmentator``: its options (fast, device); ``bodyCrop``: the body-crop threshold and margin."""
    return {"totalSegmentator": usesTotalSegmentator(parameters), "bodyCrop": bool(parameters.bodyCrop)}


class OrganGuidanceController(RunController):
    """The Organ Guidance panel's runs: organ masks -> organs of interest, bowel wall, body crop."""

    who = _("Organ Guidance")

    def createLogic(self) -> Any:
        from OrganGuidanceLib.logic import OrganGuidanceLogic

        return OrganGuidanceLogic(self.scene)

    def settings(self) -> Any:
        return settingsFromParameterNode(self.parameters)

    def requirements(self) -> List[install.Requirement]:
        return install.requirements(totalsegmentator=usesTotalSegmentator(self.parameters))

    def messages(self) -> RunMessages:
        return RunMessages(
            applyTooltip=_("Compute the organs-of-interest mask, the bowel wall and the body crop."),
            preparing=_("Preparing inputs..."),
            startFailed=_("Organ guidance could not start."),
            runFailed=_("Organ guidance failed."),
            applyFailed=_("The organ guidance result could not be added to the scene."),
            overwriteQuestion=_("The output segmentation '{name}' already holds {count} segment(s). "
                                "Write the organ guidance segments into it?\n\n"
                                "Choose 'Create new segmentation' as output to leave it untouched."),
            title=_("Organ Guidance"),
        )

    def doneText(self, seconds: float, job: Any, result: Any, segmentation: Any) -> str:
        text = _("Done in {seconds:.1f} s: {count} segments in '{name}'.").format(
            seconds=seconds,
            count=segmentation.GetSegmentation().GetNumberOfSegments(),
            name=segmentation.GetName(),
        )
        warnings: Optional[list] = getattr(job, "messages", None)
        return text + "".join("\n" + _("Warning: {message}").format(message=m) for m in (warnings or []))
