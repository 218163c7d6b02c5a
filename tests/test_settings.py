"""Settings precedence and validation: types, choices, where defaults come from."""

import dataclasses
import re
import shutil
import typing
from pathlib import Path

import pytest

from models.options import Precision
from worker.settings import CHOICES, FIELD_TYPES, Settings, SettingsError, load_settings, settings_problems

ROOT = Path(__file__).resolve().parents[1]


def test_precedence_defaults_file_env_flags(tmp_path):
    config = tmp_path / "w.yaml"
    config.write_text("max_inflight: 3\ngroup_id: from-file\nseg_num: 100\n")
    env = {"VIDEOTAG_GROUP_ID": "from-env", "VIDEOTAG_SEG_NUM": "50", "VIDEOTAG_ALLOW_RANDOM_WEIGHTS": "true"}
    s = load_settings(config, env=env, overrides={"seg_num": 8})
    assert (s.max_inflight, s.group_id, s.seg_num, s.allow_random_weights) == (3, "from-env", 8, True)
    assert s.input_topic == Settings().input_topic


@pytest.mark.parametrize(
    ("text", "env"),
    [
        ("nonsense_key: 1\n", {}),
        ("- a list\n", {}),
        ("", {"VIDEOTAG_MAX_INFLIGHT": "two"}),
        ("", {"VIDEOTAG_ALLOW_RANDOM_WEIGHTS": "maybe"}),
        ("seg_num: 2.5\n", {}),
        # the S3-event settings are checked at load too
        ("s3_event_video_id: bucket/key\n", {}),
        ("", {"VIDEOTAG_S3_EVENT_VIDEO_ID": "Key"}),
        ("max_event_records: 0\n", {}),
        ("allowed_buckets: ' , '\n", {}),
        ("allowed_buckets: []\n", {}),
    ],
)
def test_bad_settings_are_refused(tmp_path, text, env):
    config = tmp_path / "w.yaml"
    config.write_text(text)
    with pytest.raises(SettingsError):
        load_settings(config, env=env)


def test_secrets_are_redacted():
    s = load_settings(env={"VIDEOTAG_SASL_PASSWORD": "hunter2", "VIDEOTAG_SSL_PASSWORD": "pw2"})
    assert s.sasl_password == "hunter2"
    text = repr(s.redacted())
    assert "hunter2" not in text and "pw2" not in text


def test_pod_name_is_the_static_member_id_unless_one_is_set() -> None:
    assert load_settings(env={}).group_instance_id is None  # two local workers must never share an id
    assert load_settings(env={"POD_NAME": "videotag-7d9f-x2"}).group_instance_id == "videotag-7d9f-x2"
    explicit = {"POD_NAME": "videotag-7d9f-x2", "VIDEOTAG_GROUP_INSTANCE_ID": "node-a"}
    assert load_settings(env=explicit).group_instance_id == "node-a"


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"publish_timeout_s": 30, "delivery_timeout_ms": 120000}, "publish_timeout_s"),
        ({"delivery_timeout_ms": 1000, "publish_timeout_s": 2}, "delivery_timeout_ms (1000)"),
        ({"heartbeat_interval_ms": 20000}, "heartbeat_interval_ms"),
        ({"session_timeout_ms": 400000}, "max_poll_interval_ms"),
        ({"decode_timeout_s": 1000}, "decode_timeout_s"),
        ({"termination_grace_s": 60}, "termination_grace_s"),
        ({"partition_assignment_strategy": "cooperative"}, "partition_assignment_strategy"),
        ({"decoder_max_memory_bytes": 256 * 1024**2}, "decoder_max_memory_bytes"),
        ({"decoder_max_cpu_s": 0}, "decoder_max_cpu_s"),
    ],
)
def test_timeouts_that_disagree_are_refused_naming_the_setting(values: dict, named: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(named)):
        load_settings(env={}, overrides=values)


def test_the_shipped_defaults_and_a_chart_grace_period_agree() -> None:
    assert settings_problems(Settings()) == []
    assert load_settings(env={}, overrides={"termination_grace_s": 150}).termination_grace_s == 150


