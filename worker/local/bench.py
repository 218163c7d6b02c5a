"""`videotag bench`: throughput, stage latencies, memory and fidelity of the pipeline against the original.

One run, one set of weights, the same videos:
- baseline: the original's way — decode EVERY frame with `cv2.VideoCapture.read()` into a list (converted to
  RGB, as the original reader did), pick `seg_num` of them with the original sampler, PIL-resize and crop,
  eager (dygraph) fp32, one video at a time, all `seg_num` frames through the extractor;
- ceiling: the chosen engine's extractor alone on random frames at the batch size (frames/s);
- pipeline: the chain as `worker.chain_builder.build_chain` makes it with the networks in this process behind one
  `worker.pipeline.ModelThread` (the worker puts that thread in its model process) and decoding in this
  process too (so the CPU time and peak RSS figures are those of one process, comparable with earlier runs),
  `max_inflight` video threads each calling `tagger.tag(path)`, wall time for all videos × repeat.
The ceiling fraction uses the frames the pipeline actually extracts (distinct sampled frames: a video shorter
than seg_num frames repeats frames, which are extracted once), so it measures how busy the engine is kept.
- cold start: `videotag tag` over the same videos as a fresh process, as a CLI user runs it: seconds to the
  first result (interpreter, imports, model load, first video; the export is cached by then), and the mean
  seconds between later results (warm), each as a ratio to the baseline's (its load + first video, and its
  seconds per video).

`--engine simulated --simulated-ms-per-frame X` measures the host side instead (docs/performance.md): the
worker's way (each video decoded in a child process) with a stand-in engine that sleeps X ms per frame with
the GIL released, so that decode + preprocess + the host copy are all that use the CPUs. It reports videos/s,
videos per CPU-second of the worker and its decoder children (what one core sustains: the figure that sizes
the CPUs of a GPU node) and the engine's busy fraction; no ceiling, baseline or cold start. Fetching from S3
is not included (local files).

`--long-video SECONDS` is a memory check instead: a synthetic 1080p H.264 clip of that length through the
pipeline (peak RSS), and the baseline's RSS growth per second of 1080p video, measured on a short clip
(the baseline keeps every decoded frame: running it on the long clip would need tens of GB).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from models.chain import VideoTagger
from models.labels import top_k
from models.options import Precision
from models.preprocess import normalise, scaled_size
from models.sampling import sample_indices
from worker.chain_builder import Chain, build_chain
from worker.local.demo import encode_clip
from worker.settings import Settings

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".flv", ".mpg", ".mpeg", ".m4v", ".ts")
STAGES = ("decode", "extract", "predict")
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# Other processes using more than this share of the machine's CPUs during a timed phase disturb its figures.
DISTURBED = 0.10


# ---------------------------------------------------------------------------------------------- memory, CPU


def vm_rss_mb() -> float:
    """Current resident set size (VmRSS of /proc/self/status), MB; 0 where /proc is absent."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def peak_rss_mb() -> float:
    """The process's peak RSS so far (getrusage maxrss: kB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    """CPU seconds of this process (RUSAGE_SELF) or of its children that have been waited for (RUSAGE_CHILDREN:
    the decoder processes)."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all processes, /proc/stat); 0 where unavailable."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass
class Phase:
    name: str
    rss_start_mb: float
    rss_max_mb: float = 0.0
    rss_end_mb: float = 0.0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    machine_busy_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        """`cpu_share`: this process's CPU time over all CPUs' wall time; `others_cpu_share`: the same for
        every other process on the machine (contention that the figures of this phase suffered)."""
        cpus = os.cpu_count() or 1
        capacity = self.wall_s * cpus
        others = max(0.0, self.machine_busy_s - self.cpu_s)
        return {
            "rss_start_mb": round(self.rss_start_mb, 1),
            "rss_max_mb": round(self.rss_max_mb, 1),
            "rss_end_mb": round(self.rss_end_mb, 1),
            "wall_s": round(self.wall_s, 2),
            "cpu_s": round(self.cpu_s, 2),
            "cpu_share": round(self.cpu_s / capacity, 3) if capacity else 0.0,
            "others_cpu_share": round(others / capacity, 3) if capacity else 0.0,
        }


