"""The errors of model handling: what every kind raises (standard library only)."""
from __future__ import annotations

from OrganGuidanceLib.validation import InputError


class BundleError(ValueError):
    """A model bundle is incomplete, inconsistent or corrupt; the message names the file."""


class ModelError(BundleError, InputError):
    """A model folder cannot be used; the message names the folder or file and the problem."""
