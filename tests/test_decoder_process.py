"""Decoding in a child process: the same frames as in-process, the same error codes, and a crashing or hanging
decoder costs one video (a stable code, no child left behind) instead of the caller. The child is a sandbox:
limits (an 8K video still decodes under the defaults), no secret in its environment, quiet native logs, death
with its parent, nothing imported from the working directory; and how it died says whose fault it was."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from models import decoder_process
from models.decoder_process import (
    COMMAND,
    DECODERS,
    DecoderLimits,
    DecoderProcess,
    child_environment,
    decoder_death,
)
from models.errors import ErrorCode, InputError, Kind, SystemicError
from models.preprocess import make_transform
from models.video import read_video
from tests.model_fixtures import make_clip, processes_with

SEG_NUM = 12


def _python(code: str) -> tuple[str, ...]:
    """A child that runs `code` in place of the decoder."""
    return (sys.executable, "-c", code)


CRASH = _python(
    "import os, signal, sys; sys.stderr.write('native fault in h264\\n'); sys.stderr.flush(); "
    "os.kill(os.getpid(), signal.SIGSEGV)"
)
HANG = _python("import time; time.sleep(600)")
UNEXPECTED = _python('print(\'{"status": "error", "message": "ZeroDivisionError: division by zero"}\')')
GARBAGE = _python("print('Segmentation fault (core dumped)')")


def _decoder(
    command: tuple[str, ...] | None = None, timeout_s: float = 60, preprocess: str = "faithful"
) -> DecoderProcess:
    options = {} if command is None else {"command": command}
    return DecoderProcess(preprocess, 256, 224, 7680, 4320, timeout_s, **options)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clips") / "clip.mp4", 40)


@pytest.mark.parametrize("preprocess", ["faithful", "fast"])
def test_same_frames_as_in_process(clip: Path, preprocess: str) -> None:
    expected = read_video(clip, SEG_NUM, make_transform(preprocess, 256, 224), 7680, 4320)
    got = _decoder(preprocess=preprocess)(clip, SEG_NUM)
    np.testing.assert_array_equal(got.crops, expected.crops)
    np.testing.assert_array_equal(got.order, expected.order)
    assert (got.frames_decoded, got.frames_reported, got.width, got.height, got.fps) == (
        expected.frames_decoded,
        expected.frames_reported,
        expected.width,
        expected.height,
        expected.fps,
    )


def test_input_errors_keep_their_code_and_name(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all\n" * 100)
    with pytest.raises(InputError) as caught:
        _decoder()(junk, SEG_NUM, name="s3://bucket/junk.mp4")
    assert caught.value.code == ErrorCode.NOT_A_VIDEO
    assert "s3://bucket/junk.mp4" in caught.value.message


def test_a_crashing_decoder_costs_one_video(clip: Path) -> None:
    with pytest.raises(InputError) as caught:
        _decoder(CRASH)(clip, SEG_NUM, name="crafted.mp4")
    assert caught.value.code == ErrorCode.DECODER_CRASHED
    assert "crafted.mp4" in caught.value.message and "SIGSEGV" in caught.value.message
    assert caught.value.message.endswith(": native fault in h264")  # the child's last words
    assert _decoder()(clip, SEG_NUM).order.shape == (SEG_NUM,)  # and the next video decodes


def test_what_a_decoder_says_is_logged_in_the_video_s_context_and_bounded(
    clip: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its stderr never reaches the worker's own (JSON logs stay JSON): each line becomes a record, in the
    thread (so the log context) of the video, at most STDERR_LINES_LOGGED per video."""
    talkative = _python(
        "import os, signal, sys\n"
        "for i in range(30): sys.stderr.write(f'line {i}\\n')\n"
        "sys.stderr.flush(); os.kill(os.getpid(), signal.SIGSEGV)"
    )
    with caplog.at_level("WARNING", logger="models.decoder_process"), pytest.raises(InputError):
        _decoder(talkative)(clip, SEG_NUM, name="chatty.mp4")
    said = [r.getMessage() for r in caplog.records if r.name == "models.decoder_process"]
    limit = decoder_process.STDERR_LINES_LOGGED
    assert said[:limit] == [f"chatty.mp4: decoder process said: line {i}" for i in range(limit)]
    assert said[limit:] == [f"chatty.mp4: decoder process said {30 - limit} more lines (not logged)"]


def test_a_hanging_decoder_times_out_and_is_killed(clip: Path) -> None:
    started = time.monotonic()
    with pytest.raises(InputError) as caught:
        _decoder(HANG, timeout_s=1.5)(clip, SEG_NUM, name="stalled.mp4")
    assert caught.value.code == ErrorCode.DECODE_TIMEOUT and "stalled.mp4" in caught.value.message
    assert 1.5 <= time.monotonic() - started < 20
    assert not processes_with("time.sleep(600)"), "the hung decoder was left running"


def test_a_reply_that_is_not_the_protocol_counts_as_a_crash(clip: Path) -> None:
    with pytest.raises(InputError) as caught:
        _decoder(GARBAGE)(clip, SEG_NUM, name="odd.mp4")
    assert caught.value.code == ErrorCode.DECODER_CRASHED


