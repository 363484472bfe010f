"""The 2D training engine: DDP under ``torchrun`` (gloo, CPU) equals one process, kill + resume, schedules, batches.

``engine_toy.py`` is the task (GroupNorm, a mean loss: a DDP step must be the one-process step on the
concatenated batch). U-SAM runs under ``torchrun`` too (its own numbers: test_usam_training.py).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from CRCTraining.engine2d import EngineSettings, EpochBatches, learning_rate_factor, train
from CRCTraining.engine2d.engine import BEST, CURVE, LATEST, LOG
from CRCTraining.hcf.slices import BalanceSampler, SliceRecord
from OrganGuidanceLib.validation import InputError

sys.path.insert(0, str(Path(__file__).parent))
from engine_toy import ToyTask

TOY = Path(__file__).parent / "engine_toy.py"


def torchrun(processes: int, *arguments: str) -> list:
    """``torchrun --standalone --nproc_per_node N ...`` as a user types it (PyTorch's launcher module)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
            *arguments]


def run(command: list, timeout: float = 300) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def weights(path: Path) -> dict:
    return torch.load(str(path), map_location="cpu", weights_only=True)


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def toy_settings(output: Path, **changes) -> EngineSettings:
    base = dict(output=output, iterations=6, batch_size=4, checkpoint_every=2, schedule="cosine_restarts",
                cycle_epochs=1, device="cpu", threads=1)
    return EngineSettings(**{**base, **changes})


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    run([sys.executable, str(TOY), str(root / "one"), "--iterations", "24", "--batch-size", "8"])
    output = run(torchrun(2, str(TOY), str(root / "two"), "--iterations", "24", "--batch-size", "8"))
    return root, output


def test_two_gloo_processes_train_as_one_process_on_the_concatenated_batch(toy_runs):
    root, output = toy_runs
    one, two = weights(root / "one" / "toy_final.pt"), weights(root / "two" / "toy_final.pt")
    assert one["training"]["world_size"] == 1 and two["training"]["world_size"] == 2
    assert max_difference(one["state_dict"], two["state_dict"]) < 1e-5
    np.testing.assert_allclose(one["history"].numpy(), two["history"].numpy(), rtol=1e-5, atol=1e-6)
    # the weights moved: equal weights are not equal because nothing was trained
    fresh = ToyTask().build_model().state_dict()
    assert max_difference(fresh, one["state_dict"]) > 1e-2
    assert output.count("world 2: 24 iterations") == 2  # both ranks ran to the end
    written = sorted(p.name for p in (root / "two").iterdir())
    assert written == sorted([CURVE, LOG, "toy_final.pt"])  # rank 0 wrote the files once, nothing left behind


