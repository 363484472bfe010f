"""Build a U-SAM model, with SAM ViT-B weights mapped in when a checkpoint is given."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Tuple

from .config import USAMConfig
from .model import USAM
from .sam_weights import SAM_VIT_B_URL, LoadReport, map_sam_weights, read_sam_state_dict

logger = logging.getLogger(__name__)


def build_usam(config: USAMConfig = USAMConfig(), sam_checkpoint: Optional[Path] = None) -> Tuple[USAM, LoadReport]:
    """A U-SAM model; SAM ViT-B weights from ``sam_checkpoint`` (``sam_vit_b_01ec64.pth``) or random.

    Random initialisation trains much worse (the paper starts from SAM); the report says so.
    """
    model = USAM(config)
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
