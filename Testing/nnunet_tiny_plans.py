"""A tiny nnU-Net v2 plans dict (3-stage PlainConvUNet, 4-16 features) for building real trainers in tests."""
from __future__ import annotations

from typing import Sequence


def tiny_plans(dataset_name: str, shape: Sequence[int], spacing: Sequence[float], patch: Sequence[int],
               kernel_sizes: Sequence[Sequence[int]], strides: Sequence[Sequence[int]],
               batch_dice: bool = False) -> dict:
    """Plans for a CT + MOS + OOI dataset of cases of ``shape`` at ``spacing`` (z, y, x), nnU-Net 2.8.1 layout."""
    conv = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": "torch.nn.modules.conv.Conv3d",
                            "kernel_sizes": [list(k) for k in kernel_sizes], "strides": [list(s) for s in strides],
                            "n_conv_per_stage": [1, 1, 1], "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
                            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    return {"dataset_name": dataset_name, "plans_name": "nnUNetPlans",
            "original_median_spacing_after_transp": list(spacing), "original_median_shape_after_transp": list(shape),
            "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": {},
            "configurations": {"3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2, "patch_size": list(patch), "median_image_size_in_voxels": list(shape),
                "spacing": list(spacing), "normalization_schemes": ["CTNormalization", "NoNormalization",
                                                                    "NoNormalization"],
                "use_mask_for_norm": [False, False, False], "architecture": conv, "batch_dice": batch_dice}},
            "continue_training": False}
