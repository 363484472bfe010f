"""FLARE24 organ-interference training labels: organ pseudo-labels from the MOS, the tumor painted over them.

FLARE24 §2.2 ("An organ-interference segmentation approach"): an organ model trained on FLARE22's
abdominal organs labels every training CT; "the tumor labels from the provided annotations were then
integrated into the generated pseudo-labels, forming the final training labels" (Fig. 2). Jointly
learning organs and tumor keeps the network from calling organ tissue tumor; at inference only the
tumor label is kept (§2.3). DESIGN.md ("Facts for the three remaining methods"): their public code has
15 output classes, organs 1-13 from the organ model, tumor 14 painted over them (tumor wins on overlap).

Here the organ model is the case's MOS, whatever made it (TotalSegmentator, an imported label map):
organs are found in it BY NAME through its ``LabelConvention``, never by label value. Label layout of
``labelsTr`` with K organs: background 0, organs 1..K in list order, tumor K + 1.

A convention without some organ simply leaves that organ absent in its cases (the label exists, no
voxel carries it). WORD (``OrganGuidanceLib.labels.WORD_LABELS``), for example, gives 9 of the 13
FLARE22 organs: it has no aorta and no inferior vena cava, and its one ``adrenal`` label covers both
glands, so neither ``adrenal_gland_left`` nor ``adrenal_gland_right`` is taken from it. A name that no
convention knows (a typo such as ``livr``) is refused with the closest known names: it would otherwise
become a class that can never occur.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from CRCTraining.data.raw_dataset import PrepareError
from OrganGuidanceLib.case_folders import name_list
from OrganGuidanceLib.labels import ORGAN_ALIASES, WORD_LABELS, LabelConvention
from OrganGuidanceLib.validation import InputError

if TYPE_CHECKING:
    from OrganGuidanceLib.providers import TotalSegmentatorProvider

LABEL_MODES = ("tumor", "organ-interference")  # prepare's ``labels=``: "tumor" is AG-CRC's 0/1 label
TUMOR_LABEL = "tumor"
BACKGROUND_LABEL = "background"

# FLARE22's 13 abdominal organs (the FLARE24 organ model's training labels, §2.2), in FLARE22's label
# order 1..13, spelled as TotalSegmentator v2 ``total`` class names (class_map["total"]).
FLARE22_ORGANS: Tuple[str, ...] = (
    "liver", "kidney_right", "spleen", "pancreas", "aorta", "inferior_vena_cava", "adrenal_gland_right",
    "adrenal_gland_left", "gallbladder", "esophagus", "stomach", "duodenum", "kidney_left",
)

# Other spellings of organ names in label maps (FLARE22's "right kidney", WORD, AMOS-style files);
# the GI organs' spellings come from OrganGuidanceLib.labels.ORGAN_ALIASES (e.g. WORD's "intestine" = "small_bowel").
NAME_ALIASES: Tuple[Tuple[str, ...], ...] = (
    ("liver",),
    ("spleen",),
    ("pancreas",),
    ("esophagus", "oesophagus"),
    ("gallbladder", "gall_bladder"),
    ("kidney_right", "right_kidney", "kidney_r"),
    ("kidney_left", "left_kidney", "kidney_l"),
    ("adrenal_gland_right", "right_adrenal_gland", "adrenal_right", "right_adrenal"),
    ("adrenal_gland_left", "left_adrenal_gland", "adrenal_left", "left_adrenal"),
    ("aorta",),
    ("inferior_vena_cava", "ivc", "postcava", "vena_cava_inferior"),
    ("urinary_bladder", "bladder"),
    *ORGAN_ALIASES.values(),
)


def normalise_name(name: str) -> str:
    return str(name).strip().lower().replace(" ", "_").replace("-", "_")


def name_group(name: str) -> FrozenSet[str]:
    """Every spelling that means the same organ as ``name`` (``name`` itself when it has no aliases)."""
    key = normalise_name(name)
    for group in NAME_ALIASES:
        if key in group:
            return frozenset(group)
    return frozenset((key,))


def check_organ_list(organs: Iterable[str]) -> Tuple[str, ...]:
    """The organ list as given, refused when empty, repeated, or clashing with background/tumor."""
    names = tuple(str(o).strip() for o in organs)
    if not names or not all(names):
        raise InputError(f"--interference-organs {list(names)}: give at least one organ name, none empty")
    reserved = [n for n in names if normalise_name(n) in (BACKGROUND_LABEL, TUMOR_LABEL)]
    if reserved:
        raise InputError(f"--interference-organs: {reserved} are the names of the background and tumor labels")
    groups = [name_group(n) for n in names]
    repeated = sorted({n for n, g in zip(names, groups) if groups.count(g) > 1})
    if repeated:
        raise InputError(f"--interference-organs: {repeated} name the same organ more than once")
    if len(names) > 253:  # labels are uint8: background, K organs, tumor
        raise InputError(f"--interference-organs: {len(names)} organs; at most 253 fit the uint8 label map")
    return names


def known_organ_names(convention: LabelConvention) -> List[str]:
    """Every organ name an interference organ may take: the convention's label names, FLARE22's organs, the
    spellings of ``NAME_ALIASES``, and the names of the built-in conventions (WORD, TotalSegmentator's
    ``class_map["total"]`` where it is installed), so that an organ a convention lacks is absent, not unknown."""
    names = [*convention.labels.values(), *FLARE22_ORGANS, *(n for group in NAME_ALIASES for n in group),
             *WORD_LABELS.values()]
    try:
        from totalsegmentator.map_to_binary import class_map

        names += list(class_map["total"].values())
    except ImportError:  # without TotalSegmentator its names are unknown; the other sources still hold
        pass
    return sorted({normalise_name(n) for n in names if normalise_name(n) not in (BACKGROUND_LABEL, TUMOR_LABEL)})


def check_known_organs(organs: Sequence[str], convention: LabelConvention,
                       option: str = "--interference-organs") -> None:
    """``InputError`` naming ``option`` for organ names no convention knows, with the closest known names
    (``difflib``), the convention's own names first."""
    known = known_organ_names(convention)
    own = sorted({normalise_name(n) for n in convention.labels.values()})
    unknown = [o for o in organs if not name_group(o) & set(known)]
    if not unknown:
        return
    parts = []
    for organ in unknown:
        key = normalise_name(organ)
        close = list(dict.fromkeys(difflib.get_close_matches(key, own, n=3, cutoff=0.6)
                                   + difflib.get_close_matches(key, known, n=3, cutoff=0.6)))[:3]
        parts.append(f"'{organ}'" + (f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""))
    raise InputError(f"{option}: unknown organ name{'s' if len(unknown) > 1 else ''} {', '.join(parts)}; a name "
                     f"no label convention knows would be a class that never occurs. Label convention "
                     f"'{convention.name}' names {name_list(own, 20)}")


