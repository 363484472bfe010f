"""2D axial slices for U-SAM: extraction from 3D cases, and the slice dataset for training and evaluation.

CARE layout (one ``.npz`` per axial slice, as the public U-SAM loader reads): ``image``
rows x cols, ``label`` rows x cols with 0 background, 1 normal rectum, 2 tumor. CARE:
"Slices not containing the rectum were removed", so we keep only slices with a label.
Our extraction writes ``image`` in HU (int16) at the slice's own resolution; the CARE
release ships images already scaled to [0, 1] (``intensity="unit"``).

Slice sources: label-map volumes (``rectum_label`` / ``tumor_label`` values), and the
synthetic phantom (``make_phantom_case``) whose rectum is the lowest part of ``colon``.

Every sample is a pure function of ``(slice index, seed)``: the same seed gives the same
augmentation and points, and ``seed=None`` gives the unaugmented slice with deterministic
points (evaluation). Training derives seeds from its iteration number, so a resumed run
sees exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy import ndimage
from tqdm import tqdm

from CRCSegmentationLib.usam import slice_to_input
from CRCSegmentationLib.usam.prompts import pad_prompts, sample_points
from CRCTraining.usam.prompt_mix import PromptMix, sample_mixed_prompt
from OrganGuidanceLib.atomic import atomic_path, write_text_atomic
from OrganGuidanceLib.case_folders import is_empty_of_visible, pair_images_and_labels, visible_files
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.json_files import json_field, read_json
from OrganGuidanceLib.validation import InputError, check_ct, check_label_map

NORMAL_RECTUM, TUMOR = 1, 2  # CARE labels
FOREGROUND_CLASSES = (NORMAL_RECTUM, TUMOR)
INDEX_FILE = "usam_slices.json"
# Phantom rectum (OrganGuidanceLib.phantom): the colon below the rectosigmoid junction (z ~ 100 mm
# above the pelvic floor) and near the midline, where ``_paint_tumor`` finds the rectal centreline
# (|x| < 15 mm). Checked on phantom cases: the sigmoid's lowest loop (x ~ 40 mm) reaches down to z ~ 86 mm.
PHANTOM_RECTUM_TOP_Z_MM = 96.0
PHANTOM_RECTUM_MIDLINE_MM = 15.0
ROTATION_DEGREES = 15.0  # small random rotations, +-15 degrees


# --- extraction -------------------------------------------------------------------
def care_label(labels: np.ndarray, rectum_values: Sequence[int], tumor_values: Sequence[int]) -> np.ndarray:
    """A label map (any ids) -> CARE labels: 1 normal rectum, 2 tumor (tumor wins where both), 0 else."""
    out = np.zeros(labels.shape, dtype=np.uint8)
    out[np.isin(labels, list(rectum_values))] = NORMAL_RECTUM
    out[np.isin(labels, list(tumor_values))] = TUMOR
    return out


def phantom_care_label(labels: Image, tumor: Image, colon_id: int) -> np.ndarray:
    """CARE labels of a phantom: the rectal part of ``colon`` minus the tumor -> 1, the tumor -> 2.

    Per axial slice, a 2D connected component of colon is rectum when its centroid lies within
    ``PHANTOM_RECTUM_MIDLINE_MM`` of the midline and the slice is below ``PHANTOM_RECTUM_TOP_Z_MM``
    (the phantom's patient frame: x = 0 midline, z = 0 pelvic floor).
    """
    colon = labels.array == colon_id
    matrix = labels.index_to_physical
    out = np.zeros(labels.shape, dtype=np.uint8)
    for k in np.flatnonzero(colon.any(axis=(1, 2))):
        components, count = ndimage.label(colon[k])
        for component in range(1, count + 1):
            rows, cols = np.nonzero(components == component)
            centre = matrix @ np.array([cols.mean(), rows.mean(), k, 1.0])  # index (x, y, z) -> LPS mm
            if centre[2] < PHANTOM_RECTUM_TOP_Z_MM and abs(centre[0]) < PHANTOM_RECTUM_MIDLINE_MM:
                out[k][components == component] = NORMAL_RECTUM
    out[tumor.array > 0] = TUMOR
    return out


def _check_output_folder(folder: Path) -> None:
    """Refuse to mix slices into a folder of someone else's files; a folder we wrote before is refreshed.

    Refreshing removes the slices the previous index lists, so no stale case stays behind.
    """
    index = folder / INDEX_FILE
    if folder.exists() and not folder.is_dir():
        raise InputError(f"slice folder {folder}: is a file; choose a new folder")
    if not is_empty_of_visible(folder) and not index.exists():
        raise InputError(f"slice folder {folder}: exists, is not empty and holds no {INDEX_FILE}; choose a new folder")
    if index.exists():
        previous = json_field(read_json(index), "cases", index)
        if not all(isinstance(names, list) and all(isinstance(n, str) for n in names) for names in previous.values()):
            raise InputError(f"{index}: 'cases' must map each case to a list of slice files; choose a new folder")
        for names in previous.values():
            for name in names:
                (folder / Path(name).name).unlink(missing_ok=True)


def write_case_slices(folder: Path, case: str, ct_zyx: np.ndarray, label_zyx: np.ndarray,
                      spacing_rc: Tuple[float, float], lookalike_zyx: Optional[np.ndarray] = None) -> List[str]:
    """Write the axial slices of one case that contain rectum or tumor; return the file names.

    ``lookalike_zyx``: optional mask of background that looks like tumor (``phantom_prompts``), stored
    as ``lookalike`` so that training can put negative clicks there.
    """
    if ct_zyx.shape != label_zyx.shape:
        raise InputError(f"case {case}: CT shape {ct_zyx.shape} and label shape {label_zyx.shape} differ")
    if lookalike_zyx is not None and lookalike_zyx.shape != label_zyx.shape:
        raise InputError(f"case {case}: look-alike mask shape {lookalike_zyx.shape} differs from {label_zyx.shape}")
    names = []
    for k in np.flatnonzero(label_zyx.any(axis=(1, 2))):
        name = f"{case}_{int(k):04d}.npz"
        extra = {} if lookalike_zyx is None else {"lookalike": lookalike_zyx[k].astype(np.uint8)}
        with atomic_path(folder / name, ".npz") as temporary:
            np.savez_compressed(
                temporary, image=ct_zyx[k].astype(np.int16), label=label_zyx[k].astype(np.uint8),
                case=np.array(case), slice_index=np.array(int(k)), spacing_rc=np.array(spacing_rc, dtype=float),
                **extra,
            )
        names.append(name)
    return names


def _write_index(folder: Path, slices: Dict[str, List[str]], source: dict) -> Path:
    index = {"format": "crcseg-usam-slices", "layout": "CARE npz: image (HU), label (0 bg, 1 normal rectum, 2 tumor)",
             "source": source, "cases": slices}
    return write_text_atomic(folder / INDEX_FILE, json.dumps(index, indent=2) + "\n")


# Optional per-case step of ``extract_phantom_slices``: (case index, CT z,y,x in HU, CARE label) ->
# (the CT to store, a look-alike mask or None); ``phantom_prompts`` paints look-alikes this way.
PhantomPainter = Callable[[int, np.ndarray, np.ndarray], Tuple[np.ndarray, Optional[np.ndarray]]]


def extract_phantom_slices(folder: Path, num_cases: int, seed: int = 0,
                           shape_zyx: Tuple[int, int, int] = (40, 96, 96),
                           spacing_xyz: Tuple[float, float, float] = (2.9, 2.9, 4.0),
                           paint: Optional[PhantomPainter] = None, source_extra: Optional[dict] = None) -> Path:
    """Generate ``num_cases`` phantom cases and write their rectum slices (CARE layout) to ``folder``.

    ``paint``: changes each case's CT before it is written (and may give a look-alike mask, stored per slice);
    ``source_extra``: what the painter did, recorded in the folder's index.
    """
    from CRCTraining.data.phantoms_ct import case_id, make_phantom_case

    if num_cases < 1:
        raise InputError(f"phantom slices: num_cases must be at least 1, got {num_cases}")
    folder = Path(folder)
    _check_output_folder(folder)
    slices = {}
    for index in tqdm(range(num_cases), desc="phantom slices", unit="case", leave=False):
        phantom = make_phantom_case(index, seed, shape_zyx, spacing_xyz)
        colon_id = next(value for value, name in phantom.label_names.items() if name == "colon")
        label = phantom_care_label(phantom.labels, phantom.tumor, colon_id)
        ct, lookalike = phantom.ct.array, None
        if paint is not None:
            ct, lookalike = paint(index, ct, label)
        case = f"phantom{seed}_{case_id(index)}"
        slices[case] = write_case_slices(folder, case, ct, label, spacing_xyz[1::-1], lookalike)
    _write_index(folder, slices, {"phantom": {"num_cases": num_cases, "seed": seed, "shape_zyx": list(shape_zyx),
                                              "spacing_xyz": list(spacing_xyz), **(source_extra or {})}})
    return folder


def extract_volume_slices(folder: Path, images: Path, labels: Path, rectum_values: Sequence[int],
                          tumor_values: Sequence[int]) -> Path:
    """Label-map volumes (``labels/<case>.nii.gz`` next to ``images/<case>[_0000].nii.gz``) -> CARE slices.

    ``rectum_values`` / ``tumor_values``: label ids of normal rectum and tumor in the label maps.
    Slices are taken along the array's first (z) axis in the file's own in-plane orientation. Hidden files
    are ignored; an image without a label map or a label map without an image is refused with the names
    (``OrganGuidanceLib.case_folders``), before any slice is written.
    """
    from OrganGuidanceLib.io import read_image

    folder = Path(folder)
    if not rectum_values and not tumor_values:
        raise InputError("slice extraction: give the rectum and/or tumor label values (--rectum-label, --tumor-label)")
    pairs = pair_images_and_labels(images, labels, "--images", "--labels")
    _check_output_folder(folder)
    slices = {}
    for pair in tqdm(pairs, desc="slices", unit="case", leave=False):
        label = read_image(pair.label)
        ct = read_image(pair.image)
        check_ct(ct)
        check_label_map(label)
        if label.shape != ct.shape:
            raise InputError(f"{label.name}: shape {label.shape} differs from its CT {ct.name} {ct.shape}")
        care = care_label(label.array, rectum_values, tumor_values)
        slices[pair.case] = write_case_slices(folder, pair.case, ct.array, care, ct.spacing[1::-1])
    _write_index(folder, slices, {"images": str(images), "labels": str(labels),
                                  "rectum_values": list(rectum_values), "tumor_values": list(tumor_values)})
    return folder


# --- dataset --------------------------------------------------------------------------
def augment(image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Random flip, rot90 and a small rotation (CARE: "random flipping and random rotating").

    ``image`` C x S x S, ``label`` S x S; points are sampled afterwards from the augmented label,
    so they follow the same transform exactly.
    """
    if rng.random() < 0.5:
        axis = int(rng.integers(0, 2))
        image, label = np.flip(image, axis=axis + 1), np.flip(label, axis=axis)
    turns = int(rng.integers(0, 4))
    image, label = np.rot90(image, turns, axes=(1, 2)), np.rot90(label, turns)
    if rng.random() < 0.5:
        angle = float(rng.uniform(-ROTATION_DEGREES, ROTATION_DEGREES))
        image = ndimage.rotate(image, angle, axes=(2, 1), reshape=False, order=1, mode="constant", cval=0.0)
        label = ndimage.rotate(label, angle, axes=(1, 0), reshape=False, order=0, mode="constant", cval=0)
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(label)


@dataclass
class PromptSettings:
    """Points per sample: ``per_class`` per present class (CARE: 3), ``negatives`` background points.

    ``mix``: draw each training sample's prompt as SAM trained instead (points, box, both or none;
    ``prompt_mix``); ``per_class`` and ``negatives`` are then unused for training samples.
    """

    per_class: int = 3
    negatives: int = 1  # ours: one "not here" click next to the rectum; the public code uses 0
    mix: Optional[PromptMix] = None


LOOKALIKE_CODE = 4  # augment() moves label and look-alike mask together as one map: label + 4 * look-alike


class USAMSliceDataset(torch.utils.data.Dataset):
    """CARE-layout slices as U-SAM samples. Item key: ``(index, seed)``; ``seed=None`` -> evaluation sample.

    A sample: ``image`` 3 x S x S float32 in [0, 1], ``label`` S x S int64, ``prompts`` (PointPrompts in
    input pixels), ``name``.
    """

    def __init__(self, folder: Path, size: int, hu_window: Tuple[float, float], prompts: PromptSettings,
                 intensity: str = "hu", augmentation: bool = True) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise InputError(f"slice folder {self.folder}: not found")
        self.files = visible_files(self.folder, ".npz")  # not the MSD-style "._*.npz" macOS files
        if not self.files:
            raise InputError(f"slice folder {self.folder}: holds no .npz slices (make them with `crcseg usam-slices`)")
        if intensity not in ("hu", "unit"):
            raise InputError(f"slice intensity: {intensity!r} must be 'hu' (CT numbers) or 'unit' (already in [0, 1])")
        self.size, self.hu_window, self.prompts = int(size), tuple(hu_window), prompts
        self.intensity, self.augmentation = intensity, augmentation

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """The stored slice: image rows x cols (HU or [0, 1]) and CARE label rows x cols."""
        image, label, _ = self.load_with_lookalike(index)
        return image, label

    def load_with_lookalike(self, index: int) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
        """``load`` plus the slice's look-alike mask (``phantom_prompts``), None when it has none."""
        path = self.files[index]
        try:
            with np.load(path, allow_pickle=False) as npz:
                image, label = np.asarray(npz["image"], dtype=np.float32), np.asarray(npz["label"])
                lookalike = np.asarray(npz["lookalike"]).astype(bool) if "lookalike" in npz.files else None
        except (OSError, ValueError, KeyError) as error:
            raise InputError(f"slice {path}: not a CARE npz with 'image' and 'label' arrays ({error})") from error
        if image.ndim != 2 or image.shape != label.shape:
            raise InputError(f"slice {path}: image {image.shape} and label {label.shape} must be equal 2D shapes")
        if self.intensity == "hu" and image.min() >= 0.0 and image.max() <= 1.0:
            raise InputError(f"slice {path}: intensities lie in [0, 1], not HU; use intensity 'unit' (--intensity unit)")
        if lookalike is not None and lookalike.shape != label.shape:
            raise InputError(f"slice {path}: look-alike mask {lookalike.shape} and label {label.shape} differ")
        label = label.astype(np.int64)
        label[label > TUMOR] = TUMOR  # as the public loader: every label above 2 is tumor
        return image, label, lookalike

    def __getitem__(self, key) -> dict:
        index, seed = key if isinstance(key, tuple) else (key, None)
        image2d, label2d, lookalike2d = self.load_with_lookalike(int(index))
        window = self.hu_window if self.intensity == "hu" else (0.0, 1.0)
        image, transform = slice_to_input(image2d, window, self.size)
        coded = label2d if lookalike2d is None else label2d + LOOKALIKE_CODE * (lookalike2d & (label2d != TUMOR))
        coded = transform.label_to_input(coded)  # nearest, same pixel geometry as the image
        rng = None if seed is None else np.random.default_rng(seed)
        if rng is not None and self.augmentation:
            image, coded = augment(image, coded, rng)
        label, lookalike = coded % LOOKALIKE_CODE, coded >= LOOKALIKE_CODE
        box = None
        if rng is not None and self.prompts.mix is not None:
            prompts, box, label = sample_mixed_prompt(label, lookalike, self.prompts.mix, FOREGROUND_CLASSES, rng)
        else:
            prompts = sample_points(label, FOREGROUND_CLASSES, self.prompts.per_class, self.prompts.negatives, rng)
        return {"image": np.asarray(image, dtype=np.float32), "label": label.astype(np.int64),
                "prompts": prompts, "box": box, "lookalike": lookalike, "name": self.files[int(index)].stem}


def collate(samples: Sequence[dict]) -> dict:
    """Stack samples: image B x 3 x S x S, label B x S x S, point_coords B x N x 2, point_labels B x N (-1 pads),
    boxes B x 4 (x0, y0, x1, y1; a NaN row: no box)."""
    coords, labels = pad_prompts([s["prompts"] for s in samples])
    boxes = np.full((len(samples), 4), np.nan, dtype=np.float32)
    for row, sample in enumerate(samples):
        if sample.get("box") is not None:
            boxes[row] = sample["box"]
    return {
        "image": torch.from_numpy(np.stack([s["image"] for s in samples])),
        "label": torch.from_numpy(np.stack([s["label"] for s in samples])),
        "point_coords": torch.from_numpy(coords),
        "point_labels": torch.from_numpy(labels),
        "boxes": torch.from_numpy(boxes),
        "name": [s["name"] for s in samples],
    }


def to_model_boxes(batch: dict, device: torch.device) -> Optional[torch.Tensor]:
    """Box tensor for ``USAM.decode``; None when no sample of the batch has a box."""
    boxes = batch.get("boxes")
    if boxes is None or bool(torch.isnan(boxes).all()):
        return None
    return boxes.to(device)


def to_model_prompts(batch: dict, device: torch.device) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Point tensors for ``USAM.decode``; ``None, None`` when no sample of the batch has a point (no prompt)."""
    if batch["point_labels"].numel() == 0 or bool((batch["point_labels"] < 0).all()):
        return None, None
    return batch["point_coords"].to(device), batch["point_labels"].to(device)
