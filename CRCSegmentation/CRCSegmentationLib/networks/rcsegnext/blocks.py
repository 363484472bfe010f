"""RCSegNeXt building blocks (paper §2.2-2.3, Fig. 3) and the Table 3 ablation blocks.

Every block maps (B, C_in, D, H, W) -> (B, C_out, D, H, W): no block changes resolution (pooling
and upsampling live in the network). Normalisation is instance normalisation without affine parameters,
as in the authors' public code (§2.2: IN replaces ConvNeXt's LayerNorm).

Residual blocks get a 1x1x1 shortcut convolution only when C_in != C_out. The public code
allocates that convolution in every AniNeXt/IsoNeXt block but uses it only when the channels
change; we do not allocate the dead weights (DDP also refuses parameters that get no gradient).
``public_code_allocates_shortcut`` marks the block kinds where the public code has them (or, for
the Table 3 blocks it does not contain, presumably had them), so ``build.public_code_parameter_count``
can still reproduce the paper's parameter counts.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

Kernel = Tuple[int, int, int]
ANISOTROPIC_KERNEL: Kernel = (1, 3, 3)  # §2.1: no mixing along the thick axis in anisotropic stages
ISOTROPIC_KERNEL: Kernel = (3, 3, 3)


def _same_padding(kernel_size: Sequence[int]) -> Tuple[int, int, int]:
    return (kernel_size[0] // 2, kernel_size[1] // 2, kernel_size[2] // 2)


def _instance_norm(channels: int) -> nn.GroupNorm:
    """Instance normalisation without affine parameters (the public code's ``nn.InstanceNorm3d`` default).

    Written as GroupNorm with one channel per group, the same normalisation (per sample and channel over
    D, H, W, eps 1e-5) and no parameters either: PyTorch's CPU GroupNorm works in the channels-last layout
    the network runs in, where InstanceNorm3d copies to and from it (~20 % of a training step on a CPU,
    benchmarks/bench_rcsegnext.py)."""
    return nn.GroupNorm(channels, channels, eps=1e-5, affine=False)


def _shortcut(in_channels: int, out_channels: int) -> Optional[nn.Conv3d]:
    """1x1x1 projection for the residual, only where the channels change (else the identity)."""
    return nn.Conv3d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None


def _check_split(name: str, channels: int, scales: int) -> int:
    if scales < 2 or channels % scales:
        raise ValueError(f"{name}: {channels} channels cannot be split into scales={scales} equal groups (need >= 2)")
    return channels // scales


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """ShuffleNet channel shuffle: (B, C, ...) viewed as (B, groups, C / groups, ...), transposed.

    New channel ``j * groups + g`` is old channel ``g * (C / groups) + j`` (``shuffle_permutation``).
    """
    batch, channels = x.shape[0], x.shape[1]
    if channels % groups:
        raise ValueError(f"channel_shuffle: {channels} channels are not divisible by groups={groups}")
    rest = x.shape[2:]
    return x.reshape(batch, groups, channels // groups, *rest).transpose(1, 2).reshape(batch, channels, *rest)


def shuffle_permutation(channels: int, groups: int) -> List[int]:
    """``perm`` with ``channel_shuffle(x, groups)[:, k] == x[:, perm[k]]``."""
    per_group = channels // groups
    return [(k % groups) * per_group + k // groups for k in range(channels)]


class InvertedBottleneck(nn.Module):
    """ConvNeXt inverted bottleneck (§2.2): 1x1x1 C_in -> rC_in, GELU, 1x1x1 rC_in -> C_out.

    (B, C_in, D, H, W) -> (B, C_out, D, H, W); both convolutions are dense (all channels mix).
    """

    def __init__(self, in_channels: int, out_channels: int, expansion: int) -> None:
        super().__init__()
        hidden = expansion * in_channels  # the public code expands the block's input channels
        self.expand = nn.Conv3d(in_channels, hidden, kernel_size=1)
        self.act = nn.GELU()
        self.compress = nn.Conv3d(hidden, out_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.compress(self.act(self.expand(x)))


class ScaleAwareIntegration(nn.Module):
    """SAIM (§2.3, Fig. 3d): intra-scale expansion, channel shuffle, inter-scale compression.

    The input's C_in channels are s scale groups of C_in / s channels (the order the hierarchical
    split-conv-concat leaves them in). ``expand`` is a 1x1x1 conv C_in -> rC_in with s groups, so
    each output group sees one scale only (intra-scale). ``shuffle`` regroups the rC_in channels
    into C_in / s new groups that each hold r channels of every scale group. ``compress`` is a
    1x1x1 conv rC_in -> C_out with C_in / s groups: each of its groups fuses all scales (inter-scale).

    (B, C_in, D, H, W) -> (B, C_out, D, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, expansion: int, scales: int) -> None:
        super().__init__()
        group_width = _check_split("ScaleAwareIntegration in_channels", in_channels, scales)
        if out_channels % group_width:
            raise ValueError(
                f"ScaleAwareIntegration out_channels: {out_channels} must be a multiple of "
                f"in_channels / scales = {group_width} (the inter-scale convolution's groups)"
            )
        hidden = expansion * in_channels
        self.scales = scales
        self.inter_scale_groups = group_width  # C_in / s groups in the compressing conv
        # rC_in channels viewed as r*s blocks of C_in / s channels: one shuffle "group" per block
        # (the public code's reshape to (s * r, C_in / s) followed by a transpose).
        self.shuffle_groups = expansion * scales
        self.expand = nn.Conv3d(in_channels, hidden, kernel_size=1, groups=scales)  # intra-scale
        self.act = nn.GELU()
        self.compress = nn.Conv3d(hidden, out_channels, kernel_size=1, groups=group_width)  # inter-scale

    def shuffle(self, x: Tensor) -> Tensor:
        """(B, rC_in, ...) -> same shape, channels reordered so each compress group spans all scales."""
        return channel_shuffle(x, self.shuffle_groups)

    @property
    def permutation(self) -> List[int]:
        """``shuffle(x)[:, k] == x[:, permutation[k]]``."""
        return shuffle_permutation(self.expand.out_channels, self.shuffle_groups)

    def forward(self, x: Tensor) -> Tensor:
        return self.compress(self.shuffle(self.act(self.expand(x))))


