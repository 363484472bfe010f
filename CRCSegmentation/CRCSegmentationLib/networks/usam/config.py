"""U-SAM configuration: input, classes and the network's sizes (SAM ViT-B by default)."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Dict, Tuple

from OrganGuidanceLib.validation import InputError

PATCH_SIZE = 16  # one ViT token per 16 x 16 input pixels (the CNN encoder downsamples by 16)
# SAM ViT-B (segment_anything.build_sam.build_sam_vit_b); the CARE paper uses ViT-B only, and it is
# the only size SAM's published weights map into (usam.sam_weights).
VIT_EMBED_DIM = 768
VIT_DEPTH = 12
VIT_NUM_HEADS = 12
VIT_GLOBAL_ATTN_INDEXES = (2, 5, 8, 11)
VIT_WINDOW_SIZE = 14
PROMPT_EMBED_DIM = 256  # D in the paper
# CNN encoder channels f0..f4 (paper: D/8, D/4, D/2, D, 3D with D = 256; U-SAM backbone.py)
CNN_CHANNELS = (32, 64, 128, 256, 768)
SIZE_FIELDS = (
    "vit_embed_dim", "vit_depth", "vit_num_heads", "vit_global_attn_indexes", "vit_window_size",
    "prompt_embed_dim", "cnn_channels", "prompt_maps",
)
DECODER_HEADS = 8  # SAM's two-way transformer (build_sam: num_heads=8, mlp_dim=2048 = 8 D)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class USAMConfig:
    """What a U-SAM model is; stored in every U-SAM checkpoint. Defaults: the paper's ViT-B U-SAM."""

    image_size: int = 224  # CARE paper, Experiments: 224 x 224 input
    num_classes: int = 3
    class_names: Tuple[str, ...] = ("background", "normal rectum", "tumor")  # CARE labels
    hu_window: Tuple[float, float] = (-160.0, 240.0)  # soft-tissue window W400 L40 -> [0, 1]
    vit_embed_dim: int = VIT_EMBED_DIM
    vit_depth: int = VIT_DEPTH
    vit_num_heads: int = VIT_NUM_HEADS
    vit_global_attn_indexes: Tuple[int, ...] = VIT_GLOBAL_ATTN_INDEXES
    vit_window_size: int = VIT_WINDOW_SIZE  # 0: every block attends globally
    prompt_embed_dim: int = PROMPT_EMBED_DIM
    cnn_channels: Tuple[int, ...] = CNN_CHANNELS  # f0..f4; f4 are the ViT tokens (= vit_embed_dim)
    prompt_maps: bool = False  # click maps into the up path (networks.usam.prompt_maps); not in the paper

    def __post_init__(self) -> None:
        # Checkpoints store lists; keep tuples so configs compare equal and stay hashable.
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "hu_window", tuple(float(v) for v in self.hu_window))
        object.__setattr__(self, "vit_global_attn_indexes", tuple(self.vit_global_attn_indexes))
        object.__setattr__(self, "cnn_channels", tuple(self.cnn_channels))
        if not isinstance(self.image_size, int) or self.image_size < 2 * PATCH_SIZE or self.image_size % PATCH_SIZE:
            raise InputError(
                f"U-SAM image_size: {self.image_size!r} must be an integer multiple of {PATCH_SIZE} "
                f"(one ViT token per {PATCH_SIZE} pixels), at least {2 * PATCH_SIZE}"
            )
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise InputError(f"U-SAM num_classes: {self.num_classes!r} must be an integer >= 2 (background + classes)")
        if len(self.class_names) != self.num_classes:
            raise InputError(
                f"U-SAM class_names: {len(self.class_names)} names {self.class_names} "
                f"for num_classes={self.num_classes}"
            )
        if len(self.hu_window) != 2 or not self.hu_window[0] < self.hu_window[1]:
            raise InputError(f"U-SAM hu_window: {self.hu_window} must be (low, high) HU with low < high")
        self._check_sizes()

    def _check_sizes(self) -> None:
        for name in ("vit_embed_dim", "vit_depth", "vit_num_heads", "prompt_embed_dim"):
            if not _positive_int(getattr(self, name)):
                raise InputError(f"U-SAM {name}: {getattr(self, name)!r} must be a positive integer")
        if self.vit_embed_dim % self.vit_num_heads:
            raise InputError(
                f"U-SAM vit_num_heads: {self.vit_num_heads} does not divide vit_embed_dim {self.vit_embed_dim}"
            )
        if self.prompt_embed_dim % (2 * DECODER_HEADS) or self.prompt_embed_dim < 64:
            # SAM's random Fourier features use D/2; the decoder has 8 heads and channels D/8 at full size.
            raise InputError(
                f"U-SAM prompt_embed_dim: {self.prompt_embed_dim} must be a multiple of {2 * DECODER_HEADS}, >= 64"
            )
        if not isinstance(self.prompt_maps, bool):
            raise InputError(f"U-SAM prompt_maps: {self.prompt_maps!r} must be true or false")
        if not isinstance(self.vit_window_size, int) or self.vit_window_size < 0:
            raise InputError(f"U-SAM vit_window_size: {self.vit_window_size!r} must be an integer >= 0")
        bad = [i for i in self.vit_global_attn_indexes if not isinstance(i, int) or not 0 <= i < self.vit_depth]
        if bad:
            raise InputError(
                f"U-SAM vit_global_attn_indexes: {bad} are not block indexes 0..{self.vit_depth - 1}"
            )
        if len(self.cnn_channels) != 5 or not all(_positive_int(c) for c in self.cnn_channels):
            raise InputError(f"U-SAM cnn_channels: {self.cnn_channels} must be 5 positive integers (f0..f4)")
        if self.cnn_channels[-1] != self.vit_embed_dim:
            raise InputError(
                f"U-SAM cnn_channels: f4 = {self.cnn_channels[-1]} channels must equal vit_embed_dim "
                f"{self.vit_embed_dim} (f4 are the ViT's tokens)"
            )

    @property
    def token_grid(self) -> int:
        """Side of the ViT token grid (image_size / 16)."""
        return self.image_size // PATCH_SIZE

    @property
    def is_vit_b(self) -> bool:
        """Whether the network has SAM ViT-B's sizes, the only ones SAM's weights map into."""
        return all(getattr(self, name) == getattr(USAMConfig, name) for name in SIZE_FIELDS)

    def sizes(self) -> Dict[str, Any]:
        """The size fields (what ``preset`` sets)."""
        return {name: getattr(self, name) for name in SIZE_FIELDS}

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "USAMConfig":
        """A named size: ``"vit-b"`` (the paper's, SAM weights) or ``"small"`` (the CPU demonstration model).

        ``overrides`` sets any other field (e.g. ``num_classes``).
        """
        if name not in PRESETS:
            raise InputError(f"U-SAM preset: {name!r} is not one of {sorted(PRESETS)}")
        values = {**PRESETS[name], **overrides}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"U-SAM preset {name!r}: unknown fields {unknown}; fields are {sorted(known)}")
        return cls(**values)


PRESETS: Dict[str, Dict[str, Any]] = {
    "vit-b": {},
    # Small enough to train on a 2-core CPU in minutes (scripts/train_usam_demo_model.py): 128 x 128 input
    # (8 x 8 tokens, so every ViT block attends globally), 2 ViT blocks of width 128, decoder width 128,
    # and click maps in the up path (from random weights, SAM's token path alone did not learn to follow prompts).
    "small": {
        "image_size": 128,
        "vit_embed_dim": 128,
        "vit_depth": 2,
        "vit_num_heads": 4,
        "vit_global_attn_indexes": (),
        "vit_window_size": 0,
        "prompt_embed_dim": 128,
        "cnn_channels": (16, 32, 64, 128, 128),
        "prompt_maps": True,
    },
}
