"""DICOM outputs of a segmentation (L1 engine): SEG, RTSTRUCT and a TID 1500 SR, with one table of segment codes.

``codes`` and ``terminology`` use the standard library only (a widget imports them before heavy packages);
``seg``, ``rtstruct``, ``sr`` and ``export`` need pydicom and highdicom.
"""
