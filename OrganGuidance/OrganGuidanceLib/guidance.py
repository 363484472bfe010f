"""Anatomy guidance: MOS -> OOI -> bowel wall -> body crop.

AG-CRC (anatomy-guided CRC segmentation, shared/papers) Algorithm 1 (OOI generation, lines 8-15) and §III-D
(bowel wall); FLARE24 §3 (body crop). Dilations are expressed in millimetres
(a ball, spacing-aware) instead of the paper's "t repeats" of an unspecified
structuring element.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from OrganGuidanceLib.crop import BODY_THRESHOLD_HU, CONNECTIVITIES, CropBox, body_crop_box, crop_box_containing
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.io import image_from_sitk, image_to_sitk
from OrganGuidanceLib.labels import DEFAULT_ORGAN_SET, ORGAN_SETS, LabelConvention
from OrganGuidanceLib.morphology import bounding_box, dilate_mm, erode_mm, grow_box
from OrganGuidanceLib.progress import ProgressCallback
from OrganGuidanceLib.validation import InputError, check_ct, check_label_map, physical_overlap_fraction


@dataclass
class GuidanceParameters:
    """What a user chooses for organ guidance; every default says where it comes from."""

    organ_set: str = DEFAULT_ORGAN_SET  # AG-CRC §III-B: stomach, duodenum, small intestine, colon, rectum
    dilation_mm: float = 5.0  # AG-CRC Alg. 1 lines 12-13 ("t" dilations); 5 mm ~ a few voxels at 0.78-1 mm
    wall_width_mm: float = 3.0  # AG-CRC §III-D: half-width of the "thickened edge" on each side of OOI0
    body_crop: bool = True  # FLARE24 §3
    body_threshold_hu: float = BODY_THRESHOLD_HU  # FLARE24 §3
    # FLARE24 crops tight (0 mm). HU > 50 keeps bone, muscle and enhanced organs, not fat:
    # the margin keeps some of the subcutaneous fat; organs lie well inside either way.
    crop_margin_mm: float = 10.0
    # 26: one body even where only a voxel's corner joins it; 6: FLARE24's literal crop (scipy's default)
    body_connectivity: int = 26

    def is_valid(self) -> Tuple[bool, str]:
        if self.organ_set not in ORGAN_SETS:
            return False, f"organ set '{self.organ_set}' is not one of {sorted(ORGAN_SETS)}"
        if not 0 <= self.dilation_mm <= 50:
            return False, f"OOI dilation {self.dilation_mm} mm is outside 0..50 mm"
        if not 0 < self.wall_width_mm <= 20:
            return False, f"bowel wall width {self.wall_width_mm} mm is outside (0, 20] mm"
        if self.body_connectivity not in CONNECTIVITIES:
            return False, f"body crop connectivity {self.body_connectivity} is not one of {CONNECTIVITIES}"
        if self.crop_margin_mm < 0:
            return False, f"crop margin {self.crop_margin_mm} mm is negative"
        return True, ""


@dataclass
class MOSSource:
    """One multi-organ segmentation and the convention that names its labels."""

    label_map: Image
    convention: LabelConvention


@dataclass
class GuidanceResult:
    mos: Image  # first source's label map on the CT grid (the "MOS" input channel)
    ooi0: Image  # undilated union of OOI organs over all sources (for the bowel wall)
    ooi: Image  # dilated, OR-merged OOI (Algorithm 1 output)
    bowel_wall: Image
    crop_box: Optional[CropBox]
    organ_names: dict = field(default_factory=dict)  # label value -> name, present in ``mos``
    warnings: List[str] = field(default_factory=list)  # things the user should know, e.g. an empty second source


def resample_label_map(label_map: Image, reference: Image) -> Image:
    """Nearest-neighbour resampling of a label map onto ``reference``'s grid."""
    check_label_map(label_map)
    if label_map.same_grid(reference):
        return label_map
    overlap = physical_overlap_fraction(label_map, reference)
    if overlap <= 0:
        raise InputError(
            f"{label_map.name}: does not overlap {reference.name} in physical space "
            f"(label map bounds {label_map.physical_bounds().round(1).tolist()} mm, "
            f"image bounds {reference.physical_bounds().round(1).tolist()} mm, LPS); wrong file or wrong geometry?"
        )
    source = label_map
    if source.array.dtype == bool or source.array.dtype.itemsize > 4 or np.issubdtype(source.array.dtype, np.floating):
        source = source.with_array(source.array.astype(np.uint16))
    resampled = sitk.Resample(
        image_to_sitk(source), image_to_sitk(reference.with_array(np.zeros(reference.shape, np.uint8))),
        sitk.Transform(), sitk.sitkNearestNeighbor, 0,
    )
    return image_from_sitk(resampled, label_map.name)


def organ_union(label_map: np.ndarray, label_values: Sequence[int]) -> np.ndarray:
    """Algorithm 1, lines 8-11: union of the voxels carrying any OOI label."""
    union = np.zeros(label_map.shape, dtype=bool)
    if label_map.ndim == 0 or not label_values:
        return union
    # Slice by slice keeps the comparisons in cache: ~4x faster than a lookup table
    # gather on a 512x512x178 map (benchmarks/bench_guidance.py).
    scratch = np.empty(label_map.shape[1:], dtype=bool)
    for index in range(label_map.shape[0]):
        slab, out = label_map[index], union[index]
        for value in label_values:
            np.equal(slab, value, out=scratch)
            out |= scratch
    return union


