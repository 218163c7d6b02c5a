"""The `videotag` command line. Parsing only: each command's work lives in its own module.

A configuration problem (models.errors.ConfigError: a setting, weights, labels, a font, a YAML) ends any command
with one line on stderr, `videotag: error: ...`, and exit status 2; its traceback only at `--log-level DEBUG`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import traceback
import typing
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from models.errors import ConfigError
from worker import logs
from worker.settings import CHOICES, ENV_PREFIX, FIELD_TYPES, Settings, load_settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEMO_SEG_NUM = 16  # the demo is about the service; --seg-num 300 for the original sampling


class _Parser(argparse.ArgumentParser):
    """argparse's parser, its errors in one line like every other configuration error (the usage is one --help
    away). Its commands' parsers are of this class too (add_subparsers takes the parent's class)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_setting_flags(parser: argparse.ArgumentParser, names: list[str], underscore_aliases: bool = False) -> None:
    """Flags that override settings of the same name; the seed's underscore spellings on request."""
    for name in names:
        kind = FIELD_TYPES[name]
        flags = [_flag(name)]
        if underscore_aliases and "_" in name:
            flags.append("--" + name)
        if kind is bool:
            parser.add_argument(*flags, dest=name, action="store_const", const=True, default=None)
        elif kind is list:  # predictors: JSON text, as in the environment
            parser.add_argument(*flags, dest=name, default=None, metavar="JSON")
        elif name in CHOICES:  # the setting's Literal: argparse refuses anything else, and --help lists them
            parser.add_argument(*flags, dest=name, type=kind, default=None, choices=CHOICES[name])
        else:
            parser.add_argument(*flags, dest=name, type=kind, default=None, metavar=name.upper())


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    """Options taken before the command and after it alike (`videotag --log-level DEBUG worker` and `videotag
    worker --log-level DEBUG`): added to the top parser and to every command's. SUPPRESS as the default, so that a
    command's parser, which parses after the top one, does not overwrite a value given before the command."""
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=CHOICES["log_level"],
        default=argparse.SUPPRESS,
        help="logging level for stderr (default INFO); DEBUG also shows a configuration error's traceback",
    )


MODEL_SETTINGS = [
    "extractor_weights",
    "predictor_weights",
    "label_file",
    "predictors",
    "seg_num",
    "topk",
    "device",
    "layers",
    "preprocess",
    "engine",
    "precision",
    "batch_size",
    "allow_random_weights",
    "model_cache_dir",
    "cpu_threads",
    "tensorrt",
    "simulated_ms_per_frame",
    "int8_calibration",
]
# features, train, eval: the extractor only (each head comes from the command's own arguments)
EXTRACTOR_SETTINGS = [
    "extractor_weights",
    "seg_num",
    "layers",
    "preprocess",
    "engine",
    "precision",
    "device",
    "batch_size",
    "model_cache_dir",
    "cpu_threads",
    "tensorrt",
    "int8_calibration",
]
WORKER_SETTINGS = [
    "bootstrap_servers",
    "group_id",
    "input_topic",
    "output_topic",
    "dlq_topic",
    "s3_endpoint_url",
    "metrics_port",
    "metrics_host",
    "max_inflight",
    "drain_grace_s",
    "temp_dir",
    "features_output",
    "log_format",
    "otel_exporter_otlp_endpoint",
]


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {k: v for k, v in vars(args).items() if k in FIELD_TYPES}
    return load_settings(getattr(args, "config", None), overrides=overrides)


def _video_paths(args: argparse.Namespace) -> list[str]:
    """VIDEO arguments, then the --filelist's lines; empty: the caller reports a usage error."""
    from worker.commands.tag import read_filelist

    paths = list(args.videos)
    if args.filelist:
        paths += read_filelist(Path(args.filelist))
    if not paths:
        print(f"videotag {args.command}: no videos given (VIDEO ... or --filelist FILE)", file=sys.stderr)
    return paths


