"""Hyper-parameters of the two networks and the defaults of how they run: read at run time from
`configs/tsn.yaml` and `configs/attention_lstm.yaml`, the one place each of these defaults lives.

Invariants:
- No default here is a literal: `ExtractorConfig`, `PredictorConfig` and the settings that take their default
  from a YAML (worker/settings.py: layers, seg_num, batch_size, max_width, max_height, topk) read it from the
  file, so that editing the file changes what runs. The shipped files hold the original release's values.
- The directory is `$VIDEOTAG_CONFIG_DIR` when set, else the checkout's `configs/` (beside `models/`), else the
  copy an installed wheel carries (package `videotag_configs`, pyproject.toml).
- Each file is read once per process and directory; a missing file, a key missing or unknown, or a file that is
  no YAML mapping is a ConfigError naming the file.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from models.errors import ConfigError

CONFIG_DIR_ENV = "VIDEOTAG_CONFIG_DIR"
CONFIG_PACKAGE = "videotag_configs"
TSN_FILE = "tsn.yaml"
ATTENTION_LSTM_FILE = "attention_lstm.yaml"
# Defaults of how the extractor runs, kept in tsn.yaml beside its hyper-parameters (settings of the same name).
TSN_RUN_KEYS = ("batch_size", "max_width", "max_height")


def config_dir() -> Path:
    """Where tsn.yaml and attention_lstm.yaml are read from (see the module docstring)."""
    if override := os.environ.get(CONFIG_DIR_ENV):
        return Path(override)
    checkout = Path(__file__).resolve().parent.parent / "configs"
    if (checkout / TSN_FILE).is_file():
        return checkout
    spec = importlib.util.find_spec(CONFIG_PACKAGE)  # a directory of data files: a namespace package
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"no configs/ beside {checkout.parent} and no {CONFIG_PACKAGE} installed: set "
            f"{CONFIG_DIR_ENV} to a directory holding {TSN_FILE} and {ATTENTION_LSTM_FILE}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def config_value(file: str, key: str) -> Any:
    """`key` of the YAML `file` in the config directory (a list as a tuple)."""
    path = config_dir() / file
    data = _read(path)
    if key not in data:
        raise ConfigError(f"{path}: no {key!r}")
    value = data[key]
    return tuple(value) if isinstance(value, list) else value


def config_default(file: str, key: str) -> Any:
    """A dataclass field whose default is read from `file` when an instance is made."""
    return field(default_factory=functools.partial(config_value, file, key))


def config_source(f: dataclasses.Field[Any]) -> str | None:
    """The file a `config_default` field's default is read from; None for any other field."""
    factory = f.default_factory
    return factory.args[0] if isinstance(factory, functools.partial) and factory.func is config_value else None


@dataclass(frozen=True)
class ExtractorConfig:
    layers: int = config_default(TSN_FILE, "layers")
    seg_num: int = config_default(TSN_FILE, "seg_num")
    short_size: int = config_default(TSN_FILE, "short_size")
    target_size: int = config_default(TSN_FILE, "target_size")
    image_mean: tuple[float, float, float] = config_default(TSN_FILE, "image_mean")
    image_std: tuple[float, float, float] = config_default(TSN_FILE, "image_std")

    def __post_init__(self) -> None:
        if self.layers not in (50, 101):
            raise ConfigError(f"layers must be 50 or 101, not {self.layers}")
        if self.seg_num < 1:
            raise ConfigError(f"seg_num must be at least 1, not {self.seg_num}")


@dataclass(frozen=True)
class PredictorConfig:
    feature_size: int = config_default(ATTENTION_LSTM_FILE, "feature_size")
    embedding_size: int = config_default(ATTENTION_LSTM_FILE, "embedding_size")
    lstm_size: int = config_default(ATTENTION_LSTM_FILE, "lstm_size")
    num_classes: int = config_default(ATTENTION_LSTM_FILE, "num_classes")
    dropout_rate: float = config_default(ATTENTION_LSTM_FILE, "dropout_rate")
    topk: int = config_default(ATTENTION_LSTM_FILE, "topk")


KNOWN_KEYS = {
    TSN_FILE: {f.name for f in dataclasses.fields(ExtractorConfig)} | set(TSN_RUN_KEYS),
    ATTENTION_LSTM_FILE: {f.name for f in dataclasses.fields(PredictorConfig)},
}


@functools.cache
def _read(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read it ({exc})".replace("\n", " ")) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of hyper-parameters")
    unknown = sorted(set(data) - KNOWN_KEYS.get(path.name, set(data)))
    if unknown:
        raise ConfigError(f"{path}: unknown keys {unknown}")
    return data
