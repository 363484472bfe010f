"""``train(task, settings)``: the loop every 2D method runs, on one process or under ``torchrun``.

Launch: ``crcseg usam-train ...`` on one device, ``torchrun --nproc_per_node N -m CRCTraining.cli usam-train ...``
on N (one GPU each with NCCL; gloo processes on CPU). ``batch_size`` is the global batch: each process
takes its ``1/N`` (``batches.EpochBatches``) and DDP averages the gradients, so a step is the step one
process would take on the whole batch (for a loss that is a mean over samples and no batch statistics).

Files (rank 0 writes them all): ``checkpoint_latest.pt`` (+ ``.json``, the settings, read before the
large file) every ``checkpoint_every`` iterations and at each validated epoch's end, on Ctrl-C and at
``stop_after``; ``checkpoint_best.pt`` while validating; the task's final file, ``training_log.csv`` and
``training_curve.png`` at the end. A rerun continues from the latest checkpoint with the batches and
learning rates an uninterrupted run has (both are functions of the iteration number; the per-step
torch seed too), and a finished run is left alone. The process count may change between runs.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from CRCTraining.engine2d.batches import EpochBatches
from CRCTraining.engine2d.curves import write_curve, write_log
from CRCTraining.engine2d.distributed import DistributedContext, distributed_context
from CRCTraining.engine2d.schedules import learning_rate_factor
from CRCTraining.engine2d.settings import RESUME_KEYS, EngineSettings
from CRCTraining.engine2d.task import EngineTask
from OrganGuidanceLib.atomic import write_text_atomic
from OrganGuidanceLib.json_files import json_field, read_json
from OrganGuidanceLib.validation import InputError

LATEST = "checkpoint_latest.pt"
BEST = "checkpoint_best.pt"
CURVE = "training_curve.png"
LOG = "training_log.csv"


@dataclass
class EngineResult:
    final: Path  # the final file, or the latest checkpoint of a run stopped on purpose
    iterations: int
    history: np.ndarray  # iterations x len(columns)
    columns: Tuple[str, ...]  # "iteration", the task's loss columns, "lr" (the first parameter group's)
    validation: List[Dict[str, float]] = field(default_factory=list)  # per epoch: epoch, iteration, metrics
    skipped: bool = False  # the run had finished before
    resumed_from: int = 0
    stopped_early: bool = False
    best_score: Optional[float] = None
    world_size: int = 1
    warnings: List[str] = field(default_factory=list)


@dataclass
class _Progress:
    """What a checkpoint keeps besides the weights and the optimiser."""

    iteration: int = 0
    history: List[List[float]] = field(default_factory=list)
    validation: List[Dict[str, float]] = field(default_factory=list)
    best_score: Optional[float] = None
    best_iteration: int = -1
    bad_epochs: int = 0
    stopped_early: bool = False


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _step_seed(seed: int, iteration: int, rank: int) -> int:
    return int(np.random.default_rng([int(seed), int(iteration), int(rank), 11]).integers(0, 2**62))


def _compare(stored: dict, current: dict, where: Path) -> None:
    """``InputError`` naming every setting of ``current`` (the ones a run must keep) that ``stored`` has otherwise."""
    changed = {k: (stored.get(k), current[k]) for k in sorted(current) if stored.get(k) != current[k]}
    if changed:
        listing = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise InputError(f"{where}: holds a run with other settings ({listing}); use a new output folder")


class _Run:
    """One call of ``train``: the state shared by its steps."""

    def __init__(self, task: EngineTask, settings: EngineSettings, context: DistributedContext) -> None:
        self.task, self.settings, self.context = task, settings, context
        self.output = Path(settings.output)
        self.device = context.device
        self.columns = ("iteration", *task.loss_columns, "lr")
        self.probe = EpochBatches(task.epoch_indices, settings.batch_size, settings.seed, context.rank,
                                  context.world_size, 0, 0, settings.shuffle)
        self.per_epoch = self.probe.iterations_per_epoch
        self.total = int(settings.iterations) if settings.iterations is not None else settings.epochs * self.per_epoch
        engine = {k: settings.plain()[k] for k in RESUME_KEYS}
        self.plain = {**engine, "iterations": self.total, **task.resume_settings()}
        self.amp = settings.amp == "on" or (settings.amp == "auto" and self.device.type == "cuda")
        if self.amp and self.device.type != "cuda":
            raise InputError(f"{task.name} training: amp 'on' needs a CUDA GPU (float16 autocast); use 'auto' on CPU")

    # --- checkpoints --------------------------------------------------------------------------
    def _training_record(self, progress: _Progress, finished: bool) -> dict:
        return {"iteration": progress.iteration, "settings": {**self.task.settings_record(), **self.plain},
                "finished": finished,
                "best_score": progress.best_score, "best_iteration": progress.best_iteration,
                "bad_epochs": progress.bad_epochs, "stopped_early": progress.stopped_early,
                "world_size": self.context.world_size, "warnings": list(getattr(self.task, "warnings", []))}

    def _history_tensor(self, progress: _Progress) -> torch.Tensor:
        return torch.tensor(progress.history, dtype=torch.float64).reshape(-1, len(self.columns))

    def save_latest(self, model: nn.Module, optimizer, scaler, progress: _Progress) -> None:
        if not self.context.is_main:
            return
        training = self._training_record(progress, False)
        self.task.save(self.output / LATEST, _unwrap(model), {
            "training": training, "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "history": self._history_tensor(progress), "validation": progress.validation,
        })
        # A small copy of the settings: a rerun checks them before reading the large checkpoint.
        write_text_atomic((self.output / LATEST).with_suffix(".json"), json.dumps(training, indent=2) + "\n")

    def finished_result(self, final: Path) -> EngineResult:
        _, extra = self.task.load(final, torch.device("cpu"))
        training = extra.get("training", {})
        if training.get("settings", {}).get("iterations", training.get("iteration")) != self.total:
            raise InputError(f"{final}: a finished run of {training.get('iteration')} iterations, not {self.total}; "
                             f"use a new output folder")
        history = extra.get("history", torch.zeros(0, len(self.columns))).numpy()
        return EngineResult(final, int(training.get("iteration", self.total)), history, self.columns,
                            list(extra.get("validation", [])), skipped=True,
                            stopped_early=bool(training.get("stopped_early")), best_score=training.get("best_score"),
                            world_size=self.context.world_size)

    def start(self) -> Tuple[nn.Module, torch.optim.Optimizer, List[float], dict, _Progress]:
        """Fresh (seeded) or from the latest checkpoint: model, optimiser, base rates, scaler state, progress."""
        latest = self.output / LATEST
        if not latest.exists():
            torch.manual_seed(self.settings.seed)
            model = self.task.build_model().to(self.device)
            optimizer = self.task.build_optimizer(model)
            return model, optimizer, [g["lr"] for g in optimizer.param_groups], {}, _Progress()
        summary = latest.with_suffix(".json")
        if summary.exists():
            _compare(json_field(read_json(summary), "settings", summary), self.plain, latest)
        model, extra = self.task.load(latest, self.device)
        training = extra["training"]
        _compare(training["settings"], self.plain, latest)
        optimizer = self.task.build_optimizer(model)
        base = [g["lr"] for g in optimizer.param_groups]
        optimizer.load_state_dict(extra["optimizer"])
        progress = _Progress(int(training["iteration"]), extra["history"].tolist(), list(extra.get("validation", [])),
                             training.get("best_score"), int(training.get("best_iteration", -1)),
                             int(training.get("bad_epochs", 0)), bool(training.get("stopped_early", False)))
        return model, optimizer, base, extra.get("scaler", {}), progress

    # --- validation ---------------------------------------------------------------------------
    def validate(self, model: nn.Module, progress: _Progress) -> bool:
        """Rank 0 validates after an epoch, keeps the best weights and decides on early stopping for all ranks."""
        stop = False
        if self.context.is_main:
            network = _unwrap(model)
            network.eval()
            with torch.inference_mode():
                metrics = self.task.validate(network, self.device)
            network.train()
            if metrics is not None:
                score = float(metrics[self.task.score_name])
                epoch = progress.iteration // self.per_epoch
                progress.validation.append({"epoch": float(epoch), "iteration": float(progress.iteration),
                                            **{k: float(v) for k, v in metrics.items()}})
                if progress.best_score is None or score > progress.best_score:
                    progress.best_score, progress.best_iteration, progress.bad_epochs = score, progress.iteration, 0
                    self.task.save(self.output / BEST, network, {"training": self._training_record(progress, False)})
                else:
                    progress.bad_epochs += 1
                patience = self.settings.patience
                stop = patience is not None and progress.bad_epochs >= patience
        stop = self.context.broadcast_flag(stop)
        progress.stopped_early = stop
        return stop

    # --- the loop -----------------------------------------------------------------------------
    def run(self, stop_after: Optional[int], show_progress: bool) -> EngineResult:
        model, optimizer, base_rates, scaler_state, progress = self.start()
        start = progress.iteration
        if self.context.distributed:
            if self.device.type == "cuda":  # batch statistics over all GPUs, as one process would have them
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.task.find_unused_parameters)
        scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        if scaler_state:
            scaler.load_state_dict(scaler_state)
        stop = self.total if stop_after is None else min(self.total, int(stop_after))
        validating = self.task.has_validation()
        if progress.stopped_early:
            stop = start
        batches = EpochBatches(self.task.epoch_indices, self.settings.batch_size, self.settings.seed,
                               self.context.rank, self.context.world_size, start, stop, self.settings.shuffle)
        loader = torch.utils.data.DataLoader(
            self.task.dataset(), batch_sampler=batches, collate_fn=self.task.collate,
            num_workers=self.settings.workers, pin_memory=self.device.type == "cuda")
        bar = tqdm(loader, total=stop - start, desc=f"{self.task.name} training {start}->{stop}/{self.total}",
                   unit="it", disable=not (show_progress and self.context.is_main))
        saved = start
        model.train()
        try:
            for batch in bar:
                iteration = progress.iteration
                factor = learning_rate_factor(self.settings.schedule, iteration, self.total, self.per_epoch,
                                              self.settings.poly_power, self.settings.cycle_epochs,
                                              self.settings.cycle_mult, self.settings.min_lr_factor)
                for group, base in zip(optimizer.param_groups, base_rates):
                    group["lr"] = base * factor
                torch.manual_seed(_step_seed(self.settings.seed, iteration, self.context.rank))
                with torch.autocast("cuda", dtype=torch.float16, enabled=self.amp):
                    loss, values = self.task.loss(model, batch, self.device)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                row = self.context.mean(torch.stack([torch.as_tensor(v, dtype=torch.float64).detach().cpu()
                                                     for v in values]))
                row = [float(v) for v in row]
                if not math.isfinite(row[0]):
                    raise FloatingPointError(f"{self.task.name} training: loss became {row[0]} at iteration {iteration}")
                progress.history.append([iteration, *row, optimizer.param_groups[0]["lr"]])
                progress.iteration = iteration + 1
                bar.set_postfix({name: f"{value:.4f}" for name, value in zip(self.task.loss_columns, row)})
                early = False
                if validating and progress.iteration % self.per_epoch == 0:
                    early = self.validate(model, progress)
                    if progress.iteration < stop:
                        self.save_latest(model, optimizer, scaler, progress)
                        saved = progress.iteration
                elif progress.iteration % self.settings.checkpoint_every == 0 and progress.iteration < stop:
                    self.save_latest(model, optimizer, scaler, progress)
                    saved = progress.iteration
                if early:
                    break
        except KeyboardInterrupt:  # Ctrl-C: keep what was done, then stop
            if progress.iteration > saved:
                self.save_latest(model, optimizer, scaler, progress)
            raise
        finally:
            bar.close()
        return self.finish(model, optimizer, scaler, progress, start, saved)

    def finish(self, model, optimizer, scaler, progress: _Progress, start: int, saved: int) -> EngineResult:
        history = np.asarray(progress.history, dtype=float).reshape(-1, len(self.columns))
        warnings = list(getattr(self.task, "warnings", []))
        result = EngineResult(self.output / LATEST, progress.iteration, history, self.columns, progress.validation,
                              resumed_from=start, stopped_early=progress.stopped_early,
                              best_score=progress.best_score, world_size=self.context.world_size, warnings=warnings)
        if progress.iteration < self.total and not progress.stopped_early:  # stopped on purpose (stop_after)
            if progress.iteration > saved:
                self.save_latest(model, optimizer, scaler, progress)
            self.context.barrier()
            return result
        final = self.output / self.task.final_name
        if self.context.is_main:
            network = _unwrap(model)
            if (self.output / BEST).exists():  # early stopping's point: the best validated weights
                best, _ = self.task.load(self.output / BEST, self.device)
                network = best
            self.task.save(final, network, {"training": self._training_record(progress, True),
                                            "history": torch.tensor(history), "validation": progress.validation})
            title = f"{self.task.name} training" + (f" on {self.context.world_size} processes"
                                                    if self.context.distributed else "")
            write_curve(history, self.columns, self.output / CURVE, title, progress.validation, self.task.score_name)
            write_log(history, self.columns, self.output / LOG)
            for name in (LATEST, Path(LATEST).with_suffix(".json").name, BEST):  # the final file marks the run done
                (self.output / name).unlink(missing_ok=True)
        self.context.barrier()
        result.final = final
        return result


def train(task: EngineTask, settings: EngineSettings, stop_after: Optional[int] = None, progress: bool = True,
          context: Optional[DistributedContext] = None) -> EngineResult:
    """Train ``task`` (or resume it, or skip a finished run); ``stop_after``: stop there as if interrupted.

    ``context``: None joins ``torchrun``'s process group when launched by it (and leaves it at the end).
    """
    settings.check(task.name)
    own = context is None
    context = context or distributed_context(settings.device, settings.threads)
    try:
        run = _Run(task, settings, context)
        final = run.output / task.final_name
        if final.exists():
            return run.finished_result(final)
        return run.run(stop_after, progress)
    finally:
        if own:
            context.close()
