"""`videotag bench`: one real (tiny) run as a subprocess, the long-video memory mode, and the helpers."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from tests.model_fixtures import LABELS, VIDEOS, require_shared, run_cli
from worker.local import bench

RANDOM_TINY = (
    "--seg-num",
    "4",
    "--allow-random-weights",
    "--label-file",
    str(LABELS),
    "--layers",
    "50",
    "--batch-size",
    "4",
    "--ceiling-seconds",
    "1",
)


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_bench_reports_every_figure(tmp_path: Path) -> None:
    require_shared()
    video = VIDEOS / "carphone_pristine.mp4"
    out = tmp_path / "bench.json"
    done = run_cli(
        "bench",
        "--videos",
        str(video),
        "--repeat",
        "1",
        *RANDOM_TINY,
        "--model-cache-dir",
        str(tmp_path / "cache"),
        "--json",
        str(out),
        "--plot",
        str(tmp_path / "b.png"),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout
    for needle in (
        "videos/min",
        "frames/s",
        "decode p50/p95",
        "extract p50/p95",
        "predict p50/p95",
        "baseline",
        "pipeline",
        "ceiling",
        "pipeline/baseline:",
        "pipeline/ceiling:",
        "peak RSS",
        "RSS max per phase",
        "top-20 vs baseline, carphone_pristine.mp4: ",
    ):
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
    # Cold start: a fresh `videotag tag` process, compared with the baseline's load + first video.
    assert "cold start, fp32 (`videotag tag`" in table
    assert _positive(report["cold_start"]["cold_s"]) and report["cold_start"]["videos"] == 2
    assert _positive(report["cold_start"]["warm_s_per_video"])  # one video is tagged twice: the second is warm
    assert _positive(report["ratios"]["cold_vs_baseline"]) and _positive(report["ratios"]["warm_vs_baseline"])
    assert report["cold_start"]["agreement"][str(video)]["overlap"] == 20  # fp32: the baseline's tags


@pytest.mark.slow
def test_bench_simulated_engine_reports_the_host_side(tmp_path: Path) -> None:
    require_shared()
    video = VIDEOS / "carphone_pristine.mp4"
    out = tmp_path / "host.json"
    done = run_cli(
        "bench",
        "--engine",
        "simulated",
        "--simulated-ms-per-frame",
        "20",
        "--videos",
        str(video),
        "--repeat",
        "3",
        "--seg-num",
        "8",
        "--allow-random-weights",
        "--label-file",
        str(LABELS),
        "--json",
        str(out),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "host side (simulated engine, 20 ms/frame" in done.stdout and "videos per CPU-second" in done.stdout
    report = json.loads(out.read_text(encoding="utf-8"))
    host, pipeline = report["host_side"], report["pipeline"]
    assert pipeline["videos"] == 3 and "baseline" not in report and "ceiling" not in report
    for name in ("videos_per_s", "videos_per_cpu_s", "cpu_s_per_video", "decoder_cpu_s", "worker_cpu_s"):
        assert _positive(host[name]), name
    # The engine slept 20 ms for each distinct frame it was given (8 per video), the GIL released meanwhile.
    assert pipeline["engine_busy_s"] >= 0.020 * pipeline["extracted_frames"] * 0.95
    assert 0 < host["engine_busy"] <= 1
    assert host["videos_per_cpu_s"] == pytest.approx(3 / (host["worker_cpu_s"] + host["decoder_cpu_s"]), rel=0.02)


def test_cold_ratios_compare_with_the_baseline_as_a_cli_user_would() -> None:
    cold = {"cold_s": 10.0, "warm_s_per_video": 2.0}
    baseline = {"first_video_s": 170.0, "s_per_video": 171.0}
    assert bench.cold_ratios(cold, baseline, baseline_load_s=30.0) == {
        "cold_vs_baseline": 20.0,
        "warm_vs_baseline": 85.5,
    }
    assert bench.cold_ratios({**cold, "warm_s_per_video": None}, baseline, 30.0) == {"cold_vs_baseline": 20.0}


def test_one_video_is_tagged_twice_cold_so_that_the_second_is_warm() -> None:
    a, b = Path("a.mp4"), Path("b.mp4")
    assert bench.cold_jobs([a], 1) == [a, a]
    assert bench.cold_jobs([a], 3) == [a, a, a]
    assert bench.cold_jobs([a, b], 1) == [a, b]


def test_the_cold_tag_process_gets_the_bench_settings() -> None:
    from models.heads import HeadSpec
    from worker.cli import MODEL_SETTINGS
    from worker.settings import load_settings

    settings = load_settings(
        overrides={
            "seg_num": 4,
            "engine": "dygraph",
            "allow_random_weights": True,
            "layers": 50,
            "cpu_threads": 2,
            "model_cache_dir": "/tmp/x",
            "predictors": [{"name": "a"}, {"name": "b", "topk": 3}],
        }
    )
    env = bench.tag_environment(settings)
    child = load_settings(env=env)
    for name in MODEL_SETTINGS:
        assert getattr(child, name) == getattr(settings, name), name
    assert child.predictors == [HeadSpec("a"), HeadSpec("b", topk=3)]


@pytest.mark.slow
def test_bench_long_video_memory_mode(tmp_path: Path) -> None:
    require_shared()  # the labels
    out = tmp_path / "long.json"
    done = run_cli(
        "bench",
        "--long-video",
        "2",
        "--baseline-clip",
        "1",
        *RANDOM_TINY,
        "--model-cache-dir",
        str(tmp_path / "cache"),
        "--json",
        str(out),
        timeout=600,
    )
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


def test_plot_without_matplotlib(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: object, **kwargs: object):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert bench.plot({}, str(tmp_path / "x.png")) is False
    assert "matplotlib is not installed" in capsys.readouterr().err


def test_a_cold_start_that_fails_or_hangs_says_why_and_waits_no_longer(tmp_path: Path) -> None:
    from worker.settings import load_settings

    settings = load_settings(overrides={"extractor_weights": str(tmp_path / "none"), "seg_num": 4})
    with pytest.raises(RuntimeError, match=r"`videotag tag` exited 2: .*tsn"):
        bench.cold_start(settings, [VIDEOS / "carphone_pristine.mp4"])
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="exited -9"):
        bench.cold_start(settings, [VIDEOS / "carphone_pristine.mp4"], timeout_s=0.5)
    assert time.monotonic() - start < 30