class HierarchicalScales(nn.Module):
    """Res2Net's hierarchical split (Gao et al. 2019; paper §2.3, Fig. 3b-d).

    Splits C channels into s groups x_1..x_s of C / s channels; y_1 = K_1(x_1),
    y_i = K_i(x_i + y_{i-1}) for 1 < i < s, and the last group passes unchanged, y_s = x_s (the
    order of the official Res2Net code and of the RCSegNeXt public code). Output cat(y_1..y_s):
    (B, C, D, H, W) -> (B, C, D, H, W), groups in order of growing receptive field, then x_s.
    """

    def __init__(self, channels: int, scales: int, group_op: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.group_width = _check_split("HierarchicalScales channels", channels, scales)
        self.convs = nn.ModuleList([group_op(self.group_width) for _ in range(scales - 1)])

    def forward(self, x: Tensor) -> Tensor:
        groups = torch.split(x, self.group_width, dim=1)
        outputs = []
        previous: Optional[Tensor] = None
        for conv, group in zip(self.convs, groups):
            previous = conv(group if previous is None else group + previous)
            outputs.append(previous)
        outputs.append(groups[-1])
        return torch.cat(outputs, dim=1)


class PlainConvBlock(nn.Sequential):
    """Table 3 "Conv": conv (with bias) -> IN -> ReLU, as in the public Refined_UNetIN.py.

    (B, C_in, D, H, W) -> (B, C_out, D, H, W). Refined_UNetIN's "stage" is two of these, i.e.
    ``blocks_per_stage = 2``.
    """

    public_code_allocates_shortcut = False

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Sequence[int] = ISOTROPIC_KERNEL) -> None:
        super().__init__(
            nn.Conv3d(in_channels, out_channels, kernel_size=tuple(kernel_size), padding=_same_padding(kernel_size)),
            _instance_norm(out_channels),
            nn.ReLU(),
        )


