"""Prediction heads: which AttentionLSTM weights and labels each uses, and which of its tags it publishes.

A head is one predictor over the shared extractor's features: VideoTag's own 3396 tags, or one trained with
`videotag train`. Several heads share one extraction (the expensive 95 %). `HeadSpec` is how settings name a
head; `load_control` reads its tag-control files into a `TagControl` (models/labels.py), checked against the
head's labels.

Invariants: a spec's weights and labels left unset mean the `predictor_weights` and `label_file` settings
(so the default head is `HeadSpec("videotag")`); head names are unique and safe as JSON keys and metric labels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from models.csvfile import read_csv
from models.labels import LabelsError, TagControl, compile_control, read_names

DEFAULT_HEAD = "videotag"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class HeadSpec:
    """One head as configured. Files are paths; `None` means "not used" (or, for weights and labels, the
    `predictor_weights` / `label_file` settings)."""

    name: str
    weights: str | None = None  # prefix, .pdparams file or directory of attention_lstm.pdparams
    labels: str | None = None  # one class name per line, line i = class i
    topk: int | None = None  # None: the `topk` setting
    min_probability: float = 0.0
    thresholds: str | None = None  # CSV label,threshold: replaces min_probability for those labels
    allow: str | None = None  # one label per line: only these are published
    deny: str | None = None  # one label per line: never published
    label_map: str | None = None  # CSV label,target: published under the target name

    def __post_init__(self) -> None:
        if not NAME_PATTERN.fullmatch(self.name):
            raise ValueError(f"head name {self.name!r}: 1-64 letters, digits, '_', '.', '-' (not first)")
        if self.topk is not None and self.topk < 1:
            raise ValueError(f"head {self.name}: topk must be at least 1, not {self.topk}")
        if not 0.0 <= self.min_probability <= 1.0:
            raise ValueError(f"head {self.name}: min_probability must be within [0, 1], not {self.min_probability}")


def check_heads(specs: list[HeadSpec]) -> None:
    """Names must be unique: they key the result's `heads`."""
    names = [spec.name for spec in specs]
    if duplicates := sorted({name for name in names if names.count(name) > 1}):
        raise ValueError(f"head names must be unique: {', '.join(duplicates)} repeated")


def read_thresholds(path: str | Path) -> dict[str, float]:
    thresholds: dict[str, float] = {}
    for number, (label, value) in read_csv(path, ("label", "threshold")):
        try:
            threshold = float(value)
        except ValueError:
            threshold = float("nan")
        if not 0.0 <= threshold <= 1.0:
            raise LabelsError(f"{path}:{number}: threshold {value!r} is not a probability in [0, 1]")
        if label in thresholds:
            raise LabelsError(f"{path}:{number}: {label} is given twice")
        thresholds[label] = threshold
    return thresholds


def read_label_map(path: str | Path) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for number, (label, target) in read_csv(path, ("label", "target")):
        if not label or not target:
            raise LabelsError(f"{path}:{number}: label and target must both be given")
        if label in mapping:
            raise LabelsError(f"{path}:{number}: {label} is mapped twice")
        mapping[label] = target
    return mapping


def load_control(spec: HeadSpec, labels: list[str]) -> TagControl:
    """Read the spec's tag-control files and compile them against the head's labels."""
    try:
        return compile_control(
            labels,
            spec.min_probability,
            read_thresholds(spec.thresholds) if spec.thresholds else None,
            set(read_names(spec.allow)) if spec.allow else None,
            set(read_names(spec.deny)) if spec.deny else (),
            read_label_map(spec.label_map) if spec.label_map else None,
        )
    except (LabelsError, ValueError) as exc:  # CsvError is a ValueError
        raise LabelsError(f"head {spec.name}: {exc}") from exc
