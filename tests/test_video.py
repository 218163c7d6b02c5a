"""Frame sampling and preprocessing: the original reader's arithmetic (spec §1–2), checked against
independent reference implementations (the spec's formula, a decode-everything reader, PIL directly)."""

from __future__ import annotations

import inspect
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from models import sampling as sampling_module
from models import video as video_module
from models.preprocess import (
    faithful_transform,
    fast_transform,
    make_transform,
    normalise,
    scaled_size,
)
from models.sampling import sample_indices
from models.video import read_video
from tests.model_fixtures import VIDEOS, make_clip, require_shared

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# ---------------------------------------------------------------------------------------------------------------
# Sampling formula


def spec_indices(num_frames: int, seg_num: int) -> list[int]:
    """Spec §1, written out as the original reader does it."""
    average_dur = int(num_frames / seg_num)
    out = []
    for i in range(seg_num):
        idx = (average_dur - 1) // 2 + i * average_dur if average_dur >= 1 else i
        out.append(idx % num_frames)
    return out


@pytest.mark.parametrize("num_frames", [1, 2, 7, 8, 9, 120, 250, 299, 300, 301, 599, 600, 601, 700, 9000, 123457])
@pytest.mark.parametrize("seg_num", [1, 8, 300])
def test_sample_indices_follow_the_spec(num_frames: int, seg_num: int) -> None:
    picks = sample_indices(num_frames, seg_num)
    assert picks == spec_indices(num_frames, seg_num)
    assert len(picks) == seg_num
    assert all(0 <= p < num_frames for p in picks)
    assert picks == sorted(picks) or num_frames < seg_num  # only short videos wrap around


@pytest.mark.parametrize(
    ("num_frames", "seg_num", "expected"),
    [
        (1, 300, [0] * 300),  # a single frame, used 300 times
        (7, 8, [0, 1, 2, 3, 4, 5, 6, 0]),  # fewer frames than segments: every frame in turn, repeated
        (8, 8, list(range(8))),  # average_dur 1: (1 - 1) // 2 = 0
        (16, 8, [0, 2, 4, 6, 8, 10, 12, 14]),  # average_dur 2: offset (2 - 1) // 2 = 0
        (24, 8, [1, 4, 7, 10, 13, 16, 19, 22]),  # average_dur 3: offset 1
        (31, 8, [1, 4, 7, 10, 13, 16, 19, 22]),  # int(31 / 8) = 3 as well: the tail is never used
        (250, 300, [*range(250), *range(50)]),  # bikes.mp4
        (120, 300, [i % 120 for i in range(300)]),  # carphone_pristine.mp4
        (300, 300, list(range(300))),
        (301, 300, list(range(300))),  # average_dur 1: the last frame is never used
        (599, 300, list(range(300))),
        (600, 300, list(range(0, 600, 2))),
        (700, 8, [43, 130, 217, 304, 391, 478, 565, 652]),  # average_dur 87, offset 43
        (9000, 300, list(range(14, 9000, 30))),  # average_dur 30, offset 14: 14, 44, ..., 8984
    ],
)
def test_sample_indices_hand_computed(num_frames: int, seg_num: int, expected: list[int]) -> None:
    assert sample_indices(num_frames, seg_num) == expected


# ---------------------------------------------------------------------------------------------------------------
# A decode-everything reference reader, as the original


def naive_read(path: Path, seg_num: int, transform) -> tuple[np.ndarray, int, int]:
    """(crops in sampling order, len(frames), reported count): every frame kept, then sampled."""
    capture = cv2.VideoCapture(str(path))
    reported = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    frames = []
    for _ in range(reported):
        ok, frame = capture.read()
        if ok:
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    crops = np.stack([transform(frames[i]) for i in spec_indices(len(frames), seg_num)])
    return crops, len(frames), reported