def test_allowed_buckets_from_a_list_or_comma_separated(tmp_path):
    assert load_settings(env={}).allowed_bucket_names() is None  # unset: any bucket
    config = tmp_path / "w.yaml"
    config.write_text("allowed_buckets: [uploads, archive]\ns3_event_video_id: bucket_key\n")
    s = load_settings(config, env={})
    assert s.allowed_bucket_names() == frozenset({"uploads", "archive"}) and s.s3_event_video_id == "bucket_key"
    s = load_settings(env={"VIDEOTAG_ALLOWED_BUCKETS": " uploads,archive ,", "VIDEOTAG_MAX_EVENT_RECORDS": "5"})
    assert s.allowed_bucket_names() == frozenset({"uploads", "archive"}) and s.max_event_records == 5


def test_the_decoder_limit_settings_default_to_the_decoder_s_own_defaults() -> None:
    from models.decoder_process import DecoderLimits

    settings = Settings()
    assert DecoderLimits(settings.decoder_max_memory_bytes, settings.decoder_max_cpu_s) == DecoderLimits()


# ---------------------------------------------------------------------------------------------------------------
# Fixed choices: Literal types, one source for validation and the CLI


def test_every_fixed_choice_setting_is_a_literal() -> None:
    """The settings compared against string constants in the code are all typed with their choices."""
    assert {
        "device",
        "engine",
        "precision",
        "preprocess",
        "layers",
        "delivery",
        "security_protocol",
        "sasl_mechanism",
        "log_level",
        "log_format",
        "partition_assignment_strategy",
        "s3_event_video_id",
    } == set(CHOICES)
    assert CHOICES["precision"] == typing.get_args(Precision) == ("fp32", "bf16", "fp16", "int8")
    assert CHOICES["layers"] == (50, 101) and FIELD_TYPES["layers"] is int


def test_the_kafka_assignors_are_the_strategy_setting_s_choices() -> None:
    from worker.kafka_clients import ASSIGNORS

    assert tuple(ASSIGNORS) == CHOICES["partition_assignment_strategy"]


@pytest.mark.parametrize("name", sorted(CHOICES))
def test_a_value_outside_the_choices_is_refused_naming_the_setting_the_choices_and_where(tmp_path, name) -> None:
    bad = 77 if name == "layers" else "FP64"
    allowed = ", ".join(str(choice) for choice in CHOICES[name])
    expected = f"setting {name!r}: {bad!r} is not one of {allowed}"
    env_name = "VIDEOTAG_" + name.upper()
    with pytest.raises(SettingsError) as error:
        load_settings(env={env_name: str(bad)})
    assert str(error.value) == f"{expected} (from {env_name})"
    config = tmp_path / "w.yaml"
    config.write_text(f"{name}: {bad}\n")
    with pytest.raises(SettingsError, match=re.escape(f"{expected} (from {config})")):
        load_settings(config, env={})
    flag = "--" + name.replace("_", "-")
    with pytest.raises(SettingsError, match=re.escape(f"{expected} (from {flag})")):
        load_settings(env={}, overrides={name: bad})


def test_every_choice_loads_and_the_cli_offers_exactly_the_choices() -> None:
    from worker.cli import build_parser

    flags = {action.dest: action for action in build_parser()._subparsers._group_actions[0].choices["worker"]._actions}
    for name, choices in CHOICES.items():
        for choice in choices:
            overrides = {name: choice} | ({"engine": "inference"} if name == "precision" else {})
            assert getattr(load_settings(env={}, overrides=overrides), name) == choice
        if name in flags:
            assert tuple(flags[name].choices) == choices, name


def test_log_level_is_read_in_any_case() -> None:
    assert load_settings(env={"VIDEOTAG_LOG_LEVEL": "debug"}).log_level == "DEBUG"


def test_a_reduced_precision_needs_the_inference_engine() -> None:
    with pytest.raises(SettingsError, match="bf16 needs engine inference"):
        load_settings(env={}, overrides={"engine": "dygraph", "precision": "bf16"})