def test_an_unexpected_failure_is_not_an_input_error(clip: Path) -> None:
    """The worker dead-letters it as internal_error, like the same failure in-process."""
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        _decoder(UNEXPECTED)(clip, SEG_NUM, name="x.mp4")


# The sandbox ---------------------------------------------------------------------------------------------


def _real_main(setup: str) -> tuple[str, ...]:
    """The real child entry point (`main`: parent link, reply protocol), after `setup` replaced some of it."""
    return (sys.executable, "-P", "-c", f"import models.decoder_process as d\n{setup}\nd.main()")


def _reported(command: tuple[str, ...], tmp_path: Path, limits: DecoderLimits) -> dict:
    """What a child running `command` reports: it answers {"status": "error"} with a JSON message."""
    with pytest.raises(RuntimeError) as caught:
        replace(_decoder(command), limits=limits)(tmp_path / "none.mp4", SEG_NUM)
    return json.loads(str(caught.value).split(": ", 1)[1])


INSPECT = _python("""
import json, os, resource, sys
def limit(name):
    return list(resource.getrlimit(getattr(resource, name)))
try:
    with open("written.txt", "wb") as out:
        out.write(b"x")
    wrote = "yes"
except OSError as exc:
    wrote = exc.strerror
info = {"env": dict(os.environ), "wrote": wrote,
        "limits": {n: limit(n) for n in ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_CORE")}}
print(json.dumps({"status": "error", "message": json.dumps(info)}))
""")


