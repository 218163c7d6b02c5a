"""A configuration problem ends every command with one line on stderr and exit status 2; its traceback appears
only at --log-level DEBUG (worker/cli.py, models.errors.ConfigError)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.model_fixtures import run_cli

EXIT_USAGE = 2
# Each command with the arguments it requires: none of them gets as far as doing work.
COMMANDS = {
    "worker": [],
    "tag": ["v.mp4"],
    "preview": ["v.mp4", "--out", "sheet.png"],
    "features": ["v.mp4", "--out", "features"],
    "train": ["--data", "d.csv", "--label-file", "l.txt", "--out", "head"],
    "eval": ["--data", "d.csv", "--label-file", "l.txt", "--predictor-weights", "head"],
    "enqueue": ["uploads/v.mp4"],
    "skip": ["--partition", "0", "--offset", "0"],
    "demo": [],
    "bench": ["--videos", "v.mp4"],
}


LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")  # worker/logs.py's text format


def one_line_error(run: subprocess.CompletedProcess) -> str:
    """The error line: the one line on stderr besides log records (a model load may log its thread plan)."""
    assert run.returncode == EXIT_USAGE, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    [line] = [line for line in run.stderr.splitlines() if not LOG_RECORD.match(line)]
    assert line.startswith("videotag: error: ")
    return line


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_reports_a_value_outside_a_setting_s_choices_in_one_line(tmp_path: Path, command: str) -> None:
    run = run_cli(command, *COMMANDS[command], cwd=tmp_path, timeout=120, VIDEOTAG_PRECISION="fp64")
    assert one_line_error(run) == (
        "videotag: error: setting 'precision': 'fp64' is not one of fp32, bf16, fp16, int8 (from VIDEOTAG_PRECISION)"
    )


def test_a_flag_outside_its_choices_is_one_line_too(tmp_path: Path) -> None:
    run = run_cli("worker", "--precision", "fp64", cwd=tmp_path, timeout=120)
    assert run.returncode == EXIT_USAGE and "Traceback" not in run.stderr
    [line] = run.stderr.splitlines()
    assert line.startswith("videotag worker: error: argument --precision: invalid choice: 'fp64'")


@pytest.mark.parametrize("text", ["bootstrap_servers: [localhost\n", "- a list\n", "no_such_setting: 1\n"])
def test_a_bad_settings_file_is_one_line(tmp_path: Path, text: str) -> None:
    config = tmp_path / "worker.yaml"
    config.write_text(text, encoding="utf-8")
    assert str(config) in one_line_error(run_cli("worker", "--config", str(config), cwd=tmp_path, timeout=120))


def test_a_missing_settings_file_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    line = one_line_error(run_cli("enqueue", "--config", str(missing), "k", cwd=tmp_path, timeout=120))
    assert str(missing) in line and "No such file" in line


def test_a_missing_weights_file_is_one_line(tmp_path: Path) -> None:
    line = one_line_error(
        run_cli("tag", "v.mp4", "--extractor-weights", str(tmp_path / "none" / "tsn"), cwd=tmp_path, timeout=300)
    )
    assert "tsn.pdparams" in line and "videotag weights download" in line


def test_an_unreadable_label_file_is_one_line(tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_bytes(b"\xff\xfe\xfa not UTF-8\n")  # (as root, a file's permissions would not stop the read)
    line = one_line_error(
        run_cli(
            "tag",
            "v.mp4",
            "--engine",
            "simulated",
            "--allow-random-weights",
            "--label-file",
            str(labels),
            cwd=tmp_path,
            timeout=300,
        )
    )
    assert f"cannot read {labels}" in line


def test_a_bad_hyper_parameter_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "tsn.yaml").write_text("layers: [101\n", encoding="utf-8")
    line = one_line_error(run_cli("worker", cwd=tmp_path, timeout=120, VIDEOTAG_CONFIG_DIR=str(tmp_path)))
    assert str(tmp_path / "tsn.yaml") in line


@pytest.mark.parametrize("argv", [["--log-level", "DEBUG", "worker"], ["worker", "--log-level", "DEBUG"]])
def test_debug_shows_the_traceback(tmp_path: Path, argv: list[str]) -> None:
    run = run_cli(*argv, cwd=tmp_path, timeout=120, VIDEOTAG_DELIVERY="twice")
    assert run.returncode == EXIT_USAGE
    assert "Traceback (most recent call last)" in run.stderr and "SettingsError" in run.stderr
    assert run.stderr.splitlines()[-1].startswith("videotag: error: setting 'delivery': 'twice'")


def test_in_json_mode_the_traceback_is_in_the_one_json_line(tmp_path: Path) -> None:
    run = run_cli(
        "--log-level",
        "DEBUG",
        "worker",
        cwd=tmp_path,
        timeout=120,
        VIDEOTAG_LOG_FORMAT="json",
        VIDEOTAG_DELIVERY="twice",
    )
    assert run.returncode == EXIT_USAGE
    [line] = run.stderr.splitlines()
    entry = json.loads(line)
    assert "'twice'" in entry["message"] and "Traceback (most recent call last)" in entry["exc_info"]
