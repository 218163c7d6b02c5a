"""Contact sheets (`videotag preview`, `videotag tag --preview-dir`): what the model saw and what it made of it.

A sheet is one PNG: a header (file name, size, resolution, duration, frame counts, the decoder, the stage
timings), a grid of the sampled frames and, beside it, each head's tags with their probabilities.

The frames are the tagging result's own (`TagResult.video`): the original sampler's picks after the
original preprocessing, i.e. the 224×224 centre crops the extractor was given, never a second decode. Of
the `seg_num` sampled positions (300 by default: too many to see) the grid shows `tiles` spread evenly from
the first to the last, each captioned with its frame number and time in the video.

Tag names are Chinese: the sheet needs a font with CJK glyphs. `find_font` takes the `--font` given, else
the Noto Sans SC of the `videotag[preview]` extra (pylopdf-fonts-zh-cn), else a system CJK font (the images
install the extra); a font is accepted only if it really has the glyphs, so a sheet never shows boxes.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw, ImageFont

from models.errors import ConfigError
from models.sampling import sample_indices

if TYPE_CHECKING:
    from models.tagger import TagResult

FONT_HELP = "pip install 'videotag[preview]' (Noto Sans SC), or apt-get install fonts-noto-cjk, or give --font FILE"
# Where distributions put a CJK font (Debian/Ubuntu fonts-noto-cjk and fonts-wqy-*, Fedora, Arch, macOS).
SYSTEM_FONTS = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/System/Library/Fonts/PingFang.ttc",
)
PROBE = "视频标签"  # characters every CJK font has and no Latin font does
DEFAULT_TILES = 40
TILE = 112  # half the 224 crop
COLUMNS = 8
GAP = 4
MARGIN = 16
PANEL = 340  # width of the tags column
TAG_ROWS = 20  # tags shown, split between the heads
BACKGROUND, INK, FAINT, ACCENT, WARN = (250, 250, 248), (20, 20, 20), (110, 110, 110), (52, 120, 200), (190, 30, 30)


class FontMissing(ConfigError, ValueError):
    """No usable CJK font: the message says how to get one."""


def _package_font() -> Path | None:
    try:
        import pylopdf_fonts_zh_cn  # the videotag[preview] extra
    except ImportError:
        return None
    return Path(pylopdf_fonts_zh_cn.sans_path())


def _fontconfig_font() -> Path | None:
    """fontconfig's best match for Chinese, where fontconfig is installed (it may be no CJK font at all:
    the caller checks the glyphs)."""
    if not (fc_match := shutil.which("fc-match")):
        return None
    try:
        found = subprocess.run(
            [fc_match, "-f", "%{file}", ":lang=zh-cn"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(found) if found else None


def missing_glyphs(font: ImageFont.FreeTypeFont, text: str) -> list[str]:
    """The characters of `text` the font draws as its missing-glyph box (that is, as a code point that no
    font has, U+10FFFD)."""

    def pixels(ch: str) -> bytes:
        image = Image.new("L", (4 * int(font.size), 2 * int(font.size)))  # (Pillow types the size as float)
        ImageDraw.Draw(image).text((0, 0), ch, font=font, fill=255)
        return image.tobytes()

    notdef = pixels("\U0010fffd")
    return [ch for ch in dict.fromkeys(text) if not ch.isspace() and pixels(ch) == notdef]


def find_font(explicit: str | Path | None = None) -> Path:
    """The font file a sheet is drawn with (see the module docstring). Raises FontMissing."""
    if explicit is not None:
        candidates = [Path(explicit)]
        if not candidates[0].is_file():
            raise FontMissing(f"--font {explicit}: no such file")
    else:
        candidates = [p for p in (_package_font(), *map(Path, SYSTEM_FONTS), _fontconfig_font()) if p is not None]
    for path in candidates:
        if not path.is_file():
            continue
        try:
            font = ImageFont.truetype(str(path), 16)
        except OSError:
            continue
        if not missing_glyphs(font, PROBE):
            return path
    if explicit is not None:
        raise FontMissing(f"--font {explicit}: not a font with Chinese glyphs; {FONT_HELP}")
    raise FontMissing(f"no font with Chinese glyphs found: {FONT_HELP}")


def spread(count: int, tiles: int) -> list[int]:
    """`tiles` of `count` positions, evenly from the first to the last (all of them when there are few)."""
    if count <= tiles:
        return list(range(count))
    return [round(i * (count - 1) / (tiles - 1)) for i in range(tiles)] if tiles > 1 else [0]


def human_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000  # type: ignore[assignment]
    raise AssertionError


def _ms(value: float) -> str:
    return f"{value / 1000:.1f} s" if value >= 1000 else f"{value:.0f} ms"


def describe(name: str, size: int, result: TagResult, info: dict[str, Any]) -> list[str]:
    """The header's lines (pure: the tests read them)."""
    video = result.video
    seconds = video.frames_decoded / video.fps if video.fps > 0 else None
    duration = f"{seconds:.1f} s at {video.fps:.2f} fps" if seconds is not None else "duration unknown"
    timings = " · ".join(f"{stage} {_ms(ms)}" for stage, ms in result.timings_ms.items())
    total = sum(result.timings_ms.values())
    return [
        name,
        f"{human_size(size)} · {video.width}×{video.height} · {duration}",
        f"{video.frames_decoded} frames decoded ({video.frames_reported} reported) · {len(video.order)} sampled, "
        f"{len(video.crops)} distinct · {video.decoder}",
        f"{timings} (total {_ms(total)}) · {info.get('extractor', '?')} + {info.get('predictor', '?')}, "
        f"{info.get('preprocess', '?')}, {info.get('engine', '?')} {info.get('precision', '')}".rstrip(),
        f"weights {info.get('weights', '?')[:23]}",
    ]


