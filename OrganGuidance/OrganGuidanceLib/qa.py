"""Quality-assurance pictures: a CT with masks over it, axial and coronal, as a PNG.

A person checks a guidance result by eye (STYLE.md: "a result a person checks by
eye comes with a PNG"). Panels follow radiological convention whatever the
file's direction matrix: axial with the patient's right on the image left and
anterior up, coronal with superior up; pixels have their physical aspect ratio.
Matplotlib is used through its object API (no pyplot), so nothing leaks into a
Slicer session or a notebook, and the PNG is written atomically.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np

from OrganGuidanceLib.atomic import atomic_path
from OrganGuidanceLib.crop import CropBox
from OrganGuidanceLib.guidance import GuidanceResult
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.labels import ORGAN_ALIASES

CT_WINDOW = (400.0, 40.0)  # width, level (HU): the standard abdominal soft-tissue window

# Fixed colours for the organs of interest, so that every picture reads the same.
ORGAN_COLORS = {
    "stomach": "#ff9f1c", "duodenum": "#ffd60a", "small_bowel": "#2ec4b6",
    "colon": "#4895ef", "rectum": "#b5179e",
}
OTHER_ORGANS_COLOR = "#c8c8c8"
OOI_COLOR, WALL_COLOR, BOX_COLOR, TUMOR_COLOR = "#00f5d4", "#9d4edd", "#fee440", "#ff1e1e"


@dataclass
class OverlayLayer:
    """One thing drawn over the CT: a mask (or the label ``values`` of a label map), or a box.

    ``style``: "fill" (translucent), "contour" (outline) or "both".
    """

    name: str
    color: str
    mask: Optional[np.ndarray] = None  # (z, y, x) on the CT grid; bool, or a label map with ``values``
    values: Optional[Tuple[int, ...]] = None
    box: Optional[CropBox] = None
    style: str = "fill"
    alpha: float = 0.4
    linewidth: float = 1.2


# --- orientation ---------------------------------------------------------------------
def _lps_axes(image: Image) -> Tuple[Tuple[int, int, int], Tuple[bool, bool, bool], Tuple[float, float, float]]:
    """How to transpose and flip a (z, y, x) array so its axes run to S, P and L.

    Returns (transpose order, flips of the output axes, spacing along L, P, S).
    Oblique volumes take their nearest axis-aligned orientation.
    """
    direction = image.direction
    physical_of_index = np.argmax(np.abs(direction), axis=0)  # index axis i follows physical axis p
    if sorted(physical_of_index.tolist()) != [0, 1, 2]:
        physical_of_index = np.arange(3)
    index_of_physical = {int(p): i for i, p in enumerate(physical_of_index)}
    order = tuple(2 - index_of_physical[p] for p in (2, 1, 0))
    flips = tuple(bool(direction[p, index_of_physical[p]] < 0) for p in (2, 1, 0))
    spacing = tuple(image.spacing[index_of_physical[p]] for p in (0, 1, 2))
    return order, flips, spacing  # type: ignore[return-value]


def _reorient(array: np.ndarray, order: Sequence[int], flips: Sequence[bool]) -> np.ndarray:
    """A view (no copy) of ``array`` with axes (S, P, L)."""
    view = np.transpose(array, order)
    return view[tuple(slice(None, None, -1) if flip else slice(None) for flip in flips)]


def _reorient_box(box: CropBox, order: Sequence[int], flips: Sequence[bool]) -> Tuple[Tuple[int, int], ...]:
    """Crop box ranges along (S, P, L), in the reoriented array's indices."""
    ranges = []
    for axis, flip in zip(order, flips):
        start, stop, size = box.start[axis], box.stop[axis], box.full_shape[axis]
        ranges.append((size - stop, size - start) if flip else (start, stop))
    return tuple(ranges)


# --- drawing -------------------------------------------------------------------------
def _layer_slice(layer: OverlayLayer, plane: np.ndarray) -> np.ndarray:
    if layer.values is not None:
        return np.isin(plane, layer.values)
    return plane.astype(bool)


