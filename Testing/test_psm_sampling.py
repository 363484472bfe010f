"""AG-sampling (AG-CRC §III-C, Eq. 1-6) and the Table VI strategies, with nnU-Net's real dataset, loader and trainer."""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from nnunet_tiny_plans import tiny_plans as nnunet_tiny_plans
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2, nnUNetDatasetNumpy
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from psm_reference import direct_psm
from scipy import ndimage, stats

from CRCTraining.agcrc.nnunet_sampling import (
    CentreSampledDatasetBlosc2,
    CentreSampledDatasetNumpy,
    centre_sampled_dataset_class,
)
from CRCTraining.agcrc.psm import SamplingMap, compute_sampling_map
from CRCTraining.agcrc.sampling import STRATEGIES, case_sampler_from_arrays
from CRCTraining.agcrc.sampling_maps import (
    PSM_DIRNAME,
    precompute_region_locations,
    precompute_sampling_maps,
    psm_path,
)

TRAINERS_FILE = Path(__file__).resolve().parents[1] / "Training" / "CRCTraining" / "trainers" / "sampling_trainers.py"


def ellipsoid(shape, centre, radii) -> np.ndarray:
    grid = np.indices(shape, dtype=float)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def synthetic_case(shape=(24, 64, 64)):
    """MOS (compact codes), OOI and tumor (Z, Y, X): organs in the upper half of the grid, away from its low edges.

    Drawn on a 24 x 64 x 64 frame and scaled to ``shape``.
    """
    scale = np.asarray(shape) / np.asarray((24, 64, 64))

    def blob(centre, radii):
        return ellipsoid(shape, np.asarray(centre) * scale, np.asarray(radii) * scale)

    mos = np.zeros(shape, np.int16)
    mos[blob((14, 38, 46), (5, 8, 10))] = 1  # stomach
    mos[blob((14, 50, 24), (6, 6, 6))] = 3  # small bowel
    colon = blob((15, 44, 38), (4, 12, 4))
    mos[colon] = 4
    mos[colon & (np.indices(shape)[1] > 50 * scale[1])] = 5  # rectum
    ooi = ndimage.binary_dilation(np.isin(mos, (1, 2, 3, 4, 5)), iterations=1)
    tumor = colon & blob((15, 46, 38), (2, 4, 3))
    assert ooi.any() and tumor.any()
    return mos, ooi, tumor


def cell_sums(values: np.ndarray, cells) -> np.ndarray:
    """Sum of ``values`` over blocks of ``cells`` voxels (edge blocks shorter)."""
    for axis in range(3):
        values = np.add.reduceat(values, np.arange(0, values.shape[axis], cells[axis]), axis=axis)
    return values


# --- PSM: Eq. 1-6 -----------------------------------------------------------------------------------------------
def test_psm_equals_literal_equations_on_small_grid():
    ooi = np.zeros((12, 20, 20), bool)
    ooi[3:8, 5:12, 6:15] = True
    tumor = np.zeros_like(ooi)
    tumor[5:7, 8:10, 9:11] = True
    psm = compute_sampling_map(ooi, tumor, (6, 10, 10))
    assert psm.cell_size == (1, 1, 1)  # sigma = 0.6 x 1 x 1 voxels: exact
    reference = direct_psm(ooi, tumor, (6, 10, 10))
    assert np.isclose(reference.sum(), 1.0)
    np.testing.assert_allclose(psm.probabilities(), reference, rtol=1e-5, atol=1e-12)


def test_coarse_psm_close_to_literal_equations_on_medium_grid():
    mos, ooi, tumor = synthetic_case((32, 96, 96))
    patch = (16, 64, 64)  # sigma 1.6 x 6.4 x 6.4 voxels -> cells 1 x 3 x 3
    psm = compute_sampling_map(ooi, tumor, patch)
    assert psm.cell_size == (1, 3, 3)
    reference = direct_psm(ooi, tumor, patch)
    assert np.abs(psm.probabilities() - reference).sum() < 0.02  # relative L1, voxel level
    coarse_reference = cell_sums(reference, psm.cell_size)
    assert np.abs(psm.cell_probabilities() - coarse_reference).sum() < 0.02


