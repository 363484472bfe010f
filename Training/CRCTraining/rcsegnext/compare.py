"""``crcseg rcsegnext-compare``: RCSegNeXt against nnU-Net's default 3D network on the same plans (paper Table 1).

Both networks come from one nnU-Net configuration (``3d_fullres_rcsegnext``: the same spacing,
normalisation, patch and batch; ``crcseg rcsegnext-plans`` fits the patch to both networks' poolings)
and get the same short schedule. Reported per network:

- parameters, and multiply-accumulates for one patch (``torch.utils.flop_counter``: FLOPs / 2);
- seconds per training iteration on one batch of the plans' size (forward, loss, backward, nnU-Net's SGD
  step), measured here on synthetic batches so that data loading does not blur the networks' cost;
- after training both with ``nnUNetTrainerRCSegNeXt`` and ``nnUNetTrainerBaseline`` (nnU-Net's default
  network, deep supervision and all) for the same epochs: seconds per case of sliding-window inference
  and Dice per class on the fold's validation cases.

The paper reports 2.76 M against 3D nnU-Net's 64.01 M parameters on its Dataset A plans (Table 1).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from CRCTraining.rcsegnext.configuration import RCSEGNEXT_CONFIGURATION
from OrganGuidanceLib.atomic import write_text_atomic
from OrganGuidanceLib.case_folders import image_files, image_stem
from OrganGuidanceLib.json_files import read_json

ARMS = {"RCSegNeXt": "nnUNetTrainerRCSegNeXt", "nnU-Net 3D": "nnUNetTrainerBaseline"}
REPORT_FILE = "rcsegnext_comparison.json"


@dataclass
class NetworkFigures:
    network: str
    trainer: str
    parameters: int = 0
    macs_per_patch: float = 0.0
    seconds_per_training_iteration: float = 0.0
    seconds_per_case: List[float] = field(default_factory=list)
    dice_per_class: Dict[str, float] = field(default_factory=dict)  # mean over validation cases


@dataclass
class Comparison:
    dataset: str
    configuration: str
    patch_size: List[int]
    batch_size: int
    device: str
    epochs: int
    iterations: int
    networks: List[NetworkFigures]

    def table(self) -> str:
        """The figures side by side, with RCSegNeXt / nnU-Net ratios."""
        ours, base = self.networks
        classes = list(ours.dice_per_class)
        header = ["", *(n.network for n in self.networks), "ratio"]
        rows = [
            ["parameters (M)", *(f"{n.parameters / 1e6:.3f}" for n in self.networks),
             f"{ours.parameters / base.parameters:.3f}"],
            ["GMACs per patch", *(f"{n.macs_per_patch / 1e9:.2f}" for n in self.networks),
             f"{ours.macs_per_patch / base.macs_per_patch:.3f}"],
            ["s per training iteration", *(f"{n.seconds_per_training_iteration:.3f}" for n in self.networks),
             f"{ours.seconds_per_training_iteration / base.seconds_per_training_iteration:.3f}"],
        ]
        if ours.seconds_per_case and base.seconds_per_case:
            mean = [float(np.mean(n.seconds_per_case)) for n in self.networks]
            rows.append(["s per case (inference)", *(f"{m:.2f}" for m in mean), f"{mean[0] / mean[1]:.3f}"])
        for name in classes:
            rows.append([f"Dice {name}", *(f"{n.dice_per_class.get(name, float('nan')):.3f}" for n in self.networks), ""])
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        lines = [f"{self.dataset} {self.configuration}: patch {self.patch_size}, batch {self.batch_size}, "
                 f"{self.device}, {self.epochs} epochs x {self.iterations} iterations"]
        for row in [header, *rows]:
            lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
        return "\n".join(lines)


def multiply_accumulates(network: torch.nn.Module, sample: torch.Tensor) -> float:
    """MACs of one forward pass (``FlopCounterMode`` counts 2 FLOPs per multiply-accumulate)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        network(sample)
    return counter.get_total_flops() / 2.0


def seconds_per_iteration(network: torch.nn.Module, batch: torch.Tensor, classes: int, device: torch.device,
                          iterations: int = 3) -> float:
    """Mean wall time of a training step (forward, CE, backward, SGD as nnU-Net's) after one warm-up step."""
    network = network.to(device).train()
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    batch = batch.to(device)
    target = torch.randint(0, classes, (batch.shape[0], *batch.shape[2:]), device=device)
    loss_function = torch.nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        output = network(batch)
        output = output[0] if isinstance(output, (list, tuple)) else output
        loss_function(output, target).backward()
        optimizer.step()

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iterations


def _networks(plans_manager, configuration_manager, channels: int, classes: int) -> Dict[str, torch.nn.Module]:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from CRCSegmentationLib.networks.rcsegnext.plans import rcsegnext_from_plans

    return {
        "RCSegNeXt": rcsegnext_from_plans(plans_manager, configuration_manager, channels, classes),
        # nnU-Net trains its default network with deep supervision: its training cost includes those heads.
        "nnU-Net 3D": nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, channels,
                                                               classes, enable_deep_supervision=True),
    }


def validation_cases(dataset_id: int, fold: str) -> List[str]:
    """The fold's validation cases from nnU-Net's ``splits_final.json`` (written when training starts);
    fold ``all`` trains on every case, so every case is evaluated (training cases: only a smoke figure)."""
    from CRCTraining.nnunet.env import dataset_name

    name = dataset_name(dataset_id)
    if fold == "all":
        ending = read_json(Path(os.environ["nnUNet_raw"]) / name / "dataset.json").get("file_ending", ".nii.gz")
        labels = Path(os.environ["nnUNet_raw"]) / name / "labelsTr"
        return [image_stem(p, ending) for p in image_files(labels, ending)]  # hidden files (macOS ._*) ignored
    splits = read_json(Path(os.environ["nnUNet_preprocessed"]) / name / "splits_final.json", expect=list)
    return list(splits[int(fold)]["val"])


