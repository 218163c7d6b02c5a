"""Decoding in a child process: the same frames as in-process, the same error codes, and a crashing or hanging
decoder costs one video (a stable code, no child left behind) instead of the caller."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from models.decoder_process import DecoderProcess
from models.errors import ErrorCode, InputError
from models.preprocess import make_transform
from models.video import read_video
from tests.model_fixtures import make_clip

SEG_NUM = 12


def _python(code: str) -> tuple[str, ...]:
    """A child that runs `code` in place of the decoder."""
    return (sys.executable, "-c", code)


CRASH = _python("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
HANG = _python("import time; time.sleep(600)")
UNEXPECTED = _python('print(\'{"status": "error", "message": "ZeroDivisionError: division by zero"}\')')
GARBAGE = _python("print('Segmentation fault (core dumped)')")


def _decoder(command: tuple[str, ...] | None = None, timeout_s: float = 60,
             preprocess: str = "faithful") -> DecoderProcess:
    options = {} if command is None else {"command": command}
    return DecoderProcess(preprocess, 256, 224, 7680, 4320, timeout_s, **options)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clips") / "clip.mp4", 40)


@pytest.mark.parametrize("preprocess", ["faithful", "fast"])
def test_same_frames_as_in_process(clip: Path, preprocess: str) -> None:
    expected = read_video(clip, SEG_NUM, make_transform(preprocess, 256, 224))
    got = _decoder(preprocess=preprocess)(clip, SEG_NUM)
    np.testing.assert_array_equal(got.crops, expected.crops)
    np.testing.assert_array_equal(got.order, expected.order)
    assert (got.frames_decoded, got.frames_reported, got.width, got.height, got.fps) == (
        expected.frames_decoded, expected.frames_reported, expected.width, expected.height, expected.fps)


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
    assert _decoder()(clip, SEG_NUM).order.shape == (SEG_NUM,)  # and the next video decodes


def test_a_hanging_decoder_times_out_and_is_killed(clip: Path) -> None:
    started = time.monotonic()
    with pytest.raises(InputError) as caught:
        _decoder(HANG, timeout_s=1.5)(clip, SEG_NUM, name="stalled.mp4")
    assert caught.value.code == ErrorCode.DECODE_TIMEOUT and "stalled.mp4" in caught.value.message
    assert 1.5 <= time.monotonic() - started < 20
    assert not _sleepers(), "the hung decoder was left running"


def _sleepers() -> list[str]:
    """Processes still running HANG's code."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if b"time.sleep(600)" in cmdline.read_bytes():
                found.append(cmdline.parent.name)
    return found


def test_a_reply_that_is_not_the_protocol_counts_as_a_crash(clip: Path) -> None:
    with pytest.raises(InputError) as caught:
        _decoder(GARBAGE)(clip, SEG_NUM, name="odd.mp4")
    assert caught.value.code == ErrorCode.DECODER_CRASHED


def test_an_unexpected_failure_is_not_an_input_error(clip: Path) -> None:
    """The worker dead-letters it as internal_error, like the same failure in-process."""
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        _decoder(UNEXPECTED)(clip, SEG_NUM, name="x.mp4")
