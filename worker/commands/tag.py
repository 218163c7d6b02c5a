"""`videotag tag` and `videotag preview`: tag local video files, one JSON line each on stdout, in input order.

A line holds `tags` (the first head's, as always) and `heads` (every head's, by name), like a worker result.
With sheets asked for, each video tagged also gets a contact sheet (worker/commands/preview.py) from the same result.
Progress goes to stderr: a bar on a terminal, a line per video otherwise, nothing with --quiet.

Start-up overlaps the first video (`start_tagging`): its decoder starts first, on a thread that reads it ahead
(`ReadAhead`), then the networks load in the model process meanwhile; the networks run there, not in this
process, so that reading the decoder's chunks never waits for Paddle's GIL. Each video's chunks go to the
extractor as they are decoded (models/chain.py `VideoTagger.extract_stream`).
"""

from __future__ import annotations

import json
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from models import cancel
from models.chain import RANDOM_WEIGHTS, VideoTagger
from models.errors import InputError
from models.sampling import FrameChunk, FrameStream, Sampler, Sampling
from worker.commands.progress import Progress

if TYPE_CHECKING:
    from worker.chain_builder import Chain
    from worker.commands.preview import SheetWriter
    from worker.settings import Settings

log = logging.getLogger(__name__)


def read_filelist(path: Path) -> list[str]:
    """One video path per line, as the original's filelist; blank lines and `#` comments skipped."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


class ReadAhead:
    """A video's stream, read on a thread of its own from now on (its chunks wait in a queue), and replayed by
    `frames()`: the first video decodes while the networks load. `close` stops it now: the thread reads under
    a cancel token of its own, so its decoder child is killed at once (models/cancel.py)."""

    def __init__(self, stream: FrameStream) -> None:
        self._items: queue.Queue[FrameChunk | Sampling | BaseException] = queue.Queue()
        self._token = cancel.Token()
        threading.Thread(target=self._read, args=(stream,), name="read-ahead", daemon=True).start()

    def _read(self, stream: FrameStream) -> None:
        with cancel.scope(self._token):
            try:
                while True:
                    try:
                        self._items.put(next(stream))
                    except StopIteration as end:
                        self._items.put(end.value)
                        return
            except BaseException as exc:  # the video's error, raised where it is tagged
                self._items.put(exc)
            finally:
                stream.close()

    def frames(self) -> FrameStream:
        try:
            while True:
                item = self._items.get()
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, Sampling):
                    return item
                yield item
        finally:
            self.close()

    def close(self) -> None:
        self._token.cancel("read-ahead closed")


def start_tagging(
    settings: Settings, paths: list[str], build: Callable[[Settings], Chain], sampler: Sampler
) -> tuple[Chain, ReadAhead | None]:
    """`build(settings)`, with the first video's decoding (by `sampler`) started before it and going on while
    it runs. Returns the chain and that video's read-ahead (None without videos)."""
    ahead = ReadAhead(sampler.stream(paths[0], settings.seg_num)) if paths else None
    log.debug("decoding %s while the networks load", paths[0] if paths else None)
    try:
        return build(settings), ahead
    except BaseException:
        if ahead is not None:
            ahead.close()
        raise


def tag_files(
    tagger: VideoTagger,
    paths: list[str],
    save_dir: Path | None = None,
    out: TextIO = sys.stdout,
    sheets: tuple[SheetWriter, list[Path]] | None = None,
    quiet: bool = False,
    first: ReadAhead | None = None,
) -> int:
    """Tag each file; one bad file never stops the batch. `sheets`: the writer and one output path per video;
    `first`: the first video's decoding, started already (`start_tagging`).
    Returns the number of failures (a video that fails, or whose sheet cannot be written)."""
    failures = 0
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress(len(paths), "tag", enabled=not quiet)
    for index, path in enumerate(paths):
        start = time.perf_counter()
        record: dict[str, Any] = {"path": path}
        try:
            result = tagger.tag(path, frames=first.frames() if index == 0 and first is not None else None)
            record["tags"] = result.tags
            record["heads"] = result.heads
            status = "ok"
        except InputError as exc:
            record["error"] = exc.as_dict()
            failures += 1
            status = exc.code
        if tagger.info["weights"] == RANDOM_WEIGHTS:
            record["model"] = {"weights": RANDOM_WEIGHTS}
        if sheets is not None and "tags" in record:
            writer, targets = sheets
            try:
                writer.write(path, result, tagger.info, targets[index])
                record["preview"] = str(targets[index])
            except OSError as exc:
                record["preview_error"] = str(exc)
                failures += 1
                status = "preview failed"
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        out.flush()
        if save_dir is not None and "tags" in record:
            # The original's per-video file: [path, {class_id, class_name, probability}, ...] (first head)
            original = json.dumps([path, *record["tags"]], ensure_ascii=False, indent=1)
            (save_dir / f"result{index}.json").write_text(original, encoding="utf-8")
        note = f"{path}: {status} ({time.perf_counter() - start:.1f} s)"
        if progress.enabled:
            progress.advance(note)
        elif not quiet:
            print(f"[{index + 1}/{len(paths)}] {note}", file=sys.stderr, flush=True)
    progress.close()
    return failures
