"""The panel's logic opens and verifies a model once per model choice, and again only when its files change."""
from __future__ import annotations

import os

import pytest

from CRCSegmentationLib.core.errors import ModelError
from CRCSegmentationLib.core.segmentation import SegmentationParameters
from CRCSegmentationLib.demo.ct import demo_model_path
from CRCSegmentationLib.models.cache import ModelCache


def test_a_model_is_opened_once_until_a_file_changes(tmp_path):
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(demo_model_path(), bundle)
    cache = ModelCache()
    first = cache.open(str(bundle))
    assert cache.open(str(bundle)) is first and cache.opened == 1
    parameters = SegmentationParameters(device="cpu")
    segmenter = cache.segmenter(first, parameters)
    assert cache.segmenter(first, SegmentationParameters(device="cpu")) is segmenter  # equal parameters: reused
    assert cache.segmenter(first, SegmentationParameters(device="cpu", mirroring=False)) is not segmenter
    checkpoint = bundle / "fold_all" / "checkpoint_final.pth"
    stat = checkpoint.stat()
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file was replaced
    second = cache.open(str(bundle))
    assert second is not first and cache.opened == 2
    with open(checkpoint, "r+b") as stream:  # and a changed file is verified again: refused
        stream.seek(1000)
        stream.write(b"\x00" * 16)
    with pytest.raises(ModelError, match="SHA-256"):
        cache.open(str(bundle))