class CountingTransform:
    """The faithful transform, counting calls (how many frames the reader holds at most)."""

    def __init__(self) -> None:
        self.inner = faithful_transform(256, 224)
        self.calls = 0

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        self.calls += 1
        return self.inner(rgb)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 700-frame H.264 clip, and a truncated one whose container declares 700 frames but holds fewer."""
    base = tmp_path_factory.mktemp("clips")
    long_clip = make_clip(base / "long.mp4", 700)
    faststart = make_clip(base / "faststart.mp4", 700, extra=("-movflags", "+faststart"))
    data = faststart.read_bytes()
    truncated = base / "truncated.mp4"
    truncated.write_bytes(data[: len(data) * 6 // 10])  # index (moov) first, so it still opens
    return {"long": long_clip, "truncated": truncated}


@pytest.mark.parametrize(
    ("video", "frames", "size", "fps"),
    [("bikes.mp4", 250, (640, 272), 25.0), ("carphone_pristine.mp4", 120, (176, 144), 29.97)],
)
def test_read_sample_videos(video: str, frames: int, size: tuple[int, int], fps: float) -> None:
    require_shared()
    path = VIDEOS / video
    sampled = read_video(path, 300, faithful_transform(256, 224), 7680, 4320)
    assert sampled.frames_decoded == frames
    assert sampled.frames_reported == frames
    assert (sampled.width, sampled.height) == size
    assert sampled.fps == pytest.approx(fps, rel=1e-3)
    # Short videos: every frame once in memory, the order repeats them.
    assert sampled.crops.shape == (frames, 224, 224, 3)
    assert sampled.crops.dtype == np.uint8
    assert sampled.order.tolist() == [i % frames for i in range(300)]
    reference, decoded, _ = naive_read(path, 300, faithful_transform(256, 224))
    assert decoded == frames
    np.testing.assert_array_equal(sampled.frames, reference)


def test_read_sample_video_seg8() -> None:
    require_shared()
    path = VIDEOS / "carphone_pristine.mp4"
    sampled = read_video(path, 8, faithful_transform(256, 224), 7680, 4320)
    assert sampled.crops.shape[0] == 8
    assert sampled.order.tolist() == list(range(8))  # 7, 22, ..., 112: all distinct
    reference, _, _ = naive_read(path, 8, faithful_transform(256, 224))
    np.testing.assert_array_equal(sampled.frames, reference)


@pytest.mark.parametrize("seg_num", [8, 300])
def test_streaming_reader_equals_naive_reader_on_long_clip(clips: dict[str, Path], seg_num: int) -> None:
    transform = CountingTransform()
    sampled = read_video(clips["long"], seg_num, transform, 7680, 4320)
    reference, decoded, reported = naive_read(clips["long"], seg_num, faithful_transform(256, 224))
    assert decoded == reported == 700
    assert sampled.frames_decoded == 700 and sampled.frames_reported == 700
    assert sampled.frames.shape == (seg_num, 224, 224, 3)
    np.testing.assert_array_equal(sampled.frames, reference)
    # Memory: only the sampled frames are held, each preprocessed once.
    assert sampled.crops.shape[0] <= seg_num
    assert transform.calls == len(set(spec_indices(700, seg_num)))


@pytest.mark.parametrize("seg_num", [8, 300])
def test_streaming_reader_when_fewer_frames_decode_than_declared(
    clips: dict[str, Path], seg_num: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    passes = []
    decode_picks = sampling_module._decode_picks
    signature = inspect.signature(decode_picks)

    def spy(*args, **kwargs):
        passes.append(set(signature.bind(*args, **kwargs).arguments["wanted"]))  # the frames a pass keeps
        return decode_picks(*args, **kwargs)

    monkeypatch.setattr(sampling_module, "_decode_picks", spy)
    transform = CountingTransform()
    sampled = read_video(clips["truncated"], seg_num, transform, 7680, 4320)
    reference, decoded, reported = naive_read(clips["truncated"], seg_num, faithful_transform(256, 224))
    assert reported == 700
    assert 0 < decoded < reported, "the truncated clip must declare more frames than decode"
    assert sampled.frames_reported == reported
    assert sampled.frames_decoded == decoded  # the original's len(frames)
    np.testing.assert_array_equal(sampled.frames, reference)
    # The positions shift with the decoded count: a second pass fetched what the first did not keep.
    assert len(passes) == 2
    assert passes[1] == set(spec_indices(decoded, seg_num)) - set(spec_indices(reported, seg_num))
    assert sampled.crops.shape[0] <= seg_num
    assert transform.calls <= 2 * seg_num


def test_second_pass_logic_with_a_fake_capture(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Independent of any codec: a capture that reports 40 frames, of which reads 3, 10 and 11 fail
    (the original skips failed reads, so later frames move up) and everything after the 30th read fails."""

    failing = {3, 10, 11}

    class FakeCapture:
        def __init__(self, *args) -> None:
            self.calls = 0
            self.decoded = 0

        def isOpened(self) -> bool:
            return True

        def get(self, prop: int) -> float:
            return {
                cv2.CAP_PROP_FRAME_WIDTH: 320.0,
                cv2.CAP_PROP_FRAME_HEIGHT: 240.0,
                cv2.CAP_PROP_FRAME_COUNT: 40.0,
                cv2.CAP_PROP_FPS: 25.0,
            }.get(prop, 0.0)

        def grab(self) -> bool:
            call = self.calls
            self.calls += 1
            if call in failing or call >= 30:
                return False
            self.value = call  # the frame's content: its position in the stream
            return True

        def retrieve(self):
            return True, np.full((240, 320, 3), self.value, dtype=np.uint8)

        def read(self):
            return (True, self.retrieve()[1]) if self.grab() else (False, None)

        def release(self) -> None:
            pass

    monkeypatch.setattr(video_module.cv2, "VideoCapture", FakeCapture)
    path = tmp_path / "fake.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(100))
    sampled = read_video(path, 8, lambda rgb: rgb[:1, :1].copy(), 7680, 4320)
    stream = [i for i in range(30) if i not in failing]  # what the original's frames list holds
    assert sampled.frames_decoded == len(stream) == 27
    assert sampled.frames_reported == 40
    expected = [stream[i] for i in spec_indices(27, 8)]  # average_dur 3: 1, 4, 7, ... of the decoded list
    assert sampled.frames[:, 0, 0, 0].tolist() == expected


