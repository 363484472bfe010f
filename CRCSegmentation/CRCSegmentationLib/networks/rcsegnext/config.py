"""RCSegNeXt configuration and the anisotropic-stage rule (RCSegNeXt paper §2.1).

Axis order is the network's: axis 0 of ``spacing`` is the tensor's D axis and must be the thick
(through-plane) axis, as in nnU-Net's transposed order, where the largest spacing comes first.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

ANISOTROPIC_BLOCKS = ("conv", "aninext")  # Table 3, "Aniso stage" column
ISOTROPIC_BLOCKS = ("conv", "convnext", "res2net", "res2next", "isonext")  # Table 3, "Iso stage" column
ANISOTROPIC_POOL = (1, 2, 2)  # §2.1: in-plane only max-pooling after an anisotropic level
ISOTROPIC_POOL = (2, 2, 2)  # §2.1: max-pooling on all axes after an isotropic level


def _choices(values: Sequence[str]) -> str:
    return ", ".join(repr(v) for v in values)


def _check_int(name: str, value: object, minimum: int) -> None:
    # bool is an int subclass; True as a channel count is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"RCSegNeXtConfig.{name}: {value!r} must be an integer >= {minimum}")


def _checked_spacing(spacing: Sequence[float]) -> Tuple[float, float, float]:
    """``spacing`` as three positive finite floats with the thick axis first, else ValueError."""
    try:
        values = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        raise ValueError(f"spacing: {spacing!r} must be three numbers (mm, thick axis first)") from None
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing: {spacing!r} must be three positive finite numbers (mm, thick axis first)")
    if values[0] < max(values[1], values[2]):
        # The anisotropic kernels (1x3x3) and pools (1x2x2) act on axis 0 only as the thick axis.
        raise ValueError(
            f"spacing: {spacing!r} must have its largest value on axis 0 (the D axis, the thick one; "
            "nnU-Net's transposed order); reorder the axes"
        )
    return values  # type: ignore[return-value]


def anisotropic_stage_count(spacing: Sequence[float], levels: int = 5, threshold: float = 2.0) -> int:
    """How many leading resolution levels are anisotropic (§2.1).

    A level is anisotropic while spacing_z / spacing_xy >= ``threshold`` (the paper stops at
    ``< 2``); its 1x2x2 pooling doubles the in-plane spacing for the next level. Once a level is
    isotropic, all deeper ones are (the public network's order). xy is the smaller in-plane spacing.
    (4.0, 0.875, 0.875) -> 2, (3.3, 0.234, 0.234) -> 3, (1, 1, 1) -> 0; at most ``levels``.
    """
    z, y, x = _checked_spacing(spacing)
    xy = min(y, x)
    count = 0
    while count < levels and z / xy >= threshold:
        count += 1
        xy *= 2.0
    return count


@dataclass(frozen=True)
class RCSegNeXtConfig:
    """What an RCSegNeXt network is (paper Fig. 2; Table 3 selects the block kinds).

    Level i has ``width * 2**i`` channels; the defaults are the paper's network (§3.1): 32 stem
    channels, r = 2, s = 4, five levels of two blocks, AniNeXt + IsoNeXt.
    """

    in_channels: int = 1
    num_classes: int = 3
    width: int = 32  # stem channels; levels have width * (1, 2, 4, 8, 16)
    expansion: int = 2  # r, the inverted-bottleneck / SAIM expansion rate (Fig. 2)
    scales: int = 4  # s, the number of Res2Net-style scale groups (§3.1: "scale factor ... set to 4")
    spacing: Tuple[float, float, float] = (4.0, 0.875, 0.875)  # mm, axis 0 = D = thick axis
    anisotropic_block: str = "aninext"
    isotropic_block: str = "isonext"
    levels: int = 5
    blocks_per_stage: int = 2
    anisotropy_threshold: float = 2.0  # §2.1: anisotropic while spacing_z / spacing_xy >= 2

    def __post_init__(self) -> None:
        # Plans and checkpoints store lists; keep a tuple of floats so configs compare equal and hash.
        object.__setattr__(self, "spacing", _checked_spacing(self.spacing))
        _check_int("in_channels", self.in_channels, 1)
        _check_int("num_classes", self.num_classes, 1)
        _check_int("width", self.width, 1)
        _check_int("expansion", self.expansion, 1)
        _check_int("scales", self.scales, 2)  # the last scale group passes through: need >= 2 groups
        _check_int("levels", self.levels, 2)  # at least one pooling and one decoder level
        _check_int("blocks_per_stage", self.blocks_per_stage, 1)
        if self.width % self.scales:
            raise ValueError(
                f"RCSegNeXtConfig.width: {self.width} must be divisible by scales={self.scales} "
                "(every level's channels are split into `scales` equal groups)"
            )
        if self.anisotropic_block not in ANISOTROPIC_BLOCKS:
            raise ValueError(
                f"RCSegNeXtConfig.anisotropic_block: {self.anisotropic_block!r} is not one of "
                f"{_choices(ANISOTROPIC_BLOCKS)}"
            )
        if self.isotropic_block not in ISOTROPIC_BLOCKS:
            raise ValueError(
                f"RCSegNeXtConfig.isotropic_block: {self.isotropic_block!r} is not one of "
                f"{_choices(ISOTROPIC_BLOCKS)}"
            )
        if self.isotropic_block == "isonext" and self.scales % 2:
            # SAIM's inter-scale conv has C_in / s groups; a decoder block maps 2C -> C, so C must be
            # a multiple of 2C / s, i.e. s even.
            raise ValueError(
                f"RCSegNeXtConfig.scales: {self.scales} must be even with isotropic_block='isonext' "
                "(a decoder block's C output channels must fill the 2C / s inter-scale groups of SAIM)"
            )
        threshold = self.anisotropy_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold > 1.0 \
                or not math.isfinite(threshold):
            raise ValueError(f"RCSegNeXtConfig.anisotropy_threshold: {threshold!r} must be a finite number > 1")
        object.__setattr__(self, "anisotropy_threshold", float(threshold))


def level_channels(config: RCSegNeXtConfig) -> List[int]:
    """Channels of each resolution level, shallowest first: width * 2**i (Fig. 2)."""
    return [config.width * 2 ** level for level in range(config.levels)]


def level_is_anisotropic(config: RCSegNeXtConfig) -> List[bool]:
    """Whether each level (shallowest first) is anisotropic (§2.1)."""
    count = anisotropic_stage_count(config.spacing, config.levels, config.anisotropy_threshold)
    return [level < count for level in range(config.levels)]


def level_pooling(config: RCSegNeXtConfig) -> List[Tuple[int, int, int]]:
    """Max-pooling kernel (= stride) between level i and i + 1, for i < levels - 1 (§2.1).

    The decoder's transposed convolution back to level i uses the same kernel and stride.
    Paper configuration: [(1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)].
    """
    kinds = level_is_anisotropic(config)
    return [ANISOTROPIC_POOL if kinds[level] else ISOTROPIC_POOL for level in range(config.levels - 1)]


def total_downsampling(config: RCSegNeXtConfig) -> Tuple[int, int, int]:
    """Per-axis factor from the input to the deepest level; inputs must be divisible by it.

    Paper configuration: (4, 16, 16); isotropic spacing with five levels: (16, 16, 16).
    """
    factor = [1, 1, 1]
    for pool in level_pooling(config):
        factor = [f * p for f, p in zip(factor, pool)]
    return (factor[0], factor[1], factor[2])
