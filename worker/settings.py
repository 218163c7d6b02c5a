"""Worker settings: defaults, then a YAML file, then `VIDEOTAG_<NAME>` environment variables, then flags.

Every field here is a setting; docs/configuration.md describes each one. Credentials are not settings of
their own for S3 (boto3's standard chain: AWS_* variables, shared files, IRSA) and are never logged.
Values are checked when loaded: a setting of the wrong type, or outside its choices, refuses to start.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from worker.messages import MAX_EVENT_RECORDS, VIDEO_ID_FROM

ENV_PREFIX = "VIDEOTAG_"
SECRET_FIELDS = frozenset({"sasl_password", "ssl_password"})
CHOICES = {"s3_event_video_id": VIDEO_ID_FROM}
# Text settings that hold a comma-separated list; a YAML list is accepted for them too.
LIST_FIELDS = frozenset({"allowed_buckets"})


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
    max_event_records: int = MAX_EVENT_RECORDS
    allowed_buckets: str | None = None  # comma-separated; unset: any bucket
    max_object_bytes: int = 2 * 1024**3
    temp_dir: str | None = None
    temp_dir_max_bytes: int = 8 * 1024**3
    # Model
    extractor_weights: str = "weights/tsn"
    predictor_weights: str = "weights/attention_lstm"
    label_file: str = "label_3396.txt"
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

    def allowed_bucket_names(self) -> frozenset[str] | None:
        return None if self.allowed_buckets is None else frozenset(split_list(self.allowed_buckets))

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict that is safe to log."""
        out = dataclasses.asdict(self)
        for name in SECRET_FIELDS:
            if out.get(name):
                out[name] = "***"
        return out


def _field_types() -> dict[str, type]:
    hints = typing.get_type_hints(Settings)
    out: dict[str, type] = {}
    for f in fields(Settings):
        hint = hints[f.name]
        if isinstance(hint, types.UnionType):  # `X | None`
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        out[f.name] = hint
    return out


FIELD_TYPES = _field_types()


def split_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _coerce(name: str, value: Any) -> Any:
    kind = FIELD_TYPES[name]
    if value is None:
        return None
    if name in LIST_FIELDS and isinstance(value, list):
        value = ",".join(str(item) for item in value)
    try:
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
    settings = Settings(**{name: _coerce(name, value) for name, value in values.items()})
    _check(settings)
    return settings


def _check(settings: Settings) -> None:
    for name, choices in CHOICES.items():
        if getattr(settings, name) not in choices:
            raise SettingsError(f"setting {name!r}: {getattr(settings, name)!r} is not one of {list(choices)}")
    if settings.max_event_records < 1:
        raise SettingsError("setting 'max_event_records': must be at least 1")
    if settings.allowed_buckets is not None and not split_list(settings.allowed_buckets):
        raise SettingsError("setting 'allowed_buckets': names no bucket (unset it to allow any)")
