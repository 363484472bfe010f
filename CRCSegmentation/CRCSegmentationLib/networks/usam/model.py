"""U-SAM: point-prompted, U-shaped SAM for 2D segmentation (CARE paper, Fig. 2)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from segment_anything.modeling import PromptEncoder
from torch import Tensor, nn

from CRCSegmentationLib.networks.usam.cnn_encoder import CNNEncoder
from CRCSegmentationLib.networks.usam.config import PROMPT_EMBED_DIM, USAMConfig
from CRCSegmentationLib.networks.usam.mask_decoder import USAMMaskDecoder
from CRCSegmentationLib.networks.usam.vit_encoder import TokenViTEncoder
from OrganGuidanceLib.validation import InputError


@dataclass
class ImageEncoding:
    """Prompt-independent part of U-SAM's forward pass; decode it with any number of prompts.

    embedding: B x 256 x S/16 x S/16 (ViT output); skips: f0..f3, B x 32 x S x S, B x 64 x S/2 x S/2,
    B x 128 x S/4 x S/4, B x 256 x S/8 x S/8.
    """

    embedding: Tensor
    skips: List[Tensor]
    # Prompt-independent part of the decoder's up path (USAMMaskDecoder.skip_terms), computed once
    # per image outside training so that a click re-runs less; None: computed in the decoder's way.
    skip_terms: Optional[List[Tensor]] = None

    @property
    def batch_size(self) -> int:
        return int(self.embedding.shape[0])


class USAM(nn.Module):
    """CNN encoder -> SAM ViT-B on CNN tokens -> two-way transformer with point prompts -> U-shaped decoder."""

    def __init__(self, config: USAMConfig = USAMConfig()) -> None:
        super().__init__()
        self.config = config
        grid = config.token_grid
        self.cnn_encoder = CNNEncoder()
        self.image_encoder = TokenViTEncoder(config.image_size)
        self.prompt_encoder = PromptEncoder(
            embed_dim=PROMPT_EMBED_DIM,
            image_embedding_size=(grid, grid),
            input_image_size=(config.image_size, config.image_size),
            mask_in_chans=16,
        )
        # CARE paper, Experiments: the prompt encoder stays frozen (SAM's weights).
        self.prompt_encoder.requires_grad_(False)
        self.mask_decoder = USAMMaskDecoder(config.num_classes)

    def encode_image(self, images: Tensor) -> ImageEncoding:
        """Images B x 3 x S x S (windowed CT in [0, 1] on 3 channels) -> ImageEncoding."""
        size = self.config.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise InputError(f"U-SAM images: shape {tuple(images.shape)}; expected B x 3 x {size} x {size}")
        tokens, skips = self.cnn_encoder(images)  # f4 and f0..f3, paper Eq. 5
        terms = None if self.training else self.mask_decoder.skip_terms(skips)
        return ImageEncoding(embedding=self.image_encoder(tokens), skips=skips, skip_terms=terms)

    def decode(
        self,
        encoding: ImageEncoding,
        point_coords: Optional[Tensor] = None,
        point_labels: Optional[Tensor] = None,
    ) -> Tensor:
        """Logits B x num_classes x S x S for an encoding and optional points.

        point_coords B x N x 2 are SAM's (x, y) = (column, row) input pixel indices (pixel centres at
        integers, 0..S-1); point_labels B x N: 1 positive, 0 negative, -1 padding. None: no prompt.
        """
        sparse, dense = self.embed_points(encoding.batch_size, point_coords, point_labels)
        return self.mask_decoder(
            encoding.embedding, self.prompt_encoder.get_dense_pe(), sparse, dense, encoding.skips,
            None if self.training else encoding.skip_terms,
        )

    def forward(
        self, images: Tensor, point_coords: Optional[Tensor] = None, point_labels: Optional[Tensor] = None
    ) -> Tensor:
        """Images B x 3 x S x S (+ points) -> logits B x num_classes x S x S."""
        return self.decode(self.encode_image(images), point_coords, point_labels)

    def embed_points(
        self, batch: int, point_coords: Optional[Tensor], point_labels: Optional[Tensor]
    ) -> Tuple[Tensor, Tensor]:
        """SAM prompt encoding (paper Eq. 1): sparse B x P x 256 and dense B x 256 x S/16 x S/16."""
        if point_coords is None and point_labels is None:
            sparse, dense = self.prompt_encoder(points=None, boxes=None, masks=None)  # batch 1
            return sparse.expand(batch, -1, -1), dense.expand(batch, -1, -1, -1)
        self._check_points(batch, point_coords, point_labels)
        device = self.prompt_encoder.no_mask_embed.weight.device
        points = (point_coords.to(device=device, dtype=torch.float32), point_labels.to(device=device))
        return self.prompt_encoder(points=points, boxes=None, masks=None)

    def _check_points(self, batch: int, point_coords: Optional[Tensor], point_labels: Optional[Tensor]) -> None:
        if point_coords is None or point_labels is None:
            raise InputError("U-SAM points: point_coords and point_labels must be given together")
        if point_coords.ndim != 3 or point_coords.shape[0] != batch or point_coords.shape[2] != 2:
            raise InputError(f"U-SAM point_coords: shape {tuple(point_coords.shape)}; expected {batch} x N x 2")
        if tuple(point_labels.shape) != tuple(point_coords.shape[:2]):
            raise InputError(
                f"U-SAM point_labels: shape {tuple(point_labels.shape)}; expected {tuple(point_coords.shape[:2])}"
            )
        allowed = point_labels.new_tensor([-1, 0, 1])
        if point_labels.is_floating_point() or not bool(torch.isin(point_labels, allowed).all()):
            raise InputError("U-SAM point_labels: must be integers 1 (positive), 0 (negative) or -1 (padding)")
        real = point_coords[point_labels != -1]
        size = self.config.image_size
        if real.numel() and (not bool(torch.isfinite(real).all()) or real.min() < -0.5 or real.max() > size - 0.5):
            raise InputError(
                f"U-SAM point_coords: points outside the {size} x {size} input (x, y in -0.5..{size - 0.5}): "
                f"range {float(real.min()):.1f}..{float(real.max()):.1f}"
            )
