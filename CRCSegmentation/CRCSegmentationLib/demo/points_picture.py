"""The QA picture of ``crcseg demo --points``: each prompt's clicks and result on the slice, and the 3D result.

One panel per prompt: the CT slice (soft-tissue window) cropped around the tumor, the
prediction filled red, the ground truth outlined yellow, positive clicks as green ``+``,
negative clicks as red ``x``, a box as a cyan rectangle; Dice in the title. A last panel
is a coronal cut through the tumor: the one-prompt-to-3D result against the ground truth.
Array orientation as stored (the phantom's axes are LPS: patient right on the image left,
anterior up); pixels keep their physical aspect. Matplotlib's object API (no pyplot), written
atomically, as ``OrganGuidanceLib.qa`` does.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from OrganGuidanceLib.atomic import atomic_path
from OrganGuidanceLib.image import Image

CT_WINDOW_HU = (-160.0, 240.0)  # W400 L40, U-SAM's window
CROP_MARGIN_MM = 35.0  # around the tumor on the axial panels
PREDICTION_COLOR, REFERENCE_COLOR = "#ff1e1e", "#fee440"
POSITIVE_COLOR, NEGATIVE_COLOR, BOX_COLOR = "#00e400", "#ff2020", "#00f5d4"
PANEL_COLUMNS = 4


def _crop(mask: np.ndarray, margin_px: Sequence[int]) -> tuple:
    """(row slice, col slice) around ``mask`` with ``margin_px`` (rows, cols); the whole slice when empty."""
    if not mask.any():
        return slice(None), slice(None)
    rows, cols = np.nonzero(mask)
    return (slice(max(0, rows.min() - margin_px[0]), rows.max() + margin_px[0] + 1),
            slice(max(0, cols.min() - margin_px[1]), cols.max() + margin_px[1] + 1))


def _draw_masks(ax, ct: np.ndarray, prediction: np.ndarray, reference: np.ndarray, aspect: float) -> None:
    """CT, prediction filled, ground truth outlined; data coordinates are pixel indices (x column, y row)."""
    extent = (-0.5, ct.shape[1] - 0.5, ct.shape[0] - 0.5, -0.5)
    ax.imshow(ct, cmap="gray", vmin=CT_WINDOW_HU[0], vmax=CT_WINDOW_HU[1], extent=extent, interpolation="nearest")
    if prediction.any():
        overlay = np.zeros(prediction.shape + (4,))
        overlay[prediction] = (1.0, 0.12, 0.12, 0.45)
        ax.imshow(overlay, extent=extent, interpolation="nearest")
    if reference.any():
        ax.contour(reference.astype(float), levels=[0.5], colors=REFERENCE_COLOR, linewidths=1.0)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_aspect(aspect)
    ax.set_xticks([])
    ax.set_yticks([])


def _draw_prompt(ax, prompt, rows: slice, cols: slice) -> None:
    """Clicks and box in the crop's pixel frame (x = column, y = row)."""
    dx, dy = cols.start or 0, rows.start or 0
    for (x, y), label in zip(prompt.xy, prompt.labels):
        if label == 1:
            ax.plot(x - dx, y - dy, marker="+", color=POSITIVE_COLOR, markersize=11, markeredgewidth=2.2)
        else:
            ax.plot(x - dx, y - dy, marker="x", color=NEGATIVE_COLOR, markersize=9, markeredgewidth=2.2)
    if prompt.box is not None:
        from matplotlib.patches import Rectangle

        x0, y0, x1, y1 = (float(v) for v in prompt.box)
        # Pixel centres at integers: the box covers the pixels' edges, half a pixel outside the centres.
        ax.add_patch(Rectangle((x0 - dx - 0.5, y0 - dy - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False,
                               edgecolor=BOX_COLOR, linewidth=1.5, linestyle="--"))


def save_points_picture(ct: Image, tumor: np.ndarray, slice_index: int, clicks: Sequence, volume: np.ndarray,
                        dice_3d: float, path: Path, dpi: int = 110) -> Path:
    """Write the picture (one axial panel per click result, one coronal panel of the 3D result) to ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    spacing_z, spacing_y, spacing_x = (float(s) for s in ct.spacing_zyx)
    reference = tumor[slice_index]
    rows, cols = _crop(reference, (int(CROP_MARGIN_MM / spacing_y), int(CROP_MARGIN_MM / spacing_x)))
    ct_slice = ct.array[slice_index][rows, cols]
    panels = len(clicks) + 1
    columns = min(PANEL_COLUMNS, panels)
    lines = math.ceil(panels / columns)
    figure = Figure(figsize=(3.2 * columns, 3.4 * lines + 0.6), facecolor="black")
    for n, click in enumerate(clicks):
        ax = figure.add_subplot(lines, columns, n + 1)
        _draw_masks(ax, ct_slice, click.mask[rows, cols], reference[rows, cols], spacing_y / spacing_x)
        _draw_prompt(ax, click.prompt, rows, cols)
        ax.set_title(f"{click.prompt.name}: Dice {click.dice:.3f}", color="white", fontsize=9)

    # Coronal cut (z up) through the tumor's centre row: the 3D result against the ground truth.
    ax = figure.add_subplot(lines, columns, panels)
    centre_row = int(np.round(np.argwhere(tumor).mean(axis=0)[1])) if tumor.any() else ct.shape[1] // 2
    z_rows, x_cols = _crop(tumor[:, centre_row, :] | volume[:, centre_row, :],
                           (int(CROP_MARGIN_MM / spacing_z), int(CROP_MARGIN_MM / spacing_x)))
    flip = (slice(None, None, -1), slice(None))  # superior up: index z grows upwards in LPS
    plane_ct = ct.array[:, centre_row, :][z_rows, x_cols][flip]
    plane_pred = volume[:, centre_row, :][z_rows, x_cols][flip]
    plane_ref = tumor[:, centre_row, :][z_rows, x_cols][flip]
    _draw_masks(ax, plane_ct, plane_pred, plane_ref, spacing_z / spacing_x)
    z0 = z_rows.start or 0
    marked = plane_ct.shape[0] - 1 - (slice_index - z0)  # the prompted slice, as a dashed line
    ax.axhline(marked, color=POSITIVE_COLOR, linewidth=0.8, linestyle=":")
    ax.set_title(f"one prompt to 3D (coronal): Dice {dice_3d:.3f}", color="white", fontsize=9)

    handles = [Patch(facecolor=PREDICTION_COLOR, alpha=0.6, label="U-SAM result"),
               Line2D([], [], color=REFERENCE_COLOR, label="phantom tumor (ground truth)"),
               Line2D([], [], color=POSITIVE_COLOR, marker="+", linestyle="", markersize=9, label="positive click"),
               Line2D([], [], color=NEGATIVE_COLOR, marker="x", linestyle="", markersize=8, label="negative click"),
               Line2D([], [], color=BOX_COLOR, linestyle="--", label="box")]
    figure.legend(handles=handles, loc="lower center", ncol=5, fontsize=8, facecolor="black", labelcolor="white",
                  frameon=False)
    figure.suptitle(f"U-SAM demonstration model (synthetic phantoms, not clinical): clicks on slice {slice_index}",
                    color="white", fontsize=10)
    FigureCanvasAgg(figure)
    path = Path(path)
    with atomic_path(path, ".png") as temporary:
        figure.savefig(str(temporary), format="png", dpi=dpi, facecolor=figure.get_facecolor())
    return path
