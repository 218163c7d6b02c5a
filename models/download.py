"""Fetching the published VideoTag weights and label list, verified before anything is installed."""

from __future__ import annotations

import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from models.attention_lstm import attention_lstm
from models.config import PredictorConfig
from models.labels import load_labels
from models.resnet import tsn_resnet
from models.weights import WeightsError, check_state, expected_shapes, read_state

UPSTREAM = "https://videotag.bj.bcebos.com/"
TARBALLS = {"tsn": "video_tag_tsn.tar", "attention_lstm": "video_tag_lstm.tar"}
LABEL_FILE = "label_3396.txt"
NUM_CLASSES = PredictorConfig().num_classes
LABEL_URL = "https://raw.githubusercontent.com/PaddlePaddle/PaddleVideo/develop/applications/VideoTag/label_3396.txt"


def _fetch(source: str, dest: Path) -> None:
    """Copy a URL (http, https, file) or a local path to `dest`, reporting progress on stderr."""
    if urllib.parse.urlparse(source).scheme in ("http", "https", "file"):
        try:
            response = urllib.request.urlopen(source, timeout=60)
        except urllib.error.HTTPError as exc:
            raise OSError(f"{source}: HTTP {exc.code} {exc.reason}") from exc
        except urllib.error.URLError as exc:
            raise OSError(f"{source}: {exc.reason}") from exc
        with response, dest.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
                if total:
                    print(f"\r{dest.name}: {done >> 20}/{total >> 20} MiB", end="", file=sys.stderr)
        print(file=sys.stderr)
    else:
        shutil.copyfile(source, dest)


def _join(base: str, name: str) -> str:
    if urllib.parse.urlparse(base).scheme in ("http", "https", "file"):
        return base.rstrip("/") + "/" + name
    return str(Path(base) / name)


def download(dest: Path, source: str | None = None, label_dest: Path | None = None, layers: int = 101) -> None:
    """Fetch both tarballs and the label list into `dest`, checking every tensor name and shape first.

    `source` replaces the upstream locations: a base URL or directory holding the two tarballs and the
    label file (mirrors, air-gapped installs, tests).
    """
    dest.mkdir(parents=True, exist_ok=True)
    label_dest = label_dest or dest / LABEL_FILE
    models = {"tsn": tsn_resnet(layers), "attention_lstm": attention_lstm()}
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        staging = Path(tmp)
        for stem, tarball in TARBALLS.items():
            archive = staging / tarball
            _fetch(_join(source or UPSTREAM, tarball), archive)
            unpacked = staging / stem
            try:
                with tarfile.open(archive) as tar:
                    tar.extractall(unpacked, filter="data")  # refuses absolute paths, `..` and links out
            except (tarfile.TarError, OSError) as exc:
                raise WeightsError(f"{tarball}: not a readable tar archive ({exc})") from exc
            try:
                state, from_opt, params = read_state(unpacked, stem)
            except WeightsError as exc:
                raise WeightsError(f"{tarball}: contains no readable {stem}.pdparams ({exc})") from exc
            check_state(state, expected_shapes(models[stem]), f"{tarball}:{params.name}", optional=from_opt)
            for suffix in (".pdparams", ".pdopt"):
                if params.with_suffix(suffix).is_file():
                    shutil.move(params.with_suffix(suffix), staging / f"{stem}{suffix}")
        labels = staging / LABEL_FILE
        _fetch(_join(source, LABEL_FILE) if source else LABEL_URL, labels)
        load_labels(labels, NUM_CLASSES)
        for stem in TARBALLS:
            for suffix in (".pdparams", ".pdopt"):
                if (staging / f"{stem}{suffix}").is_file():
                    (staging / f"{stem}{suffix}").replace(dest / f"{stem}{suffix}")
        label_dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(labels, label_dest)
