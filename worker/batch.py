"""`videotag tag`: tag local video files, one JSON line each on stdout, in input order.

A line holds `tags` (the first head's, as always) and `heads` (every head's, by name), like a worker result.
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

log = logging.getLogger(__name__)


def read_filelist(path: Path) -> list[str]:
    """One video path per line, as the original's filelist; blank lines and `#` comments skipped."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def tag_files(tagger: VideoTagger, paths: list[str], save_dir: Path | None = None,
              out: TextIO = sys.stdout) -> int:
    """Tag each file; one bad file never stops the batch. Returns the number of failures."""
    failures = 0
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
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
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        out.flush()
        if save_dir is not None and "tags" in record:
            # The original's per-video file: [path, {class_id, class_name, probability}, ...] (first head)
            original = json.dumps([path, *record["tags"]], ensure_ascii=False, indent=1)
            (save_dir / f"result{index}.json").write_text(original, encoding="utf-8")
        print(f"[{index + 1}/{len(paths)}] {path}: {status} ({time.perf_counter() - start:.1f} s)",
              file=sys.stderr, flush=True)
    return failures
