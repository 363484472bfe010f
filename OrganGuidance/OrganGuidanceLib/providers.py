"""Where multi-organ segmentations (MOS) come from.

- ``TotalSegmentatorProvider``: TotalSegmentator's Python API, task ``total``
  (AG-CRC §III-B uses TotalSegmentator as its MOS model), or the same in a
  subprocess so a GUI stays responsive and a run can be cancelled.
- ``ImportedLabelMapProvider``: an existing label map (file or in memory), e.g.
  a WORD-style model's output (Algorithm 1's second source).

TotalSegmentator downloads weights on first use; with no network it fails after
a long wait with a ``ConnectionError``. We check the weight folders first and
raise ``MissingWeightsError`` that says how to install them.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from OrganGuidanceLib.guidance import MOSSource
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.io import read_image, write_image
from OrganGuidanceLib.labels import (
    DEFAULT_ORGAN_SET,
    ORGAN_SETS,
    LabelConvention,
    load_convention,
    totalsegmentator_convention,
)
from OrganGuidanceLib.progress import RunCancelled, run_cancellable  # noqa: F401 - their old home, kept until 0.2.0
from OrganGuidanceLib.validation import InputError

TASK = "total"


class MissingWeightsError(RuntimeError):
    """TotalSegmentator's model weights are not installed where it looks for them."""


def totalsegmentator_roi_subset(organ_set: str = DEFAULT_ORGAN_SET, extra: Sequence[str] = ()) -> List[str]:
    """TotalSegmentator class names for an organ set (rectum lies inside ``colon``)."""
    convention = totalsegmentator_convention()
    names = {convention.labels[v] for v in convention.ooi_label_values(ORGAN_SETS[organ_set])}
    return sorted(names | set(extra))


def required_weight_folders(fast: bool = True, roi_subset: Optional[Sequence[str]] = None) -> List[str]:
    """Dataset folder names TotalSegmentator 2.x needs for task ``total`` with these options.

    Mirrors ``python_api.totalsegmentator``: the sub-model(s) of the mode, plus the
    6 mm model (298) it runs first to crop when ``roi_subset`` is given.
    """
    from totalsegmentator.map_tasks_config import TASK_CONFIGS, TASK_ID_WEIGHTS_CONFIGS

    task_ids = TASK_CONFIGS[TASK]["sub_modes"]["fast" if fast else "default"]["task_id"]
    task_ids = list(task_ids) if isinstance(task_ids, (list, tuple)) else [task_ids]
    if roi_subset and not fast:
        # Only the part models that contain a requested organ run (nnunet.py, "Computing parts").
        from totalsegmentator.map_to_binary import class_map_5_parts, map_taskid_to_partname_ct

        wanted = set(roi_subset)
        task_ids = [t for t in task_ids if wanted & set(class_map_5_parts[map_taskid_to_partname_ct[t]].values())]
    if roi_subset:
        task_ids.append(298)
    folders = []
    for task_id in task_ids:
        info = TASK_ID_WEIGHTS_CONFIGS[task_id]
        folder = Path(info.get("rel_path") or "") / info["foldername"]
        folders.append(str(folder))
    return folders


def weights_dir() -> Path:
    # TotalSegmentator's own resolution of TOTALSEG_WEIGHTS_PATH / TOTALSEG_HOME_DIR.
    from totalsegmentator.config import get_weights_dir

    return Path(get_weights_dir())


def check_totalsegmentator_weights(fast: bool = True, roi_subset: Optional[Sequence[str]] = None) -> Path:
    """Raise ``MissingWeightsError`` unless every weight folder the run needs is installed."""
    try:
        folders = required_weight_folders(fast, roi_subset)
    except ImportError as error:
        raise MissingWeightsError(
            "TotalSegmentator is not installed: pip install TotalSegmentator "
            "(or import organ masks from a file or an existing segmentation instead)"
        ) from error
    root = weights_dir()
    missing = [f for f in folders if not (root / f).is_dir()]
    if missing:
        raise MissingWeightsError(
            f"TotalSegmentator weights are missing in {root}: {', '.join(missing)}. "
            f"Install them on a machine with internet access with "
            f"`totalseg_download_weights -t {TASK}{'_fast' if fast else ''}` "
            f"(or copy the folders there; set TOTALSEG_WEIGHTS_PATH to use another folder), "
            "or import organ masks from a file or an existing segmentation instead."
        )
    return root


