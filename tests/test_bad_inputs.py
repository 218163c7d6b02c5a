"""Bad inputs: each gives an InputError with a stable code (models/errors.py), in the API and as a JSON error line
of `videotag tag`, without stopping the batch; setup problems (weights, labels, no videos) are usage errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from models.errors import ErrorCode, InputError
from models.preprocess import faithful_transform
from models.video import InProcessDecoder, read_video
from tests.model_fixtures import (
    LABELS,
    VIDEOS,
    json_lines,
    make_clip,
    require_shared,
    run_cli,
    seed0_weights,  # noqa: F401  (fixture)
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _boxes(data: bytes):
    """Top-level ISO-BMFF boxes: (type, offset, header size, size)."""
    offset = 0
    while offset + 8 <= len(data):
        size, kind, header = int.from_bytes(data[offset : offset + 4], "big"), data[offset + 4 : offset + 8], 8
        if size == 1:
            size, header = int.from_bytes(data[offset + 8 : offset + 16], "big"), 16
        elif size == 0:
            size = len(data) - offset
        yield kind, offset, header, size
        offset += size


def zero_media_data(source: Path, dest: Path) -> Path:
    """The same mp4 with every byte of the coded frames (the `mdat` payload) zeroed: the container and its
    index are intact, so it opens and reports its frame count, but no frame decodes."""
    data = bytearray(source.read_bytes())
    mdats = [(offset, header, size) for kind, offset, header, size in _boxes(bytes(data)) if kind == b"mdat"]
    assert mdats, f"{source} has no mdat box"
    for offset, header, size in mdats:
        data[offset + header : offset + size] = bytes(size - header)
    dest.write_bytes(bytes(data))
    return dest


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    require_shared()
    base = tmp_path_factory.mktemp("bad")
    (base / "empty.mp4").write_bytes(b"")
    (base / "truncated.mp4").write_bytes((VIDEOS / "bikes.mp4").read_bytes()[:2048])  # index (moov) is at the end
    (base / "random.mp4").write_bytes(np.random.default_rng(7).integers(0, 256, 8192, dtype=np.uint8).tobytes())
    (base / "text.mp4").write_text("this is a text file, not a video\n" * 50, encoding="utf-8")
    zero_media_data(VIDEOS / "carphone_pristine.mp4", base / "zeroed.mp4")
    return {
        "not_found": base / "missing.mp4",
        "empty_file": base / "empty.mp4",
        "corrupt_video": base / "truncated.mp4",
        "not_a_video:random": base / "random.mp4",
        "not_a_video:text": base / "text.mp4",
        "no_frames": base / "zeroed.mp4",
    }


def test_error_codes_are_stable() -> None:
    """The codes are a contract with consumers of the CLI output and the dead-letter topic."""
    assert (
        ErrorCode.NOT_FOUND,
        ErrorCode.EMPTY_FILE,
        ErrorCode.NOT_A_VIDEO,
        ErrorCode.CORRUPT_VIDEO,
        ErrorCode.NO_FRAMES,
        ErrorCode.RESOLUTION_TOO_LARGE,
    ) == ("not_found", "empty_file", "not_a_video", "corrupt_video", "no_frames", "resolution_too_large")
    exc = InputError(ErrorCode.NO_FRAMES, "x.mp4: nothing")
    assert exc.as_dict() == {"code": "no_frames", "message": "x.mp4: nothing"}


@pytest.mark.parametrize(
    "case", ["not_found", "empty_file", "corrupt_video", "not_a_video:random", "not_a_video:text", "no_frames"]
)
def test_bad_input_codes(bad_files: dict[str, Path], case: str) -> None:
    """In-process decoding: OpenCV, and PyAV in a child for what OpenCV cannot open or decode."""
    path = bad_files[case]
    with pytest.raises(InputError) as info:
        InProcessDecoder("faithful", 256, 224, 7680, 4320)(path, 8)
    assert info.value.code == case.split(":")[0]
    assert path.name in info.value.message


def test_resolution_limit() -> None:
    require_shared()
    bikes = VIDEOS / "bikes.mp4"  # 640x272
    with pytest.raises(InputError) as info:
        read_video(bikes, 8, faithful_transform(256, 224), max_width=320, max_height=240)
    assert info.value.code == ErrorCode.RESOLUTION_TOO_LARGE
    assert "640x272" in info.value.message
    with pytest.raises(InputError) as info:
        read_video(bikes, 8, faithful_transform(256, 224), max_width=639, max_height=600)
    assert info.value.code == ErrorCode.RESOLUTION_TOO_LARGE
    assert read_video(bikes, 8, faithful_transform(256, 224), max_width=640, max_height=272).frames_decoded == 250
    # The limit holds in either orientation (as read_video documents): 640x272 is within a 272x640 limit.
    assert read_video(bikes, 8, faithful_transform(256, 224), max_width=272, max_height=640).width == 640


def test_video_shorter_than_seg_num_is_valid(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "short.mp4", 50)
    sampled = read_video(clip, 300, faithful_transform(256, 224), 7680, 4320)
    assert sampled.frames_decoded == 50
    assert sampled.frames.shape == (300, 224, 224, 3)
    assert sampled.order.tolist() == [i % 50 for i in range(300)]


# ---------------------------------------------------------------------------------------------------------------
# The command line: one batch with every kind of bad input between good videos


@pytest.fixture(scope="module")
def cli_batch(bad_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """`videotag tag` with untrained weights (no weight file anywhere) and a 320x240 resolution limit over
    [good, every bad input, too large, good at the limit]."""
    workdir = tmp_path_factory.mktemp("cli")
    shutil.copy(VIDEOS / "carphone_pristine.mp4", workdir / "carphone.mp4")
    make_clip(workdir / "at_limit.mp4", 30, size="320x240")
    entries = [("ok", "carphone.mp4")]
    entries += [(case.split(":")[0], str(path)) for case, path in bad_files.items()]
    entries += [(ErrorCode.RESOLUTION_TOO_LARGE, str(VIDEOS / "bikes.mp4")), ("ok", "at_limit.mp4")]
    proc = run_cli(
        "tag",
        *[path for _, path in entries],
        "--seg-num",
        "8",
        "--allow-random-weights",
        "--engine",
        "dygraph",
        "--model-cache-dir",
        str(workdir / "model-cache"),
        "--label-file",
        str(LABELS),
        "--extractor-weights",
        str(workdir / "no-weights" / "tsn"),
        "--predictor-weights",
        str(workdir / "no-weights" / "attention_lstm"),
        cwd=workdir,
        VIDEOTAG_MAX_WIDTH="320",
        VIDEOTAG_MAX_HEIGHT="240",
    )
    assert not (workdir / "no-weights").exists()
    return entries, proc


def test_cli_batch_exit_status_and_order(cli_batch) -> None:
    entries, proc = cli_batch
    assert proc.returncode == EXIT_FAILED, proc.stderr[-3000:]
    records = json_lines(proc.stdout)
    assert [r["path"] for r in records] == [path for _, path in entries]


@pytest.mark.parametrize(
    "code", ["not_found", "empty_file", "corrupt_video", "not_a_video", "no_frames", "resolution_too_large"]
)
def test_cli_error_lines(cli_batch, code: str) -> None:
    entries, proc = cli_batch
    records = json_lines(proc.stdout)
    matching = [record for (expected, _), record in zip(entries, records, strict=True) if expected == code]
    assert matching
    for record in matching:
        assert "tags" not in record
        assert record["error"]["code"] == code, record
        assert Path(record["path"]).name in record["error"]["message"]


def test_cli_good_videos_still_tagged_with_random_weights(cli_batch) -> None:
    entries, proc = cli_batch
    records = json_lines(proc.stdout)
    good = [record for (expected, _), record in zip(entries, records, strict=True) if expected == "ok"]
    assert len(good) == 2
    labels = LABELS.read_text(encoding="utf-8").splitlines()
    for record in good:
        assert "error" not in record
        assert len(record["tags"]) == 20
        for tag in record["tags"]:
            assert tag["class_name"] == labels[tag["class_id"]].strip()
            assert 0.0 <= tag["probability"] <= 1.0
    # Untrained weights are never silent: every line says so, error lines included.
    assert all(record.get("model") == {"weights": "random-untrained"} for record in records)
    assert "random" in proc.stderr.lower() and "untrained" in proc.stderr.lower()


def test_cli_missing_weights(tmp_path: Path) -> None:
    """The default location (weights/tsn, relative to the working directory) holds nothing."""
    require_shared()
    proc = run_cli("tag", str(VIDEOS / "bikes.mp4"), "--label-file", str(LABELS), cwd=tmp_path)
    assert proc.returncode == EXIT_USAGE, proc.stderr[-3000:]
    assert proc.stdout == ""
    assert "videotag weights download" in proc.stderr
    assert "tsn.pdparams" in proc.stderr


def test_cli_missing_label_file(seed0_weights: Path, tmp_path: Path) -> None:  # noqa: F811
    missing = tmp_path / "nowhere" / "label_3396.txt"
    proc = run_cli(
        "tag",
        str(VIDEOS / "bikes.mp4"),
        "--label-file",
        str(missing),
        "--extractor-weights",
        str(seed0_weights / "tsn"),
        "--predictor-weights",
        str(seed0_weights / "attention_lstm"),
        cwd=tmp_path,
    )
    assert proc.returncode == EXIT_USAGE, proc.stderr[-3000:]
    assert proc.stdout == ""
    assert str(missing) in proc.stderr


def test_cli_no_videos(tmp_path: Path) -> None:
    proc = run_cli("tag", cwd=tmp_path)
    assert proc.returncode == EXIT_USAGE
    assert proc.stdout == ""
    assert "no videos" in proc.stderr
