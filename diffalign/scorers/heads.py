"""The "linear MLP" reward head shared by the LAION aesthetic predictor and ImageReward.

Linear(D, 1024) → Dropout(0.2) → Linear(1024, 128) → Dropout(0.2) → Linear(128, 64) → Dropout(0.1) →
Linear(64, 16) → Linear(16, 1), no activations. Parameter names ``layers.{0,2,4,6,7}.{weight,bias}`` match both
published checkpoints, so their weights load without renaming.
"""

from __future__ import annotations

import torch
from torch import nn


class LinearMLPHead(nn.Module):
    def __init__(self, dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                                    nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """embedding [B, D] -> reward [B, 1]."""
        return self.layers(embedding)
