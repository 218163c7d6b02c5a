"""Streamed decode: the decoder child sends crops in chunks as it decodes them, and the tagger extracts each
chunk while decoding goes on. The chunk protocol (a stream of chunks, a child that dies, hangs or sends garbage
mid-stream), the same features as the whole-video path, and `videotag tag` decoding its first video while the
networks load."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from models.decoder_process import DecoderProcess
from models.errors import ErrorCode, InputError
from models.preprocess import make_transform
from models.sampling import FrameChunk, Sampling, collect, stream_video
from models.video import read_video
from tests.model_fixtures import LABELS, VIDEOS, generated_weights, make_clip, processes_with, require_shared
from worker.commands.tag import start_tagging
from worker.settings import Settings

SEG_NUM = 12
CROP = 8  # the fake children's crops: small, so that a chunk is a few hundred bytes


def _chunks(stream) -> tuple[list[FrameChunk], Sampling]:
    chunks = []
    while True:
        try:
            chunks.append(next(stream))
        except StopIteration as end:
            return chunks, end.value


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clips") / "clip.mp4", 40)


def test_the_child_streams_chunks_that_add_up_to_the_whole_video(clip: Path) -> None:
    decoder = DecoderProcess("faithful", 256, 224, 7680, 4320, 60, chunk_size=5)
    chunks, sampling = _chunks(decoder.stream(clip, SEG_NUM))
    expected = read_video(clip, SEG_NUM, make_transform("faithful", 256, 224), 7680, 4320)
    assert [len(c.ordinals) for c in chunks] == [5, 5, 2]  # 12 distinct picks of 40 frames, in chunks of 5
    sent = [ordinal for chunk in chunks for ordinal in chunk.ordinals]
    assert sent == sorted(sent) == list(sampling.frames)  # in decoding order, each once
    np.testing.assert_array_equal(np.concatenate([c.crops for c in chunks]), expected.crops)
    np.testing.assert_array_equal(sampling.order, expected.order)
    assert (sampling.frames_decoded, sampling.width, sampling.decoder) == (40, expected.width, "opencv")


class _Reader:
    """A FrameReader over `decodable` frames that reports `reported` (a damaged file: fewer decode)."""

    def __init__(self, decodable: int, reported: int) -> None:
        self.width, self.height, self.fps = 4, 4, 25.0
        self.frames_reported, self.read_calls = reported, reported
        self.decodable, self.position = decodable, 0

    def grab(self) -> bool:
        self.position += 1
        return self.position <= self.decodable

    def retrieve(self) -> np.ndarray:
        return np.full((4, 4, 3), self.position - 1, np.uint8)

    def close(self) -> None:
        pass


def test_when_frames_fail_the_second_pass_sends_only_what_the_first_did_not(tmp_path: Path) -> None:
    """40 frames reported, 10 decode: the first pass sends picks 2 and 7 of 40, the picks of 10 are 0..7, and
    the second pass sends those not sent yet."""
    video = tmp_path / "v.mp4"
    video.write_bytes(b"x")
    chunks, sampling = _chunks(
        stream_video(video, "v.mp4", lambda: _Reader(10, 40), "fake", 8, lambda f: f, 7680, 4320, chunk_size=3)
    )
    assert [c.ordinals for c in chunks] == [(2, 7), (0, 1, 3), (4, 5, 6)]
    assert sampling.frames == tuple(range(8)) and sampling.frames_decoded == 10
    crops = {o: c for chunk in chunks for o, c in zip(chunk.ordinals, chunk.crops, strict=True)}
    assert all(int(crops[o][0, 0, 0]) == o for o in sampling.frames)  # each crop is its frame's


# Fake children: the protocol written out, then a death, a hang or garbage -----------------------------------


def _child(script: str) -> tuple[str, ...]:
    prelude = (
        "import json, os, signal, sys, time\nsys.stdin.buffer.read()\nout = sys.stdout.buffer\n"
        f"def chunk(ordinals, shape=None):\n"
        f"    shape = shape or [len(ordinals), {CROP}, {CROP}, 3]\n"
        "    header = {'status': 'chunk', 'ordinals': ordinals, 'shape': shape}\n"
        "    out.write(json.dumps(header).encode() + b'\\n')\n"
        f"    out.write(bytes(len(ordinals) * {CROP * CROP * 3})); out.flush()\n"
    )
    return (sys.executable, "-c", prelude + script)


def _fake(script: str, timeout_s: float = 60) -> DecoderProcess:
    return DecoderProcess("faithful", 256, CROP, 7680, 4320, timeout_s, chunk_size=4, command=_child(script))


OK_END = (
    "out.write(json.dumps({'status': 'ok', 'frames_decoded': 2, 'frames_reported': 2, 'width': 4, "
    "'height': 4, 'fps': 25.0, 'decoder': 'opencv', 'frames': [0, 1], 'order': [0, 1, 1, 0]}).encode() + b'\\n')"
)


def test_a_well_formed_fake_stream_is_accepted() -> None:
    """The fakes below differ from this one only in how they end."""
    chunks, sampling = _chunks(_fake(f"chunk([0, 1])\n{OK_END}").stream("v.mp4", 4))
    assert [c.ordinals for c in chunks] == [(0, 1)] and chunks[0].crops.shape == (2, CROP, CROP, 3)
    assert sampling.frames == (0, 1) and sampling.order.tolist() == [0, 1, 1, 0]


def test_a_child_that_dies_mid_stream_costs_the_video_after_its_first_chunks() -> None:
    stream = _fake(
        "chunk([0, 1])\nsys.stderr.write('fault in h264\\n'); sys.stderr.flush()\nos.kill(os.getpid(), signal.SIGSEGV)"
    ).stream("v.mp4", 4, "crafted.mp4")
    assert next(stream).ordinals == (0, 1)  # what came before the crash was already on its way to the network
    with pytest.raises(InputError) as caught:
        next(stream)
    assert caught.value.code == ErrorCode.DECODER_CRASHED and "SIGSEGV" in caught.value.message
    assert caught.value.message.endswith(": fault in h264")


def test_a_child_cut_off_inside_a_chunk_is_a_crash() -> None:
    stream = _fake(
        "out.write(json.dumps({'status': 'chunk', 'ordinals': [0], 'shape': [1, 8, 8, 3]}).encode()"
        " + b'\\n' + bytes(10)); out.flush(); os.kill(os.getpid(), signal.SIGSEGV)"
    ).stream("v.mp4", 4)
    with pytest.raises(InputError) as caught:
        next(stream)
    assert caught.value.code == ErrorCode.DECODER_CRASHED


def test_a_child_that_hangs_mid_stream_times_out_and_is_killed() -> None:
    started = time.monotonic()
    stream = _fake(
        "chunk([0, 1])\nprint('stalled', file=sys.stderr, flush=True)\ntime.sleep(600)", timeout_s=1.5
    ).stream("v.mp4", 4, "stalled.mp4")
    assert next(stream).ordinals == (0, 1)
    with pytest.raises(InputError) as caught:
        next(stream)
    assert caught.value.code == ErrorCode.DECODE_TIMEOUT and "stalled.mp4" in caught.value.message
    assert 1.5 <= time.monotonic() - started < 30
    assert not _sleepers(), "the hung decoder was left running"


def _sleepers() -> list[str]:
    return processes_with("time.sleep(600)", "stalled")


@pytest.mark.parametrize(
    ("script", "why"),
    [
        ("out.write(b'Segmentation fault (core dumped)\\n'); out.flush()", "not a JSON header"),
        ("chunk([0, 1], shape=[2, 4096, 4096, 3])", "a chunk of shape"),  # a huge claim: refused, not allocated
        ("chunk([0, 1], shape=[3, 8, 8, 3])", "a chunk of shape"),  # more crops than ordinals
        ("chunk([0, 1, 2, 3, 4])", "a chunk of shape"),  # over the chunk size asked for
        ("chunk(['a', 'b'])", "without its frame ordinals"),
        ("chunk([0, 1])\nchunk([1, 2])", "sent twice"),
        ("out.write(b'{' * 200000); out.flush()", "too long"),
        (f"chunk([0])\n{OK_END}", "do not match the frames sent"),  # frame 1 never sent
    ],
)
def test_garbage_on_the_pipe_is_a_crash_and_never_trusted(script: str, why: str) -> None:
    stream = _fake(f"{script}\ntime.sleep(5)").stream("v.mp4", 4, "odd.mp4")
    with pytest.raises(InputError) as caught:
        _chunks(stream)
    assert caught.value.code == ErrorCode.DECODER_CRASHED, caught.value
    assert why in caught.value.message and caught.value.message.startswith("odd.mp4: ")


def test_closing_a_stream_early_stops_its_decoder(clip: Path) -> None:
    stream = _fake("chunk([0, 1])\ntime.sleep(600)  # stalled").stream("v.mp4", 4)
    next(stream)
    stream.close()
    assert not _sleepers()


# The tagger: chunks go to the extractor as they come, with the same features --------------------------------


@pytest.fixture(scope="module")
def small_tagger():
    """ResNet-50 (seed-0 weights), dygraph fp32, batch 4: a 12-frame video is 3 chunks."""
    from models.config import ExtractorConfig
    from models.tagger import build_tagger

    weights = generated_weights(0, 50)
    return build_tagger(
        weights / "tsn", weights / "attention_lstm", LABELS, ExtractorConfig(layers=50, seg_num=SEG_NUM), batch_size=4
    )


def test_streamed_features_are_the_whole_video_path_s(small_tagger) -> None:
    require_shared()
    video = VIDEOS / "bikes.mp4"
    whole = small_tagger.features(small_tagger.sample(video))  # decode everything, then extract
    streamed = small_tagger.tag(video)  # in-process decoder, chunks as decoded
    child = replace(small_tagger, sampler=DecoderProcess("faithful", 256, 224, 7680, 4320, 120, chunk_size=4))
    through_child = child.tag(video)
    for result in (streamed, through_child):
        np.testing.assert_array_equal(result.features, whole)
        assert result.video.crops.shape == (SEG_NUM, 224, 224, 3)
        assert set(result.timings_ms) == {"decode", "extract", "predict"}
        assert all(ms >= 0 for ms in result.timings_ms.values())
    np.testing.assert_array_equal(through_child.video.crops, streamed.video.crops)
    assert through_child.tags == streamed.tags


def test_a_network_failure_mid_stream_stops_the_decoder(small_tagger, clip: Path) -> None:
    calls = []

    def failing(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        raise RuntimeError("the network failed")

    tagger = replace(
        small_tagger, extractor=failing, sampler=_fake("chunk([0, 1, 2, 3])\nchunk([4, 5])\ntime.sleep(600)  # stalled")
    )
    with pytest.raises(RuntimeError, match="the network failed"):
        tagger.tag(clip, seg_num=4)
    assert calls == [4] and not _sleepers()


# `videotag tag`: the first video decodes while the networks load ---------------------------------------------


class _Watched:
    """A sampler that says when its first chunk was decoded."""

    def __init__(self, inner: DecoderProcess) -> None:
        self.inner = inner
        self.first_chunk = threading.Event()

    def stream(self, path, seg_num, name=None):
        stream = self.inner.stream(path, seg_num, name)
        chunk = next(stream)
        self.first_chunk.set()
        yield chunk
        return (yield from stream)

    def __call__(self, path, seg_num, name=None):
        return collect(self.stream(path, seg_num, name))


def test_tag_decodes_the_first_video_while_the_networks_load(clip: Path) -> None:
    """`build` (the model load) does not return until the first video's first chunk is decoded: without the
    overlap this would wait for ever (60 s here) instead."""
    sampler = _Watched(DecoderProcess("faithful", 256, 224, 7680, 4320, 60, chunk_size=4))
    events = []

    def build(settings: Settings) -> str:
        events.append("load started")
        if sampler.first_chunk.wait(60):
            events.append("first chunk decoded")
        events.append("networks ready")
        return "chain"

    chain, ahead = start_tagging(Settings(seg_num=SEG_NUM), [str(clip)], build, sampler)
    assert events == ["load started", "first chunk decoded", "networks ready"] and chain == "chain"
    assert ahead is not None
    chunks, sampling = _chunks(ahead.frames())  # the read-ahead replays the whole video
    assert sum(len(c.ordinals) for c in chunks) == len(sampling.frames) == SEG_NUM


def test_a_failed_load_stops_the_first_video_s_decoding() -> None:
    sampler = _fake("chunk([0, 1])\ntime.sleep(600)  # stalled")

    def build(settings: Settings) -> str:
        _eventually(lambda: bool(_sleepers()))  # the first video's decoder is running
        raise ValueError("no weights")

    with pytest.raises(ValueError, match="no weights"):
        start_tagging(Settings(seg_num=4), ["v.mp4"], build, sampler)
    _eventually(lambda: not _sleepers())  # and it is stopped (in ms: the decoder's own timeout is 60 s)


def _eventually(condition, within_s: float = 20) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
