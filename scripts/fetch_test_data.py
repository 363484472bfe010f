#!/usr/bin/env python3
"""Fetch the real test data (the TotalSegmentator files of shared/data) into a user cache.

    .venv/bin/python scripts/fetch_test_data.py [--dest DIR] [--base-url URL]

Every file comes from the public TotalSegmentator repository (Apache-2.0) at one of two pinned
commits (no single commit holds them all) and is checked against its SHA-256 by the project's one
downloader. Five outputs are the upstream files byte for byte; ``ts_example_ct_seg_total_v2.nii.gz``
is derived from the v1 reference segmentation by mapping each v1 class id to the v2 ``total`` id of
the same class name.

The whole folder is assembled in a staging folder beside the destination and moved into place only
when complete, so a failed fetch leaves no half data folder. A complete destination is left as it is.
``word_label_map.nii.gz`` (WORD dataset, GPL-3.0) is not fetched; the tests needing it skip.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "Testing"))  # the lookup rules (cache folder, file names) live there

from test_data import DICOM_FOLDER, FETCHED_FILES, WORD_LABEL_MAP, default_cache_dir

GITHUB_BASE = "https://github.com/wasserth/TotalSegmentator/raw"  # + /<commit>/<path>
# No single upstream commit holds every source: the v1 reference segmentation of example_ct was
# replaced (5de6e4d, 2022-09) before example_ct_sm and the DICOM series were added (2023-08/09).
V1_COMMIT = "0effae9d718aab0c118ce1f8982dcd16b9e32a50"  # 2022-08-04; also OrganGuidanceLib.demo's pin
V2_COMMIT = "c78d8800af7fe05b8efb3c4ed939db16b6c0be62"  # 2026-07-16, last change of the two v2 predictions
REFERENCE = "tests/reference_files"
DERIVED_SEG = "ts_example_ct_seg_total_v2.nii.gz"
V1_SEG = "example_seg_v1.nii.gz"  # staging name of the v1 source (not an output)


@dataclass(frozen=True)
class Source:
    """One upstream file: where it is, what its bytes hash to, and its name in the staging folder."""

    commit: str
    path: str
    sha256: str
    name: str  # relative to the output folder (or the staging sources folder for V1_SEG)

    def url(self, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/{self.commit}/{urllib.parse.quote(self.path)}"


DICOM_PREFIX = "CT.1.3.12.2.1107.5.1.4.60064.300000221208081134280000"  # + 5 digits: the 20 slice files
DICOM_SHA256 = {  # tests/reference_files/example_ct_dicom/ at V2_COMMIT (unchanged since 85844d5, 2023-09)
    "16573": "4c5633409fa4d3edf6871e5684e9e1b10325b4d0949997582f43b23a684d0dc4",
    "16574": "9148f91127145497f4d6c6f0780f9452504cd7fe5088ec8f2bf2b21800c731ff",
    "16575": "3edaccec892e0821440cbefe3d5465923bb5146c316cbaf58f578d962f120484",
    "16576": "9b68685f0c5f9bfcfc2c397f4fadf431da288d7422ca72e7d9031d4e039418cd",
    "16577": "c8d2c0dc05e414d47d3652c658d8fecc20c3cf7ce106c10d84ad033d39700bcc",
    "16578": "0ee2c1d58e06cedd91483ca35c04da3c26fea0dbe88aaf1eaa950b57f38357d6",
    "16579": "c76cf0818d4215b92883d109b8a0b62ae0a4d81637eed98738f9c62b6f49bb72",
    "16580": "106e20514fd3ca66895e14dbfba96c01c1195e4ed890c035d4368dd71f3ee116",
    "16581": "5804e6c4a50f4d5b20040ac82a1c6d79cba5f7267d71f10b0a1b49eda1bc13ff",
    "16582": "bef219a16b22949224de4581a2d288863b2585d29556ac24021f03307378cb39",
    "16583": "9de5a49e880417d5330fe299115fdb95831a98234216a31c5c0e9a0be9a6dcd3",
    "16584": "fa00c8d81ec8aa0d0cfc4e05343782c3a75a4c60df8cccf9ff5db42ac454e61d",
    "16585": "ebba0900b0f728db0c94c769db3e5ca38a0cd916386a727541eb3e56350770e5",
    "16586": "f084ec95cfba25efb7cbe86e8b4966b051904037e8385f58fe398c5475693b89",
    "16587": "20a9b88a30ea8a824ac65cb19c1ebf80964b41ff476497706ff2a286e5f27a25",
    "16588": "2a515d3b60f3ff733aac1fc5414206c331e3ed2ccef8c2e0c30b844c538e3ed8",
    "16589": "5880669f1bc36b09cad4bdf487992ec415da0afa014e927efc282e612f467574",
    "16590": "7af4dd5b5766a87368939116b91f90d989820e7b2237fb9bcd10d47db0960875",
    "16591": "671306f4462ae881976c18c6a2d8a1567279fb0166ef0e9e8a41271fac9c1cbb",
    "16592": "fdb76ad5272f074e07cc81509604fd163f2f8a9903d34b16ba6f078250373c51",
}

SOURCES = (
    Source(V1_COMMIT, f"{REFERENCE}/example_ct.nii.gz",
           "dbd3ae6d614d1d7ef3a46925c30c70038ed52da6b37fdd6afdc7b9b71387e3e1", "ts_example_ct.nii.gz"),
    Source(V1_COMMIT, f"{REFERENCE}/example_seg.nii.gz",  # TotalSegmentator v1 prediction on example_ct
           "6dd458d6d7ebee2b2812db2af5055081004b2b72a4faad8213e7f03c4547b6f8", V1_SEG),
    Source(V2_COMMIT, f"{REFERENCE}/example_ct_sm.nii.gz",
           "e50c00b2914e2cac0aaee8e7f3b5f57d44d9f21bfd5c0577271c54c0cb49e9fb", "ts_example_ct_sm.nii.gz"),
    Source(V2_COMMIT, f"{REFERENCE}/example_seg.nii.gz",  # at this commit: the v2 prediction on example_ct_sm
           "8be652475a4aaae83103a66bfb3345314b1fc06742807a06cf5005f7a7913a2d", "ts_example_ct_sm_seg_total_v2.nii.gz"),
    Source(V2_COMMIT, f"{REFERENCE}/example_seg_dicom.nii.gz",
           "98af7f6536c316ff9084054f20956cd3e28af376b81d582d269fbea2744878fc", "ts_example_ct_dicom_seg_total_v2.nii.gz"),
) + tuple(
    Source(V2_COMMIT, f"{REFERENCE}/example_ct_dicom/{DICOM_PREFIX}{number}", sha256,
           f"{DICOM_FOLDER}/{DICOM_PREFIX}{number}")
    for number, sha256 in DICOM_SHA256.items()
)

# SHA-256 of the derived label map's geometry and voxels (see image_digest), as in shared/data: a
# different TotalSegmentator class map or source would change it. The file bytes depend on the NIfTI
# writer (SimpleITK 2.5.7 reproduces shared/data's file byte for byte), so the voxels are what is checked.
DERIVED_DIGEST = "b0c6615a61a02a6cd305a1cf9ebc6189aaa3e3fec0b6bf0c9c97646e0da5871d"

# TotalSegmentator v1 `total` class names, id = position + 1. Source: TotalSegmentator commit
# 0effae9d718aab0c118ce1f8982dcd16b9e32a50, totalsegmentator/map_to_binary.py, `class_map` (104 classes);
# no installed package has the v1 table any more.
V1_TOTAL_NAMES = (
    "spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "aorta", "inferior_vena_cava",
    "portal_vein_and_splenic_vein", "pancreas", "adrenal_gland_right", "adrenal_gland_left",
    "lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right", "lung_middle_lobe_right",
    "lung_lower_lobe_right", "vertebrae_L5", "vertebrae_L4", "vertebrae_L3", "vertebrae_L2", "vertebrae_L1",
    "vertebrae_T12", "vertebrae_T11", "vertebrae_T10", "vertebrae_T9", "vertebrae_T8", "vertebrae_T7",
    "vertebrae_T6", "vertebrae_T5", "vertebrae_T4", "vertebrae_T3", "vertebrae_T2", "vertebrae_T1",
    "vertebrae_C7", "vertebrae_C6", "vertebrae_C5", "vertebrae_C4", "vertebrae_C3", "vertebrae_C2",
    "vertebrae_C1", "esophagus", "trachea", "heart_myocardium", "heart_atrium_left", "heart_ventricle_left",
    "heart_atrium_right", "heart_ventricle_right", "pulmonary_artery", "brain", "iliac_artery_left",
    "iliac_artery_right", "iliac_vena_left", "iliac_vena_right", "small_bowel", "duodenum", "colon",
    "rib_left_1", "rib_left_2", "rib_left_3", "rib_left_4", "rib_left_5", "rib_left_6", "rib_left_7",
    "rib_left_8", "rib_left_9", "rib_left_10", "rib_left_11", "rib_left_12", "rib_right_1", "rib_right_2",
    "rib_right_3", "rib_right_4", "rib_right_5", "rib_right_6", "rib_right_7", "rib_right_8", "rib_right_9",
    "rib_right_10", "rib_right_11", "rib_right_12", "humerus_left", "humerus_right", "scapula_left",
    "scapula_right", "clavicula_left", "clavicula_right", "femur_left", "femur_right", "hip_left", "hip_right",
    "sacrum", "face", "gluteus_maximus_left", "gluteus_maximus_right", "gluteus_medius_left",
    "gluteus_medius_right", "gluteus_minimus_left", "gluteus_minimus_right", "autochthon_left",
    "autochthon_right", "iliopsoas_left", "iliopsoas_right", "urinary_bladder",
)
V1_TOTAL = {index + 1: name for index, name in enumerate(V1_TOTAL_NAMES)}


class FetchError(RuntimeError):
    """The fetched or derived data is not what the tests expect."""


# --- derivation ---------------------------------------------------------------------------------
def v2_total_classes() -> Dict[int, str]:
    """TotalSegmentator v2 `total` ids -> names, from the installed package."""
    try:
        from totalsegmentator.map_to_binary import class_map
    except ImportError as error:
        raise FetchError("TotalSegmentator is not installed (its v2 class names are needed): "
                         "run scripts/setup.sh first") from error
    return {int(value): str(name) for value, name in class_map["total"].items()}


def relabel_table(old: Mapping[int, str], new: Mapping[int, str]) -> Dict[int, int]:
    """Old id -> new id of the class with the same name; classes without a namesake are absent."""
    new_id = {name: value for value, name in new.items()}
    return {value: new_id[name] for value, name in old.items() if name in new_id}


def relabel_by_name(labels, old: Mapping[int, str], new: Mapping[int, str]):
    """``labels`` (a SimpleITK image) with ids mapped by class name; same grid and pixel type.

    A label present in the image whose class has no namesake in ``new`` is an error, not a silent drop.
    """
    import numpy as np
    import SimpleITK as sitk

    array = sitk.GetArrayViewFromImage(labels)
    table = relabel_table(old, new)
    present = [int(value) for value in np.unique(array) if value != 0]
    unmapped = [f"{value} ({old.get(value, 'unknown id')})" for value in present if value not in table]
    if unmapped:
        raise FetchError(f"labels without a class of the same name in the new convention: {', '.join(unmapped)}")
    lookup = np.zeros(max([int(array.max()), *table]) + 1, dtype=array.dtype)
    for value, mapped in table.items():
        lookup[value] = mapped
    result = sitk.GetImageFromArray(lookup[array])
    result.CopyInformation(labels)
    return result


def derive_total_v2(v1_path: Path, out_path: Path, v2: Optional[Mapping[int, str]] = None) -> Path:
    """Write the v1 `total` label map at ``v1_path`` relabelled to v2 ids, atomically."""
    import SimpleITK as sitk

    from OrganGuidanceLib.atomic import atomic_path

    relabelled = relabel_by_name(sitk.ReadImage(str(v1_path)), V1_TOTAL, v2 if v2 is not None else v2_total_classes())
    with atomic_path(out_path, ".nii.gz") as temporary:
        sitk.WriteImage(relabelled, str(temporary), True)
    return out_path


def image_digest(path: Path) -> str:
    """SHA-256 of an image's pixel type, size, spacing, origin, direction and voxels (not its file bytes)."""
    import numpy as np
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    digest = hashlib.sha256(image.GetPixelIDTypeAsString().encode())
    digest.update(np.asarray(image.GetSize(), np.int64).tobytes())
    for values in (image.GetSpacing(), image.GetOrigin(), image.GetDirection()):
        digest.update(np.asarray(values, np.float64).tobytes())
    digest.update(np.ascontiguousarray(sitk.GetArrayViewFromImage(image)).tobytes())
    return digest.hexdigest()