@dataclass
class TotalSegmentatorProvider:
    """MOS from TotalSegmentator v2, task ``total``, limited to the organs needed."""

    organ_set: str = DEFAULT_ORGAN_SET
    fast: bool = True  # 3 mm model: minutes on CPU instead of tens of minutes
    device: str = "auto"  # one of choices.DEVICES
    extra_organs: Sequence[str] = ("urinary_bladder",)  # context for the MOS channel
    convention: LabelConvention = field(default_factory=totalsegmentator_convention)

    @property
    def roi_subset(self) -> List[str]:
        return totalsegmentator_roi_subset(self.organ_set, self.extra_organs)

    def totalsegmentator_device(self) -> str:
        """TotalSegmentator's ``--device``: ``gpu`` (CUDA), ``mps`` or ``cpu``; ``auto`` as ``device.resolve_device``."""
        device = self.device
        if device == "auto":
            from OrganGuidanceLib.device import resolve_device

            device = resolve_device(device).type
        return {"cuda": "gpu"}.get(device, device)  # TotalSegmentator's name for CUDA; mps and cpu as they are

    def command(self, input_path: Path, output_path: Path) -> List[str]:
        """The equivalent ``TotalSegmentator`` command line, run by ``segment_in_subprocess``."""
        executable = shutil.which("TotalSegmentator", path=str(Path(sys.executable).parent)) or shutil.which(
            "TotalSegmentator"
        )
        if executable is None:
            raise MissingWeightsError("the TotalSegmentator command is not installed: pip install TotalSegmentator")
        command = [executable, "-i", str(input_path), "-o", str(output_path), "--ml", "--task", TASK]
        command += ["--roi_subset", *self.roi_subset, "--device", self.totalsegmentator_device()]
        return command + (["--fast"] if self.fast else [])

    def segment(self, ct: Image) -> MOSSource:
        """Run TotalSegmentator in this process (console, CLI, training preparation)."""
        check_totalsegmentator_weights(self.fast, self.roi_subset)
        from totalsegmentator.python_api import totalsegmentator

        with tempfile.TemporaryDirectory(prefix="crc-totalseg-") as folder:
            input_path, output_path = Path(folder) / "ct.nii.gz", Path(folder) / "mos.nii.gz"
            write_image(ct, input_path)
            totalsegmentator(
                input_path, output_path, ml=True, task=TASK, roi_subset=self.roi_subset,
                fast=self.fast, device=self.totalsegmentator_device(), quiet=True,
            )
            return MOSSource(read_image(output_path, name="TotalSegmentator MOS"), self.convention)

    def segment_in_subprocess(
        self,
        ct: Image,
        cancel: Optional[threading.Event] = None,
        on_output: Optional[Callable[[str], None]] = None,
        poll_seconds: float = 0.2,
    ) -> MOSSource:
        """Run TotalSegmentator as a child process; ``cancel.set()`` kills it and raises ``RunCancelled``."""
        check_totalsegmentator_weights(self.fast, self.roi_subset)
        with tempfile.TemporaryDirectory(prefix="crc-totalseg-") as folder:
            input_path, output_path = Path(folder) / "ct.nii.gz", Path(folder) / "mos.nii.gz"
            write_image(ct, input_path)
            run_cancellable(self.command(input_path, output_path), cancel, on_output, poll_seconds)
            if not output_path.exists():
                raise RuntimeError("TotalSegmentator finished without writing its output")
            return MOSSource(read_image(output_path, name="TotalSegmentator MOS"), self.convention)


@dataclass
class ImportedLabelMapProvider:
    """MOS from an existing label map: a file path, or an ``Image`` already in memory."""

    source: object  # str | Path | Image
    convention: LabelConvention | str = "totalsegmentator"

    def segment(self, ct: Image | None = None) -> MOSSource:
        convention = load_convention(self.convention) if isinstance(self.convention, str) else self.convention
        if isinstance(self.source, Image):
            label_map = self.source
        elif isinstance(self.source, (str, Path)):
            label_map = read_image(self.source)
        else:
            raise InputError(f"organ masks: expected a file path or an image, got {type(self.source).__name__}")
        return MOSSource(label_map, convention)