def evaluate_fold(model_folder: Path, fold: str, cases: Sequence[str], labels: Dict[str, int], device: torch.device,
                  mirroring: bool = False) -> tuple:
    """(seconds per case, mean Dice per class) of nnU-Net's predictor on raw cases of the dataset."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from CRCTraining.nnunet.env import register_trainers

    register_trainers()
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                                perform_everything_on_device=device.type == "cuda", device=device, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_folder), (int(fold) if fold.isdigit() else fold,),
                                                   "checkpoint_final.pth")
    raw = Path(os.environ["nnUNet_raw"]) / model_folder.parent.name
    ending = predictor.dataset_json.get("file_ending", ".nii.gz")
    channels = len(predictor.dataset_json["channel_names"])
    io = SimpleITKIO()
    seconds, dice = [], {name: [] for name, value in labels.items() if value != 0}
    for case in tqdm(cases, desc=f"predict {model_folder.name.split('__')[0]}", unit="case"):
        images = [str(raw / "imagesTr" / f"{case}_{c:04d}{ending}") for c in range(channels)]
        data, properties = io.read_images(images)
        reference, _ = io.read_seg(str(raw / "labelsTr" / f"{case}{ending}"))
        start = time.perf_counter()
        prediction = predictor.predict_single_npy_array(data, properties)
        seconds.append(time.perf_counter() - start)
        for name in dice:
            p, r = prediction == labels[name], reference[0] == labels[name]
            total = int(p.sum() + r.sum())
            dice[name].append(1.0 if total == 0 else 2.0 * float((p & r).sum()) / total)
    return seconds, {name: float(np.mean(values)) for name, values in dice.items() if values}


def compare(dataset_id: int, configuration: str = RCSEGNEXT_CONFIGURATION, fold: str = "0", epochs: int = 2,
            iterations: int = 5, device: str = "auto", timing_iterations: int = 3, train_networks: bool = True,
            output: Optional[Path] = None) -> Comparison:
    """Measure both networks; train them with the same schedule and evaluate them on the fold when asked."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from CRCTraining.nnunet.env import dataset_name
    from CRCTraining.nnunet.export import trained_model_folder
    from CRCTraining.nnunet.train import train
    from CRCTraining.rcsegnext.configuration import plans_file
    from OrganGuidanceLib.device import resolve_device
    from OrganGuidanceLib.validation import InputError

    name = dataset_name(dataset_id)
    plans_path = plans_file(dataset_id)
    if not plans_path.is_file():
        raise InputError(f"{plans_path}: no plans; run `crcseg plan -d {dataset_id} --rcsegnext` first")
    plans_manager = PlansManager(str(plans_path))
    if configuration not in plans_manager.available_configurations:
        raise InputError(f"{plans_path}: no configuration '{configuration}'; run `crcseg rcsegnext-plans -d "
                         f"{dataset_id}` first")
    configuration_manager = plans_manager.get_configuration(configuration)
    from CRCTraining.rcsegnext.configuration import default_network_divisor

    divisor = default_network_divisor(configuration_manager.configuration)
    if any(p % d for p, d in zip(configuration_manager.patch_size, divisor)):
        raise InputError(f"{plans_path}: the patch {list(configuration_manager.patch_size)} of '{configuration}' is "
                         f"not divisible by nnU-Net's network's downsampling {list(divisor)}, so the two networks "
                         "cannot train on the same patches; rerun `crcseg rcsegnext-plans` without --patch-size")
    dataset_json = read_json(plans_path.parent / "dataset.json")
    torch_device = resolve_device(device)
    patch, batch_size = list(configuration_manager.patch_size), int(configuration_manager.batch_size)
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    in_channels = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    classes = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    figures = []
    for network_name, network in _networks(plans_manager, configuration_manager, in_channels, classes).items():
        sample = torch.randn(1, in_channels, *patch)
        macs = multiply_accumulates(network.eval(), sample)
        batch = torch.randn(batch_size, in_channels, *patch)
        figures.append(NetworkFigures(
            network_name, ARMS[network_name], sum(p.numel() for p in network.parameters()), macs,
            seconds_per_iteration(network, batch, classes, torch_device, timing_iterations)))
        del network
    if train_networks:
        from CRCTraining.nnunet.mixins import ENV_FINAL_VALIDATION

        labels = {str(k): int(v) for k, v in dataset_json["labels"].items()}
        saved = os.environ.get(ENV_FINAL_VALIDATION)
        os.environ[ENV_FINAL_VALIDATION] = "0"  # our own evaluation below, the same for both
        try:
            for entry in tqdm(figures, desc="train + evaluate", unit="network"):
                train(dataset_id, entry.trainer, fold, configuration, device=device, epochs=epochs,
                      iterations=iterations, val_iterations=1)
                cases = validation_cases(dataset_id, fold)
                folder = trained_model_folder(Path(os.environ["nnUNet_results"]), name, entry.trainer, configuration)
                entry.seconds_per_case, entry.dice_per_class = evaluate_fold(folder, fold, cases, labels,
                                                                             torch_device)
        finally:
            if saved is None:
                os.environ.pop(ENV_FINAL_VALIDATION, None)
            else:
                os.environ[ENV_FINAL_VALIDATION] = saved
    result = Comparison(name, configuration, patch, batch_size, torch_device.type, epochs, iterations, figures)
    if output is not None:
        write_text_atomic(Path(output), json.dumps(asdict(result), indent=2))
    return result
