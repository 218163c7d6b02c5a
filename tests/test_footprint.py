"""worker/footprint.py: max_inflight against the cgroup memory limit, and the worker refusing to start."""

from __future__ import annotations

import pytest

from worker import footprint
from worker.cli import main
from worker.settings import SettingsError, load_settings

GIB = 1024**3


def test_the_estimate_grows_with_inflight_seg_num_and_heads() -> None:
    base = footprint.estimate(load_settings(overrides={"max_inflight": 2}))
    assert base.total == base.model + 2 * base.per_video
    assert footprint.estimate(load_settings(overrides={"max_inflight": 4})).total == base.model + 4 * base.per_video
    assert footprint.estimate(load_settings(overrides={"seg_num": 600})).per_video > base.per_video
    two_heads = footprint.estimate(load_settings(overrides={"predictors": [{"name": "a"}, {"name": "b"}]}))
    assert two_heads.model == base.model + footprint.HEAD_BYTES
    # seg_num 300: the crops alone are 43 MiB, held about four times.
    assert base.per_video >= 300 * footprint.CROP_BYTES * footprint.CROP_COPIES


def test_no_limit_means_no_check_and_the_shipped_defaults_fit_the_chart() -> None:
    settings = load_settings()
    assert footprint.fit_problem(settings, None) is None
    assert footprint.fit_problem(settings, 6 * GIB) is None  # the chart's default memory limit
    footprint.check_fit(settings, 6 * GIB)


def test_a_limit_too_small_names_the_numbers_and_what_fits() -> None:
    settings = load_settings(overrides={"max_inflight": 16})
    need = footprint.estimate(settings)
    problem = footprint.fit_problem(settings, 4 * GIB)
    assert problem is not None and "\n" not in problem
    assert "max_inflight 16 does not fit" in problem and "4096 MiB cgroup limit" in problem
    assert f"{need.total / footprint.MIB:.0f} MiB" in problem and "seg_num 300" in problem
    fits = need.fitting(4 * GIB)
    assert f"lower max_inflight to {fits}" in problem and fits >= 1
    assert footprint.fit_problem(load_settings(overrides={"max_inflight": fits}), 4 * GIB) is None
    assert "lower seg_num" in (footprint.fit_problem(settings, need.model) or "")


def test_the_worker_refuses_to_start_with_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(footprint.cgroup, "memory_limit", lambda root=None: 2 * GIB)

    def no_worker(*_args: object) -> None:
        raise AssertionError("the worker was built despite the memory limit")

    monkeypatch.setattr("worker.worker.Worker", no_worker)
    assert main(["worker", "--max-inflight", "8", "--bootstrap-servers", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("videotag: error: max_inflight 8 does not fit the memory limit")
    with pytest.raises(SettingsError):
        footprint.check_fit(load_settings(overrides={"max_inflight": 8}), 2 * GIB)
