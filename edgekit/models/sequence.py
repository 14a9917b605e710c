"""Recurrent sequence classifiers (LSTM / GRU) over inputs shaped [batch, time, features]."""
from __future__ import annotations

import torch
import torch.nn as nn

from edgekit.models.registry import register_model


class RNNClassifier(nn.Module):
    """LSTM/GRU encoder; the last time step's hidden state feeds a linear classifier."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, cell: str, num_classes: int,
                 bidirectional: bool = False):
        super().__init__()
        rnn_cls = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = rnn_cls(input_size, hidden_size, num_layers=num_layers, batch_first=True,
                           bidirectional=bidirectional)
        self.fc = nn.Linear(hidden_size * (2 if bidirectional else 1), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])


@register_model("rnn_classifier", features=("rnn",), classifier="fc")
def rnn_classifier(num_classes: int = 10, input_size: int = 8, hidden_size: int = 64, num_layers: int = 1,
                   cell: str = "lstm", bidirectional: bool = False) -> nn.Module:
    """LSTM or GRU (`cell`) sequence classifier over [batch, time, input_size] inputs.

    ``bidirectional`` runs every layer both ways; the classifier then reads both directions' last-step outputs.

    Example:
        >>> model = rnn_classifier(hidden_size=128, cell="gru")
    """
    if cell not in ("lstm", "gru"):
        raise ValueError(f"cell must be 'lstm' or 'gru', got '{cell}'")
    return RNNClassifier(input_size, hidden_size, num_layers, cell, num_classes, bidirectional)
