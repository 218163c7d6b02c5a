"""AttentionLSTM tag predictor, as the original 2020 `video_tag` AttentionLSTM (fluid `dynamic_lstm`).

Paddle 3 has no `dynamic_lstm`, and its `nn.LSTM` has neither peepholes nor the legacy gate layout, so the
recurrence is written out here. Fully-connected weights keep fluid's `[in, out]` layout (`x @ W + b`).
The class count is free (VideoTag's 3396, or a head trained with `videotag train`); everything else is fixed
by the original architecture, so a trained head loads with the same strict loader.

Dropout follows fluid's default `downgrade_in_infer`: in training the mask drops activations without
rescaling the kept ones, at inference everything is multiplied by (1 - p). The published weights were
trained that way, and heads trained here must be too, or the inference scaling would be wrong for them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import paddle
from paddle import nn
from paddle.nn import functional as F

from models.config import PredictorConfig


class PeepholeLSTM(nn.Layer):
    """Legacy fluid `dynamic_lstm` with peepholes and zero initial state, over full-length sequences.

    `weight` [D, 4D] maps h to the gates and `bias` [1, 7D] holds {b_c, b_i, b_f, b_o, w_ic, w_fc, w_oc};
    gate blocks are ordered {candidate, input, forget, output}, in the input projection too.
    """

    def __init__(self, hidden: int, reverse: bool) -> None:
        super().__init__()
        self.hidden = hidden
        self.reverse = reverse
        self.weight = self.create_parameter([hidden, 4 * hidden])
        self.bias = self.create_parameter([1, 7 * hidden], is_bias=True)

    def forward(self, gates_x: paddle.Tensor) -> paddle.Tensor:
        """gates_x [B, T, 4D] (already projected) → hidden states [B, T, D], aligned with the input steps."""
        d = self.hidden
        bias = self.bias[0]
        gate_bias, w_ic, w_fc, w_oc = bias[: 4 * d], bias[4 * d : 5 * d], bias[5 * d : 6 * d], bias[6 * d :]
        batch, steps = gates_x.shape[0], gates_x.shape[1]
        h = paddle.zeros([batch, d], dtype=gates_x.dtype)
        c = paddle.zeros([batch, d], dtype=gates_x.dtype)
        outputs: list[paddle.Tensor] = [h] * steps
        order = range(steps - 1, -1, -1) if self.reverse else range(steps)
        for t in order:
            gates = gates_x[:, t] + paddle.matmul(h, self.weight) + gate_bias
            g_c, g_i, g_f, g_o = paddle.split(gates, 4, axis=-1)
            i = F.sigmoid(g_i + w_ic * c)
            f = F.sigmoid(g_f + w_fc * c)
            c = f * c + i * paddle.tanh(g_c)
            o = F.sigmoid(g_o + w_oc * c)  # the output peephole sees the new cell state
            h = o * paddle.tanh(c)
            outputs[t] = h
        return paddle.stack(outputs, axis=1)


class AttentionLSTM(nn.Layer):
    """Features [B, T, 2048] → independent tag probabilities [B, num_classes]."""

    def __init__(
        self, feature_size: int, embedding_size: int, lstm_size: int, num_classes: int, dropout_rate: float
    ) -> None:
        super().__init__()
        self.rgb_fc = nn.Linear(feature_size, embedding_size)
        self.rgb_fc_forward = nn.Linear(embedding_size, 4 * lstm_size, bias_attr=False)
        self.rgb_lstm_forward = PeepholeLSTM(lstm_size, reverse=False)
        self.rgb_fc_backward = nn.Linear(embedding_size, 4 * lstm_size, bias_attr=False)
        self.rgb_lstm_backward = PeepholeLSTM(lstm_size, reverse=True)
        self.rgb_weight = nn.Linear(2 * lstm_size, 1, bias_attr=False)
        self.fc1 = nn.Linear(2 * lstm_size, 8192)
        self.fc2 = nn.Linear(8192, 4096)
        self.output = nn.Linear(4096, num_classes)
        self.dropout_rate = dropout_rate

    def logits(self, features: paddle.Tensor) -> paddle.Tensor:
        """Features [B, T, 2048] → scores before the sigmoid [B, num_classes] (what training's loss takes)."""
        x = paddle.tanh(self.rgb_fc(features))
        forward = self.rgb_lstm_forward(self.rgb_fc_forward(x))
        backward = self.rgb_lstm_backward(self.rgb_fc_backward(x))
        # fluid's downgrade_in_infer (see the module docstring): at inference a scaling by (1 - p), not identity.
        seq = F.dropout(
            paddle.concat([forward, backward], axis=-1),
            self.dropout_rate,
            training=self.training,
            mode="downscale_in_infer",
        )
        attention = F.softmax(self.rgb_weight(seq), axis=1)  # over time steps, as sequence_softmax
        pooled = paddle.sum(seq * attention, axis=1)
        hidden = paddle.tanh(self.fc2(F.relu(self.fc1(pooled))))
        out: paddle.Tensor = self.output(hidden)  # (Layer.__call__ is typed Any)
        return out

    def forward(self, features: paddle.Tensor) -> paddle.Tensor:
        return F.sigmoid(self.logits(features))

    def original_parameters(self) -> Iterator[tuple[str, paddle.Tensor]]:
        """(original name, tensor): fluid named fc weights `<layer>.w_0` and biases `<layer>.b_0`."""
        for name, layer in self.named_children():
            yield f"{name}.w_0", layer.weight
            if layer.bias is not None:
                yield f"{name}.b_0", layer.bias


def attention_lstm(
    feature_size: int | None = None,
    embedding_size: int | None = None,
    lstm_size: int | None = None,
    num_classes: int | None = None,
    dropout_rate: float | None = None,
) -> AttentionLSTM:
    """The predictor in inference mode; a size not given is configs/attention_lstm.yaml's (models/config.py)."""
    given: dict[str, Any] = {
        "feature_size": feature_size,
        "embedding_size": embedding_size,
        "lstm_size": lstm_size,
        "num_classes": num_classes,
        "dropout_rate": dropout_rate,
    }
    cfg = PredictorConfig(**{name: value for name, value in given.items() if value is not None})
    model = AttentionLSTM(cfg.feature_size, cfg.embedding_size, cfg.lstm_size, cfg.num_classes, cfg.dropout_rate)
    model.eval()
    return model
