"""Prediction with a trained fold through nnU-Net's own predictor (sliding window, Gaussian weighting).

Used by the training recipe to evaluate a model on prepared cases; the
CRCSegmentation module has its own, OOI-restricted inference engine.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

import torch

from CRCTraining.nnunet.env import register_trainers


def predict_folder(model_folder: Path, input_folder: Path, output_folder: Path, folds: Sequence[str] = ("0",),
                   checkpoint: str = "checkpoint_final.pth", device: torch.device = torch.device("cpu"),
                   mirroring: bool = True, step_size: float = 0.5, processes: int = 1) -> List[Path]:
    """Predict every case of ``input_folder`` (nnU-Net naming, all channels) into ``output_folder``."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    register_trainers()  # the predictor finds our trainer classes by name
    folds = tuple(int(f) if str(f).isdigit() else str(f) for f in folds)
    predictor = nnUNetPredictor(tile_step_size=step_size, use_gaussian=True, use_mirroring=mirroring,
                                perform_everything_on_device=device.type == "cuda", device=device,
                                allow_tqdm=True)
    predictor.initialize_from_trained_model_folder(str(model_folder), folds, checkpoint)
    Path(output_folder).mkdir(parents=True, exist_ok=True)
    predictor.predict_from_files(str(input_folder), str(output_folder), save_probabilities=False, overwrite=True,
                                 num_processes_preprocessing=processes, num_processes_segmentation_export=processes)
    return sorted(p for p in Path(output_folder).iterdir() if p.name.endswith(".nii.gz"))
