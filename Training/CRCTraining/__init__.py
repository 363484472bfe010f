"""Headless training package: dataset preparation, nnU-Net v2 trainer variants, evaluation, export.

Top of the dependency chain: ``OrganGuidanceLib`` <- ``CRCSegmentationLib`` <- ``CRCTraining``.
"""
__version__ = "0.1.0"
