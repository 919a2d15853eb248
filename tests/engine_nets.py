"""Float64 networks for the engine tests (tests/test_sweep.py, tests/test_engine_versions.py):
a ResNet-like piecewise-linear net with in-place residual adds and ReLUs, and a net whose
module tree looks piecewise linear while its forward hides a GELU."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from tests.cases import _init


class _Block(nn.Module):
    """A ResNet basic block: in-place residual add and in-place ReLU after the taps."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        shortcut = x
        x = self.act(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        x += shortcut
        return self.act(x)


def make_resnet(seed: int = 0) -> nn.Module:
    return _init(nn.Sequential(OrderedDict(
        stem=nn.Conv2d(2, 3, 3, padding=1), bn=nn.BatchNorm2d(3), relu=nn.ReLU(inplace=True),
        block=_Block(3), pool=nn.MaxPool2d(2), flatten=nn.Flatten(), fc=nn.Linear(48, 3),
    )), seed)


class HiddenGelu(nn.Module):
    """Looks piecewise linear module by module; its forward hides a GELU after conv2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 64, 3)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = F.gelu(self.conv2(x))
        return self.fc(x.flatten(1))
