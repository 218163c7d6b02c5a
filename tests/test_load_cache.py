"""The cache of what loading the weight files derives (models/load_cache.py): digests and a head's tensors come
from it after the first load, are never answered for a file that changed since, and a broken or unwritable
cache only costs time."""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest

from models import load_cache
from models.weights import file_digests, read_state


def write_pickle(path: Path, state: dict[str, np.ndarray]) -> Path:
    with path.open("wb") as f:
        pickle.dump(state, f, protocol=2)  # as fluid.save wrote them
    return path


def weights(tmp_path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    state = {"rgb_fc.w_0": rng.normal(size=(8, 4)).astype(np.float32), "output.b_0": np.ones(4, np.float32)}
    write_pickle(tmp_path / "attention_lstm.pdparams", state)
    write_pickle(tmp_path / "attention_lstm.pdopt", {"fc1.b_0": np.zeros(3, np.float32)})
    return state


def rewrite_keeping_size_and_mtime(path: Path, data: bytes) -> None:
    """Other bytes of the same length, the modification time set back: only the change time tells."""
    before = path.stat()
    time.sleep(0.05)  # past the filesystem's timestamp granularity
    path.write_bytes(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns


def fail_if_called(*args: object) -> None:
    raise AssertionError(f"read the files again: {args}")


def test_a_heads_tensors_come_from_the_cache_the_second_time_exactly_as_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = weights(tmp_path)
    cache = tmp_path / "cache"
    first = load_cache.state(tmp_path / "attention_lstm", "attention_lstm", cache)
    assert first[1] == {"fc1.b_0"} and first[2] == tmp_path / "attention_lstm.pdparams"
    monkeypatch.setattr(load_cache, "read_state", fail_if_called)
    tensors, from_opt, params_path = load_cache.state(tmp_path / "attention_lstm", "attention_lstm", cache)
    assert (from_opt, params_path) == (first[1], first[2])
    assert sorted(tensors) == sorted([*expected, "fc1.b_0"])
    for name, value in expected.items():
        assert tensors[name].dtype == value.dtype
        np.testing.assert_array_equal(tensors[name], value)
    assert [p.name for p in (cache / "state").iterdir() if p.name.startswith(".")] == [], "a temporary file was left"


def test_a_changed_weight_file_is_read_again_even_with_its_size_and_mtime_kept(tmp_path: Path) -> None:
    original = weights(tmp_path)
    cache = tmp_path / "cache"
    params = tmp_path / "attention_lstm.pdparams"
    load_cache.state(tmp_path, "attention_lstm", cache)
    load_cache.digests([params], cache)
    # The same bytes in another order: a pickle of the same length (its text encoding depends on the bytes)
    changed = {**original, "rgb_fc.w_0": original["rgb_fc.w_0"][::-1].copy()}
    data = pickle.dumps(changed, protocol=2)
    assert len(data) == params.stat().st_size
    rewrite_keeping_size_and_mtime(params, data)
    tensors, _, _ = load_cache.state(tmp_path, "attention_lstm", cache)
    np.testing.assert_array_equal(tensors["rgb_fc.w_0"], changed["rgb_fc.w_0"])
    assert load_cache.digests([params], cache) == file_digests([params])


def test_digests_come_from_the_cache_the_second_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights(tmp_path)
    paths = [tmp_path / "attention_lstm.pdparams", tmp_path / "attention_lstm.pdopt"]
    cache = tmp_path / "cache"
    expected = file_digests(paths)
    assert load_cache.digests(paths, cache) == expected
    monkeypatch.setattr(load_cache, "file_digests", fail_if_called)
    assert load_cache.digests(paths, cache) == expected
    with pytest.raises(AssertionError, match="read the files again"):  # the whole digest depends on the order
        load_cache.digests(paths[::-1], cache)


def test_a_damaged_entry_is_a_miss_and_is_replaced(tmp_path: Path) -> None:
    expected = weights(tmp_path)
    cache = tmp_path / "cache"
    load_cache.state(tmp_path, "attention_lstm", cache)
    load_cache.digests([tmp_path / "attention_lstm.pdparams"], cache)
    for entry in [*(cache / "state").iterdir(), *(cache / "digests").iterdir()]:
        entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    tensors, _, _ = load_cache.state(tmp_path, "attention_lstm", cache)
    np.testing.assert_array_equal(tensors["rgb_fc.w_0"], expected["rgb_fc.w_0"])
    params = tmp_path / "attention_lstm.pdparams"
    assert load_cache.digests([params], cache) == file_digests([params])
    with np.load(next((cache / "state").iterdir()), allow_pickle=False) as stored:  # rewritten whole
        np.testing.assert_array_equal(stored["rgb_fc.w_0"], expected["rgb_fc.w_0"])


def test_a_cache_that_cannot_be_written_only_costs_time(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    expected = weights(tmp_path)
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("x")
    tensors, from_opt, _ = load_cache.state(tmp_path, "attention_lstm", blocked)
    np.testing.assert_array_equal(tensors["rgb_fc.w_0"], expected["rgb_fc.w_0"])
    assert from_opt == {"fc1.b_0"}
    params = tmp_path / "attention_lstm.pdparams"
    assert load_cache.digests([params], blocked) == file_digests([params])
    assert sum("could not cache" in r.getMessage() for r in caplog.records) == 2


def test_without_a_cache_directory_the_files_are_read(tmp_path: Path) -> None:
    weights(tmp_path)
    tensors, from_opt, path = load_cache.state(tmp_path, "attention_lstm", None)
    expected = read_state(tmp_path, "attention_lstm")
    assert (from_opt, path) == (expected[1], expected[2]) and sorted(tensors) == sorted(expected[0])
    assert not (tmp_path / "state").exists()
