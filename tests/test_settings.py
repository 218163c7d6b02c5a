"""Settings precedence and validation."""

import pytest

from worker.settings import Settings, SettingsError, load_settings


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