def _draw_panel(ax, ct_plane: np.ndarray, planes: List[Optional[np.ndarray]], layers: Sequence[OverlayLayer],
                boxes: List[Optional[Tuple[Tuple[int, int], Tuple[int, int]]]], extent, origin: str,
                corner_labels: Tuple[str, str, str, str], window: Tuple[float, float] = CT_WINDOW) -> None:
    from matplotlib.colors import to_rgba
    from matplotlib.patches import Rectangle

    width, level = window
    ax.imshow(ct_plane, cmap="gray", vmin=level - width / 2, vmax=level + width / 2,
              extent=extent, origin=origin, interpolation="nearest")
    for layer, plane, box in zip(layers, planes, boxes):
        if box is not None:  # ((row start, stop), (column start, stop)) in mm
            (r0, r1), (c0, c1) = box
            ax.add_patch(Rectangle((c0, r0), c1 - c0, r1 - r0, fill=False, edgecolor=layer.color,
                                   linestyle="--", linewidth=layer.linewidth))
            continue
        if plane is None or not plane.any():
            continue
        if layer.style in ("fill", "both"):
            rgba = np.zeros(plane.shape + (4,), dtype=float)
            rgba[plane] = to_rgba(layer.color, layer.alpha)
            ax.imshow(rgba, extent=extent, origin=origin, interpolation="nearest")
        if layer.style in ("contour", "both"):
            ax.contour(plane.astype(float), levels=[0.5], colors=[layer.color], linewidths=layer.linewidth,
                       extent=extent, origin=origin)
    left, right, top, bottom = corner_labels
    style = dict(color="white", fontsize=9, fontweight="bold", transform=ax.transAxes,
                 bbox=dict(facecolor="black", alpha=0.6, edgecolor="none", pad=1.5))
    ax.text(0.01, 0.5, left, ha="left", va="center", **style)
    ax.text(0.99, 0.5, right, ha="right", va="center", **style)
    ax.text(0.5, 0.99, top, ha="center", va="top", **style)
    ax.text(0.5, 0.01, bottom, ha="center", va="bottom", **style)
    ax.set_xticks([])
    ax.set_yticks([])


def _legend_handles(layers: Sequence[OverlayLayer]):
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = []
    for layer in layers:
        if layer.box is not None:
            handles.append(Line2D([], [], color=layer.color, linestyle="--", label=layer.name))
        elif layer.style == "contour":
            handles.append(Line2D([], [], color=layer.color, linewidth=2, label=layer.name))
        else:
            edge = layer.color if layer.style == "both" else "none"
            handles.append(Patch(facecolor=layer.color, edgecolor=edge, alpha=0.85, label=layer.name))
    return handles


def _write_figure_atomic(figure, path: Path, dpi: int) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    with atomic_path(path, ".png") as temporary:
        figure.savefig(str(temporary), format="png", dpi=dpi, facecolor=figure.get_facecolor())
    return path


def save_mask_overlay(
    ct: Image,
    columns: Mapping[str, Sequence[OverlayLayer]],
    path: Path,
    center_zyx: Optional[Sequence[float]] = None,
    title: str = "",
    dpi: int = 110,
    window: Optional[Tuple[float, float]] = None,
    views: Sequence[str] = ("axial", "coronal"),
) -> Path:
    """Axial (top row) and coronal (bottom row) CT through ``center_zyx`` (voxel index; default the
    volume centre), one column per entry of ``columns`` with its own layers and legend.

    ``window``: (width, level) in the image's units (default the CT soft-tissue window in HU; an MR
    image passes its own, e.g. from percentiles). ``views``: two of axial, coronal, sagittal, one per row
    (a sagittal MRI is best seen sagittal and axial)."""
    from matplotlib.figure import Figure
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    for layer in (layer for layers in columns.values() for layer in layers):
        if layer.mask is not None and layer.mask.shape != ct.shape:
            raise ValueError(f"overlay layer '{layer.name}': shape {layer.mask.shape} is not the CT's {ct.shape}")
    order, flips, (sl, sp, ss) = _lps_axes(ct)
    volume = _reorient(ct.array, order, flips)
    center = np.asarray(center_zyx if center_zyx is not None else (np.array(ct.shape) - 1) / 2, dtype=float)
    center_spl = np.array([center[axis] for axis in order])
    center_spl = np.where(flips, np.array(volume.shape) - 1 - center_spl, center_spl)
    k, j, _ = (int(np.clip(round(c), 0, n - 1)) for c, n in zip(center_spl, volume.shape))
    nz, ny, nx = volume.shape
    # (name, take a plane, extent in mm, origin, corner labels, box row/column axes, cut axis, cut index)
    i = int(np.clip(round(center_spl[2]), 0, volume.shape[2] - 1))
    available = {
        "axial": (f"axial  {k + 1}/{nz}", lambda a: a[k], (0, nx * sl, ny * sp, 0), "upper", ("R", "L", "A", "P"),
                  (1, 2), 0, k),
        "coronal": (f"coronal  {j + 1}/{ny}", lambda a: a[:, j], (0, nx * sl, 0, nz * ss), "lower",
                    ("R", "L", "S", "I"), (0, 2), 1, j),
        "sagittal": (f"sagittal  {i + 1}/{nx}", lambda a: a[:, :, i], (0, ny * sp, 0, nz * ss), "lower",
                     ("A", "P", "S", "I"), (0, 1), 2, i),
    }
    unknown = [v for v in views if v not in available]
    if unknown or len(views) != 2:
        raise ValueError(f"views {list(views)}: give two of {sorted(available)}")
    views = tuple(available[v] for v in views)
    scale = {0: ss, 1: sp, 2: sl}

    figure = Figure(figsize=(5.6 * len(columns), 11.6), facecolor="black")
    grid = figure.add_gridspec(2, len(columns), left=0.01, right=0.99, top=0.93, bottom=0.12, wspace=0.03, hspace=0.07)
    for column, (heading, layers) in enumerate(columns.items()):
        oriented = [None if layer.mask is None else _reorient(layer.mask, order, flips) for layer in layers]
        box_ranges = [None if layer.box is None else _reorient_box(layer.box, order, flips) for layer in layers]
        for row, (name, take, extent, origin, corners, box_axes, cut_axis, cut) in enumerate(views):
            ax = figure.add_subplot(grid[row, column])
            planes = [None if m is None else _layer_slice(layer, np.asarray(take(m))) for layer, m in zip(layers, oriented)]
            boxes = []
            for ranges in box_ranges:
                inside = ranges is not None and ranges[cut_axis][0] <= cut < ranges[cut_axis][1]
                boxes.append(tuple(
                    (ranges[a][0] * scale[a], ranges[a][1] * scale[a]) for a in box_axes
                ) if inside else None)  # type: ignore[index]
            _draw_panel(ax, np.asarray(take(volume)), planes, layers, boxes, extent, origin, corners,
                        window or CT_WINDOW)
            ax.add_artist(AnchoredSizeBar(ax.transData, 50, "5 cm", "lower right", color="white",
                                          frameon=False, size_vertical=1.5, pad=0.6))
            ax.set_title(f"{heading}: {name}" if row == 0 else name, color="white", fontsize=11)
            if row == 1:
                ax.legend(handles=_legend_handles(layers), loc="upper center", bbox_to_anchor=(0.5, -0.02),
                          ncol=2, frameon=False, labelcolor="white", fontsize=9)
    shown = window or CT_WINDOW
    window_text = f"window W {shown[0]:.0f} / L {shown[1]:.0f}" + (" (image units)" if window else " HU (CT)")
    figure.suptitle(f"{title}\n{window_text}" if title else window_text, color="white", fontsize=12)
    return _write_figure_atomic(figure, Path(path), dpi)