def chi_square_p(counts: np.ndarray, expected: np.ndarray) -> float:
    """Goodness of fit; bins with fewer than 5 expected draws pooled into one."""
    counts, expected = counts.ravel(), expected.ravel()
    small = expected < 5
    if small.any():
        counts = np.append(counts[~small], counts[small].sum())
        expected = np.append(expected[~small], expected[small].sum())
    return stats.chisquare(counts, expected * counts.sum() / expected.sum()).pvalue


def test_drawn_centres_follow_the_map():
    mos, ooi, tumor = synthetic_case((32, 96, 96))
    psm = compute_sampling_map(ooi, tumor, (16, 64, 64))
    draws = 300_000
    centres = psm.draw(np.random.default_rng(0), draws)
    assert centres.shape == (draws, 3) and centres.min() >= 0 and np.all(centres < psm.shape)
    histogram = np.zeros(psm.shape)
    np.add.at(histogram, tuple(centres.T), 1)
    bins = (4, 8, 8)  # not aligned with the 1 x 3 x 3 cells: also checks where draws land inside a cell
    assert chi_square_p(cell_sums(histogram, bins), cell_sums(psm.probabilities(), bins) * draws) > 0.001


def test_draws_inside_cells_follow_the_first_order_model():
    ooi = ellipsoid((8, 30, 30), (4, 18, 15), (3, 6, 8))
    psm = compute_sampling_map(ooi, None, (8, 40, 40), cell_size=(2, 3, 3))
    draws = 200_000
    histogram = np.zeros(psm.shape)
    np.add.at(histogram, tuple(psm.draw(np.random.default_rng(1), draws).T), 1)
    assert chi_square_p(histogram, psm.probabilities() * draws) > 0.001  # voxel by voxel


def test_tumor_share_follows_lambda():
    mos, ooi, tumor = synthetic_case()
    psm = compute_sampling_map(ooi, tumor, (8, 32, 32), tumor_weight=0.33)
    expected = psm.probabilities()[tumor].sum()
    draws = 100_000
    centres = psm.draw(np.random.default_rng(2), draws)
    share = tumor[tuple(centres.T)].mean()
    assert abs(share - expected) < 4 * np.sqrt(expected * (1 - expected) / draws)
    organ_only = compute_sampling_map(ooi, None, (8, 32, 32)).probabilities()[tumor].sum()
    assert expected > organ_only + 0.05  # lambda = 0.33 of the mass follows the tumor map
    heavier = compute_sampling_map(ooi, tumor, (8, 32, 32), tumor_weight=0.9).probabilities()[tumor].sum()
    assert heavier > expected


def test_case_without_tumor_is_the_organ_map_and_without_ooi_uniform():
    mos, ooi, tumor = synthetic_case((12, 24, 24))
    organ = direct_psm(ooi, None, (6, 12, 12))
    np.testing.assert_allclose(compute_sampling_map(ooi, np.zeros_like(tumor), (6, 12, 12)).probabilities(), organ,
                               rtol=1e-5)
    with pytest.warns(UserWarning, match="OOI mask is empty"):
        empty = compute_sampling_map(np.zeros_like(ooi), None, (6, 12, 12))
    np.testing.assert_allclose(empty.probabilities(), 1.0 / ooi.size)


def test_mixture_weights_match_eq_4_and_5():
    mos, ooi, tumor = synthetic_case((12, 24, 24))
    psm = compute_sampling_map(ooi, None, (6, 12, 12), mu=50.0)
    organ, tumor_part, uniform = psm.component_weights()
    g_total = psm.organ_total
    assert tumor_part == 0.0 and np.isclose(uniform, 1.0 / (g_total / 50.0 + 1.0))
    np.testing.assert_allclose(psm.probabilities(), direct_psm(ooi, None, (6, 12, 12), mu=50.0), rtol=1e-5)