class RssSampler:
    """Samples VmRSS every `interval` seconds on a thread and keeps each named phase's maximum."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.phases: dict[str, Phase] = {}
        self._current: Phase | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            phase = self._current
            if phase is not None:
                phase.rss_max_mb = max(phase.rss_max_mb, vm_rss_mb())

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[Phase]:
        rss = vm_rss_mb()
        phase = Phase(name, rss, rss_max_mb=rss)
        self.phases[name] = phase
        self._current = phase
        wall, cpu, busy = time.perf_counter(), cpu_seconds(), machine_busy_seconds()
        try:
            yield phase
        finally:
            phase.wall_s = time.perf_counter() - wall
            phase.cpu_s = cpu_seconds() - cpu
            phase.machine_busy_s = machine_busy_seconds() - busy
            phase.rss_end_mb = vm_rss_mb()
            phase.rss_max_mb = max(phase.rss_max_mb, phase.rss_end_mb)
            self._current = None


# ---------------------------------------------------------------------------------------------- helpers


def find_videos(items: list[str]) -> list[Path]:
    """Files as given, and the video files (by suffix) of directories, sorted."""
    videos: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            videos += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        elif path.is_file():
            videos.append(path)
        else:
            raise FileNotFoundError(f"{item}: no such file or directory")
    return videos


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else 0.0


def stage_stats(timings: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """p50/p95 (ms) of each stage over videos."""
    return {
        stage: {
            "p50_ms": round(percentile([t[stage] for t in timings], 50), 1),
            "p95_ms": round(percentile([t[stage] for t in timings], 95), 1),
        }
        for stage in STAGES
    }


def agreement(ours: list[int], reference: list[int]) -> dict[str, Any]:
    return {"overlap": len(set(ours) & set(reference)), "of": len(reference), "identical_order": ours == reference}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ---------------------------------------------------------------------------------------------- baseline


def decode_all_frames(path: Path) -> list[np.ndarray]:
    """The original reader: `read()` as many times as the container reports frames, each frame kept, RGB."""
    capture = cv2.VideoCapture(str(path))
    frames = []
    try:
        for _ in range(int(capture.get(cv2.CAP_PROP_FRAME_COUNT))):
            ok, frame = capture.read()
            if ok:
                frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    finally:
        capture.release()
    return frames


def original_preprocess(rgb: np.ndarray, short_size: int, crop_size: int) -> np.ndarray:
    """PIL bilinear resize to (341, 256)/(256, 341), centre crop, as the original (uint8 HWC RGB)."""
    image = Image.fromarray(rgb)
    size = scaled_size(image.width, image.height, short_size)
    if size is not None:
        image = image.resize(size, Image.Resampling.BILINEAR)
    array = np.asarray(image)
    top = round((array.shape[0] - crop_size) / 2.0)
    left = round((array.shape[1] - crop_size) / 2.0)
    return array[top : top + crop_size, left : left + crop_size]


def baseline_tag(tagger: VideoTagger, path: Path, seg_num: int) -> tuple[np.ndarray, dict[str, float]]:
    """(probabilities, timings ms) the original way, with the dygraph `tagger`'s engines."""
    cfg = tagger.extractor_config
    t0 = time.perf_counter()
    frames = decode_all_frames(path)
    if not frames:
        raise ValueError(f"{path}: no decodable frame")
    crops = np.stack(
        [original_preprocess(frames[i], cfg.short_size, cfg.target_size) for i in sample_indices(len(frames), seg_num)]
    )
    del frames
    t1 = time.perf_counter()
    features = np.concatenate(
        [
            tagger.extractor(normalise(crops[i : i + tagger.batch_size], cfg.image_mean, cfg.image_std))
            for i in range(0, len(crops), tagger.batch_size)
        ]
    )
    t2 = time.perf_counter()
    probs = tagger.heads[0].predictor(features[None])[0]
    t3 = time.perf_counter()
    return probs, {"decode": (t1 - t0) * 1e3, "extract": (t2 - t1) * 1e3, "predict": (t3 - t2) * 1e3}


def run_baseline(tagger: VideoTagger, videos: list[Path], seg_num: int) -> tuple[dict[str, Any], dict[str, list[int]]]:
    timings, tops = [], {}
    start = time.perf_counter()
    for path in videos:
        probs, timing = baseline_tag(tagger, path, seg_num)
        timings.append(timing)
        tops[str(path)] = [t["class_id"] for t in top_k(probs, tagger.heads[0].labels, 20)]
        print(f"  baseline {path.name}: {sum(timing.values()) / 1e3:.1f} s", file=sys.stderr, flush=True)
    wall = time.perf_counter() - start
    return {
        "videos": len(videos),
        "wall_s": round(wall, 2),
        "videos_per_min": round(len(videos) / wall * 60, 3),
        "s_per_video": round(wall / len(videos), 2),
        "first_video_s": round(sum(timings[0].values()) / 1e3, 2),
        "frames_per_s": round(len(videos) * seg_num / wall, 3),
        "stages": stage_stats(timings),
    }, tops


# ---------------------------------------------------------------------------------------------- engine, pipeline


