"""Headless anatomy-guidance engine (AG-CRC Algorithm 1, §III-D; FLARE24 body crop).

Importable with no Slicer and no Qt. Submodules are imported where needed so that
a Slicer session can load the module before optional dependencies are installed.
"""
__version__ = "0.1.0"
