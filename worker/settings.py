"""Worker settings: defaults, then a YAML file, then `VIDEOTAG_<NAME>` environment variables, then flags.

Every field here is a setting; docs/configuration.md describes each one. Credentials are not settings of
their own for S3 (boto3's standard chain: AWS_* variables, shared files, IRSA) and are never logged; the Kafka
secrets (SECRET_FIELDS) are redacted wherever settings are shown, `repr` included.
Values are checked when loaded: a setting of the wrong type, or outside its choices, refuses to start with a
one-line SettingsError (a ConfigError: exit 2) that names the setting, the allowed values and where the value came
from. A fixed-choice setting is typed with a `Literal` alias (here, or models/options.py for the model's): its
allowed values are `typing.get_args` of that alias, for validation (CHOICES) and the CLI's `choices` alike.
The defaults of the model's sizes (layers, seg_num, batch_size, max_width, max_height, topk) are not written here:
they are read from configs/tsn.yaml and configs/attention_lstm.yaml (models/config.py), when settings load.
`Settings` is frozen: code that needs other values makes a copy (`dataclasses.replace`).
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
from typing import Any, Literal

import yaml

from models.config import ATTENTION_LSTM_FILE, TSN_FILE, config_default, config_dir, config_source, config_value
from models.errors import ConfigError
from models.heads import HeadSpec, check_heads
from models.options import Device, Engine, Layers, Precision, Preprocess
from worker.lanes import lane_order, lane_problems
from worker.logs import LogFormat
from worker.messages import MAX_EVENT_RECORDS, VideoIdFrom

ENV_PREFIX = "VIDEOTAG_"
SECRET_FIELDS = frozenset({"sasl_password", "ssl_password"})
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
# GSSAPI and OAUTHBEARER are passed through to kafka-python without options of their own (docs/reliability.md)
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI"]
AssignmentStrategy = Literal["range", "roundrobin", "sticky", "cooperative-sticky"]
Delivery = Literal["at_least_once", "exactly_once"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
# Text settings that hold a comma-separated list; a YAML list is accepted for them too.
LIST_FIELDS = frozenset({"allowed_buckets", "input_topics"})


class SettingsError(ConfigError, ValueError):
    """A setting is unknown, has a value of the wrong type or outside its choices, or settings do not fit."""


@dataclass(frozen=True)
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
    security_protocol: SecurityProtocol = "PLAINTEXT"
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: str | None = None
    ssl_check_hostname: bool = True
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    session_timeout_ms: int = 45000
    heartbeat_interval_ms: int = 3000
    max_poll_interval_ms: int = 300000
    group_instance_id: str | None = None  # static membership; unset: $POD_NAME when set (see load_settings)
    leave_group_on_stop: bool = True
    partition_assignment_strategy: AssignmentStrategy = "range"
    delivery_timeout_ms: int = 120000
    delivery: Delivery = "at_least_once"
    transaction_timeout_ms: int = 30000
    publish_timeout_s: float = 130.0
    create_topics: bool = False
    create_topics_partitions: int = 12
    # S3
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_connect_timeout_s: float = 5.0
    s3_read_timeout_s: float = 30.0
    s3_event_video_id: VideoIdFrom = "key"
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
    layers: Layers = config_default(TSN_FILE, "layers")
    seg_num: int = config_default(TSN_FILE, "seg_num")
    topk: int = config_default(ATTENTION_LSTM_FILE, "topk")
    device: Device = "cpu"
    engine: Engine = "inference"
    precision: Precision = "fp32"
    preprocess: Preprocess = "faithful"
    batch_size: int = config_default(TSN_FILE, "batch_size")
    cpu_threads: int = 0  # 0: from the cgroup CPU quota (models/cgroup.py)
    tensorrt: bool = False
    simulated_ms_per_frame: float = 0.0  # engine "simulated" only: the stand-in's time per frame
    model_cache_dir: str = ".cache/videotag/models"
    int8_calibration: str = ".cache/videotag/int8-calibration.npz"  # precision int8: `videotag calibrate` writes it
    max_width: int = config_default(TSN_FILE, "max_width")
    max_height: int = config_default(TSN_FILE, "max_height")
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
    log_level: LogLevel = "INFO"
    log_format: LogFormat = "text"  # or json: one JSON object per line (worker/logs.py)
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


# Settings whose default is read from a hyper-parameter YAML in the config directory (models/config.py) → the file.
YAML_DEFAULTS = {f.name: file for f in fields(Settings) if (file := config_source(f)) is not None}
STOP_MARGIN_S = 15.0  # after the drain: commit, leave the group, close clients
# An interpreter with OpenCV's or PyAV's FFmpeg reserves about 0.5 GiB before it decodes anything: below this,
# every video would fail decoder_memory_limit, a permanent code, and the whole backlog drain into the DLQ.
DECODER_MIN_MEMORY_BYTES = 1024**3
KAFKA_REQUEST_TIMEOUT_MS = 30000  # kafka-python's producer default; delivery must allow one full request


def settings_problems(s: Settings) -> list[str]:
    """Settings that load but cannot work together, each named with the rule it breaks."""
    problems = []
    if s.engine == "dygraph" and s.precision != "fp32":
        problems.append(f"setting 'precision': {s.precision} needs engine inference (dygraph runs fp32 only)")
    if s.max_event_records < 1:
        problems.append("setting 'max_event_records': must be at least 1")
    if s.allowed_buckets is not None and not split_list(s.allowed_buckets):
        problems.append("setting 'allowed_buckets': names no bucket (unset it to allow any)")
    problems += lane_problems(s.input_topic_names(), s.retry_topic, s.output_topic, s.dlq_topic)
    if s.publish_timeout_s * 1000 <= s.delivery_timeout_ms:
        problems.append(
            f"publish_timeout_s ({s.publish_timeout_s:g} s) must exceed delivery_timeout_ms "
            f"({s.delivery_timeout_ms} ms): else the worker re-sends a record its producer still retries"
        )
    if s.delivery_timeout_ms < KAFKA_REQUEST_TIMEOUT_MS + 5:
        problems.append(
            f"delivery_timeout_ms ({s.delivery_timeout_ms}) must allow one produce request "
            f"({KAFKA_REQUEST_TIMEOUT_MS} ms) plus the linger"
        )
    if s.heartbeat_interval_ms * 3 > s.session_timeout_ms:
        problems.append(
            f"heartbeat_interval_ms ({s.heartbeat_interval_ms}) must be at most a third of "
            f"session_timeout_ms ({s.session_timeout_ms}), so that a missed heartbeat is not an eviction"
        )
    if s.max_poll_interval_ms < s.session_timeout_ms:
        problems.append(
            f"max_poll_interval_ms ({s.max_poll_interval_ms}) is the rebalance timeout and must be at "
            f"least session_timeout_ms ({s.session_timeout_ms})"
        )
    if not s.decode_timeout_s <= s.video_timeout_s < s.stuck_after_s:
        problems.append(
            f"decode_timeout_s ({s.decode_timeout_s:g}) ≤ video_timeout_s ({s.video_timeout_s:g}) < "
            f"stuck_after_s ({s.stuck_after_s:g}) must hold: a video's decode ends within its deadline, "
            "and a video past its deadline is cancelled before the worker is called stuck"
        )
    if s.decoder_max_memory_bytes < DECODER_MIN_MEMORY_BYTES:
        problems.append(
            f"decoder_max_memory_bytes ({s.decoder_max_memory_bytes}) must be at least "
            f"{DECODER_MIN_MEMORY_BYTES}: a decoder process needs about half of that to start"
        )
    if s.simulated_ms_per_frame < 0:
        problems.append("setting 'simulated_ms_per_frame': must be at least 0")
    if s.decoder_max_cpu_s < 1:
        problems.append("setting 'decoder_max_cpu_s': must be at least 1")
    if s.termination_grace_s is not None and s.drain_grace_s + STOP_MARGIN_S > s.termination_grace_s:
        problems.append(
            f"drain_grace_s ({s.drain_grace_s:g}) + {STOP_MARGIN_S:g} s to stop must fit in "
            f"termination_grace_s ({s.termination_grace_s:g}): else the pod is killed mid-drain"
        )
    return problems


def _field_hints(cls: type) -> dict[str, Any]:
    """Field name → its type hint, the X of `X | None`."""
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        if typing.get_origin(hint) in (types.UnionType, typing.Union):  # `X | None`
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        out[name] = hint
    return {f.name: out[f.name] for f in fields(cls)}


def _field_types(cls: type) -> dict[str, type]:
    """Field name → its type: the container of `list[X]`, the values' type of a `Literal`."""
    return {
        name: type(typing.get_args(hint)[0]) if typing.get_origin(hint) is Literal else typing.get_origin(hint) or hint
        for name, hint in _field_hints(cls).items()
    }


