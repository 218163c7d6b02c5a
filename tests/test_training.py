"""Own labels, the parts without a model: metrics, dataset CSVs, the validation split, output names, progress."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from models.labels import LabelsError
from models.metrics import average_precision, evaluate, global_average_precision, hit_at_one
from models.training import MIN_LOSS_GAIN, is_better, multi_hot, split_validation
from tests.model_fixtures import run_cli
from worker.commands.features import output_names
from worker.commands.progress import Progress, bar
from worker.commands.train import DatasetError, read_class_names, read_dataset

# Two videos, three classes: video 0 is class 0, video 1 is class 2; nobody is class 1.
PROBS = np.array([[0.9, 0.5, 0.1], [0.2, 0.8, 0.7]])
TRUTH = np.array([[1, 0, 0], [0, 0, 1]])


def test_average_precision() -> None:
    # Positives at ranks 1 and 3: (1/1 + 2/3) / 2.
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0])) == pytest.approx(5 / 6)
    assert average_precision(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5  # ties: by position, deterministic
    assert average_precision(np.array([0.3, 0.1]), np.array([0, 0])) is None


def test_gap_pools_each_videos_top_k() -> None:
    # top 2: 0.9 (hit), 0.8, 0.7 (hit), 0.5 → (1/1 + 2/3) / 2 positives.
    assert global_average_precision(PROBS, TRUTH, top_k=2) == pytest.approx(5 / 6)
    # top 1 misses video 1's positive entirely, and it still counts: 1/1 over 2 positives.
    assert global_average_precision(PROBS, TRUTH, top_k=1) == pytest.approx(0.5)


def test_evaluate_reports_every_metric() -> None:
    metrics = evaluate(PROBS, TRUTH, ["a", "b", "c"])
    assert metrics["hit_at_1"] == 0.5 == hit_at_one(PROBS, TRUTH)
    assert metrics["per_class_ap"] == {"a": 1.0, "b": None, "c": 1.0}
    assert metrics["map"] == 1.0  # the class without a positive video is left out
    assert metrics["gap"] == pytest.approx(5 / 6) and metrics["videos"] == 2


def test_early_stopping_prefers_gap_then_a_clearly_lower_loss() -> None:
    assert is_better(0.8, 0.5, -1.0, float("inf"))  # the first epoch
    assert is_better(0.9, 9.0, 0.8, 0.1)  # GAP first, whatever the loss
    assert not is_better(0.7, 0.01, 0.8, 0.5)
    assert is_better(1.0, 0.2, 1.0, 0.2 + 2 * MIN_LOSS_GAIN)
    assert not is_better(1.0, 0.2, 1.0, 0.2 + MIN_LOSS_GAIN / 2)  # confident growing more confident


def test_multi_hot() -> None:
    assert multi_hot([(0, 2), (), (1,)], 3).tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]


def test_validation_split_is_per_class_and_deterministic() -> None:
    labels = [(0,)] * 10 + [(1,)] * 5 + [(2,)] + [(1, 2)] * 2 + [()] * 3
    train, val = split_validation(labels, 0.2, seed=3)
    assert sorted(train + val) == list(range(len(labels))) and not set(train) & set(val)
    held = [labels[i] for i in val]
    first = [classes[0] if classes else None for classes in held]  # videos are grouped by their first label
    assert sorted(first, key=str) == [0, 0, 1, None]
    assert (2,) not in held, "a class's only video stays in training"
    assert split_validation(labels, 0.2, seed=3) == (train, val)
    with pytest.raises(ValueError, match="too few videos"):
        split_validation([(0,), (1,)], 0.2, seed=0)


def test_dataset_csv(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    csv = tmp_path / "data" / "train.csv"
    csv.write_text("path,labels\nclips/a.mp4, cat ; dog\n/abs/b.mp4,\n\nc.mp4,dog\n", encoding="utf-8")
    examples = read_dataset(csv, ["dog", "cat", "bird"])
    assert [(e.path, e.classes) for e in examples] == [
        (tmp_path / "data" / "clips" / "a.mp4", (0, 1)),
        (Path("/abs/b.mp4"), ()),
        (tmp_path / "data" / "c.mp4", (0,)),
    ]
    # A name the label file holds twice (label_3396.txt has some) marks both classes.
    assert read_dataset(csv, ["dog", "cat", "dog"])[2].classes == (0, 2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,labels\na.mp4,cat\n", "header path,labels"),
        ("path,labels\na.mp4,cat;kitten\n", r"train.csv:2: labels not in the label file: kitten"),
        ("path,labels\n", "no videos"),
    ],
)
def test_bad_dataset_csv(tmp_path: Path, text: str, message: str) -> None:
    csv = tmp_path / "train.csv"
    csv.write_text(text, encoding="utf-8")
    with pytest.raises(DatasetError, match=message):
        read_dataset(csv, ["cat", "dog"])


def test_a_new_heads_class_names_are_unique(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("cat\ndog\ncat\n", encoding="utf-8")
    with pytest.raises(LabelsError, match="twice: cat"):
        read_class_names(path)
    path.write_text("cat\n\ndog\n", encoding="utf-8")
    with pytest.raises(LabelsError, match="line 2 is blank"):
        read_class_names(path)


def test_output_names_never_collide() -> None:
    assert output_names(["a/x.mp4", "b/x.mp4", "x.mkv", "y.mp4", "x-2.mp4"]) == [
        "x.npy",
        "x-2.npy",
        "x-3.npy",
        "y.npy",
        "x-2-2.npy",
    ]


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_for_a_terminal() -> None:
    assert bar(3, 12, "features", "a.mp4", 2.0) == "features [######..................] 3/12     2 s  a.mp4"
    for stream, enabled, drawn in ((Tty(), True, True), (Tty(), False, False), (io.StringIO(), True, False)):
        progress = Progress(2, "x", enabled=enabled, stream=stream)
        progress.advance("one")
        progress.close()
        assert ("1/2" in stream.getvalue()) is drawn


def test_train_refuses_a_dataset_it_cannot_use_before_loading_anything(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("cat\ndog\n", encoding="utf-8")
    (tmp_path / "train.csv").write_text("path,labels\na.mp4,cat\nb.mp4,cow\n", encoding="utf-8")
    proc = run_cli(
        "train",
        "--data",
        str(tmp_path / "train.csv"),
        "--label-file",
        str(tmp_path / "labels.txt"),
        "--out",
        str(tmp_path / "out"),
        "--extractor-weights",
        str(tmp_path / "no-weights"),
    )
    assert proc.returncode == 1, proc.stderr
    assert "train.csv:3: labels not in the label file: cow" in proc.stderr
    assert not (tmp_path / "out").exists()
