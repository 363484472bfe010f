"""Speed of AG-sampling (AG-CRC §III-C) at clinical size, against the obvious baselines.

Input: the test data's word_label_map.nii.gz (512 x 512 x 178); OOI = WORD stomach, duodenum, colon, intestine,
rectum; patch 48 x 192 x 192 voxels (sigma 4.8 x 19.2 x 19.2).

(a) PSM: ``compute_sampling_map`` (median of --repeats) vs ``scipy.ndimage.gaussian_filter`` on the full grid
    (sigma 0.1 x patch, truncate 5.0 = the patch extent), once; relative L1 between the two normalised maps.
(b) Loader overhead: nnU-Net's ``nnUNetDataLoader.generate_train_batch`` on its own dataset vs on our AG dataset
    (same cases, patch, batch 2, no transforms, in-process), median ms per iteration.

    .venv/bin/python benchmarks/bench_psm.py [--repeats 7] [--iterations 100] [--cases 3] [--transform-iterations 20]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from timing import median_seconds  # benchmarks/timing.py

from CRCTraining.agcrc.nnunet_sampling import CentreSampledDatasetBlosc2
from CRCTraining.agcrc.psm import compute_sampling_map, kernel_sigma
from CRCTraining.agcrc.sampling_maps import precompute_sampling_maps
from OrganGuidanceLib.io import read_image
from OrganGuidanceLib.labels import word_convention

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Testing"))
from test_data import data_file_or_exit  # SLICERCRC_TEST_DATA, ../shared/data or the fetch cache

PATCH = (48, 192, 192)
WORD_TO_COMPACT = {5: 1, 9: 2, 11: 3, 10: 4, 13: 5}  # stomach, duodenum, small bowel, colon, rectum; others -> 6



def tumor_stand_in(labels: np.ndarray) -> np.ndarray:
    """A 12-voxel-radius ball (3 slices half-height) at the rectum's centroid, inside the rectum."""
    centre = np.round(ndimage.center_of_mass(labels == 13)).astype(int)
    z, y, x = np.ogrid[tuple(slice(0, s) for s in labels.shape)]
    ball = ((z - centre[0]) / 3.0) ** 2 + ((y - centre[1]) / 12.0) ** 2 + ((x - centre[2]) / 12.0) ** 2 <= 1
    return ball & (labels == 13)


def bench_psm(labels: np.ndarray, ooi: np.ndarray, repeats: int) -> None:
    sigma = kernel_sigma(PATCH)
    tumor = tumor_stand_in(labels)
    compute_sampling_map(ooi, tumor, PATCH)  # warm-up
    ours = median_seconds(lambda: compute_sampling_map(ooi, None, PATCH), repeats)
    ours_tumor = median_seconds(lambda: compute_sampling_map(ooi, tumor, PATCH), repeats)
    started = time.perf_counter()
    blurred = ndimage.gaussian_filter(ooi.astype(np.float32), sigma=tuple(sigma), truncate=5.0, mode="constant")
    baseline = time.perf_counter() - started
    psm = compute_sampling_map(ooi, None, PATCH)
    reference = blurred.astype(np.float64) + 1.0 / ooi.size  # Eq. 4 (the filter's kernel sums to 1, like C K)
    reference /= reference.sum()  # Eq. 5
    dense = psm.probabilities()
    l1 = np.abs(dense - reference).sum()
    cells = psm.cell_size
    coarse = reference
    for axis in range(3):
        coarse = np.add.reduceat(coarse, np.arange(0, coarse.shape[axis], cells[axis]), axis=axis)
    cell_l1 = np.abs(psm.cell_probabilities() - coarse).sum()
    print(f"(a) PSM, OOI {int(ooi.sum())} voxels of {ooi.size / 1e6:.1f} M, patch {PATCH}, "
          f"sigma {tuple(round(float(v), 1) for v in sigma)}, "
          f"cells {cells}")
    print(f"    ours, OOI only           median {ours:8.3f} s   ({repeats} runs)")
    print(f"    ours, OOI + tumor ({int(tumor.sum())} vx) median {ours_tumor:8.3f} s")
    print(f"    scipy gaussian_filter    once   {baseline:8.3f} s   -> {baseline / ours:.0f}x faster")
    print(f"    relative L1 ours vs baseline map: voxel level {l1:.4f}, cell level {cell_l1:.4f}")


