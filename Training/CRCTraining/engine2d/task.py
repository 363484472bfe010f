"""What a method tells the engine: its data, network, optimiser, loss, validation and checkpoint files.

A method subclasses ``EngineTask`` and changes only what is its own (as nnU-Net's trainer variants do).
The default checkpoint is ``{"state_dict": weights, **extra}``; U-SAM keeps its own checkpoint format
by overriding ``save`` and ``load``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from OrganGuidanceLib.atomic import atomic_path
from OrganGuidanceLib.validation import InputError


class EngineTask(ABC):
    name: str = "model"  # for messages, the progress bar and the curve's title
    final_name: str = "model_final.pt"  # the finished run's checkpoint
    loss_columns: Tuple[str, ...] = ("loss",)  # what ``loss`` returns, in this order; the first is optimised
    score_name: str = "score"  # what ``validate`` returns: higher is better
    find_unused_parameters: bool = False  # DDP: set when some parameters get no gradient in a step

    @abstractmethod
    def dataset(self) -> torch.utils.data.Dataset:
        """Items by key ``(index, sample seed)`` (``batches.Key``)."""

    def epoch_indices(self, epoch: int) -> Sequence[int]:
        """The dataset indices of ``epoch`` (default: all); the same number every epoch."""
        return range(len(self.dataset()))

    def collate(self, samples):
        return torch.utils.data.default_collate(samples)

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A freshly initialised network (the engine seeds torch first)."""

    @abstractmethod
    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """Its parameter groups' ``lr`` are the base rates the schedule scales."""

    @abstractmethod
    def loss(self, model: nn.Module, batch, device: torch.device) -> Tuple[Tensor, Sequence[Tensor]]:
        """(the loss to optimise, the values of ``loss_columns``) on this process's part of a batch.

        ``model`` may be wrapped in ``DistributedDataParallel``: call it, do not reach into it. A mean over
        the batch's samples makes a DDP step the same as one process on the whole batch.
        """

    def validate(self, model: nn.Module, device: torch.device) -> Optional[Dict[str, float]]:
        """Metrics on the validation data, with ``score_name`` among them; None: the task has none."""
        return None

    def has_validation(self) -> bool:
        """Whether ``validate`` runs after each epoch (then the engine also checkpoints at every epoch's end)."""
        return type(self).validate is not EngineTask.validate

    def resume_settings(self) -> Dict[str, object]:
        """The method's settings a run must keep to be continued."""
        return {}

    def settings_record(self) -> Dict[str, object]:
        """Every setting of the run, kept in its checkpoints for the record (plain values only)."""
        return {}

    def save(self, path: Path, model: nn.Module, extra: Dict[str, object]) -> None:
        state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
        with atomic_path(Path(path), suffix=".pt") as temporary:
            torch.save({"state_dict": state, **extra}, str(temporary))

    def load(self, path: Path, device: torch.device) -> Tuple[nn.Module, Dict[str, object]]:
        try:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
            model = self.build_model()
            model.load_state_dict(data.pop("state_dict"))
        except Exception as error:  # noqa: BLE001 - any failure means the file cannot continue this run
            raise InputError(f"{path}: not a {self.name} training checkpoint ({type(error).__name__}: "
                             f"{str(error).splitlines()[0] if str(error) else ''}); delete it to start again") from error
        return model.to(device), data
