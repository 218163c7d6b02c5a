"""The tag vocabulary and tag selection: which of a head's classes a video gets, in which order.

Invariants: the ranking is the original's (`argsort()[-k:][::-1]`, ties included), so with no tag control
`select_tags` returns exactly the original top-k (label_3396.txt names a few classes twice, e.g. 猫: both
stay); a `TagControl` only removes, renames and merges classes. Names in a control that are not labels of the
head are refused when it is compiled, never silently ignored.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import numpy as np

from models.errors import ConfigError


class Tag(TypedDict):
    class_id: int
    class_name: str
    probability: float


class LabelsError(ConfigError):
    """The label file is missing or does not match the model."""


def load_labels(path: str | Path, num_classes: int) -> list[str]:
    """Line i is the name of class i (UTF-8)."""
    names = read_names(path, "; `videotag weights download` fetches label_3396.txt")
    if len(names) != num_classes:
        raise LabelsError(f"{path}: {len(names)} labels, the model has {num_classes} classes")
    return names


def read_names(path: str | Path, hint: str = "") -> list[str]:
    """One name per line, stripped; trailing blank lines dropped, any other blank line is an error. `hint` ends
    the message when the file cannot be read."""
    path = Path(path)
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise LabelsError(f"cannot read {path}: {reason}{hint}") from exc
    while names and not names[-1]:
        names.pop()
    if "" in names:
        raise LabelsError(f"{path}: line {names.index('') + 1} is blank")
    return names


@dataclass(frozen=True, eq=False)  # identity equality: an ndarray field has no single truth value
class TagControl:
    """A head's tag control compiled against its labels, per class: the lowest probability it is published at
    (+inf: never, being denied or not allowed), the name it is published under (its label_map target) and its
    group: classes mapped to one target share a group, and a group is published once."""

    floors: np.ndarray  # [num_classes] float64
    names: tuple[str, ...]
    groups: tuple[int, ...]


def compile_control(
    labels: list[str],
    min_probability: float = 0.0,
    thresholds: Mapping[str, float] | None = None,
    allow: Collection[str] | None = None,
    deny: Collection[str] = (),
    label_map: Mapping[str, str] | None = None,
) -> TagControl:
    """A per-label threshold replaces `min_probability` for that label; `allow` (when given) keeps only the
    labels it names, `deny` removes labels; `label_map` renames labels (several may share one target)."""
    thresholds = thresholds or {}
    label_map = label_map or {}
    known = set(labels)
    for what, names in (("thresholds", thresholds), ("allow", allow or ()), ("deny", deny), ("label_map", label_map)):
        if unknown := sorted(set(names) - known):
            raise LabelsError(f"{what} names {len(unknown)} labels the head does not have: {', '.join(unknown[:10])}")
    floors = np.array([thresholds.get(label, min_probability) for label in labels], dtype=np.float64)
    dropped = [i for i, label in enumerate(labels) if label in deny or (allow is not None and label not in allow)]
    floors[dropped] = np.inf
    # Unmapped classes are their own group (ids 0..C-1), mapped ones share one group per target (ids C...).
    target_group = {target: len(labels) + j for j, target in enumerate(sorted(set(label_map.values())))}
    groups = tuple(target_group[label_map[label]] if label in label_map else i for i, label in enumerate(labels))
    return TagControl(floors, tuple(label_map.get(label, label) for label in labels), groups)


def select_tags(probs: np.ndarray, control: TagControl, k: int) -> list[Tag]:
    """Up to k tags, highest probability first, that pass the control; a label_map target appears once, with the
    probability (and class id) of its most probable source label."""
    ranked = probs.argsort()[::-1]  # the original's order: argsort()[-k:][::-1] is this order's first k
    ranked = ranked[probs[ranked] >= control.floors[ranked]]
    tags: list[Tag] = []
    published: set[int] = set()
    for i in ranked:
        if control.groups[i] in published:  # a less probable source of the same target
            continue
        published.add(control.groups[i])
        tags.append(Tag(class_id=int(i), class_name=control.names[i], probability=float(probs[i])))
        if len(tags) == k:
            break
    return tags


def top_k(probs: np.ndarray, labels: list[str], k: int) -> list[Tag]:
    """The k highest probabilities, highest first, ranked exactly as the original."""
    return select_tags(probs, compile_control(labels), k)
