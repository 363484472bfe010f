"""Which network an nnU-Net model of ours builds at prediction time, without the training package.

nnU-Net stores a trainer class name in every checkpoint and rebuilds the network through that
class's ``build_network_architecture``. Our trainers live in ``CRCTraining.trainers``, which a
Slicer with only the two module folders does not have (DESIGN.md, "A trained model never needs
``CRCTraining`` to predict"), so each of our trainer names maps to an architecture built here:

- ``nnunet_default``: nnU-Net's own network from the plans (``nnUNetTrainer.build_network_architecture``),
  the one every AG-CRC and FLARE24 trainer trains;
- ``rcsegnext``: RCSegNeXt (``networks.rcsegnext``) from the configuration's spacing and the options that
  ``crcseg rcsegnext-plans`` stores in it (``networks.rcsegnext_plans``), for every ``nnUNetTrainerRCSegNeXt*``.

A bundle of format 2 names its architecture in ``crcseg_model.json`` (``network``), so a renamed or
user-derived trainer predicts too. A trainer name we do not know is looked up the way nnU-Net does
(its own package, then ``nnUNet_extTrainer``).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

from torch import nn

NNUNET_DEFAULT = "nnunet_default"
RCSEGNEXT = "rcsegnext"

# Every prediction trainer of CRCTraining.trainers (a test holds this table against that package).
# Pretraining trainers (nnUNetTrainerAGSSL, ...SSLInpaint, ...SSLMAE) reconstruct the CT: not segmenters.
TRAINER_ARCHITECTURES: Dict[str, str] = {
    "nnUNetTrainerBaseline": NNUNET_DEFAULT,
    "nnUNetTrainerAFLoss": NNUNET_DEFAULT,
    "nnUNetTrainerAGCRC": NNUNET_DEFAULT,
    "nnUNetTrainerAGSampling": NNUNET_DEFAULT,
    "nnUNetTrainerSamplingUniform": NNUNET_DEFAULT,
    "nnUNetTrainerSamplingUniformOOI": NNUNET_DEFAULT,
    "nnUNetTrainerSamplingUniformColon": NNUNET_DEFAULT,
    "nnUNetTrainerSamplingHybridOOI": NNUNET_DEFAULT,
    "nnUNetTrainerSamplingHybridColon": NNUNET_DEFAULT,
    "nnUNetTrainerOrganInterference": NNUNET_DEFAULT,  # FLARE24: default nnU-Net network (§2.2)
    "nnUNetTrainerOrganInterferencePaperAlpha": NNUNET_DEFAULT,  # FLARE24 Eq. 3's α = 0.5 (public code: 1)
    "nnUNetTrainerOrganInterferenceAFLoss": NNUNET_DEFAULT,
    "nnUNetTrainerCRLoss": NNUNET_DEFAULT,  # HCF CR loss (Eq. 4-8) on the default network
    "nnUNetTrainerRCSegNeXt": RCSEGNEXT,
    "nnUNetTrainerRCSegNeXtPaperSchedule": RCSEGNEXT,
    "nnUNetTrainerRCSegNeXtAGCRC": RCSEGNEXT,
    "nnUNetTrainerRCSegNeXtOrganInterference": RCSEGNEXT,
}

# (plans_manager, configuration_manager, input channels, output channels) -> network without deep supervision
NetworkBuilder = Callable[[object, object, int, int], nn.Module]


def _nnunet_default(plans_manager, configuration_manager, num_input_channels: int,
                    num_output_channels: int) -> nn.Module:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    return nnUNetTrainer.build_network_architecture(
        plans_manager, configuration_manager, num_input_channels, num_output_channels, enable_deep_supervision=False
    )


def _rcsegnext(plans_manager, configuration_manager, num_input_channels: int, num_output_channels: int) -> nn.Module:
    from CRCSegmentationLib.networks.rcsegnext.plans import rcsegnext_from_plans

    return rcsegnext_from_plans(plans_manager, configuration_manager, num_input_channels, num_output_channels)


ARCHITECTURE_BUILDERS: Dict[str, NetworkBuilder] = {NNUNET_DEFAULT: _nnunet_default, RCSEGNEXT: _rcsegnext}


class UnknownArchitecture(LookupError):
    """Neither our tables nor nnU-Net know how to build the network of a trainer name."""


def architecture_for(trainer: str, declared: Optional[str] = None) -> Optional[str]:
    """The architecture name for ``trainer``: the bundle's declaration, else our table, else None."""
    if declared:
        if declared not in ARCHITECTURE_BUILDERS:
            raise UnknownArchitecture(
                f"network '{declared}' is not one this version builds ({sorted(ARCHITECTURE_BUILDERS)}); "
                "update SlicerCRC"
            )
        return declared
    return TRAINER_ARCHITECTURES.get(trainer)


def nnunet_trainer_builder(trainer: str) -> NetworkBuilder:
    """The builder of a trainer we do not know, found as nnU-Net finds it (its package, ``nnUNet_extTrainer``)."""
    import inspect

    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        trainer_class = recursive_find_trainer_class_by_name(trainer)
    except RuntimeError as error:  # nnU-Net raises RuntimeError when no folder defines the class
        raise UnknownArchitecture(
            f"the model was trained with the trainer '{trainer}', which neither SlicerCRC nor nnU-Net defines; "
            "add the folder that defines it to the nnUNet_extTrainer environment variable"
        ) from error
    takes_plans = "plans_manager" in inspect.signature(trainer_class.build_network_architecture).parameters

    def build(plans_manager, configuration_manager, num_input_channels: int, num_output_channels: int) -> nn.Module:
        if takes_plans:
            first = (plans_manager, configuration_manager)
        else:  # the older signature, which nnU-Net 2.8.1 still calls (with a deprecation warning)
            first = (configuration_manager.network_arch_class_name, configuration_manager.network_arch_init_kwargs,
                     configuration_manager.network_arch_init_kwargs_req_import)
        return trainer_class.build_network_architecture(
            *first, num_input_channels, num_output_channels, enable_deep_supervision=False
        )

    return build


def network_builder(trainer: str, declared: Optional[str] = None) -> NetworkBuilder:
    """How to build the network of a model trained with ``trainer`` (``declared``: the bundle's ``network``)."""
    architecture = architecture_for(trainer, declared)
    if architecture is not None:
        return ARCHITECTURE_BUILDERS[architecture]
    return nnunet_trainer_builder(trainer)
