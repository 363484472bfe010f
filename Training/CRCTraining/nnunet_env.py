"""Deprecated module path, kept for one release (removed in SlicerCRC 0.2.0): moved to ``CRCTraining.nnunet.env``."""
import warnings

from CRCTraining.nnunet.env import (  # noqa: F401 - re-exported from its old home
    TRAINERS_FOLDER,
    NNUNetPaths,
    configure,
    dataset_name,
    register_trainers,
)

warnings.warn("CRCTraining.nnunet_env is deprecated (removed in 0.2.0): import CRCTraining.nnunet.env",
              DeprecationWarning, stacklevel=2)