def test_save_load_round_trip_and_bad_file(tmp_path):
    mos, ooi, tumor = synthetic_case()
    psm = compute_sampling_map(ooi, tumor, (8, 32, 32))
    path = psm.save(tmp_path / "case.npz")
    loaded = SamplingMap.load(path)
    assert (loaded.shape, loaded.cell_size, loaded.patch_size) == (psm.shape, psm.cell_size, psm.patch_size)
    np.testing.assert_array_equal(loaded.probabilities(), psm.probabilities())
    np.testing.assert_array_equal(loaded.draw(np.random.default_rng(3), 50), psm.draw(np.random.default_rng(3), 50))
    assert [p.name for p in tmp_path.iterdir()] == ["case.npz"]  # no temporary file left
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz"):
        SamplingMap.load(tmp_path / "bad.npz")
    (tmp_path / "cut.npz").write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="cut.npz"):
        SamplingMap.load(tmp_path / "cut.npz")


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="OOI mask must be 3D"):
        compute_sampling_map(np.zeros((4, 4), bool), None, (2, 2, 2))
    with pytest.raises(ValueError, match="tumor mask shape"):
        compute_sampling_map(np.zeros((4, 4, 4), bool), np.zeros((4, 4, 5), bool), (2, 2, 2))
    with pytest.raises(ValueError, match="patch_size"):
        compute_sampling_map(np.zeros((4, 4, 4), bool), None, (2, 2))
    with pytest.raises(ValueError, match="unknown sampling strategy"):
        case_sampler_from_arrays("colon_only", np.zeros((4, 4, 4), bool), None, None)


# --- strategies (Table VI) ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_draws_where_it_should(name):
    mos, ooi, tumor = synthetic_case()
    colon = np.isin(mos, (4, 5))
    sampler = case_sampler_from_arrays(name, ooi, mos.astype(np.float32), tumor, patch_size=(8, 32, 32))
    draws = 20_000
    centres = sampler.draw(np.random.default_rng(4), draws)
    at = tuple(centres.T)
    in_ooi, in_colon, in_tumor = ooi[at].mean(), colon[at].mean(), tumor[at].mean()
    tolerance = 4 * np.sqrt(0.25 / draws)
    if name == "uniform":
        assert abs(in_ooi - ooi.mean()) < tolerance
    elif name == "uniform_ooi":
        assert in_ooi == 1.0 and abs(in_tumor - tumor.sum() / ooi.sum()) < tolerance
    elif name == "uniform_colon":
        assert in_colon == 1.0
    elif name.startswith("hybrid"):
        region = {"hybrid": np.ones_like(ooi), "hybrid_ooi": ooi, "hybrid_colon": colon}[name]
        assert abs(in_tumor - (0.33 + 0.67 * tumor.sum() / region.sum())) < tolerance
        assert region[at].mean() == 1.0  # the tumor lies inside the colon and the OOI
    else:  # ag
        assert abs(in_tumor - sampler.psm.probabilities()[tumor].sum()) < tolerance
        assert in_ooi > 3 * ooi.mean()


def test_strategy_without_its_region_falls_back_to_uniform():
    mos, ooi, tumor = synthetic_case()
    with pytest.warns(UserWarning, match="no colon voxels"):
        sampler = case_sampler_from_arrays("uniform_colon", ooi, np.zeros_like(mos), tumor)
    assert sampler.region is None


# --- nnU-Net: real datasets, loader and trainer ----------------------------------------------------------------------
SHAPE = (24, 64, 64)
PATCH = (8, 16, 16)


def write_preprocessed_cases(folder: Path, dataset_class=nnUNetDatasetBlosc2, cases: int = 3) -> Path:
    """nnU-Net preprocessed cases (data: CT, MOS, OOI; seg: tumor, -1 in a corner) written by nnU-Net itself."""
    folder.mkdir(parents=True, exist_ok=True)
    mos, ooi, tumor = synthetic_case(SHAPE)
    rng = np.random.default_rng(5)
    for index in range(cases):
        data = np.stack([rng.normal(size=SHAPE), mos, ooi]).astype(np.float32)
        data[1] += rng.uniform(-0.3, 0.3, SHAPE).astype(np.float32) * (mos > 0)  # resampled codes are not integers
        seg = tumor.astype(np.int8)[None]
        seg[0, :2, :4, :4] = -1
        properties = {"class_locations": DefaultPreprocessor._sample_foreground_locations(seg, [1], seed=index)}
        name = str(folder / f"case_{index:03d}")
        if dataset_class is nnUNetDatasetBlosc2:
            blocks, chunks = comp_blosc2_params(data.shape, PATCH)
            blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, PATCH, bytes_per_pixel=1)
            dataset_class.save_case(data, seg, properties, name, chunks=chunks, blocks=blocks,
                                    chunks_seg=chunks_seg, blocks_seg=blocks_seg)
        else:
            dataset_class.save_case(data, seg, properties, name)
    return folder