def write_cases(folder: Path, labels: np.ndarray, ooi: np.ndarray, cases: int) -> None:
    """Preprocessed nnU-Net cases (CT-like, MOS, OOI; tumor seg) of the clinical grid, written by nnU-Net."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2

    mos = np.where(labels > 0, 6, 0).astype(np.float32)
    for word, code in WORD_TO_COMPACT.items():
        mos[labels == word] = code
    tumor = tumor_stand_in(labels)
    rng = np.random.default_rng(0)
    for index in range(cases):
        ct = np.where(labels > 0, 0.5, -0.5).astype(np.float32) + rng.normal(0, 0.1, labels.shape).astype(np.float32)
        data = np.stack([ct, mos, ooi.astype(np.float32)])
        seg = tumor.astype(np.int8)[None]
        blocks, chunks = comp_blosc2_params(data.shape, PATCH)
        blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, PATCH, bytes_per_pixel=1)
        properties = {"class_locations": DefaultPreprocessor._sample_foreground_locations(seg, [1], seed=index)}
        nnUNetDatasetBlosc2.save_case(data, seg, properties, str(folder / f"case_{index:03d}"), chunks=chunks,
                                      blocks=blocks, chunks_seg=chunks_seg, blocks_seg=blocks_seg)


def training_transforms_and_crop():
    """nnU-Net's training augmentation for PATCH, as nnUNetTrainer builds it (no deep supervision), and the larger
    crop the loader then takes."""
    from nnunetv2.configuration import ANISO_THRESHOLD
    from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    dummy_2d = max(PATCH) / PATCH[0] > ANISO_THRESHOLD
    rotation = (-np.pi, np.pi) if dummy_2d else (-np.pi / 6, np.pi / 6)
    crop = get_patch_size(PATCH, rotation, rotation, rotation, (0.85, 1.25))
    if dummy_2d:
        crop[0] = PATCH[0]
    transforms = nnUNetTrainer.get_training_transforms(PATCH, rotation, None, (0, 1, 2), dummy_2d,
                                                       use_mask_for_norm=[False] * 3, foreground_labels=[1])
    return transforms, tuple(int(v) for v in crop)


def bench_loader(labels: np.ndarray, ooi: np.ndarray, cases: int, iterations: int,
                 transform_iterations: int = 0) -> None:
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    label_manager = LabelManager({"background": 0, "tumor": 1}, regions_class_order=None)
    with tempfile.TemporaryDirectory(prefix="bench_psm_") as temporary:
        folder = Path(temporary)
        started = time.perf_counter()
        write_cases(folder, labels, ooi, cases)
        written = time.perf_counter() - started
        started = time.perf_counter()
        precompute_sampling_maps(folder, PATCH)
        precomputed = time.perf_counter() - started

        default_loader = nnUNetDataLoader(nnUNetDatasetBlosc2(str(folder)), 2, PATCH, PATCH, label_manager,
                                          oversample_foreground_percent=0.33)
        ag_loader = nnUNetDataLoader(CentreSampledDatasetBlosc2(str(folder), strategy="ag", patch_size=PATCH), 2,
                                     PATCH, PATCH, label_manager, oversample_foreground_percent=1.0)
        loaders = {"default": default_loader, "ag": ag_loader}
        np.random.seed(0)
        for _ in range(3):  # warm-up: page cache, lazy imports
            for loader in loaders.values():
                loader.generate_train_batch()
        # Alternate the two, iteration by iteration, so that load from other processes hits both alike; CPU time
        # (this process) is the steadier figure on a shared machine.
        times = {name: ([], []) for name in loaders}
        for _ in range(iterations):
            for name, loader in loaders.items():
                wall, cpu = time.perf_counter(), time.process_time()
                loader.generate_train_batch()
                times[name][0].append(time.perf_counter() - wall)
                times[name][1].append(time.process_time() - cpu)
        (default, default_cpu), (ag, ag_cpu) = (
            (1000.0 * statistics.median(w), 1000.0 * statistics.median(c)) for w, c in times.values())
        augmented = (0.0, 0.0)
        if transform_iterations:
            transforms, crop = training_transforms_and_crop()
            pair = (nnUNetDataLoader(nnUNetDatasetBlosc2(str(folder)), 2, crop, PATCH, label_manager,
                                     oversample_foreground_percent=0.33, transforms=transforms),
                    nnUNetDataLoader(CentreSampledDatasetBlosc2(str(folder), strategy="ag", patch_size=PATCH), 2, crop,
                                     PATCH, label_manager, oversample_foreground_percent=1.0, transforms=transforms))
            spent = ([], [])
            for _ in range(transform_iterations):
                for index, loader in enumerate(pair):
                    cpu = time.process_time()
                    loader.generate_train_batch()
                    spent[index].append(time.process_time() - cpu)
            augmented = tuple(1000.0 * statistics.median(values) for values in spent)
        plain = nnUNetDatasetBlosc2(str(folder))
        ours = CentreSampledDatasetBlosc2(str(folder), strategy="ag", patch_size=PATCH)
        names = list(plain.identifiers)
        load_plain = median_seconds(lambda: plain.load_case(names[np.random.randint(len(names))]), 200) * 1000.0
        load_ours = median_seconds(lambda: ours.load_case(names[np.random.randint(len(names))]), 200) * 1000.0
    print(f"(b) loader, {cases} cases {labels.shape} x 3 channels (written in {written:.1f} s, PSMs precomputed in "
          f"{precomputed:.1f} s), patch {PATCH}, batch 2, no transforms, median of {iterations} alternating iterations")
    print(f"    nnU-Net default loader   {default:8.1f} ms/iteration wall, {default_cpu:8.1f} ms CPU")
    print(f"    AG-sampling loader       {ag:8.1f} ms/iteration wall, {ag_cpu:8.1f} ms CPU   "
          f"({100.0 * (ag - default) / default:+.1f} % wall, {100.0 * (ag_cpu - default_cpu) / default_cpu:+.1f} % CPU)")
    if transform_iterations:
        print(f"    with nnU-Net's training augmentation ({transform_iterations} alternating iterations): "
              f"default {augmented[0]:.0f} ms, AG {augmented[1]:.0f} ms CPU "
              f"({100.0 * (augmented[1] - augmented[0]) / augmented[0]:+.1f} %)")
    print(f"    load_case alone: nnU-Net {load_plain:.2f} ms, AG (+ cached sampler draw) {load_ours:.2f} ms -> "
          f"{2 * (load_ours - load_plain):.2f} ms per iteration of batch 2 "
          f"({100.0 * 2 * (load_ours - load_plain) / default:+.1f} % of the default iteration)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, default=None, help="default: the test data's word_label_map.nii.gz")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--transform-iterations", type=int, default=0,
                        help="also time both loaders with nnU-Net's training augmentation (slow: ~1 s/iteration)")
    args = parser.parse_args()
    args.input = args.input or data_file_or_exit("word_label_map.nii.gz")

    labels = read_image(args.input).array
    values = word_convention().ooi_label_values()
    assert sorted(values) == [5, 9, 10, 11, 13], values
    ooi = np.isin(labels, values)
    print(f"input {args.input.name}: {labels.shape} voxels (z, y, x); OOI = WORD labels {sorted(values)}")
    bench_psm(labels, ooi, args.repeats)
    bench_loader(labels, ooi, args.cases, args.iterations, args.transform_iterations)


if __name__ == "__main__":
    main()
