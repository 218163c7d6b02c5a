"""Contact sheets (worker/commands/preview.py): the CJK font lookup, the sheet's layout and tiles, and the commands
(`videotag preview`, `videotag tag --preview-dir`) on the sample videos; progress on stderr for tag."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFont

from models.sampling import SampledVideo, sample_indices
from models.tagger import TagResult
from tests.model_fixtures import (  # noqa: F401 (fixtures)
    LABELS,
    VIDEOS,
    json_lines,
    require_shared,
    run_cli,
    seed0_tagger,
    seed0_weights,
)
from worker.commands import preview
from worker.commands.preview import COLUMNS, GAP, TILE, FontMissing, SheetWriter, find_font, missing_glyphs, spread
from worker.commands.progress import Progress, bar


def test_the_font_found_draws_chinese_and_a_missing_one_says_how_to_get_one(tmp_path: Path, monkeypatch) -> None:
    font = find_font()  # the test extra carries videotag[preview]'s font
    assert missing_glyphs(ImageFont.truetype(str(font), 16), "不明飞行物 正义联盟 视频标签") == []
    not_a_font = tmp_path / "x.ttf"
    not_a_font.write_text("no font", encoding="utf-8")
    with pytest.raises(FontMissing, match="not a font with Chinese glyphs; pip install 'videotag\\[preview\\]'"):
        find_font(not_a_font)
    with pytest.raises(FontMissing, match="no such file"):
        find_font(tmp_path / "none.ttf")
    monkeypatch.setattr(preview, "_package_font", lambda: None)
    monkeypatch.setattr(preview, "SYSTEM_FONTS", (str(not_a_font),))
    monkeypatch.setattr(preview, "_fontconfig_font", lambda: None)
    with pytest.raises(FontMissing) as missing:
        find_font()
    assert str(missing.value) == (
        "no font with Chinese glyphs found: pip install 'videotag[preview]' (Noto Sans SC), "
        "or apt-get install fonts-noto-cjk, or give --font FILE"
    )


def test_a_font_without_chinese_is_refused_before_any_model_loads(tmp_path: Path) -> None:
    not_a_font = tmp_path / "latin.ttf"
    not_a_font.write_bytes(b"\0" * 64)
    run = run_cli(
        "preview",
        "v.mp4",
        "--out",
        str(tmp_path / "s.png"),
        "--font",
        str(not_a_font),
        "--extractor-weights",
        str(tmp_path / "no-weights"),
        timeout=120,
    )
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        f"videotag: error: --font {not_a_font}: not a font with Chinese glyphs; "
        "pip install 'videotag[preview]' (Noto Sans SC), or apt-get install "
        "fonts-noto-cjk, or give --font FILE"
    ]


def test_spread_keeps_first_and_last() -> None:
    assert spread(300, 40)[:3] == [0, 8, 15] and spread(300, 40)[-1] == 299 and len(spread(300, 40)) == 40
    assert spread(8, 40) == list(range(8)) and spread(300, 1) == [0]


def _result(frames_decoded: int, seg_num: int) -> TagResult:
    """A result whose distinct frame k is a flat colour that encodes k (no model needed)."""
    picks = sample_indices(frames_decoded, seg_num)
    distinct = sorted(set(picks))
    crops = np.stack([np.full((224, 224, 3), (k % 256, (k * 7) % 256, 200), np.uint8) for k in distinct])
    order = np.array([distinct.index(p) for p in picks])
    video = SampledVideo(crops, order, frames_decoded, frames_decoded, 640, 272, 25.0, "opencv")
    tags = [
        {"class_id": i, "class_name": name, "probability": p}
        for i, (name, p) in enumerate([("不明飞行物", 0.76), ("正义联盟", 0.5), ("T台", 0.01)])
    ]
    heads = {"videotag": tags, "mine": tags[:2]}
    return TagResult(
        heads, {}, np.zeros((seg_num, 2048), np.float32), video, {"decode": 313.0, "extract": 7200.0, "predict": 102.0}
    )


def test_the_sheet_shows_the_sampled_frames_in_order_and_says_what_it_is() -> None:
    result = _result(250, 300)
    info = {
        "extractor": "TSN-ResNet101",
        "predictor": "AttentionLSTM",
        "preprocess": "faithful",
        "engine": "dygraph",
        "precision": "fp32",
        "weights": "sha256:" + "ab" * 32,
    }
    lines = preview.describe("bikes.mp4", 509_934, result, info)
    assert lines == [
        "bikes.mp4",
        "509.9 KB · 640×272 · 10.0 s at 25.00 fps",
        "250 frames decoded (250 reported) · 300 sampled, 250 distinct · opencv",
        "decode 313 ms · extract 7.2 s · predict 102 ms (total 7.6 s) · TSN-ResNet101 + AttentionLSTM, faithful, "
        "dygraph fp32",
        "weights sha256:abababababababab",
    ]
    sheet = SheetWriter(find_font(), tiles=40).render("bikes.mp4", 509_934, result, info)
    shown = spread(300, 40)
    rows = len(shown) // COLUMNS
    header = sheet.height - 16 - max(rows * (TILE + GAP) - GAP, 22 * (1 + 3 + 1 + 2)) - 16
    assert sheet.width == 16 + COLUMNS * TILE + (COLUMNS - 1) * GAP + 16 + preview.PANEL + 16
    picks = sample_indices(250, 300)
    for i, position in enumerate(shown):  # each tile's top-left area is the colour of its frame
        x, y = 16 + (i % COLUMNS) * (TILE + GAP) + 10, 16 + header + (i // COLUMNS) * (TILE + GAP) + 10
        k = picks[position]
        assert sheet.getpixel((x, y)) == (k % 256, (k * 7) % 256, 200), (i, position)
    panel = np.asarray(sheet.crop((sheet.width - 16 - preview.PANEL, 16 + header, sheet.width - 16, sheet.height)))
    assert (panel.min(axis=2) < 100).sum() > 500, "the tags column holds text"
    random = SheetWriter(find_font()).render("x.mp4", 1, result, {**info, "weights": "random-untrained"})
    assert random.height == sheet.height + 20  # the warning line


@pytest.mark.slow
def test_preview_of_a_sample_video(seed0_tagger, tmp_path: Path) -> None:  # noqa: F811
    require_shared()
    video = VIDEOS / "bikes.mp4"
    result = seed0_tagger.tag(video, seg_num=8)
    out = tmp_path / "sheet.png"
    writer = SheetWriter(find_font(), tiles=40)
    writer.write(video, result, seed0_tagger.info, out)
    with Image.open(out) as sheet:
        assert (sheet.format, sheet.mode) == ("PNG", "P")  # a palette PNG (SheetWriter.write says why)
        expected = writer.render("bikes.mp4", video.stat().st_size, result, seed0_tagger.info)
        assert sheet.size == expected.size == (16 + 8 * TILE + 7 * GAP + 16 + preview.PANEL + 16, expected.height)
        pixels = np.asarray(sheet.convert("RGB")).astype(int)
    assert np.abs(pixels - np.asarray(expected)).mean() < 3, "the saved sheet is the rendered one, in 256 colours"
    top = expected.height - 16 - 22 * 21  # eight tiles are one row beside the 20 tags (and their heading)
    for i in range(8):  # each tile is its sampled crop, in sampling order
        x = 16 + i * (TILE + GAP)
        crop = np.asarray(Image.fromarray(result.video.frames[i]).resize((TILE, TILE), Image.Resampling.BILINEAR))
        assert np.abs(pixels[top : top + 80, x : x + TILE] - crop[:80]).mean() < 8, i


@pytest.mark.slow
def test_tag_writes_one_sheet_per_video_and_progress_only_where_asked(tmp_path: Path) -> None:
    require_shared()
    twin = tmp_path / "again" / "bikes.mp4"
    twin.parent.mkdir()
    shutil.copyfile(VIDEOS / "bikes.mp4", twin)
    videos = [str(VIDEOS / "bikes.mp4"), str(VIDEOS / "carphone_pristine.mp4"), str(twin), str(tmp_path / "no.mp4")]
    model = [
        "--allow-random-weights",
        "--seg-num",
        "4",
        "--engine",
        "dygraph",
        "--layers",
        "50",
        "--label-file",
        str(LABELS),
    ]
    run = run_cli("tag", *videos, "--preview-dir", str(tmp_path / "sheets"), *model)
    assert run.returncode == 1, run.stderr  # the missing file
    records = json_lines(run.stdout)
    assert [r.get("preview") for r in records] == [
        str(tmp_path / "sheets" / n) for n in ("bikes.png", "carphone_pristine.png", "bikes-2.png")
    ] + [None]
    assert records[3]["error"]["code"] == "not_found"
    for name in ("bikes.png", "carphone_pristine.png", "bikes-2.png"):
        with Image.open(tmp_path / "sheets" / name) as sheet:
            assert sheet.width == 16 + 4 * TILE + 3 * GAP + 16 + preview.PANEL + 16  # four sampled frames
    assert "\r" not in run.stderr and "[4/4]" in run.stderr  # a pipe: a line per video, no bar
    quiet = run_cli("tag", videos[1], "--quiet", *model)
    assert quiet.returncode == 0 and "[1/1]" not in quiet.stderr and "\r" not in quiet.stderr


def test_progress_without_a_total_counts_and_draws_only_for_a_terminal() -> None:
    assert bar(500, None, "enqueue", "listed 700", 2.0) == "enqueue 500 (250/s)     2 s  listed 700"

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    for stream, enabled, drawn in ((Tty(), True, True), (Tty(), False, False), (io.StringIO(), True, False)):
        progress = Progress(None, "enqueue", enabled=enabled, stream=stream)
        progress.advance("page 1", count=100)
        progress.close()
        assert ("enqueue 100 " in stream.getvalue()) is drawn
