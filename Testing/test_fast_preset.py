"""FLARE24's fast inference preset (tile step 7/8, no mirroring) against nnU-Net's default, and the
efficiency measures every run reports."""
from __future__ import annotations

import numpy as np
import pytest

from CRCSegmentationLib.core.segmentation import PRESETS, SegmentationParameters
from CRCSegmentationLib.models.open import open_model
from OrganGuidanceLib.guidance import GuidanceParameters, MOSSource, run_guidance
from OrganGuidanceLib.labels import totalsegmentator_convention
from OrganGuidanceLib.phantom import make_abdominal_phantom
from OrganGuidanceLib.validation import InputError


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.sum(a & b) / max(1, a.sum() + b.sum())


def test_presets_and_their_errors():
    fast = SegmentationParameters.for_preset("fast", device="cpu")
    assert (fast.tile_step_size, fast.mirroring, fast.device) == (0.875, False, "cpu")
    assert SegmentationParameters.for_preset("default") == SegmentationParameters()
    assert SegmentationParameters.for_preset("fast", mirroring=True).mirroring  # fields on top of the preset
    assert set(PRESETS) == {"default", "fast"}
    with pytest.raises(InputError, match="preset 'turbo'"):
        SegmentationParameters.for_preset("turbo")


def test_fast_preset_runs_fewer_tiles_and_agrees_with_the_default():
    phantom = make_abdominal_phantom()
    guidance = run_guidance(phantom.ct, [MOSSource(phantom.labels, totalsegmentator_convention())], GuidanceParameters())
    model = open_model("demo_phantom")
    default = model.segmenter(SegmentationParameters.for_preset("default", device="cpu")).segment(phantom.ct, guidance)
    fast = model.segmenter(SegmentationParameters.for_preset("fast", device="cpu")).segment(phantom.ct, guidance)
    agreement = dice(default.mask.array > 0, fast.mask.array > 0)
    print(f"tiles {default.tiles} -> {fast.tiles}; model time {default.efficiency['wall_s']} s -> "
          f"{fast.efficiency['wall_s']} s; Dice between them {agreement:.3f}")
    assert fast.tiles[0] < default.tiles[0] and fast.tiles[1] < default.tiles[1]
    assert default.mask.array.sum() > 0 and agreement >= 0.9
    for result in (default, fast):  # on the CPU: wall time and peak resident memory of the model run
        assert set(result.efficiency) == {"wall_s", "peak_rss_mb"}
        assert 0 < result.efficiency["wall_s"] <= result.timings["predict"] + 0.5
        assert result.efficiency["peak_rss_mb"] > 100  # torch + nnU-Net + the model are resident
    assert fast.efficiency["wall_s"] < default.efficiency["wall_s"]