def loader(dataset, batch_size=8) -> nnUNetDataLoader:
    labels = LabelManager({"background": 0, "tumor": 1}, regions_class_order=None)
    return nnUNetDataLoader(dataset, batch_size, PATCH, PATCH, labels, oversample_foreground_percent=1.0)


def patch_centres(batch) -> np.ndarray:
    """Channels at the centre voxel of every patch, (B, C): get_bbox puts the drawn voxel there."""
    data = batch["data"].numpy()
    return data[:, :, PATCH[0] // 2, PATCH[1] // 2, PATCH[2] // 2]


@pytest.fixture(scope="module")
def blosc2_folder(tmp_path_factory) -> Path:
    return write_preprocessed_cases(tmp_path_factory.mktemp("preprocessed") / "nnUNetPlans_3d_fullres")


@pytest.mark.parametrize("name", ["uniform_ooi", "uniform_colon", "hybrid_colon"])
def test_nnunet_loader_centres_patches_where_the_strategy_says(blosc2_folder, name):
    dataset = CentreSampledDatasetBlosc2(str(blosc2_folder), strategy=name, patch_size=PATCH)
    precompute_region_locations(blosc2_folder)
    batches = [loader(dataset).generate_train_batch() for _ in range(8)]
    centres = np.concatenate([patch_centres(b) for b in batches])
    if name == "uniform_ooi":
        assert np.all(centres[:, 2] > 0.5)
    else:
        assert np.all(np.isin(np.rint(centres[:, 1]), (4, 5)))
    if name == "hybrid_colon":
        tumor_share = np.mean([(b["target"][:, 0, PATCH[0] // 2, PATCH[1] // 2, PATCH[2] // 2] == 1).float().mean()
                               for b in batches])
        assert 0.2 < tumor_share < 0.7


def test_nnunet_loader_uniform_control_misses_the_ooi(blosc2_folder):
    dataset = CentreSampledDatasetBlosc2(str(blosc2_folder), strategy="uniform")
    centres = np.concatenate([patch_centres(loader(dataset).generate_train_batch()) for _ in range(8)])
    assert np.mean(centres[:, 2] > 0.5) < 0.5  # so the checks above are not trivially true


def test_ag_dataset_precomputes_reuses_and_refreshes_maps(blosc2_folder):
    paths = precompute_sampling_maps(blosc2_folder, PATCH)
    assert [p.parent.name for p in paths] == [PSM_DIRNAME] * 3
    assert SamplingMap.load(paths[0]).patch_size == PATCH
    stamp = paths[0].stat().st_mtime_ns
    precompute_sampling_maps(blosc2_folder, PATCH)
    assert paths[0].stat().st_mtime_ns == stamp  # up to date: kept
    precompute_sampling_maps(blosc2_folder, (8, 24, 24))
    assert SamplingMap.load(paths[0]).patch_size == (8, 24, 24)  # stale: recomputed

    dataset = centre_sampled_dataset_class(str(blosc2_folder))(str(blosc2_folder), strategy="ag", patch_size=PATCH)
    with pytest.warns(UserWarning, match="no up-to-date sampling map"):
        for identifier in dataset.identifiers:  # every map is for 8 x 24 x 24: each is recomputed on the fly
            dataset.load_case(identifier)
    assert all(SamplingMap.load(path).patch_size == PATCH for path in paths)
    batch = loader(dataset).generate_train_batch()
    assert batch["data"].shape == (8, 3, *PATCH)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        centres = np.concatenate([patch_centres(loader(dataset).generate_train_batch()) for _ in range(6)])
    assert np.mean(centres[:, 2] > 0.5) > 0.7


def test_numpy_dataset_variant_ignores_the_map_folder(tmp_path):
    folder = write_preprocessed_cases(tmp_path / "npz", nnUNetDatasetNumpy, cases=2)
    precompute_sampling_maps(folder, PATCH)
    assert sorted(nnUNetDatasetNumpy.get_identifiers(str(folder))) == ["case_000", "case_001"]
    dataset_class = centre_sampled_dataset_class(str(folder))
    assert dataset_class is CentreSampledDatasetNumpy
    dataset = dataset_class(str(folder), strategy="ag", patch_size=PATCH)
    assert loader(dataset, 2).generate_train_batch()["data"].shape == (2, 3, *PATCH)
    assert psm_path(folder, "case_000").exists()


def tiny_plans(patch=(16, 32, 32)) -> dict:
    return nnunet_tiny_plans("Dataset998_AGSampling", SHAPE, (5.0, 0.78, 0.78), patch,
                             [[1, 3, 3], [3, 3, 3], [3, 3, 3]], [[1, 1, 1], [1, 2, 2], [2, 2, 2]])


@pytest.mark.parametrize("trainer_name", ["nnUNetTrainerSamplingUniformOOI", "nnUNetTrainerAGSampling"])
def test_trainer_found_by_nnunet_and_feeds_centre_sampled_batches(tmp_path, monkeypatch, trainer_name):
    import torch
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    trainers = tmp_path / "trainers"  # this file alone, so the test does not depend on its neighbours
    trainers.mkdir()
    shutil.copy(TRAINERS_FILE, trainers)
    preprocessed = tmp_path / "preprocessed" / "Dataset998_AGSampling"
    write_preprocessed_cases(preprocessed / "nnUNetPlans_3d_fullres", cases=2)
    for name, value in (("nnUNet_extTrainer", str(trainers)), ("nnUNet_preprocessed", str(preprocessed.parent)),
                        ("nnUNet_results", str(tmp_path / "results")), ("nnUNet_n_proc_DA", "0")):
        monkeypatch.setenv(name, value)
    trainer_class = recursive_find_trainer_class_by_name(trainer_name)
    dataset_json = {"labels": {"background": 0, "tumor": 1}, "channel_names": {"0": "CT", "1": "noNorm", "2": "noNorm"},
                    "numTraining": 2, "file_ending": ".nii.gz"}
    trainer = trainer_class(tiny_plans(), "3d_fullres", "all", dataset_json, device=torch.device("cpu"))
    trainer._set_batch_size_and_oversample()
    assert trainer.oversample_foreground_percent == 1.0
    train, validation = trainer.get_dataloaders()
    assert isinstance(train.data_loader._data, CentreSampledDatasetBlosc2)
    assert train.data_loader.oversample_foreground_percent == 1.0
    batch = next(train)
    assert batch["data"].shape == (2, 3, 16, 32, 32)
    assert (preprocessed / "nnUNetPlans_3d_fullres" / PSM_DIRNAME).is_dir() == (trainer_name == "nnUNetTrainerAGSampling")


def test_hybrid_strategy_is_nnunets_own_path(tmp_path, monkeypatch):
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from CRCTraining.agcrc.nnunet_sampling import AGSamplingTrainerMixin

    class HybridTrainer(AGSamplingTrainerMixin, nnUNetTrainer):
        sampling_strategy = "hybrid"

    preprocessed = tmp_path / "preprocessed" / "Dataset998_AGSampling"
    write_preprocessed_cases(preprocessed / "nnUNetPlans_3d_fullres", cases=2)
    monkeypatch.setenv("nnUNet_preprocessed", str(preprocessed.parent))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    dataset_json = {"labels": {"background": 0, "tumor": 1}, "channel_names": {"0": "CT", "1": "noNorm", "2": "noNorm"},
                    "numTraining": 2, "file_ending": ".nii.gz"}
    trainer = HybridTrainer(tiny_plans(), "3d_fullres", "all", dataset_json, device=torch.device("cpu"))
    trainer._set_batch_size_and_oversample()
    assert trainer.oversample_foreground_percent == 0.33
    trainer.dataset_class = nnUNetDatasetBlosc2
    train, validation = trainer.get_tr_and_val_datasets()
    assert type(train) is nnUNetDatasetBlosc2 and type(validation) is nnUNetDatasetBlosc2


def test_hybrid_tumor_share_can_match_nnunets_batch_of_two(blosc2_folder):
    from CRCTraining.agcrc.sampling import get_strategy, with_tumor_share

    assert with_tumor_share(get_strategy("hybrid_ooi"), 0.5).tumor_share == 0.5
    with pytest.raises(ValueError, match="hybrid"):
        with_tumor_share(get_strategy("uniform_ooi"), 0.5)
    dataset = CentreSampledDatasetBlosc2(str(blosc2_folder), strategy="hybrid_ooi", tumor_share=1.0)
    batch = loader(dataset).generate_train_batch()
    assert np.all(batch["target"][:, 0, PATCH[0] // 2, PATCH[1] // 2, PATCH[2] // 2].numpy() == 1)