def _tag(args: argparse.Namespace, paths: list[str], save_dir: str | None, sheets: list[Path] | None) -> int:
    """Tag `paths` (tag and preview), with a contact sheet per video at `sheets`; the font is looked for first,
    so that a missing one costs no model load."""
    from worker.chain_builder import build_chain, decoding
    from worker.commands.preview import DEFAULT_TILES, SheetWriter, find_font
    from worker.commands.tag import start_tagging, tag_files

    settings = _settings(args)
    writer = SheetWriter(find_font(args.font), args.tiles or DEFAULT_TILES) if sheets is not None else None
    # the networks load in the model process while the first video decodes (worker/commands/tag.py)
    chain, first = start_tagging(settings, paths, lambda s: build_chain(s, "process"), decoding(settings))
    try:
        failures = tag_files(
            chain.tagger,
            paths,
            Path(save_dir) if save_dir else None,
            sheets=(writer, sheets) if writer is not None and sheets is not None else None,
            quiet=args.quiet,
            first=first,
        )
    finally:
        chain.close()
    return EXIT_FAILED if failures else EXIT_OK


def cmd_tag(args: argparse.Namespace) -> int:
    from worker.commands.features import output_names

    if not (paths := _video_paths(args)):
        return EXIT_USAGE
    sheets = [Path(args.preview_dir) / name for name in output_names(paths, ".png")] if args.preview_dir else None
    return _tag(args, paths, args.save_dir, sheets)


def cmd_preview(args: argparse.Namespace) -> int:
    return _tag(args, [args.video], None, [Path(args.out)])


def cmd_features(args: argparse.Namespace) -> int:
    from worker.commands.features import load_extractor, write_features

    if not (paths := _video_paths(args)):
        return EXIT_USAGE
    tagger = load_extractor(_settings(args))
    failures = write_features(tagger, paths, Path(args.out), args.quiet)
    print(f"features of {len(paths) - failures} of {len(paths)} videos in {args.out}", file=sys.stderr)
    return EXIT_FAILED if failures else EXIT_OK


