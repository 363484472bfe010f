"""Fault catalogue rows: training inputs: hidden files, unpaired images, invalid JSON, option errors, organ names.

The inputs are what archives and interrupted copies hand over: the MSD tarballs' macOS ``._*`` files beside
every image and label, an image whose label is missing (or the reverse), JSON files cut short (plans,
dataset.json, bundle metadata, ``hcf.json``, a slice index, a checkpoint's settings), an option given the
wrong kind of file, and a misspelt organ name. Every training command fails before training starts, or
trains one iteration on three tiny phantom cases.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import List

import numpy as np
from fault_catalogue import BAD_INPUT, OK, Argv, Fault, Workspace, segment

TOPIC = "training"
APPLE_DOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "  # the start of a macOS ._* resource fork
PLANS = {"dataset_name": "Dataset951_CutPlans", "plans_name": "nnUNetPlans",
         "configurations": {"3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres", "batch_size": 2,
                                           "patch_size": [32, 80, 80], "spacing": [4.0, 2.9, 2.9]}}}
DATASET = {"channel_names": {"0": "CT", "1": "noNorm", "2": "noNorm"}, "labels": {"background": 0, "tumor": 1},
           "numTraining": 2, "file_ending": ".nii.gz"}


def _cut(path: Path, keep: float = 0.6) -> None:
    """Cut a file short, as an interrupted copy or write leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _apple_doubles(folder: Path) -> None:
    """A ``._<name>`` resource fork beside every file, and a Finder's ``.DS_Store``."""
    for path in sorted(folder.iterdir()):
        if path.is_file():
            (folder / f"._{path.name}").write_bytes(APPLE_DOUBLE)
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")


def _hcf_data(root: Path) -> None:
    """Three small phantom cases (MSD layout + organsTr) with macOS files; an unpaired copy of them."""
    from CRCTraining.data.phantoms_ct import make_phantom_dataset

    data = make_phantom_dataset(root / "hcf", 3, seed=0, shape_zyx=(24, 64, 64))
    for sub in ("imagesTr", "labelsTr"):
        _apple_doubles(data / sub)
    unpaired = root / "hcf_unpaired"
    shutil.copytree(data, unpaired)
    shutil.copy2(unpaired / "imagesTr" / "colon_001.nii.gz", unpaired / "imagesTr" / "colon_009.nii.gz")
    shutil.copy2(unpaired / "labelsTr" / "colon_002.nii.gz", unpaired / "labelsTr" / "colon_010.nii.gz")


def _slices(root: Path, inputs: Path) -> None:
    """CARE slices with macOS files beside them; a slice output folder whose index is cut short."""
    shutil.copytree(inputs / "slices", root / "slices_mac")
    _apple_doubles(root / "slices_mac")
    broken = root / "slices_index_cut"
    shutil.copytree(inputs / "slices", broken)
    _cut(broken / "usam_slices.json")


def _nnunet_workdir(root: Path) -> None:
    """nnU-Net folders: dataset 951 with a cut-short nnUNetPlans.json, 952 with a cut-short raw dataset.json."""
    work = root / "work"
    for name in ("Dataset951_CutPlans", "Dataset952_CutDataset"):
        (work / "nnUNet_raw" / name).mkdir(parents=True)
        (work / "nnUNet_raw" / name / "dataset.json").write_text(json.dumps(DATASET, indent=2))
    _cut(work / "nnUNet_raw" / "Dataset952_CutDataset" / "dataset.json")
    preprocessed = work / "nnUNet_preprocessed" / "Dataset951_CutPlans"
    preprocessed.mkdir(parents=True)
    (preprocessed / "nnUNetPlans.json").write_text(json.dumps(PLANS, indent=2))
    (preprocessed / "dataset.json").write_text(json.dumps(DATASET, indent=2))
    _cut(preprocessed / "nnUNetPlans.json")


