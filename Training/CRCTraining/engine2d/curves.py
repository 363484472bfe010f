"""The training log (CSV) and curve (PNG) every 2D run leaves in its output folder."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from OrganGuidanceLib.atomic import atomic_path, write_text_atomic


def write_log(history: np.ndarray, columns: Sequence[str], path: Path) -> Path:
    lines = [",".join(columns)] + [f"{int(row[0])}," + ",".join(f"{v:.6g}" for v in row[1:]) for row in history]
    return write_text_atomic(path, "\n".join(lines) + "\n")


def write_curve(history: np.ndarray, columns: Sequence[str], path: Path, title: str,
                validation: Sequence[Dict[str, float]] = (), score_name: str = "score") -> Path:
    """Loss columns per iteration with a moving average of the loss; the validation score per epoch on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4), dpi=100)
    iterations = history[:, 0]
    styles = ("-", ":", "--", "-.")
    for column in range(1, len(columns) - 1):  # the last column is the learning rate
        axis.plot(iterations, history[:, column], styles[(column - 1) % len(styles)], linewidth=0.8, alpha=0.6,
                  label=columns[column])
    window = max(1, len(history) // 50)
    if len(history) >= window > 1:
        smooth = np.convolve(history[:, 1], np.ones(window) / window, mode="valid")
        axis.plot(iterations[window - 1:], smooth, "k-", linewidth=1.5, label=f"{columns[1]}, mean of {window}")
    axis.set_xlabel("iteration")
    axis.set_ylabel("loss")
    axis.set_title(title)
    handles: List = []
    if validation:
        right = axis.twinx()
        right.plot([v["iteration"] for v in validation], [v[score_name] for v in validation], "o-", color="tab:red",
                   markersize=3, label=f"validation {score_name}")
        right.set_ylabel(f"validation {score_name}")
        handles = right.get_legend_handles_labels()[0]
    axis.legend(handles=axis.get_legend_handles_labels()[0] + handles, fontsize=8)
    figure.tight_layout()
    with atomic_path(path, ".png") as temporary:
        figure.savefig(temporary)
    plt.close(figure)
    return path
