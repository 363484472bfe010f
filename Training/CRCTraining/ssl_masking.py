"""Masks for self-supervised pretraining (AG-CRC §III-D, Eq. 7, and the Table VII ablation).

Eq. 7: min_W || X - f(X̂, O, M; W) ||_1 with X̂ = M(X, B): the CT voxels inside
the bowel wall B are replaced by Gaussian noise, the OOI and MOS channels stay
as they are, and the network reconstructs the CT. The ablation's alternatives
drop other voxels the same way (§V-B3): "inpaint", up to 50 % of the voxels in
random-sized blocks; "mae", a grid of 4 x 32 x 32 patches of which 50 % drop.
All functions work on torch batches B x C x Z x Y x X (channel 0 = CT, already
normalised by nnU-Net, so standard normal noise matches its scale).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

SSL_MASKINGS = ("bowel_wall", "inpaint", "mae")
CT_CHANNEL = 0
MAE_PATCH = (4, 32, 32)  # §V-B3: "dropping patch size is set as 4 x 32 x 32 (about 20 x 25 x 25 mm)"
DROP_FRACTION = 0.5  # §V-B3: up to 50 % (inpaint), 50 % of the patches (MAE)


def mask_ct_channel(data: torch.Tensor, region: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """M(X, B) of Eq. 7: CT voxels in ``region`` (B x 1 x ...) become N(0, 1) noise; other channels untouched."""
    masked = data.clone()
    noise = torch.randn(data[:, :1].shape, generator=generator, dtype=data.dtype, device=data.device)
    ct = masked[:, CT_CHANNEL : CT_CHANNEL + 1]
    masked[:, CT_CHANNEL : CT_CHANNEL + 1] = torch.where(region.bool(), noise, ct)
    return masked


def bowel_wall_region(wall_target: torch.Tensor) -> torch.Tensor:
    """AG-SSL: the bowel wall (carried as the segmentation target of the SSL dataset) is the region."""
    return wall_target > 0.5


def inpaint_region(shape: Sequence[int], generator: Optional[torch.Generator] = None,
                   max_fraction: float = DROP_FRACTION) -> torch.Tensor:
    """Random-sized boxes, added until the next one would exceed ``max_fraction`` of the voxels."""
    batch, _, *spatial = shape
    region = torch.zeros((batch, 1, *spatial), dtype=torch.bool)
    for index in range(batch):
        target = torch.rand((), generator=generator).item() * max_fraction * region[index].numel()
        for _ in range(64):  # bounded: small boxes on a big patch
            size = [max(1, int(n * (0.1 + 0.3 * torch.rand((), generator=generator).item()))) for n in spatial]
            start = [int(torch.randint(0, n - s + 1, (), generator=generator)) for n, s in zip(spatial, size)]
            box = tuple(slice(a, a + s) for a, s in zip(start, size))
            candidate = region[index, 0].clone()
            candidate[box] = True
            if candidate.sum() > max_fraction * candidate.numel():
                break
            region[index, 0] = candidate
            if candidate.sum() >= target:
                break
    return region


def mae_region(shape: Sequence[int], generator: Optional[torch.Generator] = None,
               patch: Tuple[int, int, int] = MAE_PATCH, fraction: float = DROP_FRACTION) -> torch.Tensor:
    """A regular grid of ``patch``-sized cells; a random ``fraction`` of them is dropped per sample."""
    batch, _, *spatial = shape
    cells = [max(1, -(-n // p)) for n, p in zip(spatial, patch)]  # ceil division
    count = cells[0] * cells[1] * cells[2]
    region = torch.zeros((batch, 1, *cells), dtype=torch.bool)
    for index in range(batch):
        dropped = torch.randperm(count, generator=generator)[: int(round(fraction * count))]
        region[index, 0].view(-1)[dropped] = True
    for axis, p in enumerate(patch):
        region = region.repeat_interleave(p, dim=2 + axis)
    return region[(slice(None), slice(None), *[slice(0, n) for n in spatial])]


def ssl_region(masking: str, data: torch.Tensor, wall_target: Optional[torch.Tensor],
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The region to drop for the chosen pretraining task (B x 1 x ... boolean)."""
    if masking == "bowel_wall":
        if wall_target is None:
            raise ValueError("AG-SSL needs the bowel-wall mask as the batch target (prepare the dataset with --ssl)")
        return bowel_wall_region(wall_target).to(data.device)
    if masking == "inpaint":
        return inpaint_region(data.shape, generator).to(data.device)
    if masking == "mae":
        return mae_region(data.shape, generator).to(data.device)
    raise ValueError(f"SSL masking '{masking}' is not one of {SSL_MASKINGS}")
