"""The documentation and example configuration cover every setting."""

from pathlib import Path

from worker.settings import FIELD_TYPES, load_settings

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_documented():
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    missing = [name for name in FIELD_TYPES if f"`{name}`" not in text]
    assert missing == []


def test_every_fixed_choice_setting_lists_its_allowed_values():
    """Each Literal setting's row in docs/configuration.md names every value that loads (worker/settings.py)."""
    from worker.settings import CHOICES

    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    rows = {line.split("`")[1]: line for line in text.splitlines() if line.startswith("| `")}
    missing = {
        name: [choice for choice in choices if f"`{choice}`" not in rows.get(name, "")]
        for name, choices in CHOICES.items()
    }
    assert {name: values for name, values in missing.items() if values} == {}


def test_example_worker_config_loads():
    settings = load_settings(ROOT / "configs" / "worker.yaml", env={})
    assert settings.input_topic == "videotag.requests" and settings.seg_num == 300


def test_messages_md_shows_every_input_shape_and_each_example_parses():
    """docs/messages.md's input examples (the JSON blocks before the Result section) are real inputs."""
    import json
    import re

    from worker.messages import message_shape, parse_request

    text = (ROOT / "docs" / "messages.md").read_text(encoding="utf-8")
    inputs = text[text.index("## Request") : text.index("## Result")]
    examples = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", inputs, re.S)]
    shapes = {message_shape(example) for example in examples}
    assert shapes == {"request", "s3_event", "s3_test_event", "eventbridge", "sns"}
    videos = [(r.bucket, r.key) for example in examples for r in parse_request(json.dumps(example).encode())]
    assert videos == [("uploads", "2026/11/v-123.mp4")] + [("uploads", "2026/11/my video.mp4")] * 4


def test_messages_md_lists_every_error_code_with_its_kind_and_nothing_else():
    """The table of docs/messages.md's "Error codes" section and models.errors.ErrorCode agree, both ways."""
    import re

    from models.errors import ErrorCode

    text = (ROOT / "docs" / "messages.md").read_text(encoding="utf-8")
    section = text[text.index("## Error codes") :]
    section = section[: section.index("\n## ")]
    rows = re.findall(r"^\| `([^`]+)` \| (\w+) \|", section, re.M)
    documented = dict(rows)
    assert len(documented) == len(rows), "a code is documented twice"
    assert documented == {code.value: code.kind.value for code in ErrorCode}
