"""Map SAM's ViT-B checkpoint (``sam_vit_b_01ec64.pth``) onto U-SAM, accounting for every key."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from CRCSegmentationLib.networks.usam import USAM, USAMConfig, build_usam
from CRCSegmentationLib.networks.usam.config import VIT_DEPTH, VIT_EMBED_DIM, VIT_GLOBAL_ATTN_INDEXES
from OrganGuidanceLib.validation import InputError

logger = logging.getLogger(__name__)

SAM_VIT_B_FILENAME = "sam_vit_b_01ec64.pth"
SAM_VIT_B_URL = "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"
# SAM variants told apart by their image encoder width and depth (segment_anything.build_sam).
SAM_VARIANTS = {768: ("ViT-B", 12), 1024: ("ViT-L", 24), 1280: ("ViT-H", 32)}

# SAM keys U-SAM cannot use, with the reason (U-SAM's build_sam.load_from skips the same decoder keys).
SKIPPED_SAM_PREFIXES = {
    "image_encoder.patch_embed.": "U-SAM feeds CNN tokens to the ViT; no patch embedding",
    "mask_decoder.mask_tokens.": "SAM's 4 multimask tokens; U-SAM has one class token per class",
    "mask_decoder.iou_token.": "U-SAM has no IoU prediction",
    "mask_decoder.iou_prediction_head.": "U-SAM has no IoU prediction",
    "mask_decoder.output_upscaling.": "replaced by U-SAM's up path with skip connections",
    "mask_decoder.output_hypernetworks_mlps.": "replaced by U-SAM's per-class MLPs",
}
# Our parts that SAM has no weights for (initialised randomly).
USAM_ONLY_PREFIXES = (
    "cnn_encoder.",
    "mask_decoder.class_tokens.",
    "mask_decoder.class_mlps.",
    "mask_decoder.up1.",
    "mask_decoder.up2.",
    "mask_decoder.up3.",
    "mask_decoder.up4.",
)
_REL_POS = re.compile(r"^image_encoder\.blocks\.(\d+)\.attn\.rel_pos_[hw]$")


@dataclass
class LoadReport:
    """Where every key of a SAM file and of the U-SAM model went."""

    source: str = ""
    loaded: List[str] = field(default_factory=list)  # copied unchanged
    resized: Dict[str, str] = field(default_factory=dict)  # key -> "old shape -> new shape, how"
    skipped: Dict[str, str] = field(default_factory=dict)  # SAM key -> reason it is not used
    missing: List[str] = field(default_factory=list)  # U-SAM keys left at their random initialisation
    warnings: List[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.source or 'no SAM checkpoint'}: {len(self.loaded)} loaded, {len(self.resized)} resized, "
            f"{len(self.skipped)} skipped, {len(self.missing)} randomly initialised"
            + "".join(f"; warning: {w}" for w in self.warnings)
        )


def read_sam_state_dict(path: Path) -> Dict[str, Tensor]:
    """Read a SAM checkpoint (a plain state dict) with clear errors for a missing, corrupt or wrong file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"SAM checkpoint {path}: file not found. Download SAM ViT-B from {SAM_VIT_B_URL} "
            f"({SAM_VIT_B_FILENAME}, 375 MB; '01ec64' in the name is the start of its SHA-256)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, pickle of arbitrary objects, not a torch file...
        raise InputError(
            f"SAM checkpoint {path}: cannot be read by torch.load ({type(error).__name__}: {str(error)[:200]}); "
            f"the file is truncated or corrupt, download it again from {SAM_VIT_B_URL}"
        ) from error
    if isinstance(state, dict) and state.get("format") == "crcseg-usam":
        raise InputError(f"SAM checkpoint {path}: is a U-SAM checkpoint; load it with load_usam_checkpoint")
    if not isinstance(state, dict):
        raise InputError(f"SAM checkpoint {path}: holds a {type(state).__name__}, not a SAM state dict")
    check_vit_b(state, str(path))
    return state


def check_vit_b(state: Mapping[str, Tensor], source: str) -> None:
    """Raise InputError unless the SAM state dict has a ViT-B image encoder (width 768, 12 blocks)."""
    if not isinstance(state.get("image_encoder.pos_embed"), Tensor):
        raise InputError(
            f"SAM checkpoint {source}: is not a SAM state dict (no 'image_encoder.pos_embed' tensor); "
            f"expected {SAM_VIT_B_FILENAME}"
        )
    width = int(state["image_encoder.pos_embed"].shape[-1])
    blocks = re.compile(r"^image_encoder\.blocks\.(\d+)\.")
    depth = 1 + max((int(m.group(1)) for m in map(blocks.match, state) if m), default=-1)
    if (width, depth) != (VIT_EMBED_DIM, VIT_DEPTH):
        name = SAM_VARIANTS.get(width, ("an unknown SAM variant", 0))[0]
        raise InputError(
            f"SAM checkpoint {source}: image encoder has embedding width {width} and {depth} blocks, which looks like "
            f"{name}; U-SAM needs SAM ViT-B (width {VIT_EMBED_DIM}, {VIT_DEPTH} blocks): {SAM_VIT_B_URL}"
        )


