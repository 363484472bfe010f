"""A small 2D task for the engine's DDP tests, runnable as a script under ``torchrun``.

Its loss is a mean over samples and its network has no batch statistics (GroupNorm), so a DDP step on
N processes must equal one process's step on the concatenated batch; the HCF and U-SAM networks use
BatchNorm or a batch-wide Dice, which makes the two differ by design (see engine.py).

    torchrun --standalone --nproc_per_node 2 Testing/engine_toy.py OUTPUT --iterations 6 --batch-size 4
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from CRCTraining.engine2d import EngineSettings, EngineTask, train

SIZE = 16


class ToyImages(torch.utils.data.Dataset):
    """Bright squares (class 1) and bright bars (class 0) on noise; augmented by the key's sample seed."""

    def __init__(self, count: int = 32) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        rng = np.random.default_rng([index, 5])
        image = rng.normal(0.0, 0.2, (1, SIZE, SIZE)).astype(np.float32)
        label = index % 2
        r, c = rng.integers(2, SIZE - 8, size=2)
        if label:
            image[0, r:r + 6, c:c + 6] += 1.0
        else:
            image[0, r:r + 2, 2:SIZE - 2] += 1.0
        if seed is not None and np.random.default_rng(seed).random() < 0.5:
            image = image[:, :, ::-1].copy()  # horizontal flip: a per-sample augmentation
        return {"image": torch.from_numpy(image), "label": torch.tensor(label)}


class ToyTask(EngineTask):
    name = "toy"
    final_name = "toy_final.pt"
    loss_columns = ("loss", "accuracy")

    def __init__(self, validation_scores=None) -> None:
        self._dataset = ToyImages()
        self.validation_scores = list(validation_scores or [])  # given: validate returns these in turn

    def dataset(self):
        return self._dataset

    def build_model(self) -> nn.Module:
        # no bias before the GroupNorm: its gradient is zero up to rounding, which Adam would amplify
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.GroupNorm(2, 8), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(8, 2))

    def build_optimizer(self, model):
        return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)

    def loss(self, model, batch, device):
        logits = model(batch["image"].to(device))
        target = batch["label"].to(device)
        loss = nn.functional.cross_entropy(logits, target)
        return loss, (loss, (logits.argmax(1) == target).float().mean())

    def validate(self, model, device):
        if not self.validation_scores:
            return None
        return {"score": float(self.validation_scores.pop(0))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("output", type=Path)
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--stop-after", type=int)
    parser.add_argument("--checkpoint-every", type=int, default=2)
    parser.add_argument("--scores", type=float, nargs="*", help="validation scores, one per epoch (rank 0 validates)")
    parser.add_argument("--patience", type=int)
    args = parser.parse_args(argv)
    settings = EngineSettings(output=args.output, iterations=args.iterations, batch_size=args.batch_size,
                              checkpoint_every=args.checkpoint_every, schedule="cosine_restarts", cycle_epochs=1,
                              device="cpu", threads=1, patience=args.patience)
    result = train(ToyTask(args.scores), settings, stop_after=args.stop_after, progress=False)
    early = " (stopped early)" if result.stopped_early else ""
    print(f"world {result.world_size}: {result.iterations} iterations{early} -> {result.final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