@dataclass(frozen=True)
class SheetWriter:
    font: Path
    tiles: int = DEFAULT_TILES

    def _font(self, size: int) -> ImageFont.FreeTypeFont:
        return ImageFont.truetype(str(self.font), size)

    def render(self, name: str, size: int, result: TagResult, info: dict[str, Any]) -> Image.Image:
        video = result.video
        seg_num = len(video.order)
        picks = sample_indices(video.frames_decoded, seg_num)  # the frame number of each sampled position
        shown = spread(seg_num, max(self.tiles, 1))
        rows = -(-len(shown) // COLUMNS)
        columns = min(COLUMNS, len(shown))
        grid_w = columns * TILE + (columns - 1) * GAP
        grid_h = rows * (TILE + GAP) - GAP
        lines = describe(name, size, result, info)
        title, small, tiny = self._font(22), self._font(14), self._font(11)
        header_h = 30 + 20 * (len(lines) - 1) + 10
        random = info.get("weights") == "random-untrained"
        if random:
            header_h += 20
        per_head = max(1, TAG_ROWS // max(len(result.heads), 1))
        panel_rows = sum(1 + min(per_head, len(tags)) for tags in result.heads.values())
        panel_h = panel_rows * 22
        width = MARGIN + grid_w + MARGIN + PANEL + MARGIN
        height = MARGIN + header_h + max(grid_h, panel_h) + MARGIN
        sheet = Image.new("RGB", (width, height), BACKGROUND)
        draw = ImageDraw.Draw(sheet)

        y = MARGIN
        draw.text((MARGIN, y), lines[0], font=title, fill=INK)
        y += 30
        for line in lines[1:]:
            draw.text((MARGIN, y), line, font=small, fill=FAINT)
            y += 20
        if random:
            draw.text((MARGIN, y), "RANDOM, UNTRAINED WEIGHTS: these tags mean nothing", font=small, fill=WARN)
        top = MARGIN + header_h

        for i, position in enumerate(shown):
            x0 = MARGIN + (i % COLUMNS) * (TILE + GAP)
            y0 = top + (i // COLUMNS) * (TILE + GAP)
            crop = Image.fromarray(video.crops[video.order[position]]).resize((TILE, TILE), Image.Resampling.BILINEAR)
            sheet.paste(crop, (x0, y0))
            frame = picks[position]
            caption = f"#{frame}" + (f" {frame / video.fps:.1f}s" if video.fps > 0 else "")
            box = draw.textbbox((0, 0), caption, font=tiny)
            draw.rectangle((x0, y0 + TILE - box[3] - 4, x0 + box[2] + 6, y0 + TILE), fill=(0, 0, 0))
            draw.text((x0 + 3, y0 + TILE - box[3] - 3), caption, font=tiny, fill=(255, 255, 255))

        x = MARGIN + grid_w + MARGIN
        y = top
        for head, tags in result.heads.items():
            draw.text((x, y), f"{head}: top {min(per_head, len(tags))}", font=small, fill=FAINT)
            y += 22
            for rank, tag in enumerate(tags[:per_head], start=1):
                probability = float(tag["probability"])
                draw.rectangle((x, y + 2, x + PANEL - 1, y + 19), fill=(232, 232, 228))
                draw.rectangle(
                    (x, y + 2, x + round((PANEL - 1) * min(max(probability, 0.0), 1.0)), y + 19), fill=(198, 219, 242)
                )
                draw.text((x + 4, y + 2), f"{rank}. {tag['class_name']}", font=small, fill=INK)
                value = f"{probability:.3f}"
                draw.text((x + PANEL - 4 - draw.textlength(value, font=small), y + 2), value, font=small, fill=ACCENT)
                y += 22
        return sheet

    def write(self, video_path: str | Path, result: TagResult, info: dict[str, Any], out: Path) -> None:
        """Render and save (the format by `out`'s extension). A PNG gets a 256-colour palette: a sheet is for
        looking at, the palette costs the thumbnails little and makes the file about 3.5 times smaller (a sheet
        per video adds up). Raises OSError."""
        path = Path(video_path)
        sheet = self.render(path.name, path.stat().st_size, result, info)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix.lower() == ".png":
            sheet = sheet.quantize(256, method=Image.Quantize.FASTOCTREE)
        sheet.save(out, optimize=True)