class _ResidualBlock(nn.Module):
    """x -> shortcut(x) + branch(x); ``shortcut`` is the identity unless C_in != C_out."""

    public_code_allocates_shortcut = True
    in_channels: int
    out_channels: int
    shortcut: Optional[nn.Conv3d]

    def _add_shortcut(self, in_channels: int, out_channels: int) -> None:
        """Last in every subclass's ``__init__``: the shortcut's weights are drawn after the branch's."""
        self.in_channels, self.out_channels = in_channels, out_channels
        self.shortcut = _shortcut(in_channels, out_channels)

    def branch(self, x: Tensor) -> Tensor:
        raise NotImplementedError  # abstract: each block defines its branch

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        return identity + self.branch(x)


class AniNeXtBlock(_ResidualBlock):
    """AniNeXt (§2.2, Fig. 3a): depthwise 1x3x3 conv -> IN -> inverted bottleneck; residual.

    (B, C_in, D, H, W) -> (B, C_out, D, H, W).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: Sequence[int] = ANISOTROPIC_KERNEL, expansion: int = 2
    ) -> None:
        super().__init__()
        self.depthwise = nn.Conv3d(
            in_channels, in_channels, kernel_size=tuple(kernel_size), padding=_same_padding(kernel_size),
            groups=in_channels,
        )
        self.norm = _instance_norm(in_channels)
        self.bottleneck = InvertedBottleneck(in_channels, out_channels, expansion)
        self._add_shortcut(in_channels, out_channels)

    def branch(self, x: Tensor) -> Tensor:
        return self.bottleneck(self.norm(self.depthwise(x)))


class ConvNeXtBlock(AniNeXtBlock):
    """Table 3 "ConvNeXt" in the isotropic stages: the AniNeXt structure with a 3x3x3 depthwise conv."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: Sequence[int] = ISOTROPIC_KERNEL, expansion: int = 2
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size=kernel_size, expansion=expansion)


def _depthwise_group_conv(kernel_size: Sequence[int]) -> Callable[[int], nn.Module]:
    def make(width: int) -> nn.Module:
        return nn.Conv3d(width, width, kernel_size=tuple(kernel_size), padding=_same_padding(kernel_size), groups=width)

    return make


class Res2NeXtBlock(_ResidualBlock):
    """Res2NeXt (§2.3, Fig. 3c): depthwise hierarchical split -> IN -> dense inverted bottleneck.

    Res2Net modernised: depthwise 3x3x3 group convs, one IN after them, GELU only inside the
    bottleneck. (B, C_in, D, H, W) -> (B, C_out, D, H, W).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: Sequence[int] = ISOTROPIC_KERNEL,
        expansion: int = 2, scales: int = 4,
    ) -> None:
        super().__init__()
        self.multiscale = HierarchicalScales(in_channels, scales, _depthwise_group_conv(kernel_size))
        self.norm = _instance_norm(in_channels)
        self.bottleneck = InvertedBottleneck(in_channels, out_channels, expansion)
        self._add_shortcut(in_channels, out_channels)

    def branch(self, x: Tensor) -> Tensor:
        return self.bottleneck(self.norm(self.multiscale(x)))


class IsoNeXtBlock(_ResidualBlock):
    """IsoNeXt (§2.3, Fig. 3d): Res2NeXt with SAIM in place of the inverted bottleneck.

    (B, C_in, D, H, W) -> (B, C_out, D, H, W); needs C_in % s == 0 and C_out % (C_in / s) == 0.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: Sequence[int] = ISOTROPIC_KERNEL,
        expansion: int = 2, scales: int = 4,
    ) -> None:
        super().__init__()
        self.multiscale = HierarchicalScales(in_channels, scales, _depthwise_group_conv(kernel_size))
        self.norm = _instance_norm(in_channels)
        self.saim = ScaleAwareIntegration(in_channels, out_channels, expansion, scales)
        self._add_shortcut(in_channels, out_channels)

    def branch(self, x: Tensor) -> Tensor:
        return self.saim(self.norm(self.multiscale(x)))


