"""Worker settings: defaults, then a YAML file, then `VIDEOTAG_<NAME>` environment variables, then flags.

Every field here is a setting; docs/configuration.md describes each one. Credentials are not settings of
their own for S3 (boto3's standard chain: AWS_* variables, shared files, IRSA) and are never logged.
Every setting is a scalar except `predictors`, a list of head mappings (YAML list, or JSON text in the
environment and on the command line), coerced field by field into typed `HeadSpec`s like the scalars.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from models.heads import HeadSpec, check_heads

ENV_PREFIX = "VIDEOTAG_"
SECRET_FIELDS = frozenset({"sasl_password", "ssl_password"})


class SettingsError(ValueError):
    """A setting is unknown or has a value of the wrong type."""


@dataclass
class Settings:
    # Kafka
    bootstrap_servers: str = "localhost:9092"
    group_id: str = "videotag-worker"
    input_topic: str = "videotag.requests"
    output_topic: str = "videotag.tags"
    dlq_topic: str = "videotag.dlq"
    client_id: str = "videotag-worker"
    security_protocol: str = "PLAINTEXT"
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: str | None = None
    ssl_check_hostname: bool = True
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    session_timeout_ms: int = 45000
    heartbeat_interval_ms: int = 3000
    max_poll_interval_ms: int = 300000
    group_instance_id: str | None = None  # static membership; unset: $POD_NAME when set (see load_settings)
    leave_group_on_stop: bool = True
    partition_assignment_strategy: str = "range"
    # S3
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_connect_timeout_s: float = 5.0
    s3_read_timeout_s: float = 30.0
    s3_event_video_id: str = "key"
    max_object_bytes: int = 2 * 1024**3
    temp_dir: str | None = None
    temp_dir_max_bytes: int = 8 * 1024**3
    features_output: str | None = None  # s3://bucket/prefix/: also publish each video's features there
    # Model
    extractor_weights: str = "weights/tsn"
    predictor_weights: str = "weights/attention_lstm"
    label_file: str = "label_3396.txt"
    predictors: list[HeadSpec] = field(default_factory=list)  # empty: one head, predictor_weights + label_file
    allow_random_weights: bool = False
    layers: int = 101
    seg_num: int = 300
    topk: int = 20
    device: str = "cpu"
    engine: str = "inference"
    precision: str = "fp32"
    preprocess: str = "faithful"
    batch_size: int = 32
    cpu_threads: int = 0
    tensorrt: bool = False
    model_cache_dir: str = ".cache/videotag/models"
    max_width: int = 7680
    max_height: int = 4320
    # Worker
    max_inflight: int = 2
    retry_max_attempts: int = 5
    retry_backoff_base_s: float = 0.5
    retry_backoff_max_s: float = 30.0
    drain_grace_s: float = 120.0
    stuck_after_s: float = 900.0
    decode_timeout_s: float = 600.0
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9100
    log_level: str = "INFO"

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict that is safe to log."""
        out = dataclasses.asdict(self)
        for name in SECRET_FIELDS:
            if out.get(name):
                out[name] = "***"
        return out


def _field_types(cls: type) -> dict[str, type]:
    """Field name → its type: the X of `X | None`, the container of `list[X]`."""
    hints = typing.get_type_hints(cls)
    out: dict[str, type] = {}
    for f in fields(cls):
        hint = hints[f.name]
        if isinstance(hint, types.UnionType):  # `X | None`
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        out[f.name] = typing.get_origin(hint) or hint
    return out


FIELD_TYPES = _field_types(Settings)
HEAD_FIELD_TYPES = _field_types(HeadSpec)


def _scalar(name: str, kind: type, value: Any) -> Any:
    if value is None:
        return None
    try:
        if isinstance(value, (list, dict)):  # str() and float() would take some of these without complaint
            raise ValueError(value)
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"setting {name!r}: cannot read {value!r} as {kind.__name__}") from exc


def _heads(value: Any) -> list[HeadSpec]:
    """A YAML list of mappings, or the same as JSON text (environment, flags) → validated HeadSpecs."""
    if value is None:  # `predictors:` with nothing after it
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except ValueError as exc:
            raise SettingsError(f"setting 'predictors': not JSON ({exc})") from exc
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise SettingsError("setting 'predictors': expected a list of mappings ({name, weights, labels, ...})")
    specs = []
    for i, item in enumerate(value):
        where = f"predictors[{i}]"
        if unknown := sorted(set(item) - set(HEAD_FIELD_TYPES)):
            raise SettingsError(f"setting '{where}': unknown keys {unknown} (known: {sorted(HEAD_FIELD_TYPES)})")
        if not isinstance(item.get("name"), str):
            raise SettingsError(f"setting '{where}': a head needs a name")
        typed = {key: _scalar(f"{where}.{key}", HEAD_FIELD_TYPES[key], v) for key, v in item.items()}
        try:
            specs.append(HeadSpec(**typed))
        except ValueError as exc:
            raise SettingsError(f"setting '{where}': {exc}") from exc
    try:
        check_heads(specs)
    except ValueError as exc:
        raise SettingsError(f"setting 'predictors': {exc}") from exc
    return specs


def _coerce(name: str, value: Any) -> Any:
    return _heads(value) if FIELD_TYPES[name] is list else _scalar(name, FIELD_TYPES[name], value)


def load_settings(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge the layers in order of precedence: defaults < file < environment < overrides (flags)."""
    values: dict[str, Any] = {}
    if path is not None:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise SettingsError(f"{path}: expected a mapping of settings")
        unknown = sorted(set(data) - set(FIELD_TYPES))
        if unknown:
            raise SettingsError(f"{path}: unknown settings {unknown}")
        values.update(data)
    env = os.environ if env is None else env
    for name in FIELD_TYPES:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            values[name] = raw
    for name, value in (overrides or {}).items():
        if name not in FIELD_TYPES:
            raise SettingsError(f"unknown setting {name!r}")
        if value is not None:
            values[name] = value
    return Settings(**{name: _coerce(name, value) for name, value in values.items()})