def test_a_killed_two_process_run_resumes_and_ends_as_an_uninterrupted_one(toy_runs, tmp_path):
    root, _ = toy_runs
    output, iterations = tmp_path / "killed", "400"
    reference = tmp_path / "reference"
    run(torchrun(2, str(TOY), str(reference), "--iterations", iterations, "--batch-size", "8",
                 "--checkpoint-every", "20"))
    launcher = subprocess.Popen(torchrun(2, str(TOY), str(output), "--iterations", iterations, "--batch-size", "8",
                                         "--checkpoint-every", "20"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    summary = output / Path(LATEST).with_suffix(".json").name
    deadline = time.monotonic() + 120
    while not summary.exists() and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(launcher.pid, signal.SIGKILL)  # the launcher and both workers, mid-run
    launcher.wait()
    assert summary.exists() and not (output / "toy_final.pt").exists(), "the run ended before it could be killed"
    stored = weights(output / LATEST)["training"]["iteration"]
    assert 0 < stored < int(iterations)
    run(torchrun(2, str(TOY), str(output), "--iterations", iterations, "--batch-size", "8", "--checkpoint-every", "20"))
    resumed, uninterrupted = weights(output / "toy_final.pt"), weights(reference / "toy_final.pt")
    assert max_difference(resumed["state_dict"], uninterrupted["state_dict"]) == 0.0
    np.testing.assert_array_equal(resumed["history"].numpy(), uninterrupted["history"].numpy())


def test_rank_0s_early_stop_stops_every_process(tmp_path):
    arguments = ["--iterations", "40", "--batch-size", "8", "--scores", "0.5", "0.9", "0.8", "0.7", "--patience", "2"]
    output = run(torchrun(2, str(TOY), str(tmp_path / "two"), *arguments))
    assert output.count("world 2: 16 iterations (stopped early)") == 2
    run([sys.executable, str(TOY), str(tmp_path / "one"), *arguments])
    two, one = weights(tmp_path / "two" / "toy_final.pt"), weights(tmp_path / "one" / "toy_final.pt")
    assert two["training"]["best_iteration"] == one["training"]["best_iteration"] == 8
    assert max_difference(one["state_dict"], two["state_dict"]) < 1e-5


def test_usam_train_runs_under_torchrun_with_two_processes(tmp_path):
    from CRCSegmentationLib.usam.checkpoint import read_usam_checkpoint
    from CRCTraining.usam.data import extract_phantom_slices

    slices = extract_phantom_slices(tmp_path / "slices", num_cases=1, seed=0)
    output = run(torchrun(2, "-m", "CRCTraining.cli", "usam-train", str(slices), "-o", str(tmp_path / "run"),
                          "--iterations", "2", "--batch-size", "2", "--image-size", "64", "--device", "cpu",
                          "--no-augmentation", "--checkpoint-every", "50"), timeout=600)
    assert output.count("2 iterations (from 0)") == 1  # rank 0 reports, once
    model, extra = read_usam_checkpoint(tmp_path / "run" / "usam_final.pt")
    assert extra["training"]["world_size"] == 2 and extra["history"].shape == (2, 5)


# --- in one process -------------------------------------------------------------------------
def test_the_ranks_batches_together_are_the_one_process_batch_and_cover_each_epoch():
    epoch = lambda e: range(24)
    one = EpochBatches(epoch, 8, 3, 0, 1, 0, 9)
    ranks = [EpochBatches(epoch, 8, 3, r, 2, 0, 9) for r in range(2)]
    for iteration in range(9):
        together = sorted(ranks[0].keys(iteration) + ranks[1].keys(iteration))
        assert together == sorted(one.keys(iteration))
    for e in range(3):  # 3 iterations per epoch: each index once per epoch, a new order each epoch
        seen = [k[0] for i in range(3 * e, 3 * e + 3) for k in one.keys(i)]
        assert sorted(seen) == list(range(24))
    assert [k[0] for k in one.keys(0)] != [k[0] for k in one.keys(3)][:8]
    assert list(one) == [one.keys(i) for i in range(9)]  # iteration is stateless: a resumed sampler agrees
    short = EpochBatches(lambda e: range(3), 8, 0, 0, 1, 0, 1).keys(0)  # an epoch shorter than a batch
    counts = sorted(np.bincount([k[0] for k in short]).tolist())
    assert counts == [2, 3, 3] and len({k[1] for k in short}) == 8  # each repeat augmented its own way


def test_balance_sampling_gives_the_epochs_and_processes_split_them():
    records = [SliceRecord("a", i, i < 4) for i in range(20)]  # 4 abnormal, 16 normal
    sampler = BalanceSampler(records, 2, seed=1, per_epoch=True)
    batches = [EpochBatches(sampler.epoch_indices, 4, 0, r, 2, 0, 6) for r in range(2)]
    for epoch in range(2):  # theta_2: 4 abnormal + 8 normal = 12 slices = 3 iterations
        chosen = [k[0] for b in batches for i in range(3 * epoch, 3 * epoch + 3) for k in b.keys(i)]
        assert sorted(chosen) == sorted(sampler.epoch_indices(epoch))
        assert sum(records[i].abnormal for i in chosen) == 4


def test_schedules_are_pytorchs_and_depend_on_the_iteration_only():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=3, T_mult=2)
    for epoch in range(12):  # stepped once per epoch, as PyTorch's example does
        assert learning_rate_factor("cosine_restarts", epoch * 5, 60, 5, cycle_epochs=3, cycle_mult=2) == \
            pytest.approx(optimizer.param_groups[0]["lr"])
        scheduler.step()
    assert learning_rate_factor("cosine_restarts", 15, 60, 5, cycle_epochs=3) == pytest.approx(1.0)  # a restart
    assert learning_rate_factor("poly", 5, 10, 1) == pytest.approx(0.5 ** 0.9)
    assert learning_rate_factor("constant", 7, 10, 1) == 1.0


def test_early_stopping_keeps_the_best_epoch(tmp_path):
    # 32 toy images, batch 8: 4 iterations per epoch; scores rise once, then never again
    task = ToyTask(validation_scores=[0.5, 0.9, 0.8, 0.7, 0.95])
    result = train(task, toy_settings(tmp_path / "early", iterations=None, epochs=5, batch_size=8, patience=2),
                   progress=False)
    assert result.stopped_early and result.iterations == 16 and result.best_score == 0.9
    assert [v["score"] for v in result.validation] == [0.5, 0.9, 0.8, 0.7]
    reference = train(ToyTask(), toy_settings(tmp_path / "two_epochs", iterations=8, batch_size=8), progress=False)
    final = weights(result.final)
    assert max_difference(final["state_dict"], weights(reference.final)["state_dict"]) == 0.0  # epoch 2's weights
    assert not (tmp_path / "early" / BEST).exists() and final["training"]["best_iteration"] == 8


def test_bad_settings_and_a_changed_run_are_refused(tmp_path):
    with pytest.raises(InputError, match="amp 'on' needs a CUDA GPU"):
        train(ToyTask(), toy_settings(tmp_path / "amp", amp="on"), progress=False)
    with pytest.raises(ValueError, match="does not split evenly"):
        EpochBatches(lambda e: range(8), 3, 0, 0, 2, 0, 1)
    first = train(ToyTask(), toy_settings(tmp_path / "run"), stop_after=2, progress=False)
    assert first.final.name == LATEST and first.iterations == 2
    with pytest.raises(InputError, match="batch_size: 4 -> 8"):
        train(ToyTask(), toy_settings(tmp_path / "run", batch_size=8), progress=False)
    finished = train(ToyTask(), toy_settings(tmp_path / "run"), progress=False)
    assert finished.resumed_from == 2 and finished.final.name == "toy_final.pt"
    assert train(ToyTask(), toy_settings(tmp_path / "run"), progress=False).skipped