# --- checking a folder --------------------------------------------------------------------------
def outputs(sources: Iterable[Source]) -> List[Source]:
    """The sources that are outputs byte for byte (all but the v1 segmentation)."""
    return [source for source in sources if source.name != V1_SEG]


def problems(folder: Path, sources: Sequence[Source] = SOURCES, derived_digest: Optional[str] = DERIVED_DIGEST
             ) -> List[str]:
    """What is missing or wrong in ``folder`` (empty: complete and verified)."""
    from OrganGuidanceLib.checksum import sha256_of

    found = []
    for source in outputs(sources):
        path = folder / source.name
        if not path.is_file():
            found.append(f"{source.name} missing")
        elif sha256_of(path) != source.sha256:
            found.append(f"{source.name} has another SHA-256")
    derived = folder / DERIVED_SEG
    if not derived.is_file():
        found.append(f"{DERIVED_SEG} missing")
    elif derived_digest is not None and image_digest(derived) != derived_digest:
        found.append(f"{DERIVED_SEG} differs from the reference derivation")
    return found


# --- fetching -----------------------------------------------------------------------------------
def base_url_of(given: str) -> str:
    """A URL, or a local folder (made a file:// URL) laid out as ``<commit>/<path>``."""
    if "://" in given:
        return given
    return Path(given).expanduser().resolve().as_uri()


