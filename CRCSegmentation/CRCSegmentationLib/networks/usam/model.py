"""U-SAM: point-prompted, U-shaped SAM for 2D segmentation (CARE paper, Fig. 2)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from segment_anything.modeling import PromptEncoder
from torch import Tensor, nn

from CRCSegmentationLib.networks.usam.cnn_encoder import CNNEncoder
from CRCSegmentationLib.networks.usam.config import USAMConfig
from CRCSegmentationLib.networks.usam.mask_decoder import USAMMaskDecoder
from CRCSegmentationLib.networks.usam.prompt_maps import PromptMapEncoder, draw_prompt_maps
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

    def select(self, rows: Tensor) -> "ImageEncoding":
        """The encoding of some samples of the batch (``rows``: indices), e.g. to decode them without prompts."""
        terms = None if self.skip_terms is None else [term[rows] for term in self.skip_terms]
        return ImageEncoding(self.embedding[rows], [skip[rows] for skip in self.skips], terms)


class USAM(nn.Module):
    """CNN encoder -> SAM ViT-B on CNN tokens -> two-way transformer with point prompts -> U-shaped decoder."""

    def __init__(self, config: USAMConfig = USAMConfig()) -> None:
        super().__init__()
        self.config = config
        grid = config.token_grid
        self.cnn_encoder = CNNEncoder(channels=config.cnn_channels)
        self.image_encoder = TokenViTEncoder(config)
        self.prompt_encoder = PromptEncoder(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(config.image_size, config.image_size),
            mask_in_chans=16,
        )
        # CARE paper, Experiments: the prompt encoder stays frozen (SAM's weights).
        self.prompt_encoder.requires_grad_(False)
        self.mask_decoder = USAMMaskDecoder(
            config.num_classes, transformer_dim=config.prompt_embed_dim, skip_channels=config.cnn_channels[:4]
        )
        if config.prompt_maps:  # not in the paper: see networks.usam.prompt_maps
            d = config.prompt_embed_dim
            self.prompt_map_encoder = PromptMapEncoder((d, d // 2, d // 4, d // 8))

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
        boxes: Optional[Tensor] = None,
    ) -> Tensor:
        """Logits B x num_classes x S x S for an encoding and optional points and boxes.

        point_coords B x N x 2 are SAM's (x, y) = (column, row) input pixel indices (pixel centres at
        integers, 0..S-1); point_labels B x N: 1 positive, 0 negative, -1 padding. boxes B x 4:
        (x0, y0, x1, y1) input pixels (SAM's layout), a row of NaN = no box for that sample.
        None everywhere: no prompt.
        """
        sparse, dense = self.embed_prompts(encoding.batch_size, point_coords, point_labels, boxes)
        features = None
        if self.config.prompt_maps:
            maps = draw_prompt_maps(self.config.image_size, encoding.batch_size, point_coords, point_labels, boxes,
                                    sparse.device)
            features = self.prompt_map_encoder(maps)
        return self.mask_decoder(
            encoding.embedding, self.prompt_encoder.get_dense_pe(), sparse, dense, encoding.skips,
            None if self.training else encoding.skip_terms, features,
        )

    def forward(
        self,
        images: Tensor,
        point_coords: Optional[Tensor] = None,
        point_labels: Optional[Tensor] = None,
        boxes: Optional[Tensor] = None,
    ) -> Tensor:
        """Images B x 3 x S x S (+ points, boxes) -> logits B x num_classes x S x S (see ``decode_mixed``)."""
        return self.decode_mixed(self.encode_image(images), point_coords, point_labels, boxes)

    def decode_mixed(
        self,
        encoding: ImageEncoding,
        point_coords: Optional[Tensor] = None,
        point_labels: Optional[Tensor] = None,
        boxes: Optional[Tensor] = None,
    ) -> Tensor:
        """``decode`` for a batch in which some samples have no prompt at all (only padding, a NaN box).

        SAM's prompt encoder takes one layout per batch: such a sample would get padding tokens that it never
        gets when a user runs it without a prompt, so it is decoded apart, as at inference (no tokens).
        """
        prompted = _prompted_rows(encoding.batch_size, point_labels, boxes)
        if not bool(prompted.any()):
            return self.decode(encoding)
        if bool(prompted.all()):
            return self.decode(encoding, *_used_prompts(point_coords, point_labels, boxes))
        device = encoding.embedding.device
        rows, others = torch.nonzero(prompted).flatten(), torch.nonzero(~prompted).flatten()
        picked = [None if t is None else t[rows.to(t.device)] for t in (point_coords, point_labels, boxes)]
        with_prompt = self.decode(encoding.select(rows.to(device)), *_used_prompts(*picked))
        without = self.decode(encoding.select(others.to(device)))
        logits = with_prompt.new_empty((encoding.batch_size, *with_prompt.shape[1:]))
        logits[rows.to(device)] = with_prompt
        logits[others.to(device)] = without
        return logits

    def embed_points(
        self, batch: int, point_coords: Optional[Tensor], point_labels: Optional[Tensor]
    ) -> Tuple[Tensor, Tensor]:
        """SAM prompt encoding of points only (paper Eq. 1): sparse B x P x D and dense B x D x S/16 x S/16."""
        return self.embed_prompts(batch, point_coords, point_labels, None)

    def embed_prompts(
        self,
        batch: int,
        point_coords: Optional[Tensor],
        point_labels: Optional[Tensor],
        boxes: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Tensor]:
        """SAM prompt encoding of points and boxes: sparse B x P x D and dense B x D x S/16 x S/16.

        Each sample gets SAM's tokens for its own prompt (points + one padding token without a box,
        points + two box corners with one); a batch mixing samples with and without a box pads the
        latter with SAM's not-a-point token, as SAM pads a batch of point prompts.
        """
        has_points = point_coords is not None or point_labels is not None
        if has_points:
            self._check_points(batch, point_coords, point_labels)
        device = self.prompt_encoder.no_mask_embed.weight.device
        present = None
        if boxes is not None:
            present = self._check_boxes(batch, boxes)
            boxes = boxes.to(device=device, dtype=torch.float32)
            if not bool(present.any()):
                boxes = None
        points = None
        if has_points:
            points = (point_coords.to(device=device, dtype=torch.float32), point_labels.to(device=device))
        if points is None and boxes is None:
            sparse, dense = self.prompt_encoder(points=None, boxes=None, masks=None)  # batch 1
            return sparse.expand(batch, -1, -1), dense.expand(batch, -1, -1, -1)
        if boxes is None or bool(present.all()):
            return self.prompt_encoder(points=points, boxes=boxes, masks=None)
        # Mixed batch: SAM's encoder takes one layout per batch, so embed the boxes where given and
        # fill the other rows' two box slots with not-a-point tokens.
        encoder = self.prompt_encoder
        present = present.to(device)
        corners = encoder._embed_boxes(torch.where(present[:, None], boxes, torch.zeros_like(boxes)))
        pad = encoder.not_a_point_embed.weight.reshape(1, 1, -1).expand_as(corners)
        parts = [torch.where(present[:, None, None], corners, pad)]
        if points is not None:
            parts.insert(0, encoder._embed_points(points[0], points[1], pad=False))
        dense = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, *encoder.image_embedding_size)
        return torch.cat(parts, dim=1), dense

    def _check_boxes(self, batch: int, boxes: Tensor) -> Tensor:
        """Validate B x 4 boxes; returns the B booleans 'this sample has a box'."""
        if not isinstance(boxes, Tensor) or boxes.ndim != 2 or tuple(boxes.shape) != (batch, 4):
            shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
            raise InputError(f"U-SAM boxes: shape {shape}; expected {batch} x 4 (x0, y0, x1, y1)")
        if not boxes.is_floating_point():
            raise InputError(f"U-SAM boxes: type {boxes.dtype}; expected floats (NaN rows = no box)")
        nan = torch.isnan(boxes)
        present = ~nan.any(dim=1)
        if bool((nan.any(dim=1) & ~nan.all(dim=1)).any()):
            raise InputError("U-SAM boxes: a row is partly NaN; a row is either 4 numbers or all NaN (no box)")
        real = boxes[present]
        if not real.numel():
            return present
        size = self.config.image_size
        if not bool(torch.isfinite(real).all()) or real.min() < -0.5 or real.max() > size - 0.5:
            raise InputError(
                f"U-SAM boxes: corners outside the {size} x {size} input (x, y in -0.5..{size - 0.5}): "
                f"range {float(real.min()):.1f}..{float(real.max()):.1f}"
            )
        if bool((real[:, 2] < real[:, 0]).any() or (real[:, 3] < real[:, 1]).any()):
            raise InputError("U-SAM boxes: need x0 <= x1 and y0 <= y1 (top-left corner first, SAM's layout)")
        return present

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


def _prompted_rows(batch: int, point_labels: Optional[Tensor], boxes: Optional[Tensor]) -> Tensor:
    """B booleans: the samples with a point (label 0 or 1) or a box."""
    prompted = torch.zeros(batch, dtype=torch.bool)
    if point_labels is not None and point_labels.numel():
        prompted |= (point_labels >= 0).any(dim=1).cpu()
    if boxes is not None:
        prompted |= ~torch.isnan(boxes).any(dim=1).cpu()
    return prompted


def _used_prompts(point_coords: Optional[Tensor], point_labels: Optional[Tensor],
                  boxes: Optional[Tensor]) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Points that are all padding and boxes that are all NaN left out (None): SAM's tokens for the rest."""
    if point_labels is None or not bool((point_labels >= 0).any()):
        point_coords = point_labels = None
    if boxes is not None and bool(torch.isnan(boxes).all()):
        boxes = None
    return point_coords, point_labels, boxes
