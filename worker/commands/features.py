"""Extracted features: the `videotag features` command and the cache that training and evaluation share.

A video's features are the extractor's `[seg_num, 2048]` float32 output, the input of every head. They depend
on the file's bytes and on the extractor (its weights digest, depth, seg_num and preprocessing) and on nothing
else, so that is the cache key: renaming a file or changing a head never re-extracts; another extractor never
reads stale features. Cache files are written to a temporary name and renamed, so readers never see half.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from models.chain import VideoTagger
from models.errors import InputError
from models.heads import HeadSpec
from worker.commands.progress import Progress
from worker.settings import Settings

INDEX_FILE = "index.csv"
INDEX_HEADER = ("path", "file", "sha256", "seg_num", "extractor_weights")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def extractor_key(tagger: VideoTagger) -> str:
    """What besides the file decides the features (cache directory name)."""
    info = tagger.info
    parts = [info["extractor_weights"], info["extractor"], f"seg{tagger.extractor_config.seg_num}", tagger.preprocess]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class FeatureCache:
    """`directory/<extractor key>/<sha256>.npy`."""

    directory: Path
    tagger: VideoTagger

    def features(self, path: str | Path) -> tuple[str, np.ndarray]:
        """(sha256 of the file, its features), extracted only if not cached. Raises InputError for a bad video."""
        sha = file_sha256(path)
        target = self.directory / extractor_key(self.tagger) / f"{sha}.npy"
        if target.is_file():
            return sha, np.load(target, allow_pickle=False)
        features = self.tagger.features(self.tagger.sample(path, name=str(path)))
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".npy", dir=target.parent)
        with os.fdopen(fd, "wb") as out:
            np.save(out, features.astype(np.float32, copy=False), allow_pickle=False)
        os.replace(tmp, target)
        return sha, features


def load_extractor(settings: Settings, heads: list[HeadSpec] | None = None) -> VideoTagger:
    """The extractor (and `heads`, if given) through the one chain builder; random weights are refused, as
    features and heads made from them would be meaningless and look real."""
    from worker.chain_builder import load_tagger

    settings = replace(settings, allow_random_weights=False)
    if heads is None:
        return load_tagger(settings, with_heads=False)
    return load_tagger(replace(settings, predictors=heads))


def output_names(paths: list[str], suffix: str = ".npy") -> list[str]:
    """`<stem><suffix>` per video; a stem seen before gets `-2`, `-3`, ... so that no file overwrites another."""
    names: list[str] = []
    for path in paths:
        stem, n = Path(path).stem, 1
        name = f"{stem}{suffix}"
        while name in names:
            n += 1
            name = f"{stem}-{n}{suffix}"
        names.append(name)
    return names


def write_features(tagger: VideoTagger, paths: list[str], out: Path, quiet: bool = False) -> int:
    """One `.npy` per video in `out`, and `out/index.csv` listing those written. Returns the number of failures
    (each reported as a JSON line on stdout, like `videotag tag`)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    failures = 0
    progress = Progress(len(paths), "features", enabled=not quiet)
    for path, name in zip(paths, output_names(paths), strict=True):
        try:
            sha = file_sha256(path)
            features = tagger.features(tagger.sample(path, name=path))
        except (InputError, OSError) as exc:
            error = exc.as_dict() if isinstance(exc, InputError) else {"code": "not_found", "message": str(exc)}
            print(json.dumps({"path": path, "error": error}, ensure_ascii=False), flush=True)
            failures += 1
        else:
            np.save(out / name, features.astype(np.float32, copy=False), allow_pickle=False)
            rows.append((path, name, sha, len(features), tagger.info["extractor_weights"]))
        progress.advance(Path(path).name)
    progress.close()
    with (out / INDEX_FILE).open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(INDEX_HEADER)
        writer.writerows(rows)
    return failures
