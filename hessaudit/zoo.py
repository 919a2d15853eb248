"""Tiny models for the built-in demos and tests (``--model hessaudit.zoo:digits_cnn``).

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

:func:`pretrain_digits_cnn` trains one on the 5-class ``digits-pretrain`` task and saves it, the
"pretrained" checkpoint of the built-in fine-tuning demo (``--data digits``, 10 classes, new
head)::

    python -c "import hessaudit.zoo as z; z.pretrain_digits_cnn('pre.safetensors')"
    hessaudit finetune --model hessaudit.zoo:digits_cnn --pretrained pre.safetensors \
        --data digits --eval-data digits --inject-noise symmetric:0.4 --noise-matrix injected \
        --lr 3e-3 --epochs 5 --radius 2 --head-radius 3 --out run
"""

from __future__ import annotations

import os

import torch
from torch import nn

__all__ = ["DigitsCNN", "digits_cnn", "pretrain_digits_cnn"]


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


def pretrain_digits_cnn(
    path: str | os.PathLike[str],
    *,
    epochs: int = 5,
    lr: float = 1e-2,
    batch_size: int = 64,
    seed: int = 0,
) -> float:
    """Train :func:`digits_cnn` (5 classes) on ``digits-pretrain`` with Adam and save its state
    dict to ``path`` (safetensors). Deterministic for a given seed; the caller's global RNG is
    left untouched. Returns the accuracy on the held-out part of ``digits-pretrain``."""
    from hessaudit.inputs.checkpoints import save_checkpoint
    from hessaudit.inputs.data import load_data

    train = load_data("digits-pretrain", role="train")
    held_out = load_data("digits-pretrain", role="eval")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = digits_cnn(num_classes=5)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(train), generator=generator)
        for start in range(0, len(train), batch_size):
            idx = perm[start : start + batch_size]
            if idx.numel() < 2:
                continue
            loss = nn.functional.cross_entropy(model(train.x[idx]), train.y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(held_out.x).argmax(dim=1) == held_out.y).double().mean())
    save_checkpoint(
        path,
        model.state_dict(),
        metadata={"task": "digits-pretrain", "epochs": epochs, "seed": seed},
    )
    return accuracy
