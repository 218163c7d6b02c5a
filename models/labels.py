"""The tag vocabulary and top-k decoding."""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

import numpy as np


class Tag(TypedDict):
    class_id: int
    class_name: str
    probability: float


class LabelsError(Exception):
    """The label file is missing or does not match the model."""


def load_labels(path: str | Path, num_classes: int) -> list[str]:
    """Line i is the name of class i (UTF-8)."""
    path = Path(path)
    try:
        names = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise LabelsError(f"cannot read label file {path}: {exc.strerror or exc}; "
                          "`videotag weights download` fetches it") from exc
    while names and not names[-1].strip():
        names.pop()
    if len(names) != num_classes:
        raise LabelsError(f"{path}: {len(names)} labels, the model has {num_classes} classes")
    return [name.strip() for name in names]


def top_k(probs: np.ndarray, labels: list[str], k: int) -> list[Tag]:
    """The k highest probabilities, highest first, ranked exactly as the original (`argsort()[-k:][::-1]`)."""
    ids = probs.argsort()[-k:][::-1]
    return [Tag(class_id=int(i), class_name=labels[i], probability=float(probs[i])) for i in ids]
