"""Organ label conventions and the AG-CRC organ-of-interest sets.

A multi-organ segmentation (MOS) is an integer label map; what each integer
means depends on the model that made it. ``LabelConvention`` names the labels
and knows which of them are organs of interest (OOI).

Sources:
- TotalSegmentator v2, task ``total``: read from
  ``totalsegmentator.map_to_binary.class_map["total"]`` (never hard-coded).
  It has no rectum class: the rectum is part of ``colon``.
- WORD (Luo et al. 2022): 5 stomach, 7 esophagus, 9 duodenum, 10 colon,
  11 intestine, 13 rectum, 14 bladder (see ``WORD_LABELS``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Tuple

from OrganGuidanceLib.json_files import read_json
from OrganGuidanceLib.validation import InputError

# AG-CRC §III-B: "the organs in the gastrointestinal tract, including the
# stomach, duodenum, small intestine, colon, and rectum".
ORGAN_SETS: Dict[str, Tuple[str, ...]] = {
    "gi_tract": ("stomach", "duodenum", "small_bowel", "colon", "rectum"),  # AG-CRC default
    "lower_gi": ("small_bowel", "colon", "rectum"),
    "colorectum": ("colon", "rectum"),
}
DEFAULT_ORGAN_SET = "gi_tract"

# Other spellings of the canonical organ names used by models and datasets.
ORGAN_ALIASES: Dict[str, Tuple[str, ...]] = {
    "stomach": ("stomach",),
    "duodenum": ("duodenum",),
    "small_bowel": ("small_bowel", "small_intestine", "intestine", "smallbowel"),
    "colon": ("colon", "large_bowel", "large_intestine", "sigmoid", "sigmoid_colon"),
    "rectum": ("rectum",),
}

WORD_LABELS: Dict[int, str] = {
    1: "liver", 2: "spleen", 3: "kidney_left", 4: "kidney_right", 5: "stomach",
    6: "gallbladder", 7: "esophagus", 8: "pancreas", 9: "duodenum", 10: "colon",
    11: "intestine", 12: "adrenal", 13: "rectum", 14: "bladder",
    15: "head_of_femur_left", 16: "head_of_femur_right",
}


def _canonical(name: str) -> str | None:
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    for organ, aliases in ORGAN_ALIASES.items():
        if key in aliases:
            return organ
    return None


@dataclass
class LabelConvention:
    """Integer label -> organ name, plus how each canonical OOI organ is labelled."""

    name: str
    labels: Dict[int, str]
    # canonical organ -> label values representing it (TotalSegmentator: rectum -> colon's id)
    organ_labels: Dict[str, Tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = {int(k): str(v) for k, v in self.labels.items()}
        if not self.organ_labels:
            found: Dict[str, List[int]] = {}
            for value, label_name in self.labels.items():
                organ = _canonical(label_name)
                if organ:
                    found.setdefault(organ, []).append(value)
            self.organ_labels = {organ: tuple(values) for organ, values in found.items()}

    def ooi_label_values(self, organ_set: str | Iterable[str] = DEFAULT_ORGAN_SET) -> Tuple[int, ...]:
        """Label values of the organs of interest (Algorithm 1, set S_TS / S_WORD)."""
        if isinstance(organ_set, str) and organ_set not in ORGAN_SETS:
            raise InputError(f"organ set '{organ_set}' is unknown; choose one of {sorted(ORGAN_SETS)}")
        organs = ORGAN_SETS[organ_set] if isinstance(organ_set, str) else tuple(organ_set)
        unknown = [o for o in organs if o not in ORGAN_ALIASES]
        if unknown:
            raise InputError(f"organ set: unknown organs {unknown}; known: {sorted(ORGAN_ALIASES)}")
        values = sorted({v for organ in organs for v in self.organ_labels.get(organ, ())})
        if not values:
            raise InputError(
                f"label convention '{self.name}': none of the organs {list(organs)} has a label; "
                f"labels are {self.labels}"
            )
        return tuple(values)

    def label_names(self, organ_set: str | Iterable[str] = DEFAULT_ORGAN_SET) -> List[str]:
        return [self.labels[v] for v in self.ooi_label_values(organ_set)]


class ConventionUnavailable(InputError, ImportError):
    """The chosen convention needs a package that is not installed: a user error (CLI exit 2) and an ImportError."""


def totalsegmentator_convention() -> LabelConvention:
    """TotalSegmentator v2 ``total`` task, read from TotalSegmentator's own class map."""
    try:
        from totalsegmentator.map_to_binary import class_map
    except ImportError as error:
        raise ConventionUnavailable(
            "label convention 'totalsegmentator': TotalSegmentator is not installed, so its label names are "
            "unknown; install it (pip install TotalSegmentator==2.18.0) or give the label mapping as a JSON file"
        ) from error
    labels = dict(class_map["total"])
    convention = LabelConvention("totalsegmentator", labels)
    # The v2 `total` task has no rectum class; the rectum lies inside `colon`.
    if "rectum" not in convention.organ_labels and "colon" in convention.organ_labels:
        convention.organ_labels["rectum"] = convention.organ_labels["colon"]
    return convention


def word_convention() -> LabelConvention:
    return LabelConvention("word", dict(WORD_LABELS))


def convention_from_mapping(mapping: Mapping[int | str, str], name: str = "custom") -> LabelConvention:
    """A user-given mapping ``{label value: organ name}``; OOI organs found by name."""
    if not isinstance(mapping, Mapping):
        raise InputError(f"label mapping '{name}': must be a JSON object {{\"value\": \"organ name\", ...}}, "
                         f"not a {type(mapping).__name__}")
    try:
        labels = {int(k): str(v) for k, v in mapping.items()}
    except (TypeError, ValueError) as error:
        raise InputError(f"label mapping '{name}': keys must be integers, got {list(mapping)}") from error
    return LabelConvention(name, labels)


def load_convention(spec: str) -> LabelConvention:
    """``totalsegmentator`` / ``total``, ``word``, or a path to a JSON mapping file."""
    key = spec.strip().lower()
    if key in ("totalsegmentator", "total", "ts"):
        return totalsegmentator_convention()
    if key == "word":
        return word_convention()
    path = Path(spec)
    if not path.is_file():
        raise InputError(
            f"label convention '{spec}': not 'totalsegmentator', 'word' or an existing JSON file"
        )
    mapping = read_json(path, expect=None)  # its shape is checked by convention_from_mapping
    if isinstance(mapping, dict) and "labels" in mapping:
        mapping = mapping["labels"]
    return convention_from_mapping(mapping, name=path.stem)