def _dense_group_conv(kernel_size: Sequence[int]) -> Callable[[int], nn.Module]:
    def make(width: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv3d(width, width, kernel_size=tuple(kernel_size), padding=_same_padding(kernel_size), bias=False),
            _instance_norm(width),
            nn.ReLU(),
        )

    return make


class Res2NetBlock(_ResidualBlock):
    """Table 3 "Res2Net": the Gao et al. (2019) Bottle2neck in 3D, IN in place of BN (paper §3.3).

    1x1x1 C_in -> C_in, IN, ReLU; hierarchical split into s groups of C_in / s with dense 3x3x3
    convs, each followed by IN + ReLU; 1x1x1 C_in -> C_out, IN; add the residual (a 1x1x1 conv
    when C_in != C_out); ReLU. (B, C_in, D, H, W) -> (B, C_out, D, H, W).

    The paper gives no more detail; the public code has no Res2Net. Our choices: the inner width
    is C_in, split into s groups of C_in / s as in the public IsoNeXt block; convolutions followed
    by IN have no bias, as in Res2Net (an IN without affine cancels a bias anyway); the shortcut is
    the biased 1x1x1 conv of the public blocks. Counted with the public code's always-allocated
    shortcut, the paper configuration has 8,111,491 parameters, Table 3's 8.11 M; an inner width
    of C_out (8.19 M), biased 1x1x1 convs (8.12 M) or no dead shortcuts (7.67 M) do not fit.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: Sequence[int] = ISOTROPIC_KERNEL, scales: int = 4
    ) -> None:
        super().__init__()
        self.reduce = nn.Sequential(
            nn.Conv3d(in_channels, in_channels, kernel_size=1, bias=False), _instance_norm(in_channels), nn.ReLU()
        )
        self.multiscale = HierarchicalScales(in_channels, scales, _dense_group_conv(kernel_size))
        self.restore = nn.Sequential(
            nn.Conv3d(in_channels, out_channels, kernel_size=1, bias=False), _instance_norm(out_channels)
        )
        self.act = nn.ReLU()
        self._add_shortcut(in_channels, out_channels)

    def branch(self, x: Tensor) -> Tensor:
        return self.restore(self.multiscale(self.reduce(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.act(super().forward(x))  # ResNet: ReLU after the addition


def make_block(
    kind: str, in_channels: int, out_channels: int, kernel_size: Sequence[int], expansion: int, scales: int
) -> nn.Module:
    """One block of ``kind`` (a ``config.ANISOTROPIC_BLOCKS`` / ``ISOTROPIC_BLOCKS`` name)."""
    if kind == "conv":
        return PlainConvBlock(in_channels, out_channels, kernel_size)
    if kind == "aninext":
        return AniNeXtBlock(in_channels, out_channels, kernel_size, expansion)
    if kind == "convnext":
        return ConvNeXtBlock(in_channels, out_channels, kernel_size, expansion)
    if kind == "res2net":
        return Res2NetBlock(in_channels, out_channels, kernel_size, scales)
    if kind == "res2next":
        return Res2NeXtBlock(in_channels, out_channels, kernel_size, expansion, scales)
    if kind == "isonext":
        return IsoNeXtBlock(in_channels, out_channels, kernel_size, expansion, scales)
    raise ValueError(f"block kind: {kind!r} is not one of 'conv', 'aninext', 'convnext', 'res2net', 'res2next', 'isonext'")