def _is_organ_of_interest(name: str) -> bool:
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    return any(key in aliases for aliases in ORGAN_ALIASES.values())


def guidance_layers(result: GuidanceResult, tumor: Image | None = None) -> Mapping[str, List[OverlayLayer]]:
    """The two columns of the guidance picture: organs (MOS), then OOI, bowel wall and body crop."""
    mos = result.mos.array
    organs: List[OverlayLayer] = []
    others: List[int] = []
    for value, name in sorted(result.organ_names.items()):
        if _is_organ_of_interest(name):
            color = ORGAN_COLORS.get(name, ORGAN_COLORS.get(name.lower(), "#80ffdb"))
            organs.append(OverlayLayer(name.replace("_", " "), color, mos, values=(int(value),), alpha=0.45))
        else:
            others.append(int(value))
    if others:
        # Outlines only: dozens of fills would hide the CT the reader is checking.
        organs.append(OverlayLayer(f"other organs ({len(others)})", OTHER_ORGANS_COLOR, mos, values=tuple(others),
                                   style="contour", linewidth=0.7))
    guidance = [
        OverlayLayer("OOI (dilated GI organs)", OOI_COLOR, result.ooi.array, style="both", alpha=0.15, linewidth=1.4),
        OverlayLayer("bowel wall", WALL_COLOR, result.bowel_wall.array, alpha=0.55),
    ]
    if result.crop_box is not None:
        guidance.append(OverlayLayer("body crop box", BOX_COLOR, box=result.crop_box, linewidth=1.5))
    if tumor is not None:
        tumor_layer = OverlayLayer("tumor", TUMOR_COLOR, tumor.array, style="contour", linewidth=1.8)
        organs.append(tumor_layer)
        guidance.append(tumor_layer)
    return {"Organs (MOS)": organs, "Guidance": guidance}


def _center_of_mass(mask: np.ndarray) -> Optional[np.ndarray]:
    indices = np.nonzero(mask)
    if indices[0].size == 0:
        return None
    return np.array([index.mean() for index in indices])


def save_guidance_overlay(
    ct: Image,
    result: GuidanceResult,
    path: Path,
    tumor: Image | None = None,
    title: str = "",
) -> Path:
    """PNG of a guidance result: axial and coronal through the OOI centre of mass.

    When a tumor is given the planes go through the tumor's centre of mass instead:
    whether the OOI covers the tumor is what the picture is for then.
    """
    if tumor is not None and tumor.shape != ct.shape:
        raise ValueError(f"{tumor.name}: shape {tumor.shape} is not the CT's {ct.shape}")
    center = _center_of_mass(tumor.array) if tumor is not None else None
    through = "tumor"
    if center is None:
        center, through = _center_of_mass(result.ooi.array), "OOI"
    caption = f"{title or ct.name}  (planes through the {through} centre of mass)"
    return save_mask_overlay(ct, guidance_layers(result, tumor), Path(path), center, caption)
