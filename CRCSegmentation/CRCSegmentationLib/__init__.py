"""Headless tumor-segmentation engine: model bundles, inference, U-SAM, metrics, MRML glue.

Builds on ``OrganGuidanceLib`` (never the other way round).
"""
__version__ = "0.1.0"
