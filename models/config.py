"""Hyper-parameters of the two networks; the defaults are the original release's (configs/*.yaml)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

T = TypeVar("T")


@dataclass(frozen=True)
class ExtractorConfig:
    layers: int = 101
    seg_num: int = 300
    short_size: int = 256
    target_size: int = 224
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        if self.layers not in (50, 101):
            raise ValueError(f"layers must be 50 or 101, not {self.layers}")
        if self.seg_num < 1:
            raise ValueError(f"seg_num must be at least 1, not {self.seg_num}")


@dataclass(frozen=True)
class PredictorConfig:
    feature_size: int = 2048
    embedding_size: int = 1024
    lstm_size: int = 512
    num_classes: int = 3396
    dropout_rate: float = 0.5
    topk: int = 20


def load_config(cls: type[T], path: str | Path) -> T:
    """Read a flat YAML mapping into `cls`, rejecting unknown keys so that typos do not pass silently."""
    data: dict[str, Any] = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}")
    for key, value in data.items():
        if isinstance(value, list):
            data[key] = tuple(value)
    return cls(**data)
