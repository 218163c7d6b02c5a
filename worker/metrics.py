"""Prometheus metrics of one worker process, in a registry of their own (tests run several workers)."""

from __future__ import annotations

import platform

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

# Videos take seconds (GPU, small seg-num) to minutes (CPU, 300 frames): buckets span both.
SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200, 1800)
BYTES_BUCKETS = tuple(float(2**p) for p in range(16, 34, 2))  # 64 KiB … 8 GiB
STAGES = ("fetch", "decode", "extract", "predict", "store_features", "publish")


class Metrics:
    """Every metric the worker exports; names are the contract with dashboards, alerts and autoscaling."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages_consumed = Counter(
            "videotag_messages_consumed", "Kafka messages taken from the input topic.", registry=r
        )
        self.videos_processed = Counter(
            "videotag_videos_processed",
            "Videos finished, by outcome: ok (result published) or dlq (dead-lettered).",
            ["status"],
            registry=r,
        )
        self.failures = Counter(
            "videotag_failures", "Failures by error code, transient retries included.", ["reason"], registry=r
        )
        self.retries_published = Counter(
            "videotag_retries_published",
            "Requests sent to the retry topic after a fault of their object, by error code.",
            ["reason"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "videotag_stage_seconds",
            "Time spent per video in each stage.",
            ["stage"],
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.end_to_end_seconds = Histogram(
            "videotag_end_to_end_seconds",
            "From the request's Kafka timestamp to its result or DLQ record being acknowledged.",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.inflight_videos = Gauge("videotag_inflight_videos", "Videos taken but not yet finished.", registry=r)
        self.consumer_lag = Gauge(
            "videotag_consumer_lag",
            "Messages behind the partition's high watermark (fetch high watermark minus position).",
            ["topic", "partition"],
            registry=r,
        )
        self.rebalances = Counter(
            "videotag_rebalances",
            "Consumer-group rebalances this worker went through: assigned (one completed) or lost (evicted).",
            ["kind"],
            registry=r,
        )
        self.assigned_partitions = Gauge(
            "videotag_assigned_partitions", "Input-topic partitions assigned to this worker.", registry=r
        )
        self.group_generation = Gauge(
            "videotag_group_generation",
            "The consumer group's generation at this worker's last assignment: unchanged across a static member's "
            "restart (no rebalance), one higher for every rebalance.",
            registry=r,
        )
        self.input_partitions = Gauge(
            "videotag_input_partitions", "Partitions of the input topic: the most workers that can be busy.", registry=r
        )
        self.video_bytes = Histogram(
            "videotag_video_bytes", "Size of fetched video objects.", buckets=BYTES_BUCKETS, registry=r
        )
        self.frames_decoded = Counter("videotag_frames_decoded", "Frames decoded (grabbed) from videos.", registry=r)
        self.model_info = Info("videotag_model", "The loaded model chain and its weights.", registry=r)
        self.build_info = Info("videotag_build", "Worker build.", registry=r)
        self.ready = Gauge("videotag_ready", "1 when the worker reports ready on /readyz.", registry=r)
        self.committed_offset = Gauge(
            "videotag_committed_offset",
            "The last offset this worker committed for each partition it owns (the next one to read): an alert "
            "watches it move while the partition has lag.",
            ["topic", "partition"],
            registry=r,
        )
        self.breaker_open = Gauge(
            "videotag_breaker_open",
            "1 while the circuit breaker holds intake for a self-test, and once a failed self-test found the worker "
            "broken (it stops).",
            registry=r,
        )
        self.breaker_trips = Counter(
            "videotag_breaker_trips",
            "Self-tests the circuit breaker ran after breaker_threshold systemic failures in a row.",
            registry=r,
        )
        self.model_process_up = Gauge(
            "videotag_model_process_up",
            "1 while the model process (the networks) is up, 0 while it is restarted.",
            registry=r,
        )
        self.model_process_restarts = Counter(
            "videotag_model_process_restarts", "Times the model process died and was started again.", registry=r
        )
        for stage in STAGES:
            self.stage_seconds.labels(stage=stage)
        for status in ("ok", "dlq"):
            self.videos_processed.labels(status=status)
        for kind in ("assigned", "lost"):
            self.rebalances.labels(kind=kind)

    def set_build_info(self, version: str) -> None:
        self.build_info.info({"version": version, "python": platform.python_version()})
