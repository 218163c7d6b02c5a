"""JSON logs (worker/logs.py): the formatter, the per-video context, and a process whose every stderr line is JSON,
native writes to file descriptor 2 included."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path

import pytest

from worker import logs

ROOT = Path(__file__).resolve().parents[1]


def _record(message: str = "hello %s", args: tuple = ("world",), exc_info=None, **extra) -> logging.LogRecord:
    record = logging.LogRecord("worker.test", logging.WARNING, __file__, 1, message, args, exc_info)
    for name, value in extra.items():
        setattr(record, name, value)
    return record


def test_a_record_is_one_json_line_with_time_level_logger_message() -> None:
    line = logs.JsonFormatter().format(_record("two\nlines %s"))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "WARNING" and entry["logger"] == "worker.test" and entry["message"] == "two\nlines world"
    assert entry["time"].endswith("Z") and datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).tzinfo
    assert not set(entry) & {"exc_info", *logs.CONTEXT_FIELDS}


def test_an_exception_is_a_string_field() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        entry = json.loads(logs.JsonFormatter().format(_record(exc_info=sys.exc_info())))
    assert "Traceback" in entry["exc_info"] and "ValueError: bad" in entry["exc_info"]


def test_context_fields_come_from_the_context_and_extra_wins() -> None:
    formatter = logs.JsonFormatter()
    with logs.context(video_id="v1", trace_id="t" * 32, topic="in", partition=2, offset=17):
        entry = json.loads(formatter.format(_record()))
        with logs.context(offset=18, video_id=None):  # None never overrides
            inner = json.loads(formatter.format(_record()))
    assert {k: entry[k] for k in logs.CONTEXT_FIELDS} == {
        "video_id": "v1",
        "trace_id": "t" * 32,
        "topic": "in",
        "partition": 2,
        "offset": 17,
    }
    assert inner["offset"] == 18 and inner["video_id"] == "v1"
    assert "video_id" not in json.loads(formatter.format(_record()))  # the context ended
    assert json.loads(formatter.format(_record(video_id="v9", offset=3)))["video_id"] == "v9"


def test_each_thread_has_its_own_context() -> None:
    formatter, seen = logs.JsonFormatter(), {}
    barrier = threading.Barrier(2)

    def job(video_id: str) -> None:
        with logs.context(video_id=video_id):
            barrier.wait()  # both contexts are set at once
            seen[video_id] = json.loads(formatter.format(_record()))["video_id"]

    threads = [threading.Thread(target=job, args=(v,)) for v in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"a": "a", "b": "b"}


def test_glog_lines_keep_their_severity() -> None:
    assert logs.native_level("I1207 10:00:00.123456  1234 analysis.cc:42] pass") == logging.INFO
    assert logs.native_level("W1207 10:00:00.1 1 x.cc:1] careful") == logging.WARNING
    assert logs.native_level("E1207 10:00:00.1 1 x.cc:1] broken") == logging.ERROR
    assert logs.native_level("[h264 @ 0x55d] error while decoding MB") == logging.WARNING


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log format"):
        logs.configure("INFO", "xml")


CHILD = r"""
import logging, os, sys, threading, warnings
from worker import logs

logs.configure("INFO", "json")
log = logging.getLogger("child")
log.info("started")
with logs.context(video_id="v1", trace_id="%s", topic="in", partition=0, offset=5):
    log.warning("in context")
os.write(2, b"I1207 10:00:00.000000  42 analysis_predictor.cc:1] native glog line\n")
os.write(2, b"partial native line without a newline, then ")
os.write(2, b"its end\n\n")
print("a print to sys.stderr", file=sys.stderr, flush=True)
warnings.warn("a library warning", DeprecationWarning, stacklevel=1)
threading.Thread(target=lambda: 1 / 0, name="doomed").start()
import subprocess
subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('a child inherits the captured stderr\\n')"])
import time; time.sleep(0.5)  # the pump thread logs what is in the pipe
raise SystemExit(3)
""" % ("a" * 32)


def test_in_json_mode_every_stderr_line_of_a_process_is_json() -> None:
    """Python records, native writes to fd 2, prints, warnings, uncaught exceptions and an inheriting child."""
    done = subprocess.run([sys.executable, "-W", "always", "-c", CHILD], cwd=ROOT, capture_output=True, timeout=120)
    assert done.returncode == 3
    lines = done.stderr.decode().splitlines()
    entries = [json.loads(line) for line in lines]  # fails on any line that is not JSON
    assert all(isinstance(e, dict) and {"time", "level", "logger", "message"} <= set(e) for e in entries)
    by_message = {e["message"]: e for e in entries}
    assert by_message["in context"]["video_id"] == "v1" and by_message["in context"]["offset"] == 5
    assert "video_id" not in by_message["started"]
    native = by_message["I1207 10:00:00.000000  42 analysis_predictor.cc:1] native glog line"]
    assert native["logger"] == "native" and native["level"] == "INFO"
    assert by_message["partial native line without a newline, then its end"]["level"] == "WARNING"
    assert by_message["a print to sys.stderr"]["logger"] == "native"
    assert by_message["a child inherits the captured stderr"]["logger"] == "native"
    warning = next(e for e in entries if e["logger"] == "py.warnings")
    assert "a library warning" in warning["message"]
    crash = next(e for e in entries if e["logger"] == "uncaught")
    assert "doomed" in crash["message"] and "ZeroDivisionError" in crash["exc_info"]
    assert done.stdout == b""


def test_text_stays_the_default_format() -> None:
    code = "import logging; from worker import logs; logs.configure('INFO', 'text'); logging.getLogger('x').info('hi')"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=60, text=True)
    [line] = done.stderr.splitlines()
    assert line.endswith(" INFO x: hi") and not line.startswith("{")


def test_the_worker_takes_both_settings_as_flags() -> None:
    from worker.cli import _settings, build_parser

    args = build_parser().parse_args(
        ["worker", "--log-format", "json", "--otel-exporter-otlp-endpoint", "http://collector:4318"]
    )
    settings = _settings(args)
    assert settings.log_format == "json" and settings.otel_exporter_otlp_endpoint == "http://collector:4318"


def test_a_settings_error_is_json_too_in_json_mode() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDEOTAG_")}
    env |= {"VIDEOTAG_LOG_FORMAT": "json", "VIDEOTAG_DELIVERY": "twice"}
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "worker"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    entry = json.loads(line)
    assert entry["level"] == "ERROR" and "'delivery'" in entry["message"] and "twice" in entry["message"]