@dataclass(frozen=True)
class InterferenceLabels:
    """The organ-interference label layout and where each organ comes from in one MOS convention."""

    organs: Tuple[str, ...]  # label names 1..K, in list order
    convention: str  # name of the MOS convention the organs are read from
    source_values: Dict[str, Tuple[int, ...]] = field(default_factory=dict)  # organ -> MOS label values

    @property
    def tumor_value(self) -> int:
        return len(self.organs) + 1

    @property
    def absent(self) -> List[str]:
        """Organs the convention has no label for: absent (never painted) in every case."""
        return [o for o in self.organs if not self.source_values.get(o)]

    def dataset_labels(self) -> Dict[str, int]:
        """nnU-Net's ``dataset.json["labels"]``: background 0, organs 1..K, tumor K + 1."""
        organs = {o: i for i, o in enumerate(self.organs, start=1)}
        return {BACKGROUND_LABEL: 0, **organs, TUMOR_LABEL: self.tumor_value}

    def lookup_table(self, largest_value: int) -> np.ndarray:
        """MOS label value -> output label (0 for every value that is not one of the organs)."""
        largest = max([int(largest_value), *(v for values in self.source_values.values() for v in values)])
        table = np.zeros(largest + 1, dtype=np.uint8)
        for index, organ in enumerate(self.organs, start=1):
            table[list(self.source_values.get(organ, ()))] = index
        return table

    def metadata(self) -> dict:
        """The dataset.json ``agcrc["organ_interference"]`` block (read by ``crcseg export``)."""
        return {
            "method": "FLARE24 organ interference (§2.2): organ pseudo-labels from the MOS, tumor painted over them",
            "organ_labels": list(self.organs),
            "tumor_label": TUMOR_LABEL,
            "label_values": self.dataset_labels(),
            "mos_convention": self.convention,
            "mos_values": {o: list(self.source_values.get(o, ())) for o in self.organs},
            "absent_in_convention": self.absent,
        }


