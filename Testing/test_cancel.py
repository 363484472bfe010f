"""Cancel takes effect between sliding-window tiles, and a cancelled segmenter still works afterwards."""
from __future__ import annotations

import threading
import time

import pytest

from CRCSegmentationLib.core.segmentation import SegmentationParameters
from CRCSegmentationLib.models.open import open_model
from OrganGuidanceLib.guidance import GuidanceParameters, MOSSource, run_guidance
from OrganGuidanceLib.labels import totalsegmentator_convention
from OrganGuidanceLib.phantom import make_abdominal_phantom
from OrganGuidanceLib.progress import RunCancelled


@pytest.fixture(scope="module")
def case():
    phantom = make_abdominal_phantom()
    guidance = run_guidance(phantom.ct, [MOSSource(phantom.labels, totalsegmentator_convention())], GuidanceParameters())
    return phantom, guidance


@pytest.fixture(scope="module")
def segmenter():
    # Every tile of the box (36 on the phantom), no mirroring: about 0.2 s a tile on 2 CPU cores.
    return open_model("demo_phantom").segmenter(SegmentationParameters(device="cpu", min_tile_weight=0.0,
                                                                       mirroring=False))


def test_cancel_stops_the_sliding_window_between_tiles(case, segmenter):
    phantom, guidance = case
    cancel = threading.Event()
    stages, set_at = [], []

    def press_cancel() -> None:
        set_at.append(time.perf_counter())
        cancel.set()

    def cancel_when_the_model_runs(stage: str, fraction: float) -> None:
        stages.append(stage)
        if stage == "tumor model":
            threading.Timer(1.0, press_cancel).start()  # 1 s into the sliding window

    with pytest.raises(RunCancelled, match="sliding window"):
        segmenter.segment(phantom.ct, guidance, progress=cancel_when_the_model_runs, cancel=cancel)
    latency = time.perf_counter() - set_at[0]
    predictor = segmenter._predictor(segmenter.device)
    assert predictor.cancel is None  # not left armed for the next run
    assert "post-processing" not in stages
    start = time.perf_counter()
    result = segmenter.segment(phantom.ct, guidance)  # the same segmenter still works, to the end
    full = time.perf_counter() - start
    assert result.mask.array.sum() > 0 and predictor.tiles_run == predictor.tiles_total == 36
    # Cancel waits at most for the tile that is running (about full / 36), not for the whole window.
    print(f"cancel took effect after {latency:.2f} s; a full run takes {full:.1f} s")
    assert latency < 1.0 and latency < 0.25 * full, (latency, full)
