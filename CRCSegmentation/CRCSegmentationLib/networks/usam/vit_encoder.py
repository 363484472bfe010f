"""SAM's ViT-B image encoder fed with CNN tokens instead of its patch embedding (U-SAM)."""
from __future__ import annotations

from functools import partial

from segment_anything.modeling import ImageEncoderViT
from torch import Tensor, nn

from CRCSegmentationLib.networks.usam.config import (
    PATCH_SIZE,
    PROMPT_EMBED_DIM,
    VIT_DEPTH,
    VIT_EMBED_DIM,
    VIT_GLOBAL_ATTN_INDEXES,
    VIT_NUM_HEADS,
    VIT_WINDOW_SIZE,
)


class TokenViTEncoder(ImageEncoderViT):
    """SAM ViT-B (12 blocks, global attention in 2, 5, 8, 11, windows of 14) on a token grid.

    Built like ``build_sam_vit_b`` but for ``image_size`` (pos_embed and the global blocks'
    relative-position tables follow the S/16 grid); the patch embedding is removed because
    the CNN encoder's f4 are the tokens (CARE paper, Fig. 2).
    """

    def __init__(self, image_size: int) -> None:
        super().__init__(
            img_size=image_size,
            patch_size=PATCH_SIZE,
            embed_dim=VIT_EMBED_DIM,
            depth=VIT_DEPTH,
            num_heads=VIT_NUM_HEADS,
            mlp_ratio=4,
            out_chans=PROMPT_EMBED_DIM,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            global_attn_indexes=VIT_GLOBAL_ATTN_INDEXES,
            window_size=VIT_WINDOW_SIZE,
        )
        del self.patch_embed

    def forward(self, tokens: Tensor) -> Tensor:
        """Tokens B x 768 x h x w (h = w = S/16) -> image embedding B x 256 x h x w."""
        x = tokens.permute(0, 2, 3, 1)  # ViT blocks work on B x h x w x C
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))
