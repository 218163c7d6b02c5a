"""`videotag train` and `videotag eval`: a head on your own labels, from a CSV of videos (docs/own-labels.md).

Dataset CSV: the header `path,labels`; a path is relative to the CSV's folder unless absolute; labels are
`;`-separated names from the label file (none: a video that has none of the classes). Every video must decode:
a training set with a silently missing video is a different training set. Features come from the shared cache
(worker/commands/features.py), so a second run, or eval after train, extracts nothing again.

`train` writes DIR/attention_lstm.pdparams (the original fluid.save layout: the strict loader, `tag` and the
worker read it like VideoTag's), DIR/labels.txt, DIR/metrics.json and DIR/MODEL_CARD.md.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from models.csvfile import CsvError, read_csv
from models.errors import InputError
from models.heads import HeadSpec
from models.labels import LabelsError, read_names
from models.metrics import evaluate
from models.training import EpochRecord, TrainOptions, multi_hot, predict, split_validation, train_head
from models.weights import save_params
from worker.commands.features import FeatureCache, load_extractor
from worker.commands.progress import Progress
from worker.settings import Settings

VAL_FRACTION = 0.2
EVAL_HEAD = "eval"
PREDICT_BATCH = 16


class DatasetError(ValueError):
    """A dataset CSV, its label names or one of its videos cannot be used."""


@dataclass(frozen=True)
class Example:
    path: Path
    classes: tuple[int, ...]


def read_dataset(csv_path: Path, labels: list[str]) -> list[Example]:
    """The CSV's videos with their class ids (a name the label file holds twice marks both ids)."""
    ids: dict[str, list[int]] = {}
    for i, name in enumerate(labels):
        ids.setdefault(name, []).append(i)
    try:
        rows = read_csv(csv_path, ("path", "labels"))
    except CsvError as exc:
        raise DatasetError(str(exc)) from exc
    examples = []
    for number, (path, names) in rows:
        wanted = [name.strip() for name in names.split(";") if name.strip()]
        if unknown := [name for name in wanted if name not in ids]:
            raise DatasetError(f"{csv_path}:{number}: labels not in the label file: {', '.join(unknown)}")
        video = Path(path) if Path(path).is_absolute() else csv_path.parent / path
        examples.append(Example(video, tuple(sorted({i for name in wanted for i in ids[name]}))))
    if not examples:
        raise DatasetError(f"{csv_path}: no videos")
    return examples


def read_class_names(label_file: Path) -> list[str]:
    """A new head's classes: one name per line, each once (they name the CSV's labels)."""
    names = read_names(label_file)
    if duplicates := sorted({name for name in names if names.count(name) > 1}):
        raise LabelsError(f"{label_file}: names given twice: {', '.join(duplicates)}")
    if not names:
        raise LabelsError(f"{label_file}: no labels")
    return names


def dataset_features(cache: FeatureCache, examples: list[Example], label: str, quiet: bool) -> np.ndarray:
    """[N, seg_num, 2048] float32, in the CSV's order."""
    progress = Progress(len(examples), label, enabled=not quiet)
    features = []
    try:
        for example in examples:
            try:
                features.append(cache.features(example.path)[1])
            except (InputError, OSError) as exc:
                raise DatasetError(f"{example.path}: {exc}") from exc
            progress.advance(example.path.name)
    finally:
        progress.close()
    return np.stack(features)