def test_settings_are_frozen() -> None:
    settings = load_settings(env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.seg_num = 8  # type: ignore[misc]
    assert dataclasses.replace(settings, seg_num=8).seg_num == 8 and settings.seg_num == 300


@pytest.mark.parametrize(
    "argv",
    [
        ["--log-level", "DEBUG", "worker"],
        ["worker", "--log-level", "DEBUG"],
        ["worker", "--log-level", "debug"],
        ["--log-level", "INFO", "worker", "--log-level", "DEBUG"],
    ],
)
def test_log_level_before_or_after_the_command(argv: list[str]) -> None:
    from worker.cli import _settings, build_parser

    args = build_parser().parse_args(argv)
    assert args.log_level == "DEBUG" and _settings(args).log_level == "DEBUG"


def test_without_the_flag_the_log_level_comes_from_the_settings(tmp_path) -> None:
    from worker.cli import _settings, build_parser

    config = tmp_path / "w.yaml"
    config.write_text("log_level: WARNING\n")
    assert _settings(build_parser().parse_args(["worker", "--config", str(config)])).log_level == "WARNING"


# ---------------------------------------------------------------------------------------------------------------
# Defaults read from configs/*.yaml at run time


def _configs(tmp_path: Path, **tsn: object) -> Path:
    """A copy of configs/ with tsn.yaml's `tsn` keys changed."""
    target = tmp_path / "configs"
    shutil.copytree(ROOT / "configs", target)
    path = target / "tsn.yaml"
    path.write_text(path.read_text(encoding="utf-8") + "".join(f"{k}: {v}\n" for k, v in tsn.items()), encoding="utf-8")
    return target


def test_the_model_defaults_are_the_config_files(monkeypatch) -> None:
    import yaml

    tsn = yaml.safe_load((ROOT / "configs" / "tsn.yaml").read_text(encoding="utf-8"))
    lstm = yaml.safe_load((ROOT / "configs" / "attention_lstm.yaml").read_text(encoding="utf-8"))
    settings = load_settings(env={})
    assert (
        (settings.layers, settings.seg_num, settings.batch_size, settings.max_width, settings.max_height, settings.topk)
        == (tsn["layers"], tsn["seg_num"], tsn["batch_size"], tsn["max_width"], tsn["max_height"], lstm["topk"])
        == (101, 300, 32, 7680, 4320, 20)
    )
    assert Settings().batch_size == 32


def test_editing_a_config_file_changes_what_runs(tmp_path, monkeypatch) -> None:
    """seg_num and batch_size from an edited tsn.yaml reach the tagger and the frames it samples."""
    from models.config import CONFIG_DIR_ENV
    from tests.model_fixtures import LABELS, VIDEOS, require_shared
    from worker.chain_builder import load_tagger

    require_shared()
    monkeypatch.setenv(CONFIG_DIR_ENV, str(_configs(tmp_path, seg_num=6, batch_size=4)))
    settings = load_settings(
        env={}, overrides={"engine": "simulated", "allow_random_weights": True, "label_file": str(LABELS)}
    )
    assert (settings.seg_num, settings.batch_size) == (6, 4)
    tagger = load_tagger(settings)
    assert (tagger.extractor_config.seg_num, tagger.batch_size) == (6, 4)
    assert tagger.tag(VIDEOS / "carphone_pristine.mp4").features.shape == (6, 2048)


def test_a_bad_value_in_a_config_file_names_the_file(tmp_path, monkeypatch) -> None:
    from models.config import CONFIG_DIR_ENV

    configs = _configs(tmp_path, layers=77)
    monkeypatch.setenv(CONFIG_DIR_ENV, str(configs))
    with pytest.raises(
        SettingsError, match=re.escape(f"'layers': 77 is not one of 50, 101 (from {configs / 'tsn.yaml'})")
    ):
        load_settings(env={})


def test_the_model_process_reads_the_same_config_directory() -> None:
    from models.config import CONFIG_DIR_ENV
    from worker.model_process import model_environment

    child = model_environment(
        {
            CONFIG_DIR_ENV: "/etc/videotag/configs",
            "VIDEOTAG_SASL_PASSWORD": "p",
            "AWS_SECRET_ACCESS_KEY": "s",
            "OMP_NUM_THREADS": "2",
        }
    )
    assert child == {CONFIG_DIR_ENV: "/etc/videotag/configs", "OMP_NUM_THREADS": "2"}