# ---------------------------------------------------------------------------------------------------------------
# Preprocessing


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((640, 272), (341, 256)),  # landscape: (long, short) = (341, 256), aspect ratio not kept
        ((1280, 720), (341, 256)),
        ((176, 144), (341, 256)),  # upscaled the same way
        ((272, 640), (256, 341)),  # portrait
        ((720, 1280), (256, 341)),
        ((256, 400), None),  # short side already 256: kept as it is
        ((400, 256), None),
        ((256, 256), None),
        ((300, 300), (341, 256)),  # square: w < h is false
        ((200, 200), (341, 256)),
        ((257, 256), None),
        ((255, 1000), (256, 341)),
    ],
)
def test_scaled_size(size: tuple[int, int], expected: tuple[int, int] | None) -> None:
    assert scaled_size(*size, 256) == expected


def pil_reference(rgb: np.ndarray) -> np.ndarray:
    """Spec §2 with PIL directly: RGB image, BILINEAR resize to (341, 256)/(256, 341) unless the short side is
    256, float32, crop 224 at int(round(...))."""
    image = Image.fromarray(rgb)
    w, h = image.size
    if not ((w <= h and w == 256) or (h <= w and h == 256)):
        image = image.resize((256, 341) if w < h else (341, 256), Image.BILINEAR)
    array = np.asarray(image).astype(np.float32)
    h, w = array.shape[:2]
    top, left = int(round((h - 224) / 2)), int(round((w - 224) / 2))  # noqa: RUF046  (as the original)
    return array[top : top + 224, left : left + 224]


@pytest.mark.parametrize("shape", [(272, 640), (640, 272), (144, 176), (256, 300), (300, 300), (720, 1280)])
def test_faithful_transform_equals_pil(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    ours = faithful_transform(256, 224)(rgb)
    assert ours.shape == (224, 224, 3) and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours.astype(np.float32), pil_reference(rgb))


