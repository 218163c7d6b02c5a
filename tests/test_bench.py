"""`videotag bench`: one real (tiny) run as a subprocess, the long-video memory mode, and the helpers."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from tests.model_fixtures import LABELS, VIDEOS, require_shared, run_cli
from worker import bench

RANDOM_TINY = ("--seg-num", "4", "--allow-random-weights", "--label-file", str(LABELS), "--layers", "50",
               "--batch-size", "4", "--ceiling-seconds", "1")


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_bench_reports_every_figure(tmp_path: Path) -> None:
    require_shared()
    video = VIDEOS / "carphone_pristine.mp4"
    out = tmp_path / "bench.json"
    done = run_cli("bench", "--videos", str(video), "--repeat", "1", *RANDOM_TINY,
                   "--model-cache-dir", str(tmp_path / "cache"), "--json", str(out), "--plot", str(tmp_path / "b.png"),
                   timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout
    for needle in ("videos/min", "frames/s", "decode p50/p95", "extract p50/p95", "predict p50/p95", "baseline",
                   "pipeline", "ceiling", "pipeline/baseline:", "pipeline/ceiling:", "peak RSS", "RSS max per phase",
                   "top-20 vs baseline, carphone_pristine.mp4: "):
        assert needle in table, f"{needle!r} missing from\n{table}"
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["config"]["engine"] == "inference" and report["config"]["seg_num"] == 4
    for run in ("baseline", "pipeline"):
        assert _positive(report[run]["videos_per_min"]) and _positive(report[run]["frames_per_s"])
        for stage in bench.STAGES:
            assert _positive(report[run]["stages"][stage]["p50_ms"])
            assert report[run]["stages"][stage]["p95_ms"] >= report[run]["stages"][stage]["p50_ms"]
    assert _positive(report["ceiling"]["frames_per_s"])
    for ratio in ("pipeline_vs_baseline", "pipeline_vs_ceiling", "pipeline_vs_ceiling_cpu"):
        assert _positive(report["ratios"][ratio]), ratio
    assert isinstance(report["disturbed_phases"], list)
    assert _positive(report["memory"]["peak_rss_mb"])
    for phase in ("load", "ceiling", "pipeline", "ceiling_after", "baseline"):
        assert _positive(report["memory"]["phases"][phase]["rss_max_mb"])
        assert 0 <= report["memory"]["phases"][phase]["others_cpu_share"] <= 1
    agreement = report["agreement"][str(video)]
    assert 0 <= agreement["overlap"] <= 20 and agreement["of"] == 20 and isinstance(agreement["identical_order"], bool)
    # Same weights, faithful preprocessing, fp32: the pipeline tags as the original-style baseline.
    assert agreement["overlap"] == 20
    assert (tmp_path / "b.png").is_file() or "matplotlib is not installed" in done.stderr


@pytest.mark.slow
def test_bench_long_video_memory_mode(tmp_path: Path) -> None:
    require_shared()  # the labels
    out = tmp_path / "long.json"
    done = run_cli("bench", "--long-video", "2", "--baseline-clip", "1", *RANDOM_TINY,
                   "--model-cache-dir", str(tmp_path / "cache"), "--json", str(out), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pipeline peak RSS" in done.stdout and "baseline RSS growth" in done.stdout
    long_video = json.loads(out.read_text(encoding="utf-8"))["long_video"]
    assert long_video["resolution"] == "1920x1080" and long_video["pipeline"]["videos"] == 1
    assert _positive(long_video["pipeline_peak_rss_mb"])
    assert long_video["baseline"]["frames_kept"] == 25
    # 25 RGB 1080p frames are ~150 MB: the growth measurement sees them.
    assert long_video["baseline"]["rss_growth_mb_per_s"] > 25  # it keeps every frame: ~6 MB each at 1080p


def test_bench_needs_videos() -> None:
    done = run_cli("bench", "--allow-random-weights", timeout=120)
    assert done.returncode == 2 and "no videos" in done.stderr


def test_find_videos(tmp_path: Path) -> None:
    (tmp_path / "b.mp4").write_bytes(b"x")
    (tmp_path / "a.MKV").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    single = tmp_path / "c.avi"
    single.write_bytes(b"x")
    assert bench.find_videos([str(tmp_path)]) == [tmp_path / "a.MKV", tmp_path / "b.mp4", single]
    assert bench.find_videos([str(single)]) == [single]
    with pytest.raises(FileNotFoundError):
        bench.find_videos([str(tmp_path / "missing.mp4")])


def test_stage_stats_and_agreement() -> None:
    stats = bench.stage_stats([{"decode": float(i), "extract": 2.0 * i, "predict": 1.0} for i in range(1, 101)])
    assert stats["decode"]["p50_ms"] == 50.5 and stats["decode"]["p95_ms"] == pytest.approx(95.05, abs=0.1)
    assert stats["predict"] == {"p50_ms": 1.0, "p95_ms": 1.0}
    assert bench.agreement([1, 2, 3], [1, 2, 3]) == {"overlap": 3, "of": 3, "identical_order": True}
    assert bench.agreement([2, 1, 4], [1, 2, 3]) == {"overlap": 2, "of": 3, "identical_order": False}


def test_rss_sampler_sees_a_transient_peak() -> None:
    with bench.RssSampler(interval=0.005) as sampler, sampler.phase("burst") as phase:
        block = bytearray(200 * 1024 * 1024)  # touched: resident
        for i in range(0, len(block), 4096):
            block[i] = 1
        time.sleep(0.05)
        del block
    assert phase.rss_max_mb - phase.rss_start_mb > 150
    assert sampler.phases["burst"].as_dict()["wall_s"] > 0


def test_plot_without_matplotlib(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                 tmp_path: Path) -> None:
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: object, **kwargs: object):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert bench.plot({}, str(tmp_path / "x.png")) is False
    assert "matplotlib is not installed" in capsys.readouterr().err