def derive_ooi(
    sources: Sequence[MOSSource],
    reference: Image,
    organ_set: str = DEFAULT_ORGAN_SET,
    dilation_mm: float = 5.0,
    warnings: Optional[List[str]] = None,
) -> Tuple[Image, Image, List[Image]]:
    """Algorithm 1, lines 8-15: per-source union, dilation, then OR over sources.

    Returns (OOI0 undilated union, OOI, label maps resampled to ``reference``). A source
    without any OOI organ is an error when it is the only one, else a message in ``warnings``.
    """
    if not sources:
        raise InputError("organ masks: no MOS source given; run TotalSegmentator or import a label map")
    ooi0 = np.zeros(reference.shape, dtype=bool)
    ooi = np.zeros(reference.shape, dtype=bool)
    resampled: List[Image] = []
    problems: List[str] = []
    for source in sources:
        label_map = resample_label_map(source.label_map, reference)
        values = source.convention.ooi_label_values(organ_set)
        union = organ_union(label_map.array, values)
        resampled.append(label_map)
        if not union.any():
            present = sorted(int(v) for v in np.unique(label_map.array) if v)
            problems.append(
                f"{source.label_map.name}: none of the organs of interest "
                f"({', '.join(source.convention.label_names(organ_set))}; labels {list(values)} in convention "
                f"'{source.convention.name}') is present on the CT grid; labels present: {present or 'none (empty mask)'}"
            )
            continue
        ooi0 |= union
        ooi |= dilate_mm(union, dilation_mm, reference.spacing_zyx)
    if len(problems) == len(sources):
        raise InputError("; ".join(problems))
    if warnings is not None:
        warnings.extend(problems)  # a second source without OOI organs weakens the result but need not stop it
    return reference.with_array(ooi0, "OOI0"), reference.with_array(ooi, "OOI"), resampled


def bowel_wall_mask(ooi0: Image, width_mm: float) -> Image:
    """AG-CRC §III-D: dilate(OOI0) XOR erode(OOI0), the "thickened edges" of the undilated OOI."""
    spacing = ooi0.spacing_zyx
    mask = ooi0.array.astype(bool)
    wall = dilate_mm(mask, width_mm, spacing) ^ erode_mm(mask, width_mm, spacing)
    if width_mm < max(spacing):
        # A ball narrower than a voxel step misses the face neighbours along that axis, and the
        # wall would thin out or vanish (e.g. 3 mm on 5 mm slices): keep one voxel on each side.
        wall |= _edge_voxels(mask)
    return ooi0.with_array(wall, "Bowel wall")


def _edge_voxels(mask: np.ndarray) -> np.ndarray:
    """Voxels on either side of the mask boundary (6-connected), computed in the mask's box."""
    from scipy import ndimage

    edge = np.zeros(mask.shape, dtype=bool)
    box = bounding_box(mask)
    if box is None:
        return edge
    box = grow_box(box, (1, 1, 1), mask.shape)
    cross = ndimage.generate_binary_structure(3, 1)
    inner = mask[box]
    edge[box] = ndimage.binary_dilation(inner, cross) ^ ndimage.binary_erosion(inner, cross, border_value=1)
    return edge


def run_guidance(
    ct: Image,
    sources: Sequence[MOSSource],
    parameters: GuidanceParameters | None = None,
    progress: ProgressCallback | None = None,
) -> GuidanceResult:
    """The whole anatomy-guidance step on in-memory images (one engine for GUI, console and CLI)."""
    parameters = parameters or GuidanceParameters()
    valid, reason = parameters.is_valid()
    if not valid:
        raise InputError(f"guidance parameters: {reason}")
    report = progress or (lambda stage, fraction: None)
    check_ct(ct)
    report("organs of interest", 0.0)
    warnings: List[str] = []
    ooi0, ooi, label_maps = derive_ooi(sources, ct, parameters.organ_set, parameters.dilation_mm, warnings)
    report("bowel wall", 0.5)
    wall = bowel_wall_mask(ooi0, parameters.wall_width_mm)
    crop = None
    if parameters.body_crop:
        report("body crop", 0.75)
        crop = body_crop_box(ct, parameters.body_threshold_hu, parameters.crop_margin_mm, parameters.body_connectivity)
        grown = crop_box_containing(crop, label_maps[0].array)  # never cut an organ of the MOS
        if grown != crop:
            outside = int(np.count_nonzero(label_maps[0].array)) - int(np.count_nonzero(label_maps[0].array[crop.slices]))
            warnings.append(f"body crop: grown from {list(crop.shape)} to {list(grown.shape)} voxels (z, y, x) to keep "
                            f"every organ of the MOS ({outside} organ voxels lay outside the HU > "
                            f"{parameters.body_threshold_hu:g} body)")
            crop = grown
    report("done", 1.0)
    mos = label_maps[0]
    present = [int(v) for v in np.unique(mos.array) if v]
    names = {v: sources[0].convention.labels.get(v, f"label_{v}") for v in present}
    return GuidanceResult(
        mos=mos.with_array(mos.array.copy(), "MOS"), ooi0=ooi0, ooi=ooi, bowel_wall=wall, crop_box=crop, organ_names=names,
        warnings=warnings,
    )
