"""What a 2D training run is asked to do, whatever the method (the method's own settings live in its task)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional

from CRCTraining.engine2d.schedules import SCHEDULES
from OrganGuidanceLib.validation import InputError

AMP_MODES = ("auto", "on", "off")


@dataclass
class EngineSettings:
    output: Path
    iterations: Optional[int] = None  # None: ``epochs`` epochs
    epochs: int = 100
    batch_size: int = 24  # the global batch: all processes together
    seed: int = 0
    checkpoint_every: int = 500  # iterations; also at every epoch end when validating
    schedule: str = "poly"  # schedules.SCHEDULES
    poly_power: float = 0.9
    cycle_epochs: int = 20  # cosine_restarts: the first cycle (HCF: 20 epochs)
    cycle_mult: int = 1
    min_lr_factor: float = 0.0
    amp: str = "auto"  # auto: float16 autocast + GradScaler on CUDA, off on CPU
    patience: Optional[int] = None  # early stopping: epochs without a better validation score (HCF: 30)
    device: str = "auto"
    threads: Optional[int] = None  # per process; None: its share of the cores
    workers: int = 0  # DataLoader worker processes per process
    shuffle: bool = True

    def plain(self) -> Dict[str, object]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}

    def check(self, name: str) -> None:
        for field_name in ("batch_size", "checkpoint_every", "epochs", "cycle_epochs", "cycle_mult"):
            if getattr(self, field_name) < 1:
                raise InputError(f"{name} training: {field_name} must be at least 1, got {getattr(self, field_name)}")
        if self.iterations is not None and self.iterations < 1:
            raise InputError(f"{name} training: iterations must be at least 1, got {self.iterations}")
        if self.schedule not in SCHEDULES:
            raise InputError(f"{name} training: schedule {self.schedule!r} is not one of {list(SCHEDULES)}")
        if self.amp not in AMP_MODES:
            raise InputError(f"{name} training: amp {self.amp!r} is not one of {list(AMP_MODES)}")
        if self.patience is not None and self.patience < 1:
            raise InputError(f"{name} training: patience must be at least 1 epoch, got {self.patience}")
        if self.workers < 0:
            raise InputError(f"{name} training: workers must be >= 0, got {self.workers}")


# Engine settings a run must keep to be continued (the batches and the schedule depend on them).
RESUME_KEYS = ("iterations", "epochs", "batch_size", "seed", "schedule", "poly_power", "cycle_epochs", "cycle_mult",
               "min_lr_factor", "patience", "shuffle")