def check_vit_b_config(config: USAMConfig) -> None:
    """Raise InputError unless the U-SAM config has SAM ViT-B's sizes (the only ones SAM's weights fit)."""
    if not config.is_vit_b:
        differ = {name: value for name, value in config.sizes().items() if value != USAMConfig().sizes()[name]}
        raise InputError(
            f"SAM weights: this U-SAM config is not ViT-B ({differ}); SAM's published weights ({SAM_VIT_B_FILENAME}) "
            f"map into ViT-B only: use USAMConfig.preset('vit-b') (or train this size from random weights)"
        )


def _skip_reason(key: str) -> str:
    for prefix, reason in SKIPPED_SAM_PREFIXES.items():
        if key.startswith(prefix):
            return reason
    return ""


def resize_pos_embed(pos_embed: Tensor, grid: int) -> Tensor:
    """SAM's absolute position embedding 1 x 64 x 64 x C -> 1 x grid x grid x C, bicubic on the grid."""
    grid_first = pos_embed.permute(0, 3, 1, 2).float()  # 1 x C x 64 x 64
    resized = F.interpolate(grid_first, size=(grid, grid), mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1).to(pos_embed.dtype)


def resize_rel_pos(table: Tensor, length: int) -> Tensor:
    """Relative-position table L x C -> length x C, linear along L (as SAMed / U-SAM's load_from)."""
    resized = F.interpolate(table.t().unsqueeze(0).float(), size=length, mode="linear", align_corners=False)
    return resized[0].t().to(table.dtype)


def map_sam_weights(model: USAM, state: Mapping[str, Tensor], source: str = "") -> LoadReport:
    """Copy SAM ViT-B weights into a U-SAM model (in place) and report where every key went.

    Loaded: ViT blocks and neck, prompt encoder, the mask decoder's two-way transformer.
    Resized: pos_embed (64 x 64 -> S/16 x S/16) and the global-attention blocks' rel_pos tables
    (127 -> 2 S/16 - 1); windowed blocks keep their 27-long tables (window 14).
    """
    report = LoadReport(source=source)
    check_vit_b_config(model.config)
    check_vit_b(state, source or "state dict")
    ours = model.state_dict()
    grid = model.config.token_grid
    updates: Dict[str, Tensor] = {}
    for key, value in state.items():
        reason = _skip_reason(key)
        if reason:
            report.skipped[key] = reason
            continue
        if key not in ours:
            report.skipped[key] = "not part of SAM ViT-B; U-SAM has no such parameter"
            report.warnings.append(f"unexpected key in SAM checkpoint: {key}")
            continue
        target = ours[key]
        match = _REL_POS.match(key)
        if key == "image_encoder.pos_embed" and value.shape != target.shape:
            updates[key] = resize_pos_embed(value, grid)
            report.resized[key] = f"{tuple(value.shape)} -> {tuple(target.shape)}, bicubic"
        elif match and int(match.group(1)) in VIT_GLOBAL_ATTN_INDEXES and value.shape != target.shape:
            updates[key] = resize_rel_pos(value, target.shape[0])
            report.resized[key] = f"{tuple(value.shape)} -> {tuple(target.shape)}, linear"
        elif value.shape != target.shape:
            raise InputError(
                f"SAM checkpoint {source}: {key} has shape {tuple(value.shape)}, U-SAM expects {tuple(target.shape)}; "
                f"is this the original {SAM_VIT_B_URL}?"
            )
        else:
            updates[key] = value
            report.loaded.append(key)
    report.missing = [key for key in ours if key not in updates]
    unexpected = [key for key in report.missing if not key.startswith(USAM_ONLY_PREFIXES)]
    if unexpected:
        report.warnings.append(
            f"{len(unexpected)} SAM ViT-B keys absent from the checkpoint stay random, e.g. {unexpected[:3]}"
        )
    with torch.no_grad():
        for key, value in updates.items():
            ours[key].copy_(value.to(ours[key].dtype))  # state_dict tensors share storage with the model
    for warning in report.warnings:
        logger.warning("SAM weights: %s", warning)
    return report


def usam_with_sam_weights(config: USAMConfig = USAMConfig(),
                          sam_checkpoint: Optional[Path] = None) -> Tuple[USAM, LoadReport]:
    """A U-SAM network with SAM ViT-B weights from ``sam_checkpoint`` (``sam_vit_b_01ec64.pth``) mapped in.

    Without a checkpoint every weight is random, which trains much worse (the paper starts from SAM);
    the report says so.
    """
    if sam_checkpoint is not None:
        check_vit_b_config(config)  # before building a network the weights cannot fill
    model = build_usam(config)
    if sam_checkpoint is None:
        report = LoadReport(missing=list(model.state_dict()))
        report.warnings.append(
            f"no SAM checkpoint given: every weight is random; U-SAM is meant to start from SAM ViT-B ({SAM_VIT_B_URL})"
        )
        logger.warning("U-SAM: %s", report.warnings[-1])
        return model, report
    state = read_sam_state_dict(Path(sam_checkpoint))
    report = map_sam_weights(model, state, source=str(sam_checkpoint))
    logger.info("U-SAM: %s", report.summary())
    return model, report
