"""The segmentation contract every kind shares: what a user chooses, what a segmenter returns, the Protocol.

``open_model(...).segmenter(parameters)`` gives an object with ``segment(image, guidance, progress, cancel)``
(``Segmenter``): ``nnunet.segmenter.NNUNetSegmenter`` for kind ``nnunet``, ``hcf.segmenter.HCFSegmenter``
for ``hcf``. No torch at import.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Protocol, Tuple

from OrganGuidanceLib.choices import DEFAULT_DEVICE, DEVICES
from OrganGuidanceLib.crop import CropBox
from OrganGuidanceLib.guidance import GuidanceResult
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.progress import ProgressCallback
from OrganGuidanceLib.validation import InputError


@dataclass
class SegmentationParameters:
    """What a user chooses for one tumor segmentation; every default says where it comes from."""

    device: str = DEFAULT_DEVICE  # choices.DEVICES (DESIGN.md: GPU when present, CPU always works)
    mirroring: bool = True  # nnU-Net's default test-time augmentation; off is ~8x faster in 3D
    tile_step_size: float = 0.5  # nnU-Net's default: tiles overlap by half a patch
    restrict_to_ooi: bool = True  # predict only in the OOI box (AF-loss models learn nothing outside the OOI)
    # Whole full-volume tiles run, so context comes with each tile: the margin only widens what is
    # predicted around the OOI box (keep_within_ooi discards it), and in crop_input mode it is the
    # context the crop keeps. 20 mm ~ a few voxels of context at 5 mm slices.
    ooi_margin_mm: float = 20.0
    body_crop: bool = True  # FLARE24 §3: never predict in the air around the body
    keep_within_ooi: bool = True  # AG-CRC Eq. 8 trains prediction x OOI: voxels outside are untrained
    min_component_ml: float = 0.0  # components smaller than this are removed; 0 keeps every component
    keep_probabilities: bool = True  # tumor probabilities for point-prompted refinement
    # Organ-interference models (FLARE24) segment organs too: they are never reported as tumor; True
    # keeps them as a label map (shown as segments in Slicer). FLARE24 §2.3 drops them.
    keep_organs: bool = False
    # True: only the region goes to nnU-Net (less preprocessing, fewer tiles), but its tiles then fall
    # elsewhere than on the full volume, and a network that depends on tile position gives another
    # result (benchmarks/bench_inference.py). False: full-volume tiles, those touching the region run.
    crop_input: bool = False
    # With keep_within_ooi, tiles are chosen by the OOI itself: a tile runs only if its Gaussian weight
    # (nnU-Net's, sigma = patch / 8) reaches this fraction of its peak on an OOI voxel; the tiles left
    # out would only add their faint rim. 0: every tile touching the OOI box runs, and inside the box
    # the result is exactly nnU-Net's full-volume one. 0.05 measured (benchmarks/bench_inference.py):
    # about half the tiles, probabilities within 0.007 of the full-volume ones inside the OOI.
    min_tile_weight: float = 0.05

    @classmethod
    def for_preset(cls, preset: str = "default", **fields) -> "SegmentationParameters":
        """The parameters of a preset (``PRESETS``), with ``fields`` set on top."""
        if preset not in PRESETS:
            raise InputError(f"preset '{preset}' is not one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[preset], **fields})

    def is_valid(self) -> Tuple[bool, str]:
        if self.device not in DEVICES:
            return False, f"device '{self.device}' is not one of {DEVICES}"
        if not 0 < self.tile_step_size <= 1:
            return False, f"tile step size {self.tile_step_size} is outside (0, 1] (fraction of the patch size)"
        if not 0 <= self.ooi_margin_mm <= 200:
            return False, f"OOI margin {self.ooi_margin_mm} mm is outside 0..200 mm"
        if not 0 <= self.min_tile_weight < 1:
            return False, f"minimum tile weight {self.min_tile_weight} is outside [0, 1) (fraction of the Gaussian peak)"
        if self.min_component_ml < 0:
            return False, f"minimum component volume {self.min_component_ml} ml is negative"
        return True, ""


# FLARE24 §3.2 / Table 5: a tile step of 7/8 of the patch (nnU-Net's default is 1/2) and no mirroring
# make inference several times faster for a small loss; "default" is nnU-Net's own setting.
PRESETS: Dict[str, Dict[str, object]] = {"default": {}, "fast": {"tile_step_size": 0.875, "mirroring": False}}


@dataclass
class TumorSegmentation:
    mask: Image  # uint8 0/1 on the full CT grid
    probabilities: Optional[Image]  # float32 tumor probability on the full CT grid (0 outside ``region``)
    region: CropBox  # the box actually predicted, in CT array indices
    device: str  # where the network ran ("cuda" or "cpu")
    warnings: List[str] = field(default_factory=list)
    timings: Dict[str, float] = field(default_factory=dict)  # seconds per step
    tiles: Tuple[int, int] = (0, 0)  # sliding-window tiles run, of the full volume's (per fold and mirror)
    efficiency: Dict[str, float] = field(default_factory=dict)  # FLARE's measures of the model run (efficiency.py)
    organs: Optional[Image] = None  # organ labels of an organ-interference model (model values), if kept
    # Slice models (HCF): {"slices": axial slices, "abnormal": slices the classifier passed to SANet}
    slice_counts: Dict[str, int] = field(default_factory=dict)
    slice_filter: Optional[Any] = None  # slice_filter.SliceFilterReport when a slice filter cleaned the mask


class Segmenter(Protocol):
    """What every kind's segmenter offers (``NNUNetSegmenter`` for ``nnunet``, ``HCFSegmenter`` for ``hcf``)."""

    def segment(self, image: Image, guidance: Optional[GuidanceResult] = None,
                progress: Optional[ProgressCallback] = None,
                cancel: Optional[threading.Event] = None) -> TumorSegmentation: ...
