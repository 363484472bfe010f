"""The Spatial Alignment Module (SAM) of SANet (HCF paper §3.2.3, Fig. 4, Eq. 1-3).

A deep, coarse feature map X_j is brought to the size of a shallow one X_i by sampling it on a
learned grid instead of a uniform bilinear one:

    Δ_i = δ_3x3(cat(δ_1x1(X_i), δ_1x1(ζ(X_j))))      (Eq. 1: offset field, 2 channels)
    G_i = Ω_i + Δ_i                                   (Eq. 2: identity grid + offset)
    X~_i = ξ(X_j, G_i)                                (Eq. 3: grid sampling of the deep map)

Grid convention (one for the whole module, chosen so that a zero offset is exactly
``F.interpolate(deep, size, mode="bilinear", align_corners=False)``):

* Ω holds the *pixel centres* of the output in ``grid_sample``'s normalised coordinates with
  ``align_corners=False``: x_j = (2j + 1) / W - 1, y_i = (2i + 1) / H - 1. The public code builds Ω
  with ``linspace(-1, 1)`` (the ``align_corners=True`` convention) but samples with
  ``align_corners=False``, a half-pixel (of the deep map) shift that a zero offset does not undo.
* ``grid_sample(..., align_corners=False, padding_mode="border")``: "border" clamps a source
  coordinate that falls outside the deep map to its edge, as ``F.interpolate`` clamps its source index;
  the public code's default "zeros" would blend the edge rows/columns with zeros.
* Offsets: :func:`align_upsample` takes Δ in *output pixels* (channel 0: x / width, channel 1:
  y / height), normalised to grid units by 2 / W and 2 / H. :class:`SpatialAlignment` keeps the
  public code's scale, G = Ω + Δ / (W, H) ("normalised by the output width and height"), i.e. its conv
  predicts Δ in half pixels and passes Δ / 2 pixels, so training behaves as the public code's.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def identity_grid(height: int, width: int, batch: int = 1, dtype: Optional[torch.dtype] = None,
                  device: Optional[torch.device] = None) -> Tensor:
    """Ω of Eq. 2: the output pixel centres in ``grid_sample`` coordinates (``align_corners=False``).

    Returns (batch, height, width, 2) with ``[..., 0]`` = x (along the width) and ``[..., 1]`` = y,
    as ``F.grid_sample`` expects: x_j = (2j + 1) / width - 1, y_i = (2i + 1) / height - 1.
    """
    if height < 1 or width < 1:
        raise ValueError(f"identity_grid needs a positive size, got {height} x {width}")
    dtype = dtype or torch.get_default_dtype()
    xs = (2 * torch.arange(width, device=device, dtype=torch.float64) + 1) / width - 1
    ys = (2 * torch.arange(height, device=device, dtype=torch.float64) + 1) / height - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (H, W, 2), last dim (x, y)
    return grid.to(dtype).unsqueeze(0).expand(batch, height, width, 2)


def align_upsample(deep: Tensor, offset: Tensor, size: Optional[Sequence[int]] = None) -> Tensor:
    """ξ(X_j, Ω + Δ) of Eq. 2-3: sample ``deep`` at the output pixel centres moved by ``offset``.

    Args:
        deep: (B, C, h, w), the deep feature map X_j.
        offset: (B, 2, H, W), Δ in output pixels: channel 0 moves the sampling point along x (width),
            channel 1 along y (height). A zero offset gives bilinear upsampling
            (``F.interpolate(deep, (H, W), mode="bilinear", align_corners=False)``) exactly; a constant
            offset of k in channel 0 shifts that result by k pixels (output[..., j] = up[..., j + k]).
        size: (H, W) of the output; must be the offset's size (taken from it when omitted).

    Returns:
        (B, C, H, W).
    """
    if deep.ndim != 4 or offset.ndim != 4 or offset.shape[1] != 2 or offset.shape[0] != deep.shape[0]:
        raise ValueError(f"align_upsample needs deep (B, C, h, w) and offset (B, 2, H, W); got "
                         f"{tuple(deep.shape)} and {tuple(offset.shape)}")
    height, width = offset.shape[-2:]
    if size is not None and tuple(size) != (height, width):
        raise ValueError(f"align_upsample: size {tuple(size)} is not the offset's size {(height, width)}")
    grid = identity_grid(height, width, deep.shape[0], dtype=deep.dtype, device=deep.device)
    scale = offset.new_tensor([2.0 / width, 2.0 / height])  # output pixels -> normalised grid units
    grid = grid + offset.permute(0, 2, 3, 1).to(deep.dtype) * scale.to(deep.dtype)  # Eq. 2: G = Ω + Δ
    return F.grid_sample(deep, grid, mode="bilinear", padding_mode="border", align_corners=False)  # Eq. 3


class SpatialAlignment(nn.Module):
    """SAM (Fig. 4): learned upsampling of a deep map X_j to a shallow map X_i's size.

    Both maps are compressed by their own 1x1 convolution to ``channels // 2`` (the paper's C / 2),
    the compressed deep map is bilinearly resized to X_i's size (ζ; compressing first and then
    resizing equals Eq. 1's order, as both are linear and the convolutions have no bias), the two are
    concatenated, and a 3x3 convolution predicts the 2-channel offset Δ (Eq. 1). The *uncompressed*
    deep map is then grid-sampled at Ω + Δ (Eq. 2-3). No bias, no normalisation, no activation on
    the offset path (public code). Parameters: 2 · C · C/2 + 9 · C · 2 (18,688 for C = 128).

    Args:
        channels: C, the channel depth of both maps.
        compressed_channels: width of the compressed maps (default C // 2).
    """

    def __init__(self, channels: int = 128, compressed_channels: Optional[int] = None) -> None:
        super().__init__()
        compressed = compressed_channels or channels // 2
        self.compress_shallow = nn.Conv2d(channels, compressed, kernel_size=1, bias=False)
        self.compress_deep = nn.Conv2d(channels, compressed, kernel_size=1, bias=False)
        self.offset = nn.Conv2d(2 * compressed, 2, kernel_size=3, padding=1, bias=False)

    def predict_offset(self, shallow: Tensor, deep: Tensor) -> Tensor:
        """Δ of Eq. 1 in the public code's units (half output pixels): (B, C, H, W), (B, C, h, w) -> (B, 2, H, W)."""
        size = shallow.shape[-2:]
        compressed_deep = F.interpolate(self.compress_deep(deep), size=size, mode="bilinear", align_corners=False)
        return self.offset(torch.cat([self.compress_shallow(shallow), compressed_deep], dim=1))

    def forward(self, shallow: Tensor, deep: Tensor) -> Tensor:
        """X~_i of Eq. 3.

        Args:
            shallow: (B, C, H, W), X_i (only its content and size steer the offset).
            deep: (B, C, h, w), X_j with h <= H, w <= W (equal sizes are allowed: SANet's layer3 and
                layer4 are both at stride 16).

        Returns:
            (B, C, H, W): ``deep`` sampled on the aligned grid.
        """
        if shallow.ndim != 4 or deep.ndim != 4 or shallow.shape[:2] != deep.shape[:2]:
            raise ValueError(f"SpatialAlignment needs two (B, C, ., .) maps of equal B and C; got "
                             f"{tuple(shallow.shape)} and {tuple(deep.shape)}")
        delta = self.predict_offset(shallow, deep)
        # G = Ω + Δ / (W, H) (public code) = Ω + (Δ / 2 output pixels) · (2 / W, 2 / H).
        return align_upsample(deep, 0.5 * delta, shallow.shape[-2:])