def measure_ceiling(tagger: VideoTagger, seconds: float, min_batches: int = 2) -> dict[str, Any]:
    """Extractor frames/s on random frames at the batch size: what the engine can do with nothing else running."""
    cfg = tagger.extractor_config
    batch = (
        np.random.default_rng(0)
        .standard_normal((tagger.batch_size, 3, cfg.target_size, cfg.target_size))
        .astype(np.float32)
    )
    tagger.extractor(batch)  # warm-up (the first run creates oneDNN primitives) or, after the pipeline, no-op
    count, start, cpu = 0, time.perf_counter(), cpu_seconds()
    while count < min_batches or time.perf_counter() - start < seconds:
        tagger.extractor(batch)
        count += 1
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    return {
        "batch_size": tagger.batch_size,
        "batches": count,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "frames_per_s": round(count * tagger.batch_size / wall, 3),
        "frames_per_cpu_s": round(count * tagger.batch_size / cpu, 3),
    }


def run_pipeline(
    tagger: VideoTagger, videos: list[Path], repeat: int, max_inflight: int, seg_num: int
) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """All videos × repeat through the chain (built with its model thread) with `max_inflight` concurrent
    `tag` calls; the CPU of decoder children (a chain built with decoders in children) counted apart."""
    jobs = [path for _ in range(repeat) for path in videos]
    engine: Any = getattr(tagger.extractor, "engine", tagger.extractor)  # the one a ThreadEngine runs
    busy = getattr(engine, "busy_s", None)  # a simulated engine counts its busy time
    start, cpu, children = time.perf_counter(), cpu_seconds(), cpu_seconds(resource.RUSAGE_CHILDREN)
    with ThreadPoolExecutor(max_workers=max_inflight, thread_name_prefix="video") as pool:
        results = list(pool.map(tagger.tag, jobs))
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    children = cpu_seconds(resource.RUSAGE_CHILDREN) - children
    tops: dict[str, list[int]] = {}
    consistent = True
    for path, result in zip(jobs, results, strict=True):
        top = [t["class_id"] for t in result.tags]
        consistent &= tops.setdefault(str(path), top) == top
    distinct = sum(len(r.video.crops) for r in results)
    return {
        "videos": len(jobs),
        "wall_s": round(wall, 2),
        "videos_per_min": round(len(jobs) / wall * 60, 3),
        "frames_per_s": round(len(jobs) * seg_num / wall, 3),
        "extracted_frames_per_s": round(distinct / wall, 3),
        "extracted_frames": distinct,
        "cpu_s": round(cpu, 2),
        "extracted_frames_per_cpu_s": round(distinct / cpu, 3),
        "repeats_identical": consistent,
        "stages": stage_stats([r.timings_ms for r in results]),
        "children_cpu_s": round(children, 2),
        **({"engine_busy_s": round(engine.busy_s - busy, 2)} if busy is not None else {}),
    }, tops


# ---------------------------------------------------------------------------------------------- building


def build(settings: Settings, threads: int | None, decoders: bool = False) -> Chain:
    """The chain under test, as the worker builds it but with its model thread in this process; decoding in this
    process too, or with `decoders` in child processes as the worker does."""
    return build_chain(
        replace(
            settings,
            cpu_threads=threads or settings.cpu_threads,
            decode_timeout_s=settings.decode_timeout_s if decoders else 0,
        ),
        "thread",
    )


def build_baseline(settings: Settings) -> Chain:
    """The original's configuration: eager fp32, faithful preprocessing (its engines are called directly)."""
    return build_chain(
        replace(
            settings,
            engine="dygraph",
            precision="fp32",
            preprocess="faithful",
            cpu_threads=0,
            tensorrt=False,
            decode_timeout_s=0,
        ),
        "inline",
    )


