"""Files on disk shared by the tests: the tiny factory model's source, seeded perturbations of
a state dict, checkpoint pairs and small PNG images. ``conftest.py`` turns them into fixtures;
tests that need them outside a fixture import them from here."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import torch

#: Source of the factory file written by the ``factory_file`` fixture. ``TinyNet`` takes
#: (N, C, 8, 8) images (any size works: it pools to 2x2), has conv1 / bn1 / fc and a
#: ``num_classes`` head.
TINY_FACTORY_SOURCE = textwrap.dedent(
    '''
    import torch
    from torch import nn


    class TinyNet(nn.Module):
        def __init__(self, num_classes=10, in_chans=1):
            super().__init__()
            self.conv1 = nn.Conv2d(in_chans, 4, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(4)
            self.act = nn.ReLU()
            self.pool = nn.AdaptiveAvgPool2d(2)
            self.fc = nn.Linear(16, num_classes)

        def forward(self, x):
            x = self.pool(self.act(self.bn1(self.conv1(x))))
            return self.fc(x.flatten(1))


    def make_tiny(num_classes=10, in_chans=1, seed=0):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return TinyNet(num_classes, in_chans)


    def make_fixed():
        """No num_classes argument: always 10 outputs."""
        return make_tiny(10)


    def make_raising(num_classes=10):
        raise ValueError("bad config: depth must be even")


    def make_not_module(num_classes=10):
        return "not a module"
    '''
)


def perturbed(state: dict[str, torch.Tensor], *, seed: int, scale: float = 0.05):
    """A copy of ``state`` with every floating tensor moved by seeded Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in state.items():
        if t.is_floating_point() and not name.endswith(("running_mean", "running_var")):
            out[name] = t + scale * torch.randn(t.shape, generator=g, dtype=t.dtype)
        else:
            out[name] = t.clone()
    return out


@dataclass(frozen=True)
class CheckpointPair:
    """A pretrained / fine-tuned pair on disk. The pretrained head has ``pre_classes`` outputs,
    the fine-tuned head ``num_classes`` (a new head when they differ)."""

    spec: str
    pretrained: Path
    finetuned: Path
    pretrained_state: dict[str, torch.Tensor]
    finetuned_state: dict[str, torch.Tensor]
    num_classes: int


def write_png(path: Path, size: tuple[int, int] = (6, 5), mode: str = "RGB", value: int = 128):
    """Write a small PNG (size = width, height) filled with a gradient starting at ``value``."""
    import numpy as np
    from PIL import Image

    w, h = size
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    arr = (np.arange(h * w * channels).reshape(h, w, channels) + value) % 256
    arr = arr.astype(np.uint8)
    image = Image.fromarray(arr[:, :, 0] if mode == "L" else arr, mode=mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