def test_faithful_resize_is_not_opencv_bilinear() -> None:
    """PIL's BILINEAR filters over the whole footprint when downscaling; cv2.INTER_LINEAR does not. A
    transform built on the latter would differ by far more than rounding on a detailed frame."""
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    ours = faithful_transform(256, 224)(rgb).astype(np.int16)
    resized = cv2.resize(rgb, (341, 256), interpolation=cv2.INTER_LINEAR)
    top, left = round((256 - 224) / 2), round((341 - 224) / 2)
    opencv = resized[top : top + 224, left : left + 224].astype(np.int16)
    assert np.abs(ours - opencv).mean() > 5


@pytest.mark.parametrize(
    ("width", "left"),
    [(256, 16), (257, 16), (258, 17), (259, 18), (261, 18), (263, 20), (341, 58), (343, 60)],
)
def test_center_crop_offsets_round_half_to_even(width: int, left: int) -> None:
    """(w - 224) / 2 = 16.5 → 16, 17.5 → 18, 18.5 → 18, 58.5 → 58: Python's round, not floor or half-up.
    A short side of 256 skips the resize, so the offsets are visible on a frame with position-coded pixels."""
    for transform in (faithful_transform(256, 224), fast_transform(256, 224)):
        columns = np.broadcast_to(np.arange(width, dtype=np.uint16)[None, :], (256, width))
        rows = np.broadcast_to(np.arange(256, dtype=np.uint16)[:, None], (256, width))
        rgb = np.stack([columns // 256, columns % 256, rows % 256], axis=-1).astype(np.uint8)  # R=col, G, B=row
        crop = transform(rgb)
        got_left = int(crop[0, 0, 1]) + 256 * int(crop[0, 0, 0])
        assert got_left == left
        assert int(crop[0, 0, 2]) == 16  # top: (256 - 224) / 2
        assert crop.shape == (224, 224, 3)


def test_normalise_matches_spec_arithmetic() -> None:
    rng = np.random.default_rng(2)
    crops = rng.integers(0, 256, (5, 224, 224, 3), dtype=np.uint8)
    ours = normalise(crops, MEAN, STD)
    assert ours.shape == (5, 3, 224, 224) and ours.dtype == np.float32
    reference = crops.astype(np.float64).transpose(0, 3, 1, 2) / 255.0
    reference = (reference - np.array(MEAN).reshape(1, 3, 1, 1)) / np.array(STD).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=2e-6)
    # Hand-computed corners: white and black pixels of each channel.
    white = normalise(np.full((1, 224, 224, 3), 255, np.uint8), MEAN, STD)[0, :, 0, 0]
    black = normalise(np.zeros((1, 224, 224, 3), np.uint8), MEAN, STD)[0, :, 0, 0]
    np.testing.assert_allclose(white, [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225], atol=1e-6)
    np.testing.assert_allclose(black, [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225], atol=1e-6)
    # Channel order: HWC → CHW with R first.
    red = np.zeros((1, 224, 224, 3), np.uint8)
    red[..., 0] = 255
    assert normalise(red, MEAN, STD)[0, 0, 0, 0] == pytest.approx((1 - 0.485) / 0.229, abs=1e-6)


def _smooth_image(width: int, height: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = [
        127 + 100 * np.sin(x / width * 3 + y / height),
        127 + 100 * np.cos(x / width * 2 - y / height * 2),
        128 * x / width + 100 * y / height,
    ]
    return np.stack(channels, axis=-1).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("size", [(640, 360), (320, 240), (176, 144), (300, 700), (256, 300)])
def test_fast_transform_close_to_faithful_on_smooth_image(size: tuple[int, int]) -> None:
    rgb = _smooth_image(*size)
    faithful = faithful_transform(256, 224)(rgb).astype(np.int16)
    fast = fast_transform(256, 224)(rgb).astype(np.int16)
    assert fast.shape == faithful.shape == (224, 224, 3)
    assert np.abs(fast - faithful).max() <= 3
    assert np.abs(fast - faithful).mean() <= 0.5


def test_make_transform() -> None:
    rgb = _smooth_image(320, 240)
    np.testing.assert_array_equal(make_transform("faithful", 256, 224)(rgb), faithful_transform(256, 224)(rgb))
    np.testing.assert_array_equal(make_transform("fast", 256, 224)(rgb), fast_transform(256, 224)(rgb))
    with pytest.raises(ValueError, match="preprocess"):
        make_transform("bicubic", 256, 224)