def _bundles(root: Path) -> None:
    """Copies of the demo bundle and an HCF classifier-only bundle, each with one JSON file cut short."""
    import torch

    from CRCSegmentationLib.demo.ct import demo_model_path
    from CRCSegmentationLib.hcf.bundle import write_hcf_bundle
    from CRCSegmentationLib.hcf.preprocessing import SliceDatasetConfig
    from CRCSegmentationLib.networks.hcf import build_slice_classifier

    for name, cut in (("bundle_metadata_cut", "crcseg_model.json"), ("bundle_plans_cut", "plans.json"),
                      ("bundle_dataset_cut", "dataset.json")):
        shutil.copytree(demo_model_path(), root / name)
        _cut(root / name / cut)
    torch.manual_seed(0)
    hcf = write_hcf_bundle(root / "hcf_filter_json_cut", [build_slice_classifier(1, 2).state_dict()], [],
                           SliceDatasetConfig(size=32), name="filter")
    _cut(hcf / "hcf.json")
    (root / "not_a_bundle").mkdir()
    (root / "not_a_bundle" / "readme.txt").write_text("notes, no model\n")
    (root / "filter.pth").write_bytes(b"not a model folder")


def _label_maps(root: Path) -> None:
    """Predictions a, b and references a, c (unpaired both ways); a paired set with macOS files."""
    from OrganGuidanceLib.image import Image
    from OrganGuidanceLib.io import write_image

    mask = np.zeros((6, 12, 12), np.uint8)
    mask[2:4, 3:8, 3:8] = 1
    for folder, cases in (("predictions", "ab"), ("references", "ac"), ("predictions_mac", "a"),
                          ("references_mac", "ac")):
        for case in cases:
            write_image(Image(mask, (1.0, 1.0, 2.0)), root / folder / f"case_{case}.nii.gz")
    for folder in ("predictions_mac", "references_mac"):
        _apple_doubles(root / folder)


def make_inputs(folder: Path) -> None:
    """Write this topic's inputs into ``folder / "training"``."""
    root = folder / TOPIC
    root.mkdir(exist_ok=True)
    _hcf_data(root)
    _slices(root, folder)
    _nnunet_workdir(root)
    _bundles(root)
    _label_maps(root)
    (root / "convention_cut.json").write_text('{"1": "liver", "2": "spleen", "20": "col')


# --- argv ----------------------------------------------------------------------------------------
def _tiny_training(*extra: str) -> List[str]:
    return ["--iterations", "1", "--size", "32", "--batch-size", "2", "--fold", "all", "--device", "cpu",
            "--no-augmentation", *extra]


def hcf_train(w: Workspace, data: str = "hcf") -> Argv:
    return ["hcf-train", "classifier", "--images", w[f"{TOPIC}/{data}/imagesTr"], "--labels",
            w[f"{TOPIC}/{data}/labelsTr"], "-o", w.out(), *_tiny_training()]


def hcf_table3(w: Workspace) -> Argv:
    return ["hcf-table3", "--train-images", w[f"{TOPIC}/hcf/imagesTr"], "--train-labels", w[f"{TOPIC}/hcf/labelsTr"],
            "--test-images", w[f"{TOPIC}/hcf_unpaired/imagesTr"], "--test-labels",
            w[f"{TOPIC}/hcf_unpaired/labelsTr"], "-o", w.out(), "--classifier-ratios", "1", "--sanet-ratios", "0",
            "--iterations", "1", "--size", "32", "--device", "cpu"]


def usam_slices(w: Workspace, data: str = "hcf", output: str = "") -> Argv:
    return ["usam-slices", "--images", w[f"{TOPIC}/{data}/imagesTr"], "--labels", w[f"{TOPIC}/{data}/labelsTr"],
            "--tumor-label", "1", "-o", output or w.out()]


def nnunet(command: str, *extra: str):
    return lambda w: [command, "-d", "951", "--workdir", w.out("work"), *extra]


def copy_workdir(w: Workspace) -> None:
    shutil.copytree(w[f"{TOPIC}/work"], w.out("work"))


def slice_filter(target: str):
    return lambda w: segment(w, "demo_phantom", "--slice-filter", w[f"{TOPIC}/{target}"])


