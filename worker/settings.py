"""Worker settings: defaults, then a YAML file, then `VIDEOTAG_<NAME>` environment variables, then flags.

Every field here is a setting; docs/configuration.md describes each one. Credentials are not settings of
their own for S3 (boto3's standard chain: AWS_* variables, shared files, IRSA) and are never logged; the Kafka
secrets (SECRET_FIELDS) are redacted wherever settings are shown, `repr` included.
Values are checked when loaded: a setting of the wrong type, or outside its choices, refuses to start.
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
from worker.lanes import lane_order, lane_problems
from worker.logs import FORMATS as LOG_FORMATS
from worker.messages import MAX_EVENT_RECORDS, VIDEO_ID_FROM

ENV_PREFIX = "VIDEOTAG_"
SECRET_FIELDS = frozenset({"sasl_password", "ssl_password"})
ASSIGNMENT_STRATEGIES = ("range", "roundrobin", "sticky", "cooperative-sticky")
CHOICES = {"s3_event_video_id": VIDEO_ID_FROM, "partition_assignment_strategy": ASSIGNMENT_STRATEGIES,
           "delivery": ("at_least_once", "exactly_once"), "log_format": LOG_FORMATS}
# Text settings that hold a comma-separated list; a YAML list is accepted for them too.
LIST_FIELDS = frozenset({"allowed_buckets", "input_topics"})


class SettingsError(ValueError):
    """A setting is unknown or has a value of the wrong type."""


@dataclass
class Settings:
    # Kafka
    bootstrap_servers: str = "localhost:9092"
    group_id: str = "videotag-worker"
    input_topic: str = "videotag.requests"
    input_topics: str | None = None  # comma-separated, highest priority first; unset: input_topic alone
    retry_topic: str | None = None  # unset: an object's fault is retried in place (worker/lanes.py)
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
    delivery_timeout_ms: int = 120000
    delivery: str = "at_least_once"
    transaction_timeout_ms: int = 30000
    publish_timeout_s: float = 130.0
    create_topics: bool = False
    create_topics_partitions: int = 12
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
    cpu_threads: int = 0  # 0: from the cgroup CPU quota (models/cgroup.py)
    tensorrt: bool = False
    simulated_ms_per_frame: float = 0.0  # engine "simulated" only: the stand-in's time per frame
    model_cache_dir: str = ".cache/videotag/models"
    int8_calibration: str = ".cache/videotag/int8-calibration.npz"  # precision int8: `videotag calibrate` writes it
    max_width: int = 7680
    max_height: int = 4320
    # Worker
    max_inflight: int = 2
    retry_max_attempts: int = 5
    retry_budget_s: float = 600.0
    max_worker_deaths: int = 3
    breaker_threshold: int = 5
    retry_backoff_base_s: float = 0.5
    retry_backoff_max_s: float = 30.0
    drain_grace_s: float = 120.0
    termination_grace_s: float | None = None
    stuck_after_s: float = 900.0
    video_timeout_s: float = 840.0
    decode_timeout_s: float = 600.0
    decoder_max_memory_bytes: int = 4 * 1024**3  # models.decoder_process.DecoderLimits: the same defaults
    decoder_max_cpu_s: int = 3600
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9100
    log_level: str = "INFO"
    log_format: str = "text"  # or json: one JSON object per line (worker/logs.py)
    otel_exporter_otlp_endpoint: str | None = None  # OTLP/HTTP collector: spans per stage (worker/telemetry.py)

    def allowed_bucket_names(self) -> frozenset[str] | None:
        return None if self.allowed_buckets is None else frozenset(split_list(self.allowed_buckets))

    def input_topic_names(self) -> list[str]:
        return split_list(self.input_topics) if self.input_topics is not None else [self.input_topic]

    def lanes(self) -> list[str]:
        """Every topic the worker reads, highest priority first (worker/lanes.py)."""
        return lane_order(self.input_topic_names(), self.retry_topic)

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict that is safe to log."""
        out = dataclasses.asdict(self)
        for name in SECRET_FIELDS:
            if out.get(name):
                out[name] = "***"
        return out

    def __repr__(self) -> str:
        """Redacted too: settings in a traceback, a log line or an exception must not carry a secret."""
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in self.redacted().items())})"


