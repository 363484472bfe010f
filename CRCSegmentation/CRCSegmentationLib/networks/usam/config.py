"""U-SAM configuration and the fixed SAM ViT-B dimensions it builds on."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

from OrganGuidanceLib.validation import InputError

# SAM ViT-B (segment_anything.build_sam.build_sam_vit_b); U-SAM uses ViT-B only (CARE paper, Experiments).
PATCH_SIZE = 16  # one ViT token per 16 x 16 input pixels (the CNN encoder downsamples by 16)
VIT_EMBED_DIM = 768
VIT_DEPTH = 12
VIT_NUM_HEADS = 12
VIT_GLOBAL_ATTN_INDEXES = (2, 5, 8, 11)
VIT_WINDOW_SIZE = 14
PROMPT_EMBED_DIM = 256  # D in the paper
# CNN encoder channels f0..f4 (paper: D/8, D/4, D/2, D, 3D with D = 256; U-SAM backbone.py)
CNN_CHANNELS = (32, 64, 128, 256, 768)


@dataclass(frozen=True)
class USAMConfig:
    """What a U-SAM model is; stored in every U-SAM checkpoint."""

    image_size: int = 224  # CARE paper, Experiments: 224 x 224 input
    num_classes: int = 3
    class_names: Tuple[str, ...] = ("background", "normal rectum", "tumor")  # CARE labels
    hu_window: Tuple[float, float] = (-160.0, 240.0)  # soft-tissue window W400 L40 -> [0, 1]

    def __post_init__(self) -> None:
        # Checkpoints store lists; keep tuples so configs compare equal and stay hashable.
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "hu_window", tuple(float(v) for v in self.hu_window))
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

    @property
    def token_grid(self) -> int:
        """Side of the ViT token grid (image_size / 16)."""
        return self.image_size // PATCH_SIZE