def prepare_interference(w: Workspace, *organs: str) -> Argv:
    return ["prepare", w[f"{TOPIC}/hcf"], "-d", "953", "--name", "Interference", "--workdir", w.out("work"),
            "--organs", w[f"{TOPIC}/hcf/organsTr"], "--labels", "organ-interference", "--interference-organs",
            *organs, "--device", "cpu"]


def engine_sidecar_cut(w: Workspace) -> None:
    """A run folder whose checkpoint settings sidecar was cut short (the checkpoint itself is never read)."""
    run = w.row / "out"
    run.mkdir()
    (run / "checkpoint_latest.pt").write_bytes(b"a checkpoint")
    (run / "checkpoint_latest.json").write_text('{"settings": {"stage": "classifier", "lr": 0.0')


ROWS: List[Fault] = [
    # hidden files (the MSD archives' ._* and .DS_Store) are ignored, as prepare and segment ignore them
    Fault("training-hcf-train-macos-files", hcf_train, OK, ("hcf classifier", "1 iterations")),
    Fault("training-usam-slices-macos-files", usam_slices, OK, ("slices in",)),
    Fault("training-hcf-train-npz-macos-files", lambda w: ["hcf-train", "classifier", "--npz", w[f"{TOPIC}/slices_mac"],
                                                           "-o", w.out(), *_tiny_training()], OK, ("hcf classifier",)),
    Fault("training-evaluate-macos-files", lambda w: ["evaluate", w[f"{TOPIC}/predictions_mac"],
                                                      w[f"{TOPIC}/references_mac"], "-o", w.out(),
                                                      "--missing-predictions", "empty"],
          OK, ("label 1, 2 cases",)),
    # unpaired images and labels are refused with their names
    Fault("training-hcf-train-unpaired", lambda w: hcf_train(w, "hcf_unpaired"), BAD_INPUT,
          ("--images", "colon_009.nii.gz", "without a label map", "colon_010.nii.gz", "without an image")),
    Fault("training-hcf-table3-unpaired-test-set", hcf_table3, BAD_INPUT, ("--test-images", "colon_009.nii.gz")),
    Fault("training-usam-slices-unpaired", lambda w: usam_slices(w, "hcf_unpaired"), BAD_INPUT,
          ("colon_009.nii.gz", "without a label map"), unchanged=("out",)),
    Fault("training-evaluate-unpaired", lambda w: ["evaluate", w[f"{TOPIC}/predictions"], w[f"{TOPIC}/references"],
                                                   "-o", w.out()],
          BAD_INPUT, ("case_b.nii.gz", "without a reference", "case_c.nii.gz", "without a prediction",
                      "--missing-predictions")),
    Fault("training-flare24-ablation-unpaired-test-set", lambda w: [
        "flare24-ablation", w[f"{TOPIC}/hcf"], w[f"{TOPIC}/hcf_unpaired"], "-o", w.out(), "-d", "954", "--organs",
        w[f"{TOPIC}/hcf/organsTr"], "--test-organs", w[f"{TOPIC}/hcf_unpaired/organsTr"], "--device", "cpu"],
          BAD_INPUT, ("colon_009.nii.gz", "colon_010.nii.gz")),
    # every JSON a command reads: not valid -> exit 2, the file named
    Fault("training-train-plans-cut-short", nnunet("train", "--device", "cpu"), BAD_INPUT,
          ("nnUNetPlans.json", "not valid json", "ends early"), unchanged=("work",), prepare=copy_workdir),
    Fault("training-train-baseline-plans-cut-short", nnunet("train", "--trainer", "nnUNetTrainerBaseline", "--device",
                                                            "cpu"),
          BAD_INPUT, ("nnUNetPlans.json", "not valid json"), unchanged=("work",), prepare=copy_workdir),
    Fault("training-rcsegnext-plans-cut-short", nnunet("rcsegnext-plans"), BAD_INPUT,
          ("nnUNetPlans.json", "not valid json"), unchanged=("work",), prepare=copy_workdir),
    Fault("training-plan-dataset-json-cut-short", lambda w: ["plan", "-d", "952", "--workdir", w.out("work")],
          BAD_INPUT, ("Dataset952_CutDataset", "dataset.json", "not valid json"), unchanged=("work",),
          prepare=copy_workdir),
    Fault("training-prepare-convention-cut-short", lambda w: [
        "prepare", w[f"{TOPIC}/hcf"], "-d", "955", "--name", "X", "--workdir", w.out("work"), "--organs",
        w[f"{TOPIC}/hcf/organsTr"], "--convention", w[f"{TOPIC}/convention_cut.json"]],
          BAD_INPUT, ("convention_cut.json", "not valid json")),
    Fault("training-segment-bundle-metadata-cut-short", lambda w: segment(w, w[f"{TOPIC}/bundle_metadata_cut"]),
          BAD_INPUT, ("crcseg_model.json", "not valid json")),
    Fault("training-segment-bundle-plans-cut-short", lambda w: segment(w, w[f"{TOPIC}/bundle_plans_cut"]),
          BAD_INPUT, ("plans.json", "not valid json")),
    Fault("training-segment-bundle-dataset-json-cut-short", lambda w: segment(w, w[f"{TOPIC}/bundle_dataset_cut"]),
          BAD_INPUT, ("dataset.json", "not valid json")),
    Fault("training-segment-hcf-json-cut-short", lambda w: segment(w, w[f"{TOPIC}/hcf_filter_json_cut"]),
          BAD_INPUT, ("hcf.json", "not valid json")),
    Fault("training-usam-slices-index-cut-short", lambda w: usam_slices(w, output=w[f"{TOPIC}/slices_index_cut"]),
          BAD_INPUT, ("usam_slices.json", "not valid json")),
    Fault("training-hcf-train-checkpoint-settings-cut-short", hcf_train, BAD_INPUT,
          ("checkpoint_latest.json", "not valid json"), unchanged=("out",), prepare=engine_sidecar_cut),
    # each option's errors name that option
    Fault("training-slice-filter-not-a-bundle", slice_filter("not_a_bundle"), BAD_INPUT,
          ("--slice-filter", "not a model bundle", "hcf bundle")),
    Fault("training-slice-filter-a-file", slice_filter("filter.pth"), BAD_INPUT,
          ("--slice-filter", "filter.pth", "is a file")),
    Fault("training-slice-filter-hcf-json-cut-short", slice_filter("hcf_filter_json_cut"), BAD_INPUT,
          ("--slice-filter", "hcf.json", "not valid json")),
    Fault("training-train-pretrained-a-folder", lambda w: ["train", "-d", "951", "--workdir", w.out("work"),
                                                           "--pretrained", w[TOPIC]],
          BAD_INPUT, ("--pretrained", "is a folder")),
    Fault("training-usam-train-sam-checkpoint-a-folder", lambda w: [
        "usam-train", w["slices"], "-o", w.out(), "--sam-checkpoint", w[TOPIC], "--iterations", "1", "--device", "cpu"],
          BAD_INPUT, ("--sam-checkpoint", "is a folder")),
    Fault("training-hcf-train-npz-a-file", lambda w: ["hcf-train", "classifier", "--npz", w[f"{TOPIC}/filter.pth"],
                                                      "-o", w.out(), *_tiny_training()],
          BAD_INPUT, ("--npz", "is a file")),
    # unknown organ names: refused, the closest known names suggested
    Fault("training-interference-organs-typo", lambda w: prepare_interference(w, "liver", "spleen", "livr"),
          BAD_INPUT, ("--interference-organs", "'livr'", "did you mean 'liver'")),
    Fault("training-interference-organs-two-typos",
          lambda w: prepare_interference(w, "pancreaz", "spleen", "kidny_left"),
          BAD_INPUT, ("'pancreaz'", "'pancreas'", "'kidny_left'", "'kidney_left'")),
]
