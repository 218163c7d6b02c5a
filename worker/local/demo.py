"""`videotag demo`: the whole service on this machine — local broker and S3 server, uploads, a worker,
results printed — and everything it started stopped again, on success, failure or Ctrl-C."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from models.chain import RANDOM_WEIGHTS
from models.weights import WeightsError, find_params
from worker import kafka_clients
from worker.commands.enqueue import enqueue
from worker.local.stack import LocalStack
from worker.metrics import Metrics
from worker.settings import Settings
from worker.worker import Worker

BUCKET = "videos"
# Synthetic but real H.264 clips (FFmpeg test sources) for machines without sample videos.
CLIP_SOURCES = {
    "testsrc.mp4": "testsrc2=size=480x270:rate=25",
    "mandelbrot.mp4": "mandelbrot=size=320x240:rate=25",
    "bars.mp4": "smptehdbars=size=640x360:rate=25",
    "life.mp4": "life=size=320x240:rate=25:mold=10:ratio=0.5:death_color=#C83232:life_color=#00ff00",
}


# libx264 at its fastest preset, in the pixel format every decoder reads: what every generated clip uses unless
# a caller asks for another codec.
H264 = ("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p")


def run_ffmpeg(*args: str, timeout: float | None = None) -> None:
    """The imageio-ffmpeg wheel's ffmpeg with `args`, quiet but for errors, overwriting its output."""
    try:
        import imageio_ffmpeg
    except ImportError as exc:
        raise RuntimeError("generating test clips needs imageio-ffmpeg (pip install imageio-ffmpeg)") from exc

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-y", *args], check=True, timeout=timeout)


def encode_clip(
    source: str,
    seconds: float | None,
    out: Path,
    *,
    frames: int | None = None,
    start_s: float | None = None,
    codec: tuple[str, ...] = H264,
    extra: tuple[str, ...] = (),
    timeout: float | None = None,
) -> Path:
    """A clip of an FFmpeg test source (`lavfi`): `seconds` long and/or exactly `frames` frames, from `start_s`
    into the source; H.264 unless `codec` says otherwise, `extra` output options last (e.g. `-movflags
    +faststart`). The one way the project writes a synthetic clip."""
    args = ["-f", "lavfi", "-i", source]
    if start_s is not None:
        args += ["-ss", str(start_s)]
    if seconds is not None:
        args += ["-t", str(seconds)]
    if frames is not None:
        args += ["-frames:v", str(frames)]
    run_ffmpeg(*args, *codec, *extra, str(out), timeout=timeout)
    return out


def make_clips(directory: Path, seconds: float = 4.0) -> list[Path]:
    """The demo clips, plus one broken upload."""
    clips = [encode_clip(source, seconds, directory / name) for name, source in CLIP_SOURCES.items()]
    broken = directory / "broken-upload.mp4"
    broken.write_bytes(clips[0].read_bytes()[:2048])  # an interrupted upload: shows the dead-letter path
    return [*clips, broken]


def _has_weights(settings: Settings) -> bool:
    try:
        find_params(settings.extractor_weights, "tsn")
        find_params(settings.predictor_weights, "attention_lstm")
    except WeightsError:
        return False
    return True


def _collect(
    settings: Settings, topics: list[str], expected: int, timeout_s: float
) -> list[tuple[str, dict[str, Any]]]:
    consumer = kafka_clients.reader(settings, *topics)
    seen: list[tuple[str, dict[str, Any]]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(seen) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                for record in batch:
                    seen.append((record.topic, json.loads(record.value)))
                    _print(*seen[-1])
    finally:
        consumer.close()
    return seen


def _print(topic: str, message: dict[str, Any]) -> None:
    if "tags" in message:
        tags = ", ".join(f"{t['class_name']} {t['probability']:.2f}" for t in message["tags"][:5])
        total = message["timings_ms"]["total"] / 1e3
        print(f"  {message['video_id']:<22} {total:6.1f} s  {tags}", flush=True)
    else:
        print(
            f"  {message.get('video_id')!s:<22}  DLQ    {message['error']['code']}: {message['error']['message']}",
            flush=True,
        )


def run_demo(settings: Settings, videos: list[Path], timeout_s: float = 900.0) -> int:
    if not settings.allow_random_weights and not _has_weights(settings):
        settings = replace(settings, allow_random_weights=True)
    if settings.allow_random_weights:
        print(
            "\n*** NO TRAINED WEIGHTS: running with RANDOM, UNTRAINED weights — the tags below are meaningless."
            "\n*** Get the real ones with `videotag weights download`, then run the demo again.\n",
            file=sys.stderr,
        )
    # The local S3 server accepts any credentials; give boto3 some if the environment has none.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "demo")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "demo")
    with tempfile.TemporaryDirectory(prefix="videotag-demo-") as tmp:
        if not videos:
            videos = make_clips(Path(tmp))
        with LocalStack() as stack:
            print(f"local broker {stack.bootstrap_servers}, S3 {stack.endpoint_url}", file=sys.stderr)
            stack.create_bucket(BUCKET)
            stack.create_topics([settings.input_topic], partitions=3)
            stack.create_topics([settings.output_topic, settings.dlq_topic])
            s3 = stack.s3.client()
            for path in videos:
                s3.upload_file(str(path), BUCKET, path.name)
            settings = replace(
                settings,
                bootstrap_servers=stack.bootstrap_servers,
                s3_endpoint_url=stack.endpoint_url,
                metrics_port=0,
                session_timeout_ms=6000,
                heartbeat_interval_ms=1000,
                temp_dir=tmp,
            )
            worker = Worker(settings, metrics=Metrics()).start()

            def serve() -> None:
                worker.run()
                worker.drain()

            thread = threading.Thread(target=serve, name="worker", daemon=True)
            thread.start()
            try:
                start = time.monotonic()
                enqueue(settings, settings.input_topic, [(BUCKET, p.name) for p in videos])
                print(
                    f"enqueued {len(videos)} videos; worker metrics on :{worker.health.port}/metrics"
                    if worker.health
                    else "",
                    file=sys.stderr,
                )
                print(f"results (top 5 of {settings.topk} tags):", flush=True)
                seen = _collect(settings, [settings.output_topic, settings.dlq_topic], len(videos), timeout_s)
                elapsed = time.monotonic() - start
            finally:
                worker.request_stop()
                thread.join(timeout=settings.drain_grace_s + 10)
                worker.stop()
    ok = sum(1 for topic, _ in seen if topic == settings.output_topic)
    untrained = " (random weights)" if worker.chain and worker.chain.tagger.info["weights"] == RANDOM_WEIGHTS else ""
    print(
        f"\n{ok} tagged, {len(seen) - ok} dead-lettered of {len(videos)} in {elapsed:.1f} s "
        f"({60 * len(seen) / elapsed:.1f} videos/min at seg-num {settings.seg_num}){untrained}"
    )
    return 0 if len(seen) == len(videos) else 1
