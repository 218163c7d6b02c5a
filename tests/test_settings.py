"""Settings precedence and validation."""

import re

import pytest

from worker.settings import Settings, SettingsError, load_settings, settings_problems


def test_precedence_defaults_file_env_flags(tmp_path):
    config = tmp_path / "w.yaml"
    config.write_text("max_inflight: 3\ngroup_id: from-file\nseg_num: 100\n")
    env = {"VIDEOTAG_GROUP_ID": "from-env", "VIDEOTAG_SEG_NUM": "50", "VIDEOTAG_ALLOW_RANDOM_WEIGHTS": "true"}
    s = load_settings(config, env=env, overrides={"seg_num": 8})
    assert (s.max_inflight, s.group_id, s.seg_num, s.allow_random_weights) == (3, "from-env", 8, True)
    assert s.input_topic == Settings().input_topic


@pytest.mark.parametrize(
    ("text", "env"),
    [("nonsense_key: 1\n", {}), ("- a list\n", {}), ("", {"VIDEOTAG_MAX_INFLIGHT": "two"}),
     ("", {"VIDEOTAG_ALLOW_RANDOM_WEIGHTS": "maybe"}), ("seg_num: 2.5\n", {})],
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


@pytest.mark.parametrize(("values", "named"), [
    ({"publish_timeout_s": 30, "delivery_timeout_ms": 120000}, "publish_timeout_s"),
    ({"delivery_timeout_ms": 1000, "publish_timeout_s": 2}, "delivery_timeout_ms (1000)"),
    ({"heartbeat_interval_ms": 20000}, "heartbeat_interval_ms"),
    ({"session_timeout_ms": 400000}, "max_poll_interval_ms"),
    ({"decode_timeout_s": 1000}, "decode_timeout_s"),
    ({"termination_grace_s": 60}, "termination_grace_s"),
    ({"partition_assignment_strategy": "cooperative"}, "partition_assignment_strategy"),
    ({"decoder_max_memory_bytes": 256 * 1024**2}, "decoder_max_memory_bytes"),
    ({"decoder_max_cpu_s": 0}, "decoder_max_cpu_s"),
])
def test_timeouts_that_disagree_are_refused_naming_the_setting(values: dict, named: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(named)):
        load_settings(env={}, overrides=values)


def test_the_shipped_defaults_and_a_chart_grace_period_agree() -> None:
    assert settings_problems(Settings()) == []
    assert load_settings(env={}, overrides={"termination_grace_s": 150}).termination_grace_s == 150


@pytest.mark.parametrize(("text", "env"), [("s3_event_video_id: bucket/key\n", {}),
                                           ("", {"VIDEOTAG_S3_EVENT_VIDEO_ID": "Key"}),
                                           ("max_event_records: 0\n", {}),
                                           ("allowed_buckets: ' , '\n", {}), ("allowed_buckets: []\n", {})])
def test_event_settings_are_checked_at_load(tmp_path, text, env):
    config = tmp_path / "w.yaml"
    config.write_text(text)
    with pytest.raises(SettingsError):
        load_settings(config, env=env)


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