def environment(settings: Settings, threads: int | None) -> dict[str, Any]:
    import paddle

    from models.inference import default_threads

    return {
        "engine": settings.engine,
        "precision": settings.precision,
        "preprocess": settings.preprocess,
        "batch_size": settings.batch_size,
        "max_inflight": settings.max_inflight,
        "seg_num": settings.seg_num,
        "layers": settings.layers,
        "device": settings.device,
        "threads": threads or default_threads(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "paddle": paddle.__version__,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


# ---------------------------------------------------------------------------------------------- cold start


def tag_environment(settings: Settings) -> dict[str, str]:
    """The environment that gives a `videotag tag` child this bench's model settings (VIDEOTAG_*)."""
    from worker.cli import MODEL_SETTINGS

    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDEOTAG_")}
    for name in MODEL_SETTINGS:
        value = getattr(settings, name)
        if value is None or value == []:
            continue
        if name == "predictors":
            value = json.dumps([{k: v for k, v in vars(spec).items() if v is not None} for spec in value])
        env[f"VIDEOTAG_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def cold_start(settings: Settings, videos: list[Path], timeout_s: float = 3600.0) -> dict[str, Any]:
    """`videotag tag VIDEO...` as a fresh process: seconds from its start to its first result line (cold: the
    interpreter, imports, model load and the first video) and mean seconds between later lines (warm), and
    each video's top-20 class ids (from its first result)."""
    command = [sys.executable, "-m", "worker.cli", "tag", *map(str, videos)]
    arrivals: list[float] = []
    tops: dict[str, list[int]] = {}
    with tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, env=tag_environment(settings))
        assert child.stdout is not None
        watchdog = threading.Timer(timeout_s, child.kill)  # a child that hangs before its output ends
        watchdog.start()
        try:
            for line in child.stdout:
                arrivals.append(time.perf_counter() - start)
                record = json.loads(line)
                if "tags" in record:
                    tops.setdefault(record["path"], [t["class_id"] for t in record["tags"]])
            code = child.wait()
        finally:
            watchdog.cancel()
            if child.poll() is None:
                child.kill()
                child.wait()
        if code != 0 or not arrivals:
            stderr.seek(0)
            tail = stderr.read().decode(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"cold start: `videotag tag` exited {code}: {' / '.join(tail)}")
    warm = (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1) if len(arrivals) > 1 else None
    return {
        "videos": len(arrivals),
        "cold_s": round(arrivals[0], 2),
        "warm_s_per_video": None if warm is None else round(warm, 2),
        "process_s": round(time.perf_counter() - start, 2),
        "tops": tops,
    }


def cold_jobs(videos: list[Path], repeat: int) -> list[Path]:
    """The videos × repeat, at least two results: one video (say a long one) is tagged twice, so that the
    second gives the warm figure."""
    jobs = [path for _ in range(repeat) for path in videos]
    return jobs * 2 if len(jobs) == 1 else jobs


def run_cold_starts(
    settings: Settings,
    options: BenchOptions,
    baseline: dict[str, Any] | None,
    baseline_tops: dict[str, list[int]],
    baseline_load_s: float,
) -> dict[str, dict[str, Any]]:
    """A cold `videotag tag` per precision (the bench's own first), each with its ratios to the baseline and its
    top-20 agreement with it; a run that fails says why in its entry."""
    runs: dict[str, dict[str, Any]] = {}
    for precision in dict.fromkeys((settings.precision, *options.cold_precisions)):
        print(f"cold start: `videotag tag` as a fresh process, {precision}", file=sys.stderr, flush=True)
        try:
            run = cold_start(replace(settings, precision=precision), cold_jobs(options.videos, options.repeat))
        except RuntimeError as exc:  # the other figures stand; say why this one is missing
            runs[precision] = {"error": str(exc)}
            continue
        if baseline is not None:
            run["ratios"] = cold_ratios(run, baseline, baseline_load_s)
            run["agreement"] = {
                path: agreement(run["tops"][path], top) for path, top in baseline_tops.items() if path in run["tops"]
            }
        runs[precision] = run
    return runs


def cold_ratios(cold: dict[str, Any], baseline: dict[str, Any], baseline_load_s: float) -> dict[str, float]:
    """How many times faster than the baseline a CLI user gets a first result (against the baseline's load
    and first video, in-process: no interpreter start counted for it) and each later one."""
    ratios = {"cold_vs_baseline": round((baseline_load_s + baseline["first_video_s"]) / cold["cold_s"], 3)}
    if cold["warm_s_per_video"]:
        ratios["warm_vs_baseline"] = round(baseline["s_per_video"] / cold["warm_s_per_video"], 3)
    return ratios


# ---------------------------------------------------------------------------------------------- host side


def run_host_side(settings: Settings, options: BenchOptions) -> dict[str, Any]:
    """The pipeline with the simulated engine and decoder processes: what the host side sustains."""
    report: dict[str, Any] = {
        "config": environment(settings, options.threads),
        "videos": [str(p) for p in options.videos],
        "repeat": options.repeat,
    }
    report["config"]["simulated_ms_per_frame"] = settings.simulated_ms_per_frame
    with RssSampler() as sampler:
        with sampler.phase("load"):
            chain = build(replace(settings, engine="simulated"), options.threads, decoders=True)
        report["config"]["weights"] = chain.tagger.info["weights"]
        print(
            f"host side: {len(options.videos)} videos × {options.repeat}, {settings.max_inflight} in flight, "
            f"simulated engine {settings.simulated_ms_per_frame:g} ms/frame",
            file=sys.stderr,
            flush=True,
        )
        try:
            with sampler.phase("pipeline"):
                pipeline, _ = run_pipeline(
                    chain.tagger, options.videos, options.repeat, settings.max_inflight, settings.seg_num
                )
        finally:
            chain.close()
    report["pipeline"] = pipeline
    report["host_side"] = host_side_figures(pipeline)
    report["memory"] = {
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "phases": {name: phase.as_dict() for name, phase in sampler.phases.items()},
    }
    report["config"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    report["disturbed_phases"] = [
        name
        for name, phase in report["memory"]["phases"].items()
        if name == "pipeline" and phase["others_cpu_share"] > DISTURBED
    ]
    return report


def host_side_figures(pipeline: dict[str, Any]) -> dict[str, float]:
    """videos/s; videos per CPU-second of the worker and its decoder children (= per core kept busy); the CPU
    seconds per video; how busy the simulated engine was (1.0: the host side kept it saturated)."""
    wall, videos = pipeline["wall_s"], pipeline["videos"]
    cpu = pipeline["cpu_s"] + pipeline["children_cpu_s"]
    return {
        "videos_per_s": round(videos / wall, 3),
        "cpu_s_per_video": round(cpu / videos, 3),
        "videos_per_cpu_s": round(videos / cpu, 3) if cpu else 0.0,
        "worker_cpu_s": pipeline["cpu_s"],
        "decoder_cpu_s": pipeline["children_cpu_s"],
        "cores_busy": round(cpu / wall, 2),
        "engine_busy": round(pipeline.get("engine_busy_s", 0.0) / wall, 3),
    }


# ---------------------------------------------------------------------------------------------- the bench


@dataclass
class BenchOptions:
    videos: list[Path]
    repeat: int = 1
    skip_baseline: bool = False
    ceiling_seconds: float = 20.0
    threads: int | None = None
    cold_start: bool = True
    cold_precisions: tuple[Precision, ...] = ()  # cold runs in these precisions too, side by side
    extra: dict[str, Any] = field(default_factory=dict)


def run_bench(settings: Settings, options: BenchOptions) -> dict[str, Any]:
    report: dict[str, Any] = {
        "config": environment(settings, options.threads),
        "videos": [str(p) for p in options.videos],
        "repeat": options.repeat,
    }
    seg_num = settings.seg_num
    with RssSampler() as sampler:
        with sampler.phase("load"):
            chain = build(settings, options.threads)
            tagger = chain.tagger
        report["config"]["weights"] = tagger.info["weights"]
        print(
            f"ceiling: {settings.engine} {settings.precision} extractor, batch {settings.batch_size}",
            file=sys.stderr,
            flush=True,
        )
        with sampler.phase("ceiling"):
            before = measure_ceiling(tagger, options.ceiling_seconds / 2)
        print(
            f"pipeline: {len(options.videos)} videos × {options.repeat}, {settings.max_inflight} in flight",
            file=sys.stderr,
            flush=True,
        )
        with sampler.phase("pipeline"):
            report["pipeline"], pipeline_tops = run_pipeline(
                tagger, options.videos, options.repeat, settings.max_inflight, seg_num
            )
        report["memory"] = {"peak_rss_after_pipeline_mb": round(peak_rss_mb(), 1)}
        with sampler.phase("ceiling_after"):  # other load on the machine varies: bracket the pipeline
            after = measure_ceiling(tagger, options.ceiling_seconds / 2)
        frames = (before["batches"] + after["batches"]) * before["batch_size"]
        cpu = before["cpu_s"] + after["cpu_s"]
        report["ceiling"] = {
            **before,
            "batches": before["batches"] + after["batches"],
            "wall_s": round(before["wall_s"] + after["wall_s"], 2),
            "cpu_s": round(cpu, 2),
            "frames_per_s": round((before["frames_per_s"] + after["frames_per_s"]) / 2, 3),
            "frames_per_cpu_s": round(frames / cpu, 3),
            "before_frames_per_s": before["frames_per_s"],
            "after_frames_per_s": after["frames_per_s"],
        }
        chain.close()
        del tagger, chain
        baseline_tops: dict[str, list[int]] = {}
        if not options.skip_baseline:
            print("baseline: original-style reader, dygraph fp32, one video at a time", file=sys.stderr, flush=True)
            with sampler.phase("baseline_load"):
                baseline_tagger = build_baseline(settings).tagger
            with sampler.phase("baseline"):
                report["baseline"], baseline_tops = run_baseline(baseline_tagger, options.videos, seg_num)
            del baseline_tagger
            report["agreement"] = {path: agreement(pipeline_tops[path], baseline_tops[path]) for path in baseline_tops}
        if options.cold_start:
            with sampler.phase("cold_start"):
                runs = run_cold_starts(
                    settings,
                    options,
                    report.get("baseline"),
                    baseline_tops,
                    sampler.phases["baseline_load"].wall_s if "baseline" in report else 0.0,
                )
            report["cold_starts"] = runs
            own = runs[settings.precision]
            if "error" in own:
                report["cold_start_error"] = own["error"]
            else:
                report["cold_start"] = own
    pipeline, ceiling = report["pipeline"], report["ceiling"]
    # Wall-clock fraction (idle waits count against the pipeline) and, robust to other load on the machine,
    # the fraction of frames per CPU-second of this process (idle waits do not count).
    ratios = {
        "pipeline_vs_ceiling": round(pipeline["extracted_frames_per_s"] / ceiling["frames_per_s"], 3),
        "pipeline_vs_ceiling_cpu": round(pipeline["extracted_frames_per_cpu_s"] / ceiling["frames_per_cpu_s"], 3),
    }
    if "baseline" in report:
        ratios["pipeline_vs_baseline"] = round(pipeline["videos_per_min"] / report["baseline"]["videos_per_min"], 3)
        if "cold_start" in report:
            ratios.update(report["cold_start"]["ratios"])
    report["ratios"] = ratios
    report["memory"]["peak_rss_mb"] = round(peak_rss_mb(), 1)
    report["memory"]["phases"] = {name: phase.as_dict() for name, phase in sampler.phases.items()}
    report["config"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    report["disturbed_phases"] = [
        name
        for name, phase in report["memory"]["phases"].items()
        if name in ("ceiling", "pipeline", "ceiling_after", "baseline") and phase["others_cpu_share"] > DISTURBED
    ]
    return report


# ---------------------------------------------------------------------------------------------- long video


# The long-video clip: synthetic 1080p H.264 (worker/local/demo.py encode_clip).
LONG_VIDEO_SOURCE = "testsrc2=size=1920x1080:rate=25"


def run_long_video(
    settings: Settings, seconds: float, baseline_seconds: float, threads: int | None, work_dir: Path | None = None
) -> dict[str, Any]:
    """Peak RSS of the pipeline on a `seconds`-long 1080p clip; the baseline's RSS growth per second of video."""
    report: dict[str, Any] = {"config": environment(settings, threads), "long_video": {}}
    out = report["long_video"]
    with tempfile.TemporaryDirectory(prefix="videotag-bench-", dir=work_dir) as tmp, RssSampler() as sampler:
        start = time.perf_counter()
        clip = encode_clip(LONG_VIDEO_SOURCE, seconds, Path(tmp) / "long.mp4")
        out.update(
            {
                "seconds": seconds,
                "resolution": "1920x1080",
                "fps": 25,
                "clip_mb": round(clip.stat().st_size / 2**20, 1),
                "generate_s": round(time.perf_counter() - start, 1),
            }
        )
        print(f"long video: {seconds:g} s of 1080p generated in {out['generate_s']} s", file=sys.stderr, flush=True)
        with sampler.phase("load"):
            chain = build(settings, threads)
        report["config"]["weights"] = chain.tagger.info["weights"]
        with sampler.phase("pipeline"):
            pipeline, _ = run_pipeline(chain.tagger, [clip], 1, settings.max_inflight, settings.seg_num)
        chain.close()
        del chain
        out["pipeline"] = pipeline
        out["pipeline_peak_rss_mb"] = round(peak_rss_mb(), 1)  # the whole process so far: load included
        clip.unlink()
        short = encode_clip(LONG_VIDEO_SOURCE, baseline_seconds, Path(tmp) / "short.mp4")
        with sampler.phase("baseline_decode"):
            frames = decode_all_frames(short)
            held = vm_rss_mb()
        count = len(frames)
        del frames
        phase = sampler.phases["baseline_decode"]
        growth = (held - phase.rss_start_mb) / baseline_seconds
        out["baseline"] = {
            "clip_seconds": baseline_seconds,
            "frames_kept": count,
            "rss_growth_mb": round(held - phase.rss_start_mb, 1),
            "rss_growth_mb_per_s": round(growth, 1),
            "extrapolated_rss_growth_gb": round(growth * seconds / 1024, 1),
            "note": "the baseline keeps every decoded RGB frame; not run on the long clip",
        }
        report["memory"] = {
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "phases": {name: p.as_dict() for name, p in sampler.phases.items()},
        }
    report["config"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return report


# ---------------------------------------------------------------------------------------------- output


def format_report(report: dict[str, Any]) -> str:
    lines: list[str] = []
    cfg = report["config"]
    lines.append(
        f"videotag bench — {cfg['engine']} {cfg['precision']} {cfg['preprocess']}, batch {cfg['batch_size']}, "
        f"{cfg['max_inflight']} in flight, seg_num {cfg['seg_num']}, ResNet-{cfg['layers']}, "
        f"{cfg['threads']} threads, {cfg['cpu']}, Paddle {cfg['paddle']}"
    )
    lines.append(f"weights {cfg.get('weights', '?')}; load average {cfg['loadavg_start']} → {cfg.get('loadavg_end')}")
    if "long_video" in report:
        lv = report["long_video"]
        p = lv["pipeline"]
        lines.append(
            f"long video: {lv['seconds']:g} s 1080p ({lv['clip_mb']} MB), pipeline wall {p['wall_s']} s, "
            f"stages p50 decode {p['stages']['decode']['p50_ms'] / 1e3:.1f} s, "
            f"extract {p['stages']['extract']['p50_ms'] / 1e3:.1f} s"
        )
        lines.append(f"pipeline peak RSS: {lv['pipeline_peak_rss_mb']:.0f} MB (process peak incl. model load)")
        b = lv["baseline"]
        lines.append(
            f"baseline RSS growth: {b['rss_growth_mb_per_s']:.0f} MB per second of 1080p "
            f"(measured on {b['clip_seconds']:g} s), {b['extrapolated_rss_growth_gb']} GB for "
            f"{lv['seconds']:g} s"
        )
    elif "host_side" in report:
        h, p = report["host_side"], report["pipeline"]
        lines.append(
            f"host side (simulated engine, {cfg['simulated_ms_per_frame']:g} ms/frame; decoders in child "
            f"processes; local files, no S3 fetch): {p['videos']} videos in {p['wall_s']} s"
        )
        lines.append(
            f"videos/s: {h['videos_per_s']:.3f}; per core: {h['videos_per_cpu_s']:.3f} videos per CPU-second "
            f"({h['cpu_s_per_video']:.2f} CPU-s per video: worker {h['worker_cpu_s']} s, decoders "
            f"{h['decoder_cpu_s']} s in all); cores busy {h['cores_busy']}; engine busy "
            f"{h['engine_busy']:.0%}"
        )
        s = p["stages"]
        lines.append(
            "stages p50/p95 ms: " + ", ".join(f"{st} {s[st]['p50_ms']:.0f}/{s[st]['p95_ms']:.0f}" for st in STAGES)
        )
    else:
        header = (
            f"{'':10} {'videos/min':>10} {'frames/s':>9} {'decode p50/p95 ms':>19} "
            f"{'extract p50/p95 ms':>20} {'predict p50/p95 ms':>20} {'RSS max MB':>10}"
        )
        lines.append(header)
        phases = report["memory"]["phases"]
        for name in ("baseline", "pipeline"):
            if name not in report:
                continue
            r = report[name]
            s = r["stages"]
            stage_cols = " ".join(
                "{:>{}}".format(f"{s[st]['p50_ms']:.0f}/{s[st]['p95_ms']:.0f}", w)
                for st, w in (("decode", 19), ("extract", 20), ("predict", 20))
            )
            lines.append(
                f"{name:10} {r['videos_per_min']:>10.3f} {r['frames_per_s']:>9.2f} {stage_cols} "
                f"{phases[name]['rss_max_mb']:>10.0f}"
            )
        c = report["ceiling"]
        lines.append(
            f"{'ceiling':10} {'':>10} {c['frames_per_s']:>9.2f}   (extractor alone, batch {c['batch_size']}, "
            f"mean of {c['before_frames_per_s']:.2f} before and {c['after_frames_per_s']:.2f} after "
            f"the pipeline, RSS max {phases['ceiling']['rss_max_mb']:.0f} MB)"
        )
        p = report["pipeline"]
        lines.append(
            f"pipeline extracted {p['extracted_frames']} distinct frames: {p['extracted_frames_per_s']:.2f} "
            f"frames/s; repeats identical: {'yes' if p['repeats_identical'] else 'NO'}"
        )
        ratios = report["ratios"]
        if "pipeline_vs_baseline" in ratios:
            lines.append(f"pipeline/baseline: {ratios['pipeline_vs_baseline']:.2f}x")
        lines.append(
            f"pipeline/ceiling: {ratios['pipeline_vs_ceiling'] * 100:.1f}% (wall clock), "
            f"{ratios['pipeline_vs_ceiling_cpu'] * 100:.1f}% (frames per CPU-second of this process)"
        )
        for path, a in report.get("agreement", {}).items():
            lines.append(
                f"top-20 vs baseline, {Path(path).name}: {a['overlap']}/{a['of']} overlap, identical order: "
                f"{'yes' if a['identical_order'] else 'no'}"
            )
        for precision, c in report.get("cold_starts", {}).items():
            if "error" in c:
                lines.append(f"cold start, {precision}: not measured: {c['error']}")
                continue
            warm = f"{c['warm_s_per_video']} s" if c["warm_s_per_video"] is not None else "n/a (one video)"
            line = (
                f"cold start, {precision} (`videotag tag`, fresh process, export cached): first result "
                f"{c['cold_s']} s, then {warm} per video"
            )
            if "ratios" in c:
                line += f"; vs baseline: {c['ratios']['cold_vs_baseline']:.2f}x cold"
                if "warm_vs_baseline" in c["ratios"]:
                    line += f", {c['ratios']['warm_vs_baseline']:.2f}x warm"
            agreed = [
                f"{Path(path).name} {a['overlap']}/{a['of']}{'' if a['identical_order'] else ' (order differs)'}"
                for path, a in c.get("agreement", {}).items()
            ]
            if agreed:
                line += f"; top-20 vs baseline: {', '.join(agreed)}"
            lines.append(line)
        lines.append(
            f"peak RSS: {report['memory']['peak_rss_mb']:.0f} MB (process), "
            f"{report['memory']['peak_rss_after_pipeline_mb']:.0f} MB after the pipeline phase"
        )
    phases = report["memory"]["phases"]
    if report.get("disturbed_phases"):
        lines.append(
            f"WARNING: other processes used more than {DISTURBED:.0%} of the CPUs during "
            f"{', '.join(report['disturbed_phases'])}: those figures are disturbed (see CPU share below)"
        )
    lines.append("RSS max per phase (MB): " + ", ".join(f"{n} {p['rss_max_mb']:.0f}" for n, p in phases.items()))
    lines.append(
        "CPU share per phase, this process / other processes: "
        + ", ".join(f"{n} {p['cpu_share']:.0%}/{p['others_cpu_share']:.0%}" for n, p in phases.items())
    )
    return "\n".join(lines)


def plot(report: dict[str, Any], path: str) -> bool:
    """Throughput and stage latencies as a PNG; False (with a message) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"--plot {path}: matplotlib is not installed (pip install matplotlib); no plot written", file=sys.stderr)
        return False
    runs = [name for name in ("baseline", "pipeline") if name in report]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = [*runs, "ceiling"]
    values = [report[n]["frames_per_s"] for n in runs] + [report["ceiling"]["frames_per_s"]]
    left.bar(names, values, color=["#999", "#2a7", "#27a"][-len(names) :])
    left.set_ylabel("frames/s")
    left.set_title("throughput")
    width = 0.8 / len(runs)
    for i, name in enumerate(runs):
        stages = report[name]["stages"]
        xs = [k + i * width for k in range(len(STAGES))]
        right.bar(xs, [stages[s]["p50_ms"] / 1e3 for s in STAGES], width, label=f"{name} p50")
        right.scatter(xs, [stages[s]["p95_ms"] / 1e3 for s in STAGES], marker="_", s=200, color="k")
    right.set_xticks([k + width * (len(runs) - 1) / 2 for k in range(len(STAGES))], STAGES)
    right.set_ylabel("seconds per video (bar p50, tick p95)")
    right.set_title("stage latency")
    right.legend()
    cfg = report["config"]
    fig.suptitle(f"{cfg['engine']} {cfg['precision']} {cfg['preprocess']}, seg_num {cfg['seg_num']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def bench_command(args: argparse.Namespace, settings: Settings) -> int:
    """`videotag bench`; returns the exit status."""
    from models.inference import EngineOptionsError
    from models.labels import LabelsError
    from models.weights import WeightsError

    if args.repeat < 1:
        print("videotag bench: --repeat must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    threads = settings.cpu_threads or None  # the `cpu_threads` setting (--cpu-threads); 0 = from the cgroup
    try:
        if args.long_video is not None:
            if args.long_video <= 0 or args.baseline_clip <= 0:
                print(
                    "videotag bench: --long-video and --baseline-clip take a positive number of seconds",
                    file=sys.stderr,
                )
                return EXIT_USAGE
            report = run_long_video(settings, args.long_video, args.baseline_clip, threads)
        else:
            if not args.videos:
                print("videotag bench: no videos (--videos DIR_OR_FILE ...) and no --long-video", file=sys.stderr)
                return EXIT_USAGE
            videos = find_videos(args.videos)
            if not videos:
                print(f"videotag bench: no video files in {args.videos}", file=sys.stderr)
                return EXIT_USAGE
            options = BenchOptions(
                videos,
                args.repeat,
                args.skip_baseline,
                args.ceiling_seconds,
                threads,
                cold_start=not args.skip_cold_start,
                cold_precisions=tuple(args.cold_precisions or ()),
            )
            report = (
                run_host_side(settings, options) if settings.engine == "simulated" else run_bench(settings, options)
            )
    except (WeightsError, LabelsError, EngineOptionsError, FileNotFoundError, ValueError) as exc:
        print(f"videotag bench: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(format_report(report))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    if args.plot and "long_video" not in report:
        plot(report, args.plot)
    return EXIT_OK if all(math.isfinite(v) for v in report.get("ratios", {}).values()) else EXIT_FAILED