FIELD_TYPES = _field_types(Settings)
HEAD_FIELD_TYPES = _field_types(HeadSpec)
# The fixed-choice settings → their allowed values, in the order their Literal lists them.
CHOICES: dict[str, tuple[Any, ...]] = {
    name: typing.get_args(hint) for name, hint in _field_hints(Settings).items() if typing.get_origin(hint) is Literal
}


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


def _coerce(name: str, value: Any, where: str | None = None) -> Any:
    """`value` as setting `name`'s type, one of its choices; `where` it came from names it in the error."""
    try:
        if FIELD_TYPES[name] is list:
            return _heads(value)
        if name == "log_level" and isinstance(value, str):  # as logging takes it: debug is DEBUG
            value = value.upper()
        value = _scalar(name, FIELD_TYPES[name], value)
        if name in CHOICES and value is not None and value not in CHOICES[name]:
            allowed = ", ".join(str(choice) for choice in CHOICES[name])
            raise SettingsError(f"setting {name!r}: {value!r} is not one of {allowed}")
        return value
    except SettingsError as exc:
        if where is None:
            raise
        raise SettingsError(f"{exc} (from {where})") from exc


def _settings_file(path: Path) -> dict[str, Any]:
    """The settings of a YAML file; a file that cannot be read or is no mapping of settings is a SettingsError."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path}: cannot read it ({exc})") from exc
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: not YAML ({' '.join(str(exc).split())})") from exc
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: expected a mapping of settings")
    unknown = sorted(set(data) - set(FIELD_TYPES))
    if unknown:
        raise SettingsError(f"{path}: unknown settings {unknown}")
    return data


def load_settings(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge the layers in order of precedence: defaults < file < environment < overrides (flags). Each value is
    checked with where it came from (the YAML it defaults from, the file, the variable, the flag)."""
    values: dict[str, tuple[Any, str]] = {
        name: (config_value(file, name), str(config_dir() / file)) for name, file in YAML_DEFAULTS.items()
    }
    if path is not None:
        data = _settings_file(Path(path))
        values.update((name, (value, str(path))) for name, value in data.items())
    env = os.environ if env is None else env
    for name in FIELD_TYPES:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            values[name] = (raw, ENV_PREFIX + name.upper())
    for name, value in (overrides or {}).items():
        if name not in FIELD_TYPES:
            raise SettingsError(f"unknown setting {name!r}")
        if value is not None:
            values[name] = (value, "--" + name.replace("_", "-"))
    if values.get("group_instance_id", (None,))[0] is None and env.get("POD_NAME"):
        # A container restarted in its pod keeps the pod's name: it takes its partitions back without a
        # rebalance. Two processes on one host without POD_NAME stay dynamic: they must never share an id.
        values["group_instance_id"] = (env["POD_NAME"], "POD_NAME")
    settings = Settings(**{name: _coerce(name, value, where) for name, (value, where) in values.items()})
    problems = settings_problems(settings)
    if problems:
        raise SettingsError("; ".join(problems))
    return settings
