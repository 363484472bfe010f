"""DICOM outputs of a segmentation (L1 engine): SEG, RTSTRUCT and a TID 1500 SR, with one table of segment codes.

``codes`` and ``terminology`` use the standard library only (a widget imports them before heavy packages);
``seg``, ``rtstruct``, ``sr`` and ``export`` need pydicom and highdicom.
"""

# Output type (``crcseg segment --output-type``) -> the ending of its file ``<case><ending>``; the one list of the
# DICOM outputs (batch.OUTPUT_TYPES and the files a batch owns, and the writer, read it).
FILE_ENDINGS = {"dicom-seg": "_seg.dcm", "rtstruct": "_rtstruct.dcm", "sr": "_sr.dcm"}
