"""Body crop (FLARE24 "Crop and Segment", §3 Method: threshold HU > 50, keep the
largest connected component, crop to its bounding box), invertible.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Dict, Tuple

import cc3d
import numpy as np

from OrganGuidanceLib.image import Image, Index3, as_index3
from OrganGuidanceLib.morphology import bounding_box, grow_box
from OrganGuidanceLib.validation import InputError

BODY_THRESHOLD_HU = 50.0  # FLARE24 §3: "thresholding the original CT voxel values greater than 50"


@dataclass(frozen=True)
class CropBox:
    """A box of voxel indices in array order (z, y, x): ``start`` inclusive, ``stop`` exclusive."""

    start: Index3
    stop: Index3
    full_shape: Index3

    @property
    def slices(self) -> Tuple[slice, slice, slice]:
        (z0, y0, x0), (z1, y1, x1) = self.start, self.stop
        return slice(z0, z1), slice(y0, y1), slice(x0, x1)

    @property
    def shape(self) -> Index3:
        return as_index3([b - a for a, b in zip(self.start, self.stop)])

    def apply(self, image: Image) -> Image:
        """Crop ``image`` (any channel on the full grid); the origin moves so geometry stays exact."""
        if image.shape != self.full_shape:
            raise InputError(f"{image.name}: shape {image.shape} is not the cropped grid's {self.full_shape}")
        start_xyz = np.array([*self.start[::-1], 1.0])
        origin = (image.index_to_physical @ start_xyz)[:3]
        return Image(image.array[self.slices].copy(), image.spacing, tuple(origin), image.direction.copy(), image.name)

    def paste(self, cropped: Image, reference: Image, fill: float = 0) -> Image:
        """Inverse of ``apply``: put a cropped result back into the full grid of ``reference``."""
        if cropped.shape != self.shape:
            raise InputError(f"{cropped.name}: shape {cropped.shape} is not the crop box's {self.shape}")
        if reference.shape != self.full_shape:
            raise InputError(f"{reference.name}: shape {reference.shape} is not the full grid {self.full_shape}")
        full = np.full(self.full_shape, fill, dtype=cropped.array.dtype)
        full[self.slices] = cropped.array
        return reference.with_array(full, cropped.name)

    def to_dict(self, reference: Image | None = None) -> Dict:
        data = {key: list(value) for key, value in asdict(self).items()}
        data["axis_order"] = "zyx"
        if reference is not None:
            corners = np.array([[*self.start[::-1], 1.0], [*(np.array(self.stop[::-1]) - 1), 1.0]])
            points = (reference.index_to_physical @ corners.T).T[:, :3]
            data["physical_bounds_lps_mm"] = [points.min(axis=0).tolist(), points.max(axis=0).tolist()]
        return data

    def to_json(self, reference: Image | None = None) -> str:
        return json.dumps(self.to_dict(reference), indent=2)

    @classmethod
    def from_dict(cls, data: Dict) -> "CropBox":
        return cls(as_index3(data["start"]), as_index3(data["stop"]), as_index3(data["full_shape"]))

    @classmethod
    def full(cls, shape: Index3) -> "CropBox":
        return cls((0, 0, 0), as_index3(shape), as_index3(shape))


CONNECTIVITIES = (6, 18, 26)  # 6: FLARE24's public code (scipy's default structure); 26: ours, joins more


def body_mask(ct: Image, threshold_hu: float = BODY_THRESHOLD_HU, connectivity: int = 26) -> np.ndarray:
    """Largest connected component of ``ct > threshold_hu`` (FLARE24 §3)."""
    if connectivity not in CONNECTIVITIES:
        raise InputError(f"body crop connectivity {connectivity}: must be one of {CONNECTIVITIES}")
    above = ct.array > threshold_hu
    if not above.any():
        raise InputError(f"{ct.name}: no voxel above {threshold_hu} HU, so no body to crop to")
    return cc3d.largest_k(above, k=1, connectivity=connectivity, binary_image=True).astype(bool)


def body_crop_box(ct: Image, threshold_hu: float = BODY_THRESHOLD_HU, margin_mm: float = 0.0,
                  connectivity: int = 26) -> CropBox:
    """Tight bounding box of the body mask, grown by ``margin_mm`` and clipped to the image."""
    mask = body_mask(ct, threshold_hu, connectivity)
    box = bounding_box(mask)
    margin = tuple(int(np.ceil(margin_mm / spacing)) for spacing in ct.spacing_zyx)
    box = grow_box(box, margin, mask.shape)
    return CropBox(as_index3([s.start for s in box]), as_index3([s.stop for s in box]), as_index3(mask.shape))


def crop_box_containing(box: CropBox, keep: np.ndarray) -> CropBox:
    """``box`` grown to contain every non-zero voxel of ``keep`` (an organ mask on the full grid).

    On a real abdominal CT the HU > 50 component can miss the anterior abdominal wall and bowel,
    joined to the rest only by fat (DESIGN.md, FLARE24 facts): the crop must never cut an organ.
    """
    inside = bounding_box(keep)
    if inside is None:
        return box
    start = as_index3([min(a, s.start) for a, s in zip(box.start, inside)])
    stop = as_index3([max(b, s.stop) for b, s in zip(box.stop, inside)])
    return CropBox(start, stop, box.full_shape)
