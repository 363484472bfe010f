"""Click maps for U-SAM's up path: the prompt drawn as images (positive clicks, negative clicks, the box).

Not in the CARE paper or SAM: there a prompt reaches the mask only through SAM's two-way transformer
on the S/16 token grid, which SAM's pre-trained weights make work. A network trained from random
weights in minutes on a CPU (the ``small`` preset of the demonstration model) did not learn that path
(in our runs it ignored its prompts: a click on one of two identical blobs segmented both); click maps
at every level of the up path, as click-based tools draw them (RITM, nnInteractive: clicks as
image channels), give it the prompt where the mask is made. ``USAMConfig.prompt_maps`` turns them on;
the paper's ViT-B U-SAM has none.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MAP_CHANNELS = 3  # positive clicks, negative clicks, box
SIGMA_FRACTION = 1.0 / 32.0  # a click's Gaussian: sigma = S / 32 (4 pixels at S = 128)


def draw_prompt_maps(size: int, batch: int, point_coords: Optional[Tensor], point_labels: Optional[Tensor],
                     boxes: Optional[Tensor], device: torch.device) -> Tensor:
    """B x 3 x S x S: max of Gaussians at positive / negative clicks, and 1 inside the box (NaN row: none)."""
    maps = torch.zeros(batch, MAP_CHANNELS, size, size, device=device)
    axis = torch.arange(size, device=device, dtype=torch.float32)
    if point_coords is not None and point_labels is not None and point_coords.shape[1]:
        sigma = size * SIGMA_FRACTION
        xy = point_coords.to(device=device, dtype=torch.float32)
        dx = (axis[None, None, None, :] - xy[..., 0, None, None]) ** 2  # B x N x 1 x S
        dy = (axis[None, None, :, None] - xy[..., 1, None, None]) ** 2  # B x N x S x 1
        bumps = torch.exp(-(dx + dy) / (2 * sigma * sigma))  # B x N x S x S
        labels = point_labels.to(device)
        for channel, label in ((0, 1), (1, 0)):
            chosen = bumps * (labels == label)[..., None, None]
            maps[:, channel] = chosen.amax(dim=1) if chosen.shape[1] else maps[:, channel]
    if boxes is not None:
        box = boxes.to(device=device, dtype=torch.float32)
        present = ~torch.isnan(box).any(dim=1)
        box = torch.nan_to_num(box, nan=-1.0)
        inside_x = (axis[None, :] >= box[:, 0:1] - 0.5) & (axis[None, :] <= box[:, 2:3] + 0.5)  # B x S
        inside_y = (axis[None, :] >= box[:, 1:2] - 0.5) & (axis[None, :] <= box[:, 3:4] + 0.5)
        maps[:, 2] = (inside_y[:, :, None] & inside_x[:, None, :] & present[:, None, None]).float()
    return maps


class PromptMapEncoder(nn.Module):
    """Click maps -> one feature map per level of the up path (S/16, S/8, S/4, S/2), added to its input."""

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        self.levels = nn.ModuleList(
            nn.Sequential(nn.Conv2d(MAP_CHANNELS, c, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(c, c, 1))
            for c in channels
        )

    def forward(self, maps: Tensor) -> List[Tensor]:
        features = []
        for index, level in enumerate(self.levels):
            factor = 2 ** (4 - index)  # 16, 8, 4, 2
            features.append(level(F.avg_pool2d(maps, factor) * factor / 4.0))  # keep a click visible when pooled
        return features
