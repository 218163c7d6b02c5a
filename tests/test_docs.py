"""The documentation and example configuration cover every setting."""

from pathlib import Path

from worker.settings import FIELD_TYPES, load_settings

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_documented():
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    missing = [name for name in FIELD_TYPES if f"`{name}`" not in text]
    assert missing == []


def test_example_worker_config_loads():
    settings = load_settings(ROOT / "configs" / "worker.yaml", env={})
    assert settings.input_topic == "videotag.requests" and settings.seg_num == 300
