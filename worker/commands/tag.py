"""`videotag tag` and `videotag preview`: tag local video files, one JSON line each on stdout, in input order.

A line holds `tags` (the first head's, as always) and `heads` (every head's, by name), like a worker result.
With sheets asked for, each video tagged also gets a contact sheet (worker/commands/preview.py) from the same result.
Progress goes to stderr: a bar on a terminal, a line per video otherwise, nothing with --quiet.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from models.chain import RANDOM_WEIGHTS, VideoTagger
from models.errors import InputError
from worker.commands.preview import SheetWriter
from worker.commands.progress import Progress

log = logging.getLogger(__name__)


def read_filelist(path: Path) -> list[str]:
    """One video path per line, as the original's filelist; blank lines and `#` comments skipped."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def tag_files(tagger: VideoTagger, paths: list[str], save_dir: Path | None = None,
              out: TextIO = sys.stdout, sheets: tuple[SheetWriter, list[Path]] | None = None,
              quiet: bool = False) -> int:
    """Tag each file; one bad file never stops the batch. `sheets`: the writer and one output path per video.
    Returns the number of failures (a video that fails, or whose sheet cannot be written)."""
    failures = 0
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress(len(paths), "tag", enabled=not quiet)
    for index, path in enumerate(paths):
        start = time.perf_counter()
        record: dict[str, Any] = {"path": path}
        try:
            result = tagger.tag(path)
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
