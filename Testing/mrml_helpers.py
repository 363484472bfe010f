"""Test helpers for MRML scenes (imported by the MRML glue and logic tests)."""
from __future__ import annotations

from typing import Dict

import numpy as np
import slicer

from OrganGuidanceLib.image import Image
from OrganGuidanceLib.mrml import add_volume_node


def segmentation_from_masks(scene, reference: Image, masks: Dict[str, np.ndarray], name: str):
    """A user-made segmentation, built with Slicer's own import (independent of the code under test)."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    for segment_name, mask in masks.items():
        label = add_volume_node(scene, reference.with_array(mask.astype(np.uint8)), "__mask__", labelmap=True)
        assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(label, node)
        segmentation = node.GetSegmentation()
        segmentation.GetNthSegment(segmentation.GetNumberOfSegments() - 1).SetName(segment_name)
        scene.RemoveNode(label)
    return node