STOP_MARGIN_S = 15.0  # after the drain: commit, leave the group, close clients
# An interpreter with OpenCV's or PyAV's FFmpeg reserves about 0.5 GiB before it decodes anything: below this,
# every video would fail decoder_memory_limit, a permanent code, and the whole backlog drain into the DLQ.
DECODER_MIN_MEMORY_BYTES = 1024**3
KAFKA_REQUEST_TIMEOUT_MS = 30000  # kafka-python's producer default; delivery must allow one full request


def settings_problems(s: Settings) -> list[str]:
    """Settings that load but cannot work together, each named with the rule it breaks."""
    problems = [f"setting {name!r}: {getattr(s, name)!r} is not one of {list(choices)}"
                for name, choices in CHOICES.items() if getattr(s, name) not in choices]
    if s.max_event_records < 1:
        problems.append("setting 'max_event_records': must be at least 1")
    if s.allowed_buckets is not None and not split_list(s.allowed_buckets):
        problems.append("setting 'allowed_buckets': names no bucket (unset it to allow any)")
    problems += lane_problems(s.input_topic_names(), s.retry_topic, s.output_topic, s.dlq_topic)
    if s.publish_timeout_s * 1000 <= s.delivery_timeout_ms:
        problems.append(f"publish_timeout_s ({s.publish_timeout_s:g} s) must exceed delivery_timeout_ms "
                        f"({s.delivery_timeout_ms} ms): else the worker re-sends a record its producer still retries")
    if s.delivery_timeout_ms < KAFKA_REQUEST_TIMEOUT_MS + 5:
        problems.append(f"delivery_timeout_ms ({s.delivery_timeout_ms}) must allow one produce request "
                        f"({KAFKA_REQUEST_TIMEOUT_MS} ms) plus the linger")
    if s.heartbeat_interval_ms * 3 > s.session_timeout_ms:
        problems.append(f"heartbeat_interval_ms ({s.heartbeat_interval_ms}) must be at most a third of "
                        f"session_timeout_ms ({s.session_timeout_ms}), so that a missed heartbeat is not an eviction")
    if s.max_poll_interval_ms < s.session_timeout_ms:
        problems.append(f"max_poll_interval_ms ({s.max_poll_interval_ms}) is the rebalance timeout and must be at "
                        f"least session_timeout_ms ({s.session_timeout_ms})")
    if not s.decode_timeout_s <= s.video_timeout_s < s.stuck_after_s:
        problems.append(f"decode_timeout_s ({s.decode_timeout_s:g}) ≤ video_timeout_s ({s.video_timeout_s:g}) < "
                        f"stuck_after_s ({s.stuck_after_s:g}) must hold: a video's decode ends within its deadline, "
                        "and a video past its deadline is cancelled before the worker is called stuck")
    if s.decoder_max_memory_bytes < DECODER_MIN_MEMORY_BYTES:
        problems.append(f"decoder_max_memory_bytes ({s.decoder_max_memory_bytes}) must be at least "
                        f"{DECODER_MIN_MEMORY_BYTES}: a decoder process needs about half of that to start")
    if s.simulated_ms_per_frame < 0:
        problems.append("setting 'simulated_ms_per_frame': must be at least 0")
    if s.decoder_max_cpu_s < 1:
        problems.append("setting 'decoder_max_cpu_s': must be at least 1")
    if s.termination_grace_s is not None and s.drain_grace_s + STOP_MARGIN_S > s.termination_grace_s:
        problems.append(f"drain_grace_s ({s.drain_grace_s:g}) + {STOP_MARGIN_S:g} s to stop must fit in "
                        f"termination_grace_s ({s.termination_grace_s:g}): else the pod is killed mid-drain")
    return problems


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


def split_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _scalar(name: str, kind: type, value: Any) -> Any:
    if value is None:
        return None
    if name in LIST_FIELDS and isinstance(value, list):
        value = ",".join(str(item) for item in value)
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
    if values.get("group_instance_id") is None and env.get("POD_NAME"):
        # A container restarted in its pod keeps the pod's name: it takes its partitions back without a
        # rebalance. Two processes on one host without POD_NAME stay dynamic: they must never share an id.
        values["group_instance_id"] = env["POD_NAME"]
    settings = Settings(**{name: _coerce(name, value) for name, value in values.items()})
    problems = settings_problems(settings)
    if problems:
        raise SettingsError("; ".join(problems))
    return settings