def match_organs(convention: LabelConvention, organs: Sequence[str]) -> InterferenceLabels:
    """Find each organ in ``convention`` by name (aliases included); a label value goes to the first organ.

    ``InputError`` for a name no convention knows (``check_known_organs``: the closest names suggested)."""
    names = check_organ_list(organs)
    check_known_organs(names, convention)
    claimed: set = set()
    values: Dict[str, Tuple[int, ...]] = {}
    for organ in names:
        group = name_group(organ)
        found = tuple(sorted(v for v, label in convention.labels.items()
                             if v != 0 and v not in claimed and normalise_name(label) in group))
        claimed.update(found)
        values[organ] = found
    labels = InterferenceLabels(names, convention.name, values)
    if len(labels.absent) == len(names):
        raise InputError(f"label convention '{convention.name}': none of the interference organs {list(names)} "
                         f"has a label; its labels are {sorted(set(convention.labels.values()))}")
    return labels


def merge_labels(mos: np.ndarray, tumor: np.ndarray, labels: InterferenceLabels) -> np.ndarray:
    """FLARE24 Fig. 2: organ pseudo-labels 1..K from the MOS, then the tumor (K + 1) painted over them."""
    if mos.shape != tumor.shape:
        raise InputError(f"organ map {mos.shape} and tumor label {tumor.shape}: different shapes")
    if mos.size and int(mos.min()) < 0:
        raise InputError(f"organ map: negative label value {int(mos.min())}")
    table = labels.lookup_table(int(mos.max()) if mos.size else 0)
    merged = np.empty(mos.shape, dtype=np.uint8)
    for index, slab in enumerate(mos):  # slab by slab: no full-size int64 index array
        merged[index] = table[slab.astype(np.intp)]
    merged[np.asarray(tumor, dtype=bool)] = labels.tumor_value  # tumor wins on overlap (DESIGN facts)
    return merged


def organ_voxel_counts(merged: np.ndarray, labels: InterferenceLabels) -> Dict[str, int]:
    """Voxels per label name in a merged label map (for prepare's per-case statistics)."""
    counts = np.bincount(merged.ravel(), minlength=labels.tumor_value + 1)
    return {name: int(counts[value]) for name, value in labels.dataset_labels().items() if value}


def inference_mos_values(provider: "TotalSegmentatorProvider", organ_set: str) -> Tuple[int, ...]:
    """TotalSegmentator values of the organs an inference run segments (CRCSegmentationLib's default provider).

    With organ interference TotalSegmentator also segments the FLARE22 organs for the labels; the MOS
    input channel keeps only these values, so it is the channel a trained model later sees.
    """
    from OrganGuidanceLib.providers import TotalSegmentatorProvider

    default = set(TotalSegmentatorProvider(organ_set=organ_set).roi_subset)
    return tuple(sorted(v for v, name in provider.convention.labels.items() if name in default))


def interference_labels(labels: str, organs: Sequence[str], convention: LabelConvention,
                         ssl: bool) -> Optional[InterferenceLabels]:
    """prepare's ``labels`` mode: None for AG-CRC's tumor labels, the organ-interference layout (FLARE24 §2.2)."""
    if labels not in LABEL_MODES:
        raise PrepareError(f"labels {labels!r}: choose one of {list(LABEL_MODES)}")
    if labels == "tumor":
        return None
    if ssl:
        raise PrepareError("labels 'organ-interference' need tumor labels; an AG-SSL dataset's label is the bowel wall")
    return match_organs(convention, organs)  # matched by name; a convention without an organ leaves it absent
