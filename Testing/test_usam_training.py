"""U-SAM slice data, training loop (loss, optimizer, resume) and evaluation (CARE Tables 2 and 4), on CPU.

The model is SAM ViT-B sized (no SAM weights offline, so randomly initialised); a 64 x 64 input
keeps a step at a few seconds on a CPU.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from CRCSegmentationLib.usam import load_usam_checkpoint
from CRCSegmentationLib.usam.prompts import sample_points
from CRCTraining.cli import main as crcseg
from CRCTraining.usam import data as usam_data
from CRCTraining.usam.data import (
    FOREGROUND_CLASSES,
    PromptSettings,
    USAMSliceDataset,
    collate,
    extract_phantom_slices,
    extract_volume_slices,
)
from CRCTraining.usam.evaluate import OverlapCounts, evaluate_point_counts, evaluation_dataset, overlap_counts
from CRCTraining.usam.train import (
    CURVE,
    FINAL,
    LATEST,
    USAMTrainingSettings,
    build_optimizer,
    poly_factor,
    train_usam,
    usam_loss,
)
from OrganGuidanceLib.validation import InputError

SIZE = 64  # smallest convenient U-SAM input (a multiple of 16); the paper's is 224
WINDOW = (-160.0, 240.0)


@pytest.fixture(scope="module")
def slices(tmp_path_factory):
    return extract_phantom_slices(tmp_path_factory.mktemp("usam") / "slices", num_cases=1, seed=0)


@pytest.fixture(scope="module")
def trained(slices, tmp_path_factory):
    """A run of 4 iterations stopped after 2 and resumed: (first result, final result, settings, refusal)."""
    torch.set_num_threads(2)
    settings = USAMTrainingSettings(slices=slices, output=tmp_path_factory.mktemp("run"), iterations=4, batch_size=2,
                                    image_size=SIZE, checkpoint_every=100, device="cpu", augmentation=False)
    first = train_usam(settings, stop_after=2, progress=False)
    with pytest.raises(InputError) as refusal:  # a rerun with other settings must not continue this run
        train_usam(USAMTrainingSettings(**{**settings.__dict__, "batch_size": 3}), progress=False)
    final = train_usam(settings, progress=False)
    return first, final, settings, str(refusal.value)


@pytest.fixture(scope="module")
def final_model(trained):
    return load_usam_checkpoint(trained[1].final)


# --- data -------------------------------------------------------------------------
def test_phantom_slices_hold_rectum_and_tumor(slices):
    files = sorted(slices.glob("*.npz"))
    assert len(files) >= 10
    index = json.loads((slices / usam_data.INDEX_FILE).read_text())
    assert sum(len(v) for v in index["cases"].values()) == len(files)
    both = 0
    for path in files:
        with np.load(path) as npz:
            image, label = npz["image"], npz["label"]
        assert image.dtype == np.int16 and image.min() < -500  # HU with air
        assert set(np.unique(label)) <= {0, 1, 2} and label.any()  # only slices with rectum are kept
        both += {1, 2} <= set(np.unique(label))
        # the rectum is one blob around the tumor, not the sigmoid loop beside it
        assert np.count_nonzero(label) < 0.05 * label.size
    assert both >= 5


def _write_slice(folder, name, image, label):
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / f"{name}.npz", image=image, label=label)


def test_windowing_resizing_and_labels(tmp_path):
    image = np.full((32, 48), -1000, dtype=np.int16)
    image[:, 24:] = 40  # soft tissue: (40 + 160) / 400 = 0.5
    label = np.zeros((32, 48), dtype=np.uint8)
    label[8:16, 12:36] = 1
    label[8:16, 30:36] = 3  # > 2 counts as tumor, as in the public loader
    _write_slice(tmp_path / "s", "a", image, label)
    sample = USAMSliceDataset(tmp_path / "s", SIZE, WINDOW, PromptSettings(3, 1))[(0, None)]
    assert sample["image"].shape == (3, SIZE, SIZE) and sample["image"].dtype == np.float32
    np.testing.assert_allclose(sample["image"][:, :, :30], 0.0, atol=1e-6)
    np.testing.assert_allclose(sample["image"][:, :, 34:], 0.5, atol=1e-6)
    expected = np.zeros((SIZE, SIZE), dtype=np.int64)  # rows x 2, columns x 4/3, nearest pixel centre
    expected[16:32, 16:48] = 1
    expected[16:32, 40:48] = 2
    np.testing.assert_array_equal(sample["label"], expected)
    assert sample["prompts"].labels.tolist() == [1, 1, 1, 1, 1, 1, 0]

    _write_slice(tmp_path / "u", "a", (image + 1000) / 1040.0, label)
    with pytest.raises(InputError, match="unit"):
        USAMSliceDataset(tmp_path / "u", SIZE, WINDOW, PromptSettings())[(0, None)]
    unit = USAMSliceDataset(tmp_path / "u", SIZE, WINDOW, PromptSettings(), intensity="unit")[(0, None)]
    np.testing.assert_allclose(unit["image"][0, 0, 40], 1.0, atol=1e-5)


def test_augmentation_moves_image_label_and_points_together(tmp_path):
    image = np.full((64, 64), -1000, dtype=np.int16)
    label = np.zeros((64, 64), dtype=np.uint8)
    image[10:30, 14:24], label[10:30, 14:24] = 200, 1  # an asymmetric bright block is the rectum
    image[10:18, 24:40], label[10:18, 24:40] = 200, 2
    _write_slice(tmp_path, "a", image, label)
    dataset = USAMSliceDataset(tmp_path, SIZE, WINDOW, PromptSettings(3, 1))
    labels_seen = set()
    for seed in range(8):
        sample = dataset[(0, seed)]
        bright, foreground = sample["image"][0] > 0.5, sample["label"] > 0
        assert (bright & foreground).sum() / (bright | foreground).sum() > 0.9
        xy = sample["prompts"].coords_xy.astype(int)
        assert sample["label"][xy[:, 1], xy[:, 0]].tolist() == [1, 1, 1, 2, 2, 2, 0]
        labels_seen.add(sample["label"].tobytes())
    assert len(labels_seen) > 3  # the seeds do change the geometry
    again = dataset[(0, 5)]
    np.testing.assert_array_equal(again["label"], dataset[(0, 5)]["label"])


def test_volume_label_maps_become_care_slices(tmp_path):
    from CRCTraining.data.phantoms_ct import make_phantom_case
    from OrganGuidanceLib.io import write_image

    phantom = make_phantom_case(0, seed=1)
    colon = next(v for v, n in phantom.label_names.items() if n == "colon")
    labels = np.where(phantom.labels.array == colon, 7, 0).astype(np.uint8)
    labels[phantom.tumor.array > 0] = 9
    write_image(phantom.ct, tmp_path / "images" / "case_a_0000.nii.gz")
    write_image(phantom.labels.with_array(labels), tmp_path / "labels" / "case_a.nii.gz")
    out = extract_volume_slices(tmp_path / "out", tmp_path / "images", tmp_path / "labels", [7], [9])
    files = sorted(out.glob("*.npz"))
    assert len(files) == int((labels > 0).any(axis=(1, 2)).sum())
    with np.load(files[len(files) // 2]) as npz:
        k = int(npz["slice_index"])
        np.testing.assert_array_equal(npz["label"], np.select([labels[k] == 9, labels[k] == 7], [2, 1], 0))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        extract_volume_slices(tmp_path / "other", tmp_path / "images", tmp_path / "labels", [7], [9])


# --- loss and optimizer -------------------------------------------------------------------
def test_loss_is_04_ce_plus_06_soft_dice():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    loss, ce, dice = usam_loss(logits, target)
    p = torch.softmax(logits, 1).numpy()
    t = np.stack([(target.numpy() == c) for c in range(3)], 1).astype(float)
    per_class = [1 - (2 * (p[:, c] * t[:, c]).sum() + 1e-5) / ((p[:, c] ** 2).sum() + t[:, c].sum() + 1e-5)
                 for c in range(3)]
    assert dice.item() == pytest.approx(np.mean(per_class), rel=1e-5)
    assert ce.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, target).item())
    assert loss.item() == pytest.approx(0.4 * ce.item() + 0.6 * dice.item(), rel=1e-6)
    perfect = usam_loss(100 * torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float(), target)[0]
    assert perfect.item() < 1e-3


# --- training -------------------------------------------------------------------------------
def test_training_lowers_the_loss_resumes_and_skips_a_finished_run(trained):
    first, final, settings, refusal = trained
    assert first.iterations == 2 and first.final.name == LATEST and not first.skipped
    assert "batch_size: 2 -> 3" in refusal
    assert final.resumed_from == 2 and final.iterations == 4 and final.final.name == FINAL
    history = final.history
    assert history[:, 0].tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(history[:2], first.history)  # the resumed run kept the first part
    # the poly schedule continued from the stored iteration: (1 - it / 4)^0.9 x 1e-3
    np.testing.assert_allclose(history[:, 4], [1e-3 * poly_factor(i, 4) for i in range(4)], rtol=1e-6)
    assert history[-2:, 1].mean() < 0.8 * history[:2, 1].mean()
    output = settings.output
    assert not (output / LATEST).exists() and (output / CURVE).stat().st_size > 1000
    assert (output / "training_log.csv").read_text().count("\n") == 5
    again = train_usam(settings, progress=False)
    assert again.skipped and again.iterations == 4
    changed = USAMTrainingSettings(**{**settings.__dict__, "iterations": 7})
    with pytest.raises(InputError, match="finished run"):
        train_usam(changed, progress=False)


def test_final_checkpoint_loads_and_optimizer_groups(final_model):
    model = final_model
    assert model.config.image_size == SIZE
    optimizer = build_optimizer(model, 1e-3, 1e-4, 1e-4)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert {n: g["lr"] for n, g in groups.items()} == {"decoder": 1e-3, "vit": 1e-4, "cnn_encoder": 1e-4}
    assert all(g["weight_decay"] == 1e-4 for g in groups.values())
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    frozen = list(model.prompt_encoder.parameters())
    assert frozen and not any(id(p) in in_optimizer for p in frozen)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(in_optimizer) == len(trainable)


# --- evaluation ------------------------------------------------------------------------------
def test_overlap_counts_match_numpy():
    rng = np.random.default_rng(0)
    prediction, reference = rng.integers(0, 3, (4, 16, 16)), rng.integers(0, 3, (4, 16, 16))
    reference[:, :, :4] = 0
    counts = overlap_counts(torch.from_numpy(prediction), torch.from_numpy(reference), 3)
    for c in range(3):
        a, b = prediction == c, reference == c
        assert counts.dice()[c] == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()))
        assert counts.iou()[c] == pytest.approx((a & b).sum() / (a | b).sum())
    empty = OverlapCounts.zeros(3)
    assert np.isnan(empty.dice()).all()


def test_evaluation_matches_a_direct_computation_and_ablation_runs(trained, final_model, slices, tmp_path):
    final, model = trained[1], final_model
    subset = tmp_path / "test_slices"
    subset.mkdir()
    for path in sorted(slices.glob("*.npz"))[5:8]:
        shutil.copy(path, subset)
    dataset = evaluation_dataset(subset, model)
    results = evaluate_point_counts(model, dataset, [0, 1], negatives=1, batch_size=3, progress=False)
    batch = collate([dataset[(i, None)] for i in range(len(dataset))])
    with torch.no_grad():
        encoding = model.encode_image(batch["image"])
        unprompted = model.decode(encoding).argmax(1).numpy()
        prompts = [sample_points(label, FOREGROUND_CLASSES, 1, 1) for label in batch["label"].numpy()]
        coords = torch.from_numpy(np.stack([p.coords_xy for p in prompts]))
        labels = torch.from_numpy(np.stack([p.labels for p in prompts]))
        prompted = model.decode(encoding, coords, labels).argmax(1).numpy()
    reference = batch["label"].numpy()
    for result, prediction in zip(results, (unprompted, prompted)):
        for c in (1, 2):
            a, b = prediction == c, reference == c
            expected_dice = 2 * (a & b).sum() / (a.sum() + b.sum()) if (a.sum() + b.sum()) else np.nan
            expected_iou = (a & b).sum() / (a | b).sum() if (a | b).sum() else np.nan
            np.testing.assert_allclose(result.dice[c], expected_dice)
            np.testing.assert_allclose(result.iou[c], expected_iou)
        assert result.mean_dice == pytest.approx(np.nanmean(result.dice[1:]))
    assert [r.points_per_class for r in results] == [0, 1] and results[0].negatives == 0

    code = crcseg(["usam-ablation", str(final.final), str(subset), "--points", "0", "1", "--device", "cpu",
                   "--batch-size", "3", "--no-box", "--no-3d", "-o", str(tmp_path / "report")])
    assert code == 0
    rows = (tmp_path / "report" / "usam_ablation.csv").read_text().splitlines()
    assert rows[0].startswith("points_per_class,negatives,class,dice,iou")
    assert len(rows) == 1 + 2 * 3  # 2 point counts x (normal rectum, tumor, mean); no box rows asked for
    report = json.loads((tmp_path / "report" / "usam_ablation.json").read_text())
    for entry, result in zip(report, results):
        reported = entry["classes"]["tumor"]["dice"]
        assert (reported is None and np.isnan(result.dice[2])) or reported == pytest.approx(result.dice[2])


# --- SAM's prompt mix, look-alikes, and batches mixing prompted and unprompted samples ---------------
def _mix_slice():
    """A 64 x 64 CARE label: rectum ring with a tumor, and a look-alike blob apart from it."""
    label = np.zeros((64, 64), np.int64)
    rows, cols = np.mgrid[:64, :64]
    label[np.hypot(rows - 32, cols - 32) < 10] = 1
    label[(np.hypot(rows - 32, cols - 32) < 10) & (cols > 34)] = 2
    lookalike = np.hypot(rows - 10, cols - 12) < 4
    return label, lookalike


def test_prompt_mix_draws_sams_prompts():
    from CRCTraining.usam.prompt_mix import SAM_BOX_NOISE_MAX_PX, PromptMix, sample_mixed_prompt

    label, lookalike = _mix_slice()
    tumor = label == 2
    rows, cols = np.nonzero(tumor)
    tight = np.array([cols.min(), rows.min(), cols.max(), rows.max()])
    rng = np.random.default_rng(0)
    kinds = {"box": 0, "box + points": 0, "points": 0, "none": 0}
    for _ in range(400):
        mix = PromptMix(object_fraction=0.0, lookalike_negative_fraction=1.0)
        prompts, box, target = sample_mixed_prompt(label, lookalike, mix, FOREGROUND_CLASSES, rng)
        assert target is label
        positives, negatives = prompts.coords_xy[prompts.labels == 1], prompts.coords_xy[prompts.labels == 0]
        if box is not None:
            assert np.all(np.abs(box - tight) <= SAM_BOX_NOISE_MAX_PX) and box[0] <= box[2] and box[1] <= box[3]
        if len(prompts) == 0 and box is None:
            kinds["none"] += 1
            continue
        kinds["box" if not len(prompts) else "box + points" if box is not None else "points"] += 1
        assert len(prompts) == 0 or 1 <= len(positives) <= 5 and len(negatives) <= 2
        assert all(tumor[int(y), int(x)] for x, y in positives)
        assert all(lookalike[int(y), int(x)] for x, y in negatives)  # negatives on the look-alike
    assert all(kinds.values()), kinds  # every kind of prompt occurs
    assert 0.05 < kinds["none"] / 400 < 0.2 and 0.1 < kinds["box"] / 400 < 0.25
    # "The object at the click": the look-alike becomes the target, the tumor normal rectum.
    prompts, box, target = sample_mixed_prompt(label, lookalike, PromptMix(object_fraction=1.0, no_prompt_fraction=0),
                                               FOREGROUND_CLASSES, np.random.default_rng(1))
    assert np.array_equal(target == 2, lookalike) and np.all(target[tumor] == 1)
    positives = prompts.coords_xy[prompts.labels == 1]
    assert (len(positives) or box is not None) and all(lookalike[int(y), int(x)] for x, y in positives)
    # A correction: a look-alike next to the tumor gets the negatives, a box (when drawn) holds both.
    near = np.zeros_like(lookalike)
    near[28:36, 44:48] = True  # touching the tumor's right edge, outside the rectum
    for seed in range(20):
        prompts, box, target = sample_mixed_prompt(label, near, PromptMix(correction_fraction=1.0, no_prompt_fraction=0,
                                                                          object_fraction=0), FOREGROUND_CLASSES,
                                                   np.random.default_rng(seed))
        negatives = prompts.coords_xy[prompts.labels == 0]
        assert target is label and 1 <= len(negatives) <= 2 and all(near[int(y), int(x)] for x, y in negatives)
        assert box is None or box[2] >= 44  # around tumor and look-alike (jittered)
    with pytest.raises(InputError, match="box_fraction must be in"):
        PromptMix(box_fraction=2.0).check()


def test_lookalikes_look_like_the_tumor_and_keep_the_labels():
    from CRCTraining.usam.phantom_prompts import LookalikeSettings, add_lookalikes

    label, _ = _mix_slice()
    rng = np.random.default_rng(0)
    image = np.where(label == 2, 60.0, np.where(label == 1, -600.0, 0.0)).astype(np.float32)
    image += rng.normal(0, 10, image.shape).astype(np.float32)
    settings = LookalikeSettings(wall_fraction=1.0, min_lookalikes=1, max_lookalikes=1)
    painted, mask = add_lookalikes(image, label, np.random.default_rng(2), settings)
    assert mask.any() and not mask[label == 2].any()  # never on the tumor
    assert np.array_equal(painted[label == 2], image[label == 2])
    assert abs(float(np.median(painted[mask])) - 60.0) < 15.0  # the tumor's CT numbers
    assert (mask & (label == 1)).any() and (mask & (label == 0)).any()  # on the wall, and apart from the rectum


def test_unprompted_samples_of_a_prompted_batch_are_decoded_as_at_inference():
    from CRCSegmentationLib.networks.usam import USAM, USAMConfig
    from CRCTraining.usam.train import prompted_logits

    torch.manual_seed(0)
    model = USAM(USAMConfig.preset("small")).eval()
    images = torch.rand(3, 3, 128, 128)
    batch = {"point_coords": torch.tensor([[[40.0, 40.0]], [[0.0, 0.0]], [[0.0, 0.0]]]),
             "point_labels": torch.tensor([[1], [-1], [-1]]),
             "boxes": torch.tensor([[float("nan")] * 4, [float("nan")] * 4, [10.0, 10.0, 60.0, 70.0]])}
    with torch.no_grad():
        logits = prompted_logits(model, images, batch, torch.device("cpu"))
        unprompted = model(images[1:2])  # no prompt tokens at all, as a user's run without a prompt
        rows = torch.tensor([0, 2])  # the prompted samples, decoded together (SAM's padding between them)
        prompted = model(images[rows], batch["point_coords"][rows], batch["point_labels"][rows], batch["boxes"][rows])
        padded = model.decode(model.encode_image(images[1:2]), batch["point_coords"][1:2], batch["point_labels"][1:2])
    torch.testing.assert_close(logits[1:2], unprompted, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits[rows], prompted, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(logits[1:2], padded)  # padding tokens alone would change the answer


def test_prompt_mix_training_with_the_small_preset(tmp_path):
    from CRCTraining.usam.phantom_prompts import extract_lookalike_slices

    slices = extract_lookalike_slices(tmp_path / "slices", num_cases=1, seed=3)
    assert all("lookalike" in np.load(path).files for path in slices.glob("*.npz"))
    settings = USAMTrainingSettings(slices=slices, output=tmp_path / "run", iterations=2, batch_size=4,
                                    preset="small", device="cpu", box_fraction=0.5, no_prompt_fraction=0.2,
                                    min_points=1, per_class=5, checkpoint_every=100, correction_clicks=1.0)
    assert settings.image_size == 128 and settings.prompt_settings().mix.max_points == 5
    result = train_usam(settings, progress=False)
    model = load_usam_checkpoint(result.final)
    assert model.config == usam_data_config_small()
    with pytest.raises(InputError, match="not ViT-B"):
        train_usam(USAMTrainingSettings(**{**settings.__dict__, "output": tmp_path / "r2",
                                           "sam_checkpoint": tmp_path / "sam.pth"}), progress=False)


def usam_data_config_small():
    from CRCSegmentationLib.networks.usam import USAMConfig

    return USAMConfig.preset("small")


def test_correction_clicks_go_where_the_network_is_wrong():
    from CRCTraining.usam.correction_clicks import correction_click_batch

    label = torch.zeros(2, 32, 32, dtype=torch.long)
    label[:, 8:16, 8:16] = 2
    logits = torch.zeros(2, 3, 32, 32)
    logits[0, 2, 8:16, 8:16] = 5.0  # sample 0: the tumor and a false region at rows 20..26, cols 20..28
    logits[0, 2, 20:27, 20:29] = 5.0
    logits[1, 2, 8:16, 8:12] = 5.0  # sample 1: half the tumor missed (cols 12..15)
    batch = {"point_coords": torch.tensor([[[10.0, 10.0]], [[9.0, 9.0]]]), "point_labels": torch.tensor([[1], [1]]),
             "label": label}
    corrected = correction_click_batch(logits, batch, torch.tensor([True, True]), 1.0, 2)
    assert corrected["point_labels"].tolist() == [[1, 0], [1, 1]]
    (x0, y0), (x1, y1) = corrected["point_coords"][0, 1].tolist(), corrected["point_coords"][1, 1].tolist()
    assert 20 <= x0 <= 28 and 20 <= y0 <= 26  # negative inside the false region
    assert 12 <= x1 <= 15 and 8 <= y1 <= 15  # positive inside the missed part
    untouched = correction_click_batch(logits, batch, torch.tensor([False, False]), 1.0, 2)
    assert untouched is batch  # unprompted samples stay the no-prompt case
