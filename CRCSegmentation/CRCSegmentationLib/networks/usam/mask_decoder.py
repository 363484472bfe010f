"""U-SAM mask decoder: SAM's two-way transformer with one mask token per class and a U-shaped up path."""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from segment_anything.modeling import TwoWayTransformer
from segment_anything.modeling.mask_decoder import MLP
from torch import Tensor, nn

from CRCSegmentationLib.networks.blocks.unet_2d import UpBlock
from CRCSegmentationLib.networks.usam.config import CNN_CHANNELS, DECODER_HEADS, PROMPT_EMBED_DIM


class USAMMaskDecoder(nn.Module):
    """Image embedding + prompt tokens + skips f0..f3 -> class logits B x N x S x S.

    Differs from SAM's MaskDecoder as U-SAM does: one mask token and one hypernetwork MLP per
    class (paper Eq. 2-3), no IoU head and no multimask choice, and SAM's 4x upscaling replaced
    by four 2x up blocks with skip connections at 1/8, 1/4, 1/2 and full resolution (Eq. 6).
    """

    def __init__(
        self,
        num_classes: int,
        transformer_dim: int = PROMPT_EMBED_DIM,
        skip_channels: Sequence[int] = CNN_CHANNELS[:4],
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        # Same transformer as build_sam_vit_b (mlp 2048 = 8 D), so SAM's weights load into it at D = 256.
        self.transformer = TwoWayTransformer(
            depth=2, embedding_dim=transformer_dim, mlp_dim=8 * transformer_dim, num_heads=DECODER_HEADS
        )
        self.class_tokens = nn.Embedding(num_classes, transformer_dim)  # Mt, Eq. 2
        out_dim = transformer_dim // 8  # D/8
        self.class_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, out_dim, 3) for _ in range(num_classes)  # MLP^i, Eq. 3
        )
        f0, f1, f2, f3 = skip_channels
        self.up4 = UpBlock(transformer_dim, f3, transformer_dim // 2)  # 1/16 -> 1/8
        self.up3 = UpBlock(transformer_dim // 2, f2, transformer_dim // 4)  # -> 1/4
        self.up2 = UpBlock(transformer_dim // 4, f1, out_dim)  # -> 1/2
        self.up1 = UpBlock(out_dim, f0, out_dim)  # -> full resolution (UP^1 with f0)

    def forward(
        self,
        image_embedding: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        skips: Sequence[Tensor],
        skip_terms: Optional[Sequence[Tensor]] = None,
        prompt_features: Optional[Sequence[Tensor]] = None,
    ) -> Tensor:
        """
        image_embedding B x D x h x w; image_pe 1 x D x h x w; sparse_prompt_embeddings B x P x D
        (P may be 0); dense_prompt_embeddings B x D x h x w; skips f0..f3 (B x 32 x 16h x 16w ...
        B x 256 x 2h x 2w); skip_terms: ``self.skip_terms(skips)`` when cached; prompt_features: click-map
        features added to the inputs of up4, up3, up2 and up1 (``prompt_maps``), or None. Returns logits
        B x N x 16h x 16w.
        """
        batch = image_embedding.shape[0]
        tokens = self.class_tokens.weight.unsqueeze(0).expand(batch, -1, -1)
        tokens = torch.cat([tokens, sparse_prompt_embeddings], dim=1)
        src = image_embedding + dense_prompt_embeddings
        pos_src = image_pe.expand(batch, -1, -1, -1)
        hs, src = self.transformer(src, pos_src, tokens)
        class_tokens_out = hs[:, : self.num_classes, :]
        b, c, h, w = image_embedding.shape
        src = src.transpose(1, 2).reshape(b, c, h, w)

        f0, f1, f2, f3 = skips
        t0, t1, t2, t3 = skip_terms if skip_terms is not None else (None,) * 4
        p4, p3, p2, p1 = prompt_features if prompt_features is not None else (0.0,) * 4
        r = self.up4(src + p4, f3, t3)
        r = self.up1(self.up2(self.up3(r + p3, f2, t2) + p2, f1, t1) + p1, f0, t0)  # Src', B x D/8 x S x S

        hyper = torch.stack([mlp(class_tokens_out[:, i, :]) for i, mlp in enumerate(self.class_mlps)], dim=1)
        b, c, height, width = r.shape
        return (hyper @ r.reshape(b, c, height * width)).reshape(b, self.num_classes, height, width)  # Eq. 4

    def skip_terms(self, skips: Sequence[Tensor]) -> List[Tensor]:
        """The prompt-independent share of each up block's first convolution, for f0..f3."""
        return [block.skip_term(skip) for block, skip in zip((self.up1, self.up2, self.up3, self.up4), skips)]