def _on_dataset(args: argparse.Namespace, work: Callable[[], dict[str, Any]]) -> tuple[int, dict[str, Any] | None]:
    """(exit code, result) of train's or eval's work: a dataset that cannot be used (CSV, a video) is a failure
    (1); unusable weights or labels a configuration error (2, reported by `main`)."""
    from worker.commands.train import DatasetError

    try:
        return EXIT_OK, work()
    except DatasetError as exc:
        print(f"videotag {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED, None


def cmd_train(args: argparse.Namespace) -> int:
    from models.training import TrainOptions
    from worker.commands.train import train

    options = TrainOptions(epochs=args.epochs, patience=args.patience, learning_rate=args.learning_rate, seed=args.seed)
    code, metrics = _on_dataset(
        args,
        lambda: train(
            Path(args.data),
            Path(args.label_path),
            Path(args.out),
            _settings(args),
            options,
            Path(args.val) if args.val else None,
            args.from_predictor,
            Path(args.feature_cache),
            args.quiet,
        ),
    )
    if metrics is None:
        return code
    val = metrics["validation"]
    print(
        f"{args.out}: {len(metrics['classes'])} classes, {metrics['data']['videos']} videos; validation GAP "
        f"{val['gap']:.3f}, Hit@1 {val['hit_at_1']:.3f} at epoch {metrics['best_epoch']} of "
        f"{metrics['epochs_run']} ({metrics['seconds']['features']:.0f} s features, "
        f"{metrics['seconds']['training']:.0f} s training)",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    from worker.commands.train import evaluate_head

    code, metrics = _on_dataset(
        args,
        lambda: evaluate_head(
            Path(args.data),
            Path(args.label_path),
            args.head_weights,
            _settings(args),
            Path(args.feature_cache),
            args.quiet,
        ),
    )
    if metrics is not None:
        print(json.dumps(metrics, ensure_ascii=False, indent=1))
    return code


def cmd_weights_download(args: argparse.Namespace) -> int:
    from models.download import download
    from models.labels import LabelsError
    from models.weights import WeightsError

    try:
        download(Path(args.dest), args.source, Path(args.label_dest), layers=args.layers)
    except (WeightsError, LabelsError, OSError) as exc:
        print(f"videotag weights download: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"weights in {args.dest}, labels in {args.label_dest}: verified", file=sys.stderr)
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings(args)
    logs.configure(settings.log_level, settings.log_format)  # before Paddle's import, which may log already
    from worker.worker import run_worker

    return run_worker(settings)


def cmd_enqueue(args: argparse.Namespace) -> int:
    from worker.commands.enqueue import SendRefused, enqueue, parse_target, replay_dlq
    from worker.kafka_clients import BrokerUnreachable

    if logging.getLogger().level > logging.DEBUG:  # a failure is reported below in one line, not by the library
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
    settings = _settings(args)
    try:
        targets = [parse_target(t, args.bucket) for t in args.targets]
    except ValueError as exc:
        print(f"videotag enqueue: {exc}", file=sys.stderr)
        return EXIT_USAGE
    sources = [bool(targets), args.from_dlq, bool(args.from_s3), bool(args.from_manifest)]
    if sum(sources) != 1:
        print(
            "videotag enqueue: give one of KEY ... (or s3://BUCKET/KEY ...), --from-dlq, --from-s3, --from-manifest",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.from_s3 or args.from_manifest:
        return _backfill(args, settings)
    try:
        if args.from_dlq:
            count = replay_dlq(settings, settings.input_topic)
            print(f"replayed {count} requests from {settings.dlq_topic} to {settings.input_topic}", file=sys.stderr)
            return EXIT_OK
        for message in enqueue(settings, settings.input_topic, targets):
            print(json.dumps(message, ensure_ascii=False))
    except (BrokerUnreachable, SendRefused) as exc:
        print(f"videotag enqueue: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _backfill(args: argparse.Namespace, settings: Settings) -> int:
    import botocore.exceptions

    from worker.commands.backfill import BackfillError, Options, backfill, parse_rate, parse_since
    from worker.kafka_clients import BrokerUnreachable

    try:
        options = Options(
            source=args.from_s3 or args.from_manifest,
            manifest=bool(args.from_manifest),
            since=parse_since(args.since) if args.since else None,
            rate=parse_rate(args.rate) if args.rate else None,
            dry_run=args.dry_run,
            start_after=args.start_after,
            marker=Path(args.marker) if args.marker else None,
            quiet=args.quiet,
        )
        if not options.source.startswith("s3://"):
            raise BackfillError(f"{options.source}: expected s3://BUCKET/...")
    except BackfillError as exc:
        print(f"videotag enqueue: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        stats = backfill(settings, options, settings.input_topic, sys.stdout)
    except (BackfillError, BrokerUnreachable) as exc:
        print(f"videotag enqueue: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        print(
            f"videotag enqueue: {options.source}: {exc}"
            + (f" (resume: the same command, --marker {args.marker})" if args.marker else ""),
            file=sys.stderr,
        )
        return EXIT_FAILED
    if stats.resumed_from == "complete":
        print(
            f"videotag enqueue: {args.marker} says this backfill finished; nothing sent (delete it to run again)",
            file=sys.stderr,
        )
        return EXIT_OK
    verb = "would enqueue" if options.dry_run else f"enqueued to {settings.input_topic}"
    print(
        f"{verb} {stats.enqueued} of {stats.listed} objects ({stats.pages} "
        f"{'data files' if options.manifest else 'pages'}; skipped: {stats.not_video} not videos, "
        f"{stats.too_old} older than --since, {stats.not_current} not current)"
        + (f"; resumed after {stats.resumed_from}" if stats.resumed_from is not None else ""),
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_skip(args: argparse.Namespace) -> int:
    from worker.commands.skip import SkipRefused, skip
    from worker.kafka_clients import BrokerUnreachable

    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
    settings = _settings(args)
    try:
        skip(settings, args.topic or settings.input_topic, args.partition, args.offset)
    except (SkipRefused, BrokerUnreachable) as exc:
        print(f"videotag skip: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"skipped offset {args.offset} of {args.topic or settings.input_topic}[{args.partition}] for group "
        f"{settings.group_id}; the message is in {settings.dlq_topic} (replay: videotag enqueue --from-dlq)",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from worker.local.demo import run_demo

    # The local servers run in their own sessions; SystemExit on SIGTERM lets the demo stop them.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    settings = _settings(args)
    if args.seg_num is None:
        settings = replace(settings, seg_num=DEMO_SEG_NUM)
    return run_demo(settings, [Path(v) for v in args.videos or []])


def cmd_calibrate(args: argparse.Namespace) -> int:
    from models.calibration import CalibrationError
    from models.errors import CodedError
    from worker.commands.calibrate import calibrate

    if not (paths := _video_paths(args)):
        return EXIT_USAGE
    try:
        out, frames = calibrate(_settings(args), paths, args.out, args.frames)
    except (CodedError, CalibrationError, OSError) as exc:
        print(f"videotag calibrate: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"calibration set of {frames} frames from {len(paths)} videos in {out}; "
        f"tag with --precision int8 --int8-calibration {out}",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from worker.local.bench import bench_command

    return bench_command(args, _settings(args))


def _own_label_options(parser: argparse.ArgumentParser) -> None:
    """What features, train and eval share: the extractor's settings, the feature cache, --quiet."""
    parser.add_argument(
        "--feature-cache",
        default=".cache/videotag/features",
        help="features already extracted, by file content and extractor (default %(default)s)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar (none either when stderr is no tty)")
    parser.add_argument("--config", help="settings YAML (as for the worker)")
    add_setting_flags(parser, EXTRACTOR_SETTINGS, underscore_aliases=True)


def _sheet_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tiles", type=int, help="sampled frames shown, evenly spread (default 40)")
    parser.add_argument(
        "--font",
        help="a font file with Chinese glyphs (default: the videotag[preview] extra's "
        "Noto Sans SC, else a system CJK font)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="videotag", description="VideoTag video tagging: CLI and Kafka worker.")
    commands = parser.add_subparsers(dest="command", required=True)

    tag = commands.add_parser("tag", help="tag local video files; one JSON line per video on stdout")
    tag.add_argument("videos", nargs="*", metavar="VIDEO")
    tag.add_argument("--filelist", help="file with one video path per line")
    tag.add_argument(
        "--save-dir", "--save_dir", dest="save_dir", help="also write result<N>.json per video in the original format"
    )
    tag.add_argument("--preview-dir", metavar="DIR", help="also write a contact sheet <name>.png per video")
    _sheet_options(tag)
    tag.add_argument("--quiet", action="store_true", help="no progress on stderr (a bar only on a terminal)")
    tag.add_argument("--config", help="settings YAML (as for the worker)")
    add_setting_flags(tag, MODEL_SETTINGS, underscore_aliases=True)
    tag.set_defaults(func=cmd_tag)

    preview = commands.add_parser(
        "preview",
        help="tag a video and draw a contact sheet: its sampled frames, "
        "top tags, size, duration, frame counts, timings",
    )
    preview.add_argument("video", metavar="VIDEO")
    preview.add_argument("--out", required=True, help="the sheet (PNG; the format follows the extension)")
    _sheet_options(preview)
    preview.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    preview.add_argument("--config", help="settings YAML (as for the worker)")
    add_setting_flags(preview, MODEL_SETTINGS, underscore_aliases=True)
    preview.set_defaults(func=cmd_preview)

    features = commands.add_parser("features", help="extract each video's [seg_num, 2048] features to .npy files")
    features.add_argument("videos", nargs="*", metavar="VIDEO")
    features.add_argument("--filelist", help="file with one video path per line")
    features.add_argument("--out", required=True, help="directory for <name>.npy files and index.csv")
    _own_label_options(features)
    features.set_defaults(func=cmd_features)

    train = commands.add_parser("train", help="train a head on your own labels (docs/own-labels.md)")
    train.add_argument("--data", required=True, help="CSV with the header path,labels (labels ;-separated)")
    train.add_argument("--label-file", dest="label_path", required=True, help="your class names, one per line")
    train.add_argument(
        "--out", required=True, help="directory for attention_lstm.pdparams, labels.txt, metrics.json, MODEL_CARD.md"
    )
    train.add_argument("--val", help="validation CSV (default: 20%% of --data per class held out)")
    train.add_argument("--epochs", type=int, default=30, help="at most this many epochs (default 30)")
    train.add_argument(
        "--patience",
        type=int,
        default=5,
        help="stop after this many epochs without a better validation GAP (default 5)",
    )
    train.add_argument("--learning-rate", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    train.add_argument("--seed", type=int, default=0, help="validation split, initialisation, shuffling, dropout")
    train.add_argument(
        "--from-predictor",
        metavar="WEIGHTS",
        help="start all layers but the output layer from this predictor (e.g. weights/attention_lstm)",
    )
    _own_label_options(train)
    train.set_defaults(func=cmd_train)

    evaluation = commands.add_parser("eval", help="GAP, Hit@1, mAP and per-class AP of a head on a dataset CSV")
    evaluation.add_argument("--data", required=True, help="CSV with the header path,labels")
    evaluation.add_argument("--label-file", dest="label_path", required=True, help="the head's label file")
    evaluation.add_argument(
        "--predictor-weights",
        dest="head_weights",
        required=True,
        help="the head's weights: prefix, .pdparams file or directory",
    )
    _own_label_options(evaluation)
    evaluation.set_defaults(func=cmd_eval)

    weights = commands.add_parser("weights", help="manage the model weights")
    weights_commands = weights.add_subparsers(dest="weights_command", required=True)
    download = weights_commands.add_parser("download", help="fetch and verify the published weights and labels")
    download.add_argument("--dest", default="weights", help="directory for tsn.* and attention_lstm.*")
    download.add_argument("--from", dest="source", help="base URL or directory to fetch from instead of upstream")
    download.add_argument("--label-dest", default="label_3396.txt", help="where to put the label file")
    download.add_argument("--layers", type=int, default=101, choices=[50, 101])
    download.set_defaults(func=cmd_weights_download)

    work = commands.add_parser("worker", help="run the Kafka tagging worker until SIGTERM")
    work.add_argument("--config", help="settings YAML (see docs/configuration.md); VIDEOTAG_* env overrides it")
    add_setting_flags(work, WORKER_SETTINGS + MODEL_SETTINGS)
    work.set_defaults(func=cmd_worker)

    enq = commands.add_parser("enqueue", help="put tagging requests on the input topic")
    enq.add_argument("targets", nargs="*", metavar="KEY_OR_S3_URI")
    enq.add_argument("--bucket", help="bucket of plain KEY arguments")
    enq.add_argument("--topic", dest="input_topic", help="topic to send to (default: the input topic)")
    enq.add_argument("--from-dlq", action="store_true", help="replay every DLQ record's original message")
    enq.add_argument("--from-s3", metavar="s3://BUCKET/PREFIX", help="backfill: every video object under the prefix")
    enq.add_argument(
        "--from-manifest",
        metavar="s3://BUCKET/.../manifest.json",
        help="backfill: every video object of an S3 Inventory report (CSV)",
    )
    enq.add_argument("--since", metavar="DATE", help="backfill: only objects last modified at or after DATE (UTC)")
    enq.add_argument("--rate", metavar="N/s", help="backfill: at most N requests per second")
    enq.add_argument("--dry-run", action="store_true", help="backfill: print the requests, send nothing")
    enq.add_argument("--start-after", metavar="KEY", help="--from-s3: begin after this key")
    enq.add_argument(
        "--marker", metavar="FILE", help="backfill: record progress here; a rerun resumes from it (docs/deployment.md)"
    )
    enq.add_argument("--quiet", action="store_true", help="no progress bar (none either when stderr is no tty)")
    enq.add_argument("--config", help="settings YAML (Kafka connection and security)")
    add_setting_flags(
        enq, ["bootstrap_servers", "dlq_topic", "security_protocol", "ssl_cafile", "s3_endpoint_url", "s3_region"]
    )
    enq.set_defaults(func=cmd_enqueue)

    skip = commands.add_parser(
        "skip", help="move the group past one message (dead-lettered, replayable); stop the workers first"
    )
    skip.add_argument("--topic", help="input topic (default: the input topic setting)")
    skip.add_argument("--partition", type=int, required=True)
    skip.add_argument("--offset", type=int, required=True, help="must be the group's committed offset")
    skip.add_argument("--config", help="settings YAML (Kafka connection and security)")
    add_setting_flags(skip, ["bootstrap_servers", "group_id", "dlq_topic", "security_protocol", "ssl_cafile"])
    skip.set_defaults(func=cmd_skip)

    demo = commands.add_parser("demo", help="run everything locally: broker, S3, uploads, a worker, results")
    demo.add_argument("--videos", nargs="+", help="videos to upload (default: generated clips)")
    add_setting_flags(demo, [*MODEL_SETTINGS, "max_inflight"])
    demo.set_defaults(func=cmd_demo)

    calib = commands.add_parser(
        "calibrate", help="make the INT8 calibration set (--precision int8) from videos like those you tag"
    )
    calib.add_argument("videos", nargs="*", metavar="VIDEO")
    calib.add_argument("--filelist", help="file with one video path per line")
    calib.add_argument("--out", help="where to write it (default: the setting int8_calibration)")
    calib.add_argument("--frames", type=int, help="frames in the set, spread over the videos (default 64)")
    calib.add_argument("--config", help="settings YAML (as for the worker)")
    add_setting_flags(calib, ["seg_num", "preprocess", "int8_calibration"])
    calib.set_defaults(func=cmd_calibrate)

    bench = commands.add_parser(
        "bench",
        help="throughput, stage latencies, memory and top-20 agreement against the original-style baseline, in one run",
    )
    bench.add_argument("--videos", nargs="+", metavar="DIR_OR_FILE", help="videos, or directories of videos")
    bench.add_argument("--repeat", type=int, default=1, help="pipeline passes over the videos (default 1)")
    bench.add_argument("--skip-baseline", action="store_true", help="no baseline (and no ratio or agreement)")
    bench.add_argument(
        "--skip-cold-start",
        action="store_true",
        help="no cold `videotag tag` run (first-result and per-video seconds as a CLI user sees them)",
    )
    bench.add_argument(
        "--cold-precisions",
        nargs="+",
        metavar="PRECISION",
        choices=CHOICES["precision"],
        help="cold `videotag tag` runs in these precisions too (e.g. fp32 bf16), side by side",
    )
    bench.add_argument("--ceiling-seconds", type=float, default=20.0, help="time spent measuring the ceiling")
    bench.add_argument("--plot", metavar="PNG", help="plot throughput and stage latencies (needs matplotlib)")
    bench.add_argument("--json", dest="json_out", metavar="FILE", help="also write the figures as JSON")
    bench.add_argument(
        "--long-video",
        type=float,
        metavar="SECONDS",
        help="memory check instead: pipeline peak RSS on a generated 1080p clip of this length",
    )
    bench.add_argument(
        "--baseline-clip",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="with --long-video: length of the 1080p clip for the baseline's RSS growth",
    )
    bench.add_argument("--config", help="settings YAML (as for the worker)")
    add_setting_flags(bench, [*MODEL_SETTINGS, "max_inflight"])
    bench.set_defaults(func=cmd_bench)
    for each in [parser, *commands.choices.values(), *weights_commands.choices.values()]:
        _add_common_options(each)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # The level and format as far as the flags and the environment tell (a settings file may still change them, for
    # the worker); a value that is no choice here is reported by the settings' check, in one line.
    log_level = getattr(args, "log_level", None) or os.environ.get(ENV_PREFIX + "LOG_LEVEL", "").upper() or "INFO"
    log_level = log_level if log_level in CHOICES["log_level"] else "INFO"
    log_format = getattr(args, "log_format", None) or os.environ.get(ENV_PREFIX + "LOG_FORMAT") or "text"
    log_format = log_format if log_format in logs.FORMATS else "text"
    logs.configure(log_level, log_format)
    for chatty in ("kafka", "botocore"):  # chatty at INFO ("Found credentials in environment variables")
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        return int(args.func(args))
    except ConfigError as exc:
        message = " ".join(str(exc).split())  # one line, whatever the message held
        debug = log_level == "DEBUG"
        if log_format == "json":  # every line on stderr stays a JSON object, the traceback in its exc_info
            logging.getLogger("videotag").error("%s", message, exc_info=exc if debug else None)
        else:
            if debug:
                traceback.print_exception(exc)
            print(f"videotag: error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
