"""Training an AttentionLSTM head on extracted features: the original architecture for a new class count.

Kept from the original training: the network (models/attention_lstm.py, dropout with fluid's
downgrade_in_infer semantics, so the exported weights are right for the inference path), sigmoid
cross-entropy on the logits summed over the classes (averaged over the batch here, so the learning rate does
not depend on the batch size), L2 weight decay. Changed on purpose: Adam instead of the original's RMSProp
with a piecewise decay, which was tuned for millions of videos; Adam converges reliably on the hundreds a
head is trained on. Early stopping keeps the epoch with the best validation GAP (a tie goes to a validation loss
lower by more than MIN_LOSS_GAIN) and stops after `patience` epochs without a better one.

Invariants: deterministic for a seed on CPU; `train_head` returns the model in eval mode holding the best
epoch's weights; only `init_from_predictor` reads a file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import paddle
from paddle.nn import functional as F

from models.attention_lstm import AttentionLSTM, attention_lstm
from models.config import PredictorConfig
from models.metrics import global_average_precision
from models.weights import original_parameters

OUTPUT_PREFIX = "output."  # the one layer whose shape depends on the class count
# Once the ranking is perfect (GAP 1 is common on small validation sets) the loss keeps falling by ever smaller
# amounts: confident predictions growing more confident. Below this gain (per video, summed over the classes)
# an epoch is no better, so training stops instead of running out its epochs.
MIN_LOSS_GAIN = 1e-3


@dataclass(frozen=True)
class TrainOptions:
    epochs: int = 30
    patience: int = 5
    batch_size: int = 8
    learning_rate: float = 1e-4
    weight_decay: float = 1e-4
    seed: int = 0


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    loss: float  # mean training loss over the epoch's batches
    val_loss: float
    val_gap: float
    best: bool  # this epoch's weights are the ones kept so far


@dataclass
class TrainResult:
    model: AttentionLSTM
    best_epoch: int
    history: list[EpochRecord] = field(default_factory=list)

    def history_dicts(self) -> list[dict[str, object]]:
        return [asdict(record) for record in self.history]


def is_better(gap: float, loss: float, best_gap: float, best_loss: float) -> bool:
    """Early stopping's decision: a higher validation GAP, or the same GAP with a clearly lower loss."""
    return gap > best_gap or (gap == best_gap and loss < best_loss - MIN_LOSS_GAIN)


def multi_hot(label_sets: list[tuple[int, ...]], num_classes: int) -> np.ndarray:
    truth = np.zeros((len(label_sets), num_classes), dtype=np.float32)
    for row, classes in enumerate(label_sets):
        truth[row, list(classes)] = 1.0
    return truth


def split_validation(label_sets: list[tuple[int, ...]], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) indices: `fraction` of each group of videos sharing a first label (at least one from
    every group of two or more), so every class with two videos is seen in training and validation both."""
    rng = np.random.default_rng(seed)
    groups: dict[int, list[int]] = {}
    for index, classes in enumerate(label_sets):
        groups.setdefault(classes[0] if classes else -1, []).append(index)
    train: list[int] = []
    val: list[int] = []
    for members in groups.values():
        order = [members[i] for i in rng.permutation(len(members))]
        count = max(1, int(len(order) * fraction)) if len(order) >= 2 else 0
        val += order[:count]
        train += order[count:]
    if not val:
        raise ValueError("too few videos to hold some out for validation: give --val, or two or more per class")
    return sorted(train), sorted(val)


def init_from_predictor(model: AttentionLSTM, location: str | Path, config: PredictorConfig) -> None:
    """Start every layer but the output layer (its class count differs) from a trained predictor's weights,
    e.g. VideoTag's: its LSTMs, attention and hidden layers already know the extractor's features."""
    from models.tagger import load_predictor  # the tagger imports far more than training needs elsewhere

    source, _ = load_predictor(location, config)
    for (name, ours), (_, theirs) in zip(original_parameters(model), original_parameters(source), strict=True):
        if not name.startswith(OUTPUT_PREFIX):
            ours.set_value(theirs)


def _loss(model: AttentionLSTM, features: np.ndarray, truth: np.ndarray) -> paddle.Tensor:
    logits = model.logits(paddle.to_tensor(features))
    per_class = F.binary_cross_entropy_with_logits(logits, paddle.to_tensor(truth), reduction="none")
    return per_class.sum(axis=1).mean()


def predict(model: AttentionLSTM, features: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Probabilities [N, C] in eval mode (dropout's inference scaling), `batch_size` videos at a time."""
    model.eval()
    with paddle.no_grad():
        return np.concatenate(
            [
                model(paddle.to_tensor(features[start : start + batch_size])).numpy()
                for start in range(0, len(features), batch_size)
            ]
        )


def _evaluate(model: AttentionLSTM, features: np.ndarray, truth: np.ndarray, batch_size: int) -> tuple[float, float]:
    """(mean loss, GAP) in eval mode."""
    probs = predict(model, features, batch_size)
    total = 0.0
    with paddle.no_grad():
        for start in range(0, len(features), batch_size):
            end = start + batch_size
            total += float(_loss(model, features[start:end], truth[start:end])) * len(truth[start:end])
    return total / len(features), global_average_precision(probs, truth)


def train_head(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    options: TrainOptions,
    from_predictor: str | Path | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> TrainResult:
    """Features [N, T, 2048] float32 with multi-hot truth [N, C] → a trained head for C classes."""
    config = PredictorConfig()
    paddle.seed(options.seed)
    model = attention_lstm(
        config.feature_size, config.embedding_size, config.lstm_size, train_y.shape[1], config.dropout_rate
    )
    if from_predictor is not None:
        init_from_predictor(model, from_predictor, config)
    optimizer = paddle.optimizer.Adam(
        options.learning_rate, parameters=model.parameters(), weight_decay=options.weight_decay
    )
    rng = np.random.default_rng(options.seed)
    result = TrainResult(model, best_epoch=0)
    best_gap, best_loss = -1.0, float("inf")
    best_state: dict[str, paddle.Tensor] = {}
    for epoch in range(1, options.epochs + 1):
        model.train()
        order = rng.permutation(len(train_x))
        losses = []
        for start in range(0, len(order), options.batch_size):
            batch = order[start : start + options.batch_size]
            loss = _loss(model, train_x[batch], train_y[batch])
            loss.backward()
            optimizer.step()
            optimizer.clear_grad()
            losses.append(float(loss))
        val_loss, val_gap = _evaluate(model, val_x, val_y, options.batch_size)
        improved = is_better(val_gap, val_loss, best_gap, best_loss)
        if improved:
            best_gap, best_loss, result.best_epoch = val_gap, val_loss, epoch
            best_state = {name: value.clone() for name, value in model.state_dict().items()}
        record = EpochRecord(epoch, float(np.mean(losses)), val_loss, val_gap, improved)
        result.history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if epoch - result.best_epoch >= options.patience:
            break
    model.set_state_dict(best_state)
    model.eval()
    return result
