"""Building blocks shared by the architectures in ``networks`` (MONAI's ``networks/blocks`` split)."""
