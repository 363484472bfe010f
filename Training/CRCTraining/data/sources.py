"""Source datasets: which CT, tumor label and organ map belong to each case.

Three layouts are read:

- **MSD** (Medical Segmentation Decathlon, e.g. ``Task10_Colon``): ``imagesTr/colon_001.nii.gz``
  (one channel per file, or a DICOM series folder ``imagesTr/colon_001/``), ``labelsTr/colon_001.nii.gz``,
  ``dataset.json`` with ``modality``;
- **nnU-Net v2 raw**: ``imagesTr/<case>_0000.nii.gz`` (one file per channel),
  ``labelsTr/<case>.nii.gz``, ``dataset.json`` with ``channel_names``, ``labels``, ``file_ending``;
- **an image folder** (AG-SSL pretraining data, AG-CRC §III-D): a folder of CT files (or of
  DICOM series folders) with no labels.

Organ maps (MOS, AG-CRC §III-B) a user already has are found as ``organsTr/<case>.<ext>``
in the dataset, or in a folder given separately. Hidden files (``.DS_Store``, the ``._*``
AppleDouble files in the MSD tarballs) are ignored.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from OrganGuidanceLib.case_folders import image_files, image_stem
from OrganGuidanceLib.io import IMAGE_SUFFIXES
from OrganGuidanceLib.json_files import read_json
from OrganGuidanceLib.validation import InputError

ORGANS_FOLDER = "organsTr"
CHANNEL_SUFFIX_LENGTH = len("_0000")


class DatasetError(InputError):
    """A source dataset folder is missing, empty or inconsistent; the message says which and why."""


@dataclass
class SourceCase:
    case_id: str
    image: Path  # the CT (a file, or a DICOM series folder in an image folder)
    label: Optional[Path] = None  # tumor label map; None for unlabeled data
    organs: Optional[Path] = None  # an existing multi-organ label map (MOS), if one was found


@dataclass
class SourceDataset:
    folder: Path
    layout: str  # "msd" | "nnunet" | "images"
    cases: List[SourceCase]
    label_names: Dict[int, str] = field(default_factory=dict)  # label value -> name, from dataset.json


def _image_files(folder: Path, file_ending: Optional[str] = None, series_folders: bool = False) -> List[Path]:
    """``case_folders.image_files`` without the organ-map folder (``organsTr`` is no series of the dataset)."""
    return [p for p in image_files(folder, file_ending, series_folders) if p.name != ORGANS_FOLDER]


def _read_dataset_json(folder: Path) -> dict:
    path = folder / "dataset.json"
    return read_json(path, error=DatasetError) if path.is_file() else {}


def _label_names(description: dict) -> Dict[int, str]:
    """MSD ``{"0": "background"}`` or nnU-Net ``{"background": 0}`` -> ``{0: "background"}``."""
    names: Dict[int, str] = {}
    for key, value in (description.get("labels") or {}).items():
        try:
            if isinstance(value, int):
                names[value] = str(key)
            else:
                names[int(key)] = str(value)
        except (TypeError, ValueError):
            continue  # nnU-Net region labels (lists) name no single value
    return names


def _ct_channel(description: dict) -> int:
    """The channel of an nnU-Net raw dataset named CT (channel 0 when none or several are)."""
    channels = description.get("channel_names") or description.get("modality") or {}
    ct = [int(k) for k, v in channels.items() if str(v).strip().lower() == "ct"]
    return ct[0] if len(ct) == 1 else 0


def find_case_map(folder: Optional[Path], case_id: str) -> Optional[Path]:
    """``folder/<case_id>.<image suffix>`` if it exists (organ maps are named after their case)."""
    if folder is None:
        return None
    for suffix in IMAGE_SUFFIXES:
        candidate = folder / f"{case_id}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _nnunet_images(images: Path, description: dict) -> List[Tuple[str, Path]]:
    ending = description.get("file_ending", ".nii.gz")
    channel = f"_{_ct_channel(description):04d}{ending}"
    pairs = []
    for path in _image_files(images, ending):
        if path.name.endswith(channel):
            pairs.append((path.name[: -len(channel)], path))
    return pairs


def _has_channel_suffix(case_id: str) -> bool:
    return len(case_id) > CHANNEL_SUFFIX_LENGTH and case_id[-CHANNEL_SUFFIX_LENGTH] == "_" and case_id[-4:].isdigit()


def _looks_like_nnunet(images: Path, labels: Path, description: dict) -> bool:
    """nnU-Net v2 names its channels in dataset.json; v1 (``modality``) is told apart by file names."""
    if "channel_names" in description or "file_ending" in description:
        return True
    stems = [image_stem(p) for p in _image_files(images)]
    label_stems = {image_stem(p) for p in _image_files(labels)}
    # MSD: colon_001.nii.gz + labelsTr/colon_001.nii.gz; nnU-Net: case_0000.nii.gz + labelsTr/case.nii.gz
    return bool(stems) and all(_has_channel_suffix(s) and s not in label_stems for s in stems)


def _check_unique(ids: List[str], folder: Path) -> None:
    seen, duplicates = set(), set()
    for case_id in ids:
        (duplicates if case_id in seen else seen).add(case_id)
    if duplicates:
        raise DatasetError(f"{folder}: several images share the case id(s) {sorted(duplicates)} (different file types?)")


def read_source_dataset(
    folder: Path,
    organs: Optional[Path] = None,
    require_labels: bool = True,
) -> SourceDataset:
    """Read a source dataset folder (MSD, nnU-Net raw, or a plain folder of CT images).

    ``organs``: a folder of organ maps named ``<case>.nii.gz`` (default: the dataset's
    ``organsTr`` folder, if it has one). ``require_labels``: every image needs a tumor label
    (supervised training); False accepts unlabeled images (AG-SSL pretraining).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"source dataset: no such folder: {folder}")
    if organs is not None and not Path(organs).is_dir():
        raise DatasetError(f"organ maps: no such folder: {organs}")
    description = _read_dataset_json(folder)
    images, labels = folder / "imagesTr", folder / "labelsTr"
    if images.is_dir():
        if _looks_like_nnunet(images, labels, description):
            layout, pairs = "nnunet", _nnunet_images(images, description)
        else:
            layout, pairs = "msd", [(image_stem(p), p) for p in _image_files(images, series_folders=True)]
        label_ending = description.get("file_ending") if layout == "nnunet" else None
        label_files = {image_stem(p) if not label_ending else p.name[: -len(label_ending)]: p
                       for p in _image_files(labels, label_ending)}
    else:
        layout, label_files = "images", {}
        pairs = [(p.name if p.is_dir() else image_stem(p), p) for p in _image_files(folder, series_folders=True)]
        if pairs and all(_has_channel_suffix(i) for i, _ in pairs):
            pairs = [(i[:-CHANNEL_SUFFIX_LENGTH], p) for i, p in pairs]  # nnU-Net-style names, one channel
    if not pairs:
        where = images if images.is_dir() else folder
        raise DatasetError(
            f"source dataset {folder}: no images found in {where} "
            f"(expected {', '.join(IMAGE_SUFFIXES)} files, MSD or nnU-Net raw layout, or a folder of CT images)"
        )
    _check_unique([i for i, _ in pairs], folder)

    organs_folder = Path(organs) if organs is not None else folder / ORGANS_FOLDER
    organs_folder = organs_folder if organs_folder.is_dir() else None
    image_ids = {i for i, _ in pairs}
    orphans = sorted(set(label_files) - image_ids)
    if orphans:
        raise DatasetError(f"source dataset {folder}: labels without an image in {images}: {orphans[:10]}")
    unlabeled = sorted(i for i in image_ids if i not in label_files)
    if require_labels and unlabeled:
        more = f" (and {len(unlabeled) - 10} more)" if len(unlabeled) > 10 else ""
        raise DatasetError(
            f"source dataset {folder}: images without a tumor label in {labels}: {unlabeled[:10]}{more}; "
            "supervised training needs one label per image"
        )
    cases = [
        SourceCase(case_id, image, label_files.get(case_id), find_case_map(organs_folder, case_id))
        for case_id, image in sorted(pairs)
    ]
    return SourceDataset(folder, layout, cases, _label_names(description))


def list_cases(folder: Path, organs: Optional[Path] = None, require_labels: bool = True) -> List[SourceCase]:
    """The cases of a source dataset folder, sorted by case id (see ``read_source_dataset``)."""
    return read_source_dataset(folder, organs, require_labels).cases