def train(
    data: Path,
    label_file: Path,
    out: Path,
    settings: Settings,
    options: TrainOptions,
    val: Path | None,
    from_predictor: str | None,
    cache_dir: Path,
    quiet: bool = False,
) -> dict[str, Any]:
    """Extract (cached in `cache_dir`), train, write DIR; returns what metrics.json holds."""
    classes = read_class_names(label_file)
    train_set = read_dataset(data, classes)
    val_set = read_dataset(val, classes) if val is not None else None
    tagger = load_extractor(settings)
    cache = FeatureCache(cache_dir, tagger)
    started = time.monotonic()
    train_x = dataset_features(cache, train_set, "features (train)", quiet)
    train_y = multi_hot([e.classes for e in train_set], len(classes))
    if val_set is not None:
        val_x = dataset_features(cache, val_set, "features (validation)", quiet)
        val_y = multi_hot([e.classes for e in val_set], len(classes))
        val_source = str(val)
        fit_x, fit_y = train_x, train_y
    else:
        fit, held = split_validation([e.classes for e in train_set], VAL_FRACTION, options.seed)
        fit_x, fit_y, val_x, val_y = train_x[fit], train_y[fit], train_x[held], train_y[held]
        val_source = f"{len(held)} of {data} held out ({VAL_FRACTION:.0%} per class)"
    extracted = time.monotonic()
    progress = Progress(options.epochs, "training", enabled=not quiet)

    def on_epoch(record: EpochRecord) -> None:
        progress.advance(
            f"loss {record.loss:.4f}  val GAP {record.val_gap:.3f}  loss {record.val_loss:.4f}"
            + ("  *" if record.best else "")
        )

    try:
        result = train_head(fit_x, fit_y, val_x, val_y, options, from_predictor, on_epoch)
    finally:
        progress.close()
    trained = time.monotonic()
    val_probs = predict(result.model, val_x, PREDICT_BATCH)
    metrics = {
        "classes": classes,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "extractor": tagger.info["extractor"],
        "extractor_weights": tagger.info["extractor_weights"],
        "seg_num": tagger.extractor_config.seg_num,
        "preprocess": tagger.preprocess,
        "from_predictor": from_predictor,
        "data": {
            "train": str(data),
            "videos": len(fit_x),
            "validation": val_source,
            "validation_videos": len(val_x),
            "per_class": dict(zip(classes, fit_y.sum(axis=0).astype(int).tolist(), strict=True)),
        },
        "options": asdict(options),
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "validation": evaluate(val_probs, val_y, classes),
        "seconds": {"features": round(extracted - started, 1), "training": round(trained - extracted, 1)},
        "history": result.history_dicts(),
    }
    out.mkdir(parents=True, exist_ok=True)
    save_params(result.model, out / "attention_lstm.pdparams")
    (out / "labels.txt").write_text("\n".join(classes) + "\n", encoding="utf-8")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "MODEL_CARD.md").write_text(model_card(out, metrics), encoding="utf-8")
    return metrics


def evaluate_head(
    data: Path, label_file: Path, predictor_weights: str, settings: Settings, cache_dir: Path, quiet: bool = False
) -> dict[str, Any]:
    """GAP, Hit@1, mAP and per-class AP of a head (any: VideoTag's or a trained one) on a dataset CSV."""
    tagger = load_extractor(settings, [HeadSpec(EVAL_HEAD, weights=predictor_weights, labels=str(label_file))])
    [head] = tagger.heads
    examples = read_dataset(data, head.labels)
    features = dataset_features(FeatureCache(cache_dir, tagger), examples, "features", quiet)
    probs = np.concatenate(
        [
            tagger.probabilities(features[i : i + PREDICT_BATCH])[EVAL_HEAD]
            for i in range(0, len(features), PREDICT_BATCH)
        ]
    )
    return evaluate(probs, multi_hot([e.classes for e in examples], len(head.labels)), head.labels)


def model_card(out: Path, metrics: dict[str, Any]) -> str:
    """A short MODEL_CARD.md: what the head tags, what it was trained on, how well, how to deploy it."""
    val = metrics["validation"]
    aps = val["per_class_ap"]
    rows = "\n".join(
        f"| {name} | {count} | {'–' if aps[name] is None else f'{aps[name]:.3f}'} |"
        for name, count in metrics["data"]["per_class"].items()
    )
    origin = (
        f"started from the predictor `{metrics['from_predictor']}` (all layers but the output layer)"
        if metrics["from_predictor"]
        else "trained from scratch"
    )
    data = metrics["data"]
    return f"""# {out.name}: a videotag head

An AttentionLSTM (VideoTag's predictor architecture) for {len(metrics["classes"])} classes of your own, trained
{metrics["created"]} by `videotag train` on `{data["train"]}`: {data["videos"]} videos, validated on
{data["validation_videos"]} ({data["validation"]}); {origin}; best epoch {metrics["best_epoch"]} of
{metrics["epochs_run"]}, {metrics["seconds"]["training"]:.0f} s of training after {metrics["seconds"]["features"]:.0f} s
of feature extraction.

## Inputs it expects
Features of {metrics["extractor"]} with weights `{metrics["extractor_weights"]}`, {metrics["seg_num"]} frames per
video, `{metrics["preprocess"]}` preprocessing. Another extractor's features mean nothing to it; serve it with the
same `seg_num` (the attention pools over any number of frames, but it was only validated at this one).

## Validation
| GAP | Hit@1 | mAP |
|---|---|---|
| {val["gap"]:.3f} | {val["hit_at_1"]:.3f} | {"–" if val["map"] is None else f"{val['map']:.3f}"} |

| class | training videos | validation AP |
|---|---|---|
{rows}

A validation set this small measures little: check the head on videos it has never seen
(`videotag eval --data test.csv --label-file labels.txt --predictor-weights attention_lstm`).

## Deploying
```yaml
predictors:
  - name: videotag
  - name: {out.name}
    weights: {out}/attention_lstm
    labels: {out}/labels.txt
```
Its tags are probabilities of independent classes (sigmoid); tune `min_probability` or per-label `thresholds`
on held-out videos. It knows only these classes: a video of none of them still gets its top-k.
"""
