"""SAM's ViT-B image encoder fed with CNN tokens instead of its patch embedding (U-SAM)."""
from __future__ import annotations

from functools import partial

from segment_anything.modeling import ImageEncoderViT
from torch import Tensor, nn

from CRCSegmentationLib.networks.usam.config import PATCH_SIZE, USAMConfig


class TokenViTEncoder(ImageEncoderViT):
    """SAM's ViT on a token grid; ViT-B by default (12 blocks, global attention in 2, 5, 8, 11, windows of 14).

    Built like ``build_sam_vit_b`` but for ``image_size`` and the config's sizes (pos_embed and the
    global blocks' relative-position tables follow the S/16 grid); the patch embedding is removed
    because the CNN encoder's f4 are the tokens (CARE paper, Fig. 2).
    """

    def __init__(self, config: USAMConfig) -> None:
        super().__init__(
            img_size=config.image_size,
            patch_size=PATCH_SIZE,
            embed_dim=config.vit_embed_dim,
            depth=config.vit_depth,
            num_heads=config.vit_num_heads,
            mlp_ratio=4,
            out_chans=config.prompt_embed_dim,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            global_attn_indexes=config.vit_global_attn_indexes,
            window_size=config.vit_window_size,
        )
        del self.patch_embed

    def forward(self, tokens: Tensor) -> Tensor:
        """Tokens B x E x h x w (h = w = S/16, E = vit_embed_dim) -> image embedding B x D x h x w."""
        x = tokens.permute(0, 2, 3, 1)  # ViT blocks work on B x h x w x C
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))
