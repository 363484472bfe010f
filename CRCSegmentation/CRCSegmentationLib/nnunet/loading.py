"""Load a trained nnU-Net model into a predictor, without the training package and without pickle.

nnU-Net's ``initialize_from_trained_model_folder`` finds the network through the trainer class
named in the checkpoint (which needs ``CRCTraining`` for ours) and unpickles checkpoints with
``weights_only=False`` (a tampered file could run code). This does the same steps with the
network from ``networks.nnunet_architectures`` and the weights-only ``load_checkpoint``, then hands
everything to nnU-Net's own ``manual_initialization``.
"""
from __future__ import annotations

from CRCSegmentationLib.core.checkpoints import load_checkpoint
from CRCSegmentationLib.core.errors import ModelError
from CRCSegmentationLib.core.model import ModelSource
from CRCSegmentationLib.networks.nnunet_architectures import UnknownArchitecture, network_builder
from OrganGuidanceLib.json_files import read_json


def initialize_predictor(predictor, model: ModelSource) -> None:
    """Give ``predictor`` (an ``nnUNetPredictor``) the network and weights of ``model``'s folds."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dataset_json = read_json(model.folder / "dataset.json", error=ModelError)
    plans_manager = PlansManager(read_json(model.folder / "plans.json", error=ModelError))
    checkpoints = [model.loaded_checkpoints.get(path) or load_checkpoint(path) for path in model.checkpoint_paths()]
    first = checkpoints[0]
    trainer = first["trainer_name"]
    configuration_manager = plans_manager.get_configuration(first["init_args"]["configuration"])
    try:
        build = network_builder(trainer, model.network)
    except UnknownArchitecture as error:
        raise ModelError(f"{model.folder}: {error}") from error
    network = build(
        plans_manager, configuration_manager,
        determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads,
    )
    parameters = [checkpoint["network_weights"] for checkpoint in checkpoints]
    network.load_state_dict(parameters[0])  # as nnU-Net does (its issue 2520): a single fold runs as loaded
    predictor.manual_initialization(network, plans_manager, configuration_manager, parameters, dataset_json,
                                    trainer, first.get("inference_allowed_mirroring_axes"))