def test_the_child_has_limits_it_cannot_raise_and_no_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {
        "AWS_ACCESS_KEY_ID": "AKIA-planted",
        "AWS_SECRET_ACCESS_KEY": "planted-1",
        "AWS_SESSION_TOKEN": "planted-2",
        "AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/secrets/token",
        "VIDEOTAG_SASL_PASSWORD": "planted-3",
        "VIDEOTAG_SSL_PASSWORD": "planted-4",
        "VIDEOTAG_BOOTSTRAP_SERVERS": "kafka:9092",
        "KAFKA_API_KEY": "planted-5",
        "DB_SECRET": "planted-6",
        "GITHUB_TOKEN": "planted-7",
    }
    for name, value in {**secrets, "LC_ALL": "C.UTF-8", "TZ": "UTC"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    info = _reported(INSPECT, tmp_path, DecoderLimits(memory_bytes=3 << 30, cpu_s=50))
    assert info["limits"] == {
        "RLIMIT_AS": [3 << 30, 3 << 30],
        "RLIMIT_CPU": [50, 51],
        "RLIMIT_FSIZE": [0, 0],
        "RLIMIT_CORE": [0, 0],
    }
    assert info["wrote"] == "File too large" and not (tmp_path / "written.txt").stat().st_size
    env = info["env"]
    assert not set(secrets) & set(env) and not any(value in json.dumps(env) for value in secrets.values())
    assert env["LC_ALL"] == "C.UTF-8" and env["TZ"] == "UTC" and env["PATH"] == os.environ["PATH"]
    assert env["OPENCV_LOG_LEVEL"] == "FATAL" and env["OPENCV_FFMPEG_LOGLEVEL"] == "8"
    assert child_environment(os.environ) == env


def test_an_8k_video_decodes_under_the_default_limits(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "8k.mp4", 3, size="7680x4320")
    for decoder in DECODERS:
        video = DecoderProcess("faithful", 256, 224, 7680, 4320, 120, decoders=(decoder,))(clip, SEG_NUM)
        assert (video.width, video.height, video.frames_decoded, video.decoder) == (7680, 4320, 3, decoder)


def test_nothing_is_imported_from_the_working_directory(
    clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m` puts the working directory first on sys.path: without -P this numpy.py would shadow numpy."""
    (tmp_path / "numpy.py").write_text("raise SystemExit('a numpy.py in the working directory was imported')\n")
    monkeypatch.chdir(tmp_path)
    assert _decoder()(clip, SEG_NUM).order.shape == (SEG_NUM,)


def test_native_log_noise_is_quiet(tmp_path: Path) -> None:
    """The child's environment silences OpenCV and FFmpeg on a damaged file; the worker's would not."""
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(make_clip(tmp_path / "whole.mp4", 40).read_bytes()[:3000])
    stderr = {}
    for decoder in DECODERS:
        for env_name, env in (("child", child_environment(os.environ)), ("worker", dict(os.environ))):
            request = DecoderProcess("faithful", 256, 224, 7680, 4320, None, chunk_size=32).request(
                decoder, truncated, SEG_NUM, "t.mp4"
            )
            done = subprocess.run(
                COMMAND, input=json.dumps(request).encode(), capture_output=True, env=env, timeout=60, check=True
            )
            assert done.stdout.startswith(b'{"status": ')
            stderr[decoder, env_name] = done.stderr
    assert stderr["opencv", "worker"]  # OpenCV and FFmpeg do talk...
    assert stderr["opencv", "child"] == stderr["pyav", "child"] == b""  # ...but not in the decoder


def test_the_cpu_limit_is_the_file_s_fault(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(InputError) as caught:
        replace(
            _decoder(_real_main("d._serve = lambda request, stdout: [0 for _ in iter(int, 1)]")),
            limits=DecoderLimits(cpu_s=1),
        )(tmp_path / "spin.mp4", SEG_NUM)
    assert caught.value.code == ErrorCode.DECODER_CPU_LIMIT and caught.value.code.kind is Kind.PERMANENT
    assert "spin.mp4" in caught.value.message and time.monotonic() - started < 20


def test_memory_beyond_the_limit_is_the_file_s_fault(tmp_path: Path) -> None:
    """Allocating 3 GiB under a 1 GiB address-space limit fails: the child says so with its code."""
    allocate = "import models.video as v\nv.stream_video = lambda *args, **kwargs: bytearray(3 << 30)"
    with pytest.raises(InputError) as caught:
        replace(_decoder(_real_main(allocate)), limits=DecoderLimits(memory_bytes=1 << 30))(
            tmp_path / "bomb.mp4", SEG_NUM, name="bomb.mp4"
        )
    assert caught.value.code == ErrorCode.DECODER_MEMORY_LIMIT and caught.value.code.kind is Kind.PERMANENT
    assert caught.value.message.startswith("bomb.mp4: ")


def test_opencv_out_of_memory_is_a_memory_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cv2

    from models import video

    def no_memory(*args: object, **kwargs: object) -> None:
        error = cv2.error("OpenCV(5.0.0) alloc.cpp:73: error: (-4:Insufficient memory) Failed to allocate")
        error.code, error.err = cv2.Error.StsNoMem, "Failed to allocate 99532800 bytes"
        raise error

    monkeypatch.setattr(video.sampling, "stream_video", no_memory)
    with pytest.raises(MemoryError, match=r"x\.mp4: Failed to allocate"):
        video.read_video(tmp_path / "x.mp4", SEG_NUM, make_transform("faithful", 256, 224), 7680, 4320)


def test_a_decoder_killed_by_someone_else_is_the_machine_s_fault(clip: Path) -> None:
    with pytest.raises(SystemicError) as caught:
        _decoder(_python("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))(clip, SEG_NUM, name="v.mp4")
    assert caught.value.code == ErrorCode.DECODER_KILLED and caught.value.code.kind is Kind.SYSTEMIC


@pytest.mark.parametrize(
    ("returncode", "error", "code"),
    [
        (-signal.SIGXCPU, InputError, ErrorCode.DECODER_CPU_LIMIT),
        (-signal.SIGKILL, SystemicError, ErrorCode.DECODER_KILLED),
        (-signal.SIGSEGV, InputError, ErrorCode.DECODER_CRASHED),
        (-signal.SIGABRT, InputError, ErrorCode.DECODER_CRASHED),
        (1, InputError, ErrorCode.DECODER_CRASHED),
        (0, InputError, ErrorCode.DECODER_CRASHED),  # exited, but its reply was not the protocol
    ],
)
def test_how_a_decoder_died_says_whose_fault_it_was(returncode: int, error: type, code: ErrorCode) -> None:
    death = decoder_death(returncode, b"first line\nTraceback: last line\n", "v.mp4", DecoderLimits())
    assert type(death) is error and death.code is code and death.message.startswith("v.mp4: ")
    assert death.message.endswith("Traceback: last line") == (code is ErrorCode.DECODER_CRASHED)


def test_no_file_descriptor_left_to_start_a_decoder_is_systemic(clip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_descriptors(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(decoder_process.subprocess, "Popen", no_descriptors)
    with pytest.raises(SystemicError) as caught:
        _decoder()(clip, SEG_NUM)
    assert caught.value.code == ErrorCode.OUT_OF_FILE_DESCRIPTORS


MIDDLE = """
import sys
from models.decoder_process import DecoderProcess
command = (sys.executable, "-P", "-c", sys.argv[1])
DecoderProcess("faithful", 256, 224, 7680, 4320, None, command=command)("x.mp4", 2)
"""
ORPHAN_MARK = "decoder-that-outlives-its-parent"


def test_the_decoder_dies_with_the_worker() -> None:
    """A worker killed with SIGKILL takes its decoder with it (the real child entry point, asleep in place of
    decoding)."""
    sleeper = f"import time, models.decoder_process as d\nd._serve = lambda r, o: time.sleep(600)  # {ORPHAN_MARK}"
    worker = subprocess.Popen([sys.executable, "-c", MIDDLE, sleeper + "\nd.main()"])
    try:
        deadline = time.monotonic() + 30
        while not processes_with(ORPHAN_MARK) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert processes_with(ORPHAN_MARK), "the decoder never started"
        time.sleep(1)  # past its prctl
    finally:
        worker.kill()
        worker.wait()
    deadline = time.monotonic() + 10
    while processes_with(ORPHAN_MARK) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not processes_with(ORPHAN_MARK), "the decoder outlived the worker"


def test_a_decoder_whose_parent_is_gone_before_it_asks_exits() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-P",
            "-c",
            "from models.decoder_process import die_with_parent\ndie_with_parent(-1)\nprint('still here')",
        ],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 1 and b"still here" not in done.stdout
