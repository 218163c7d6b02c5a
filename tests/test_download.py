"""`videotag weights download` against a local HTTP mirror: verified before anything is installed."""

from __future__ import annotations

import functools
import http.server
import io
import pickle
import shutil
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from models.tagger import build_tagger
from models.weights import file_digests
from tests.model_fixtures import LABELS, generated_weights, link_or_copy, require_shared, run_cli

WEIGHT_FILES = ("tsn.pdparams", "tsn.pdopt", "attention_lstm.pdparams", "attention_lstm.pdopt")


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:
        pass


def make_tar(path: Path, members: dict[str, Path | bytes]) -> Path:
    """A tar archive with the given member names; a member is a file to copy or bytes."""
    with tarfile.open(path, "w") as tar:
        for name, source in members.items():
            if isinstance(source, Path):
                tar.add(source, arcname=name)
            else:
                info = tarfile.TarInfo(name)
                info.size = len(source)
                tar.addfile(info, io.BytesIO(source))
    return path


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(base URL, served directory): subdirectories are the mirrors of the cases below."""
    require_shared()
    weights = generated_weights(0, 101)
    root = tmp_path_factory.mktemp("mirror")

    good = root / "good"
    good.mkdir()
    # The upstream layout inside the tarballs is undocumented: nest the files in a folder.
    make_tar(
        good / "video_tag_tsn.tar",
        {"video_tag_tsn/tsn.pdparams": weights / "tsn.pdparams", "video_tag_tsn/tsn.pdopt": weights / "tsn.pdopt"},
    )
    make_tar(
        good / "video_tag_lstm.tar",
        {
            "video_tag_lstm/attention_lstm.pdparams": weights / "attention_lstm.pdparams",
            "video_tag_lstm/attention_lstm.pdopt": weights / "attention_lstm.pdopt",
        },
    )
    shutil.copyfile(LABELS, good / "label_3396.txt")

    missing = root / "missing_tensor"
    missing.mkdir()
    with (weights / "tsn.pdparams").open("rb") as f:
        state = pickle.load(f, encoding="latin1")
    del state["bn5c_branch2c_variance"]
    with (missing / "tsn.pdparams").open("wb") as f:
        pickle.dump(state, f, protocol=2)
    del state
    make_tar(missing / "video_tag_tsn.tar", {"video_tag_tsn/tsn.pdparams": missing / "tsn.pdparams"})
    (missing / "tsn.pdparams").unlink()
    link_or_copy(good / "video_tag_lstm.tar", missing / "video_tag_lstm.tar")
    link_or_copy(good / "label_3396.txt", missing / "label_3396.txt")

    for case, members in [("dotdot", ["../../../evil", "../evil"]), ("absolute", [str(root / "evil_abs")])]:
        folder = root / case
        folder.mkdir()
        make_tar(folder / "video_tag_tsn.tar", {**{m: b"gotcha\n" for m in members}, "video_tag_tsn/tsn.pdopt": b""})
        link_or_copy(good / "video_tag_lstm.tar", folder / "video_tag_lstm.tar")
        link_or_copy(good / "label_3396.txt", folder / "label_3396.txt")

    link_dir = root / "symlink"
    link_dir.mkdir()
    with tarfile.open(link_dir / "video_tag_tsn.tar", "w") as tar:
        info = tarfile.TarInfo("video_tag_tsn/tsn.pdparams")
        info.type, info.linkname = tarfile.SYMTYPE, str(weights / "tsn.pdparams")  # a link out of the archive
        tar.addfile(info)
    link_or_copy(good / "video_tag_lstm.tar", link_dir / "video_tag_lstm.tar")
    link_or_copy(good / "label_3396.txt", link_dir / "label_3396.txt")

    (root / "empty").mkdir()  # every request: 404

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def download(base_url: str, case: str, dest: Path):
    return run_cli(
        "weights",
        "download",
        "--dest",
        str(dest),
        "--from",
        f"{base_url}/{case}",
        "--label-dest",
        str(dest / "label_3396.txt"),
        cwd=dest.parent,
    )


def assert_nothing_installed(dest: Path) -> None:
    assert not dest.exists() or sorted(p.name for p in dest.iterdir()) == [], sorted(dest.iterdir())


def test_download_installs_verified_weights(mirror: tuple[str, Path], tmp_path: Path) -> None:
    base_url, _ = mirror
    dest = tmp_path / "weights"
    proc = download(base_url, "good", dest)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in dest.iterdir()) == sorted([*WEIGHT_FILES, "label_3396.txt"])  # no leftovers
    weights = generated_weights(0, 101)
    for name in ("tsn.pdopt", "attention_lstm.pdopt"):
        assert (dest / name).read_bytes() == (weights / name).read_bytes()
    assert (dest / "label_3396.txt").read_bytes() == LABELS.read_bytes()
    expected_digest = file_digests([weights / "tsn.pdparams", weights / "attention_lstm.pdparams"])[0]
    assert file_digests([dest / "tsn.pdparams", dest / "attention_lstm.pdparams"])[0] == expected_digest

    tagger = build_tagger(dest / "tsn", dest / "attention_lstm", dest / "label_3396.txt")
    assert tagger.info["weights"] == "sha256:" + expected_digest
    assert len(tagger.heads[0].labels) == 3396


def test_download_refuses_weights_missing_a_tensor(mirror: tuple[str, Path], tmp_path: Path) -> None:
    base_url, _ = mirror
    dest = tmp_path / "weights"
    proc = download(base_url, "missing_tensor", dest)
    assert proc.returncode != 0
    assert "bn5c_branch2c_variance" in proc.stderr
    assert_nothing_installed(dest)


@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink"])
def test_download_refuses_members_outside_the_archive(mirror: tuple[str, Path], tmp_path: Path, case: str) -> None:
    base_url, root = mirror
    dest = tmp_path / "a" / "b" / "weights"
    dest.parent.mkdir(parents=True)
    proc = download(base_url, case, dest)
    assert proc.returncode != 0
    assert "video_tag_tsn.tar" in proc.stderr
    assert_nothing_installed(dest)
    # Nowhere above the destination (where `..` members would land) nor at the absolute path.
    for folder in (dest.parent, dest.parent.parent, tmp_path, tmp_path.parent, root):
        assert not (folder / "evil").exists(), folder
    assert not (root / "evil_abs").exists()


def test_download_http_404(mirror: tuple[str, Path], tmp_path: Path) -> None:
    base_url, _ = mirror
    dest = tmp_path / "weights"
    proc = download(base_url, "empty", dest)
    assert proc.returncode != 0
    assert "404" in proc.stderr
    # Which download failed: the URL (or at least the file) must be in the message.
    assert f"{base_url}/empty/video_tag_tsn.tar" in proc.stderr or "video_tag_tsn.tar" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert_nothing_installed(dest)