def download_all(sources: Sequence[Source], base_url: str, staging: Path, timeout_s: float, progress: bool) -> None:
    """Each source into ``staging/data/<name>`` (the v1 source into ``staging/sources``), SHA-256 checked."""
    from OrganGuidanceLib.download import download_verified

    for number, source in enumerate(sources, 1):
        folder = staging / ("sources" if source.name == V1_SEG else "data")
        if progress:
            print(f"[{number}/{len(sources)}] {source.path} @ {source.commit[:7]}", flush=True)
        download_verified(source.url(base_url), source.sha256, folder / source.name, timeout_s, progress)


def move_into_place(staged: Path, dest: Path) -> None:
    """The staged folder becomes ``dest``; into an existing ``dest`` each entry is replaced, others are kept."""
    if not dest.exists():
        os.replace(staged, dest)  # one rename: the data folder appears complete or not at all
        return
    for entry in staged.iterdir():
        target = dest / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)


def fetch_test_data(dest: Path, base_url: str = GITHUB_BASE, timeout_s: float = 60.0, progress: bool = True,
                    sources: Sequence[Source] = SOURCES, derived_digest: Optional[str] = DERIVED_DIGEST,
                    v2: Optional[Mapping[int, str]] = None) -> bool:
    """Fill ``dest``; False when it was already complete (nothing downloaded). Raises on any failure."""
    dest = Path(dest).expanduser()
    if dest.is_dir() and not problems(dest, sources, derived_digest):
        return False
    v2 = v2 if v2 is not None else v2_total_classes()  # before downloading: fail early without TotalSegmentator
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.staging-", dir=dest.parent))
    try:
        download_all(sources, base_url, staging, timeout_s, progress)
        data = staging / "data"
        derive_total_v2(staging / "sources" / V1_SEG, data / DERIVED_SEG, v2)
        wrong = problems(data, sources, derived_digest)
        if wrong:
            raise FetchError(f"fetched data is not the expected data: {'; '.join(wrong)}")
        move_into_place(data, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return True


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=default_cache_dir(),
                        help="data folder to fill (default: %(default)s)")
    parser.add_argument("--base-url", default=GITHUB_BASE,
                        help="mirror or local folder laid out as <commit>/<path> (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per file without an answer")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)

    from OrganGuidanceLib.download import ChecksumMismatch, DownloadUnavailable

    try:
        fetched = fetch_test_data(args.dest, base_url_of(args.base_url), args.timeout, not args.quiet)
    except DownloadUnavailable as error:
        print(f"fetch_test_data: error: {error}", file=sys.stderr)
        return 1
    except (ChecksumMismatch, FetchError) as error:
        print(f"fetch_test_data: error: {error}", file=sys.stderr)
        return 2
    state = "fetched and verified" if fetched else "already complete, nothing fetched"
    print(f"test data {state}: {args.dest} ({len(FETCHED_FILES)} entries)")
    print(f"not fetched: {WORD_LABEL_MAP} (WORD dataset, GPL-3.0, not in the TotalSegmentator repository); "
          f"the tests that need it skip unless you put it into {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
