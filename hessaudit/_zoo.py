"""Tiny models for the built-in demos and tests (``--model hessaudit._zoo:digits_cnn``).

:func:`digits_cnn` is a small ReLU / BatchNorm / max-pool CNN for the 8x8 one-channel ``digits``
data: piecewise linear (so the audit's exact fast path applies), a few thousand parameters,
and named like a ResNet (``conv1``, ``layer1``, ``layer2``, ``fc``) so that the finetuner's
stage-wise radii apply to it::

    conv1 (1->16, 3x3) - bn1 - relu            stem, 8x8
    layer1: conv (16->32, 3x3) - bn - relu - maxpool 2     4x4
    layer2: conv (32->32, 3x3) - bn - relu - global average pool
    fc: linear (32 -> num_classes)

Its initialization comes from the global torch RNG like any ``nn.Module``; the finetuner
re-initializes the new head with its own seeded generator.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DigitsCNN", "digits_cnn"]


class DigitsCNN(nn.Module):
    """See the module docstring."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.layer2 = nn.Sequential(
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def digits_cnn(num_classes: int = 10) -> nn.Module:
    """A :class:`DigitsCNN` for ``(N, 1, 8, 8)`` inputs with ``num_classes`` outputs."""
    return DigitsCNN(num_classes=num_classes)
