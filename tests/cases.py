"""Tiny float64 networks and batches shared by the tests, listed as data.

Every network is built in eval mode with a deterministic initialisation drawn from its own
``torch.Generator`` (the global RNG is never touched), and is small enough that a dense block
Hessian by ``torch.autograd.functional.hessian`` takes milliseconds. Parameter names are
readable (``conv1.weight``, ``fc.weight``, ...).

- :func:`make_linear`: softmax regression (closed-form Hessian available).
- :func:`make_mlp`: MLP with tanh / softplus activations (smooth).
- :func:`make_smooth_cnn`: conv net with tanh / softplus and average pooling (smooth).
- :func:`make_relu_cnn`: conv + BatchNorm (eval, non-trivial running stats) + ReLU + max-pool
  (piecewise linear).

:data:`NETS` names them with their input shape and head, :data:`BLOCKS` lists the parameter
blocks the engine tests check against the dense oracles of :mod:`tests.oracles`;
``conftest.py`` turns both into fixtures (``block``, ``piecewise_block``, ``smooth_net``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

DTYPE = torch.float64
CLASSES = 3
IMAGE = (2, 8, 8)


def _init(model: nn.Module, seed: int, *, gain: float = 1.5) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    model = model.to(DTYPE)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g, dtype=DTYPE) * gain / math.sqrt(fan_in))
            elif name.endswith("weight"):  # normalization scales
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g, dtype=DTYPE))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g, dtype=DTYPE))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g, dtype=DTYPE))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g, dtype=DTYPE))
    return model.eval()


def make_linear(seed: int = 0, *, in_features: int = 4, classes: int = CLASSES) -> nn.Module:
    """Softmax regression: logits = fc(x)."""
    return _init(nn.Sequential(OrderedDict(fc=nn.Linear(in_features, classes))), seed)


def make_mlp(
    seed: int = 0, *, in_features: int = 4, hidden: Sequence[int] = (5, 4),
    classes: int = CLASSES,
) -> nn.Module:
    """fc1 - tanh - fc2 - softplus - ... - head. Smooth everywhere."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    width = in_features
    for i, h in enumerate(hidden, start=1):
        layers[f"fc{i}"] = nn.Linear(width, h)
        layers[f"act{i}"] = nn.Tanh() if i % 2 else nn.Softplus()
        width = h
    layers["head"] = nn.Linear(width, classes)
    return _init(nn.Sequential(layers), seed)


def make_smooth_cnn(seed: int = 0, *, classes: int = CLASSES) -> nn.Module:
    """conv1 - tanh - avgpool - conv2 - softplus - avgpool - flatten - fc, input (2, 8, 8)."""
    net = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(IMAGE[0], 3, 3, padding=1),
        act1=nn.Tanh(),
        pool1=nn.AvgPool2d(2),
        conv2=nn.Conv2d(3, 4, 3, padding=1),
        act2=nn.Softplus(),
        pool2=nn.AdaptiveAvgPool2d(2),
        flatten=nn.Flatten(),
        fc=nn.Linear(16, classes),
    ))
    return _init(net, seed)


def make_relu_cnn(seed: int = 0, *, classes: int = CLASSES) -> nn.Module:
    """conv1 - bn1 - relu - maxpool - conv2 - bn2 - relu - maxpool - flatten - fc.

    Piecewise linear in every parameter (BatchNorm in eval mode is affine). Input (2, 8, 8).
    """
    net = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(IMAGE[0], 3, 3, padding=1),
        bn1=nn.BatchNorm2d(3),
        relu1=nn.ReLU(),
        pool1=nn.MaxPool2d(2),
        conv2=nn.Conv2d(3, 4, 3, padding=1),
        bn2=nn.BatchNorm2d(4),
        relu2=nn.ReLU(inplace=True),
        pool2=nn.MaxPool2d(2),
        flatten=nn.Flatten(),
        fc=nn.Linear(16, classes),
    ))
    return _init(net, seed)


def make_data(
    seed: int, n: int, shape: Sequence[int] = IMAGE, *, classes: int = CLASSES
) -> tuple[Tensor, Tensor]:
    """n Gaussian inputs of ``shape`` and uniform labels, float64, from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *shape), generator=g, dtype=DTYPE)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def random_like_param(model: nn.Module, name: str, seed: int, *, scale: float = 1.0) -> Tensor:
    """A seeded Gaussian flat vector with the parameter's size."""
    p = model.get_parameter(name)
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(p.numel(), generator=g, dtype=p.dtype)


# --------------------------------------------------------------------------- cases as data


@dataclass(frozen=True)
class Net:
    """A test network: its builder, one example's input shape, the prefix of its classifier
    head and whether it is piecewise linear in every parameter (the exact JVP path)."""

    name: str
    make: Callable[..., nn.Module]
    input_shape: tuple[int, ...]
    head: str
    piecewise_linear: bool

    def model(self, seed: int = 0) -> nn.Module:
        """The net initialised from ``seed`` (float64, eval mode)."""
        return self.make(seed)

    def data(self, seed: int, n: int) -> tuple[Tensor, Tensor]:
        """``n`` examples of this net's input shape (:func:`make_data`)."""
        return make_data(seed, n, self.input_shape)

    def batches(self, sizes: Sequence[int], *, seed: int) -> list[tuple[Tensor, Tensor]]:
        """Batches of ``sizes`` examples, the i-th drawn with seed ``seed + i``."""
        return [self.data(seed + i, n) for i, n in enumerate(sizes)]


NETS: dict[str, Net] = {
    net.name: net
    for net in [
        Net("linear", make_linear, (4,), "fc", piecewise_linear=False),
        Net("mlp", make_mlp, (4,), "head", piecewise_linear=False),
        Net("smooth_cnn", make_smooth_cnn, IMAGE, "fc", piecewise_linear=False),
        Net("relu_cnn", make_relu_cnn, IMAGE, "fc", piecewise_linear=True),
    ]
}

#: The smooth nets with hidden layers (the measure's Lanczos path).
SMOOTH_NETS = ["mlp", "smooth_cnn"]


@dataclass(frozen=True)
class Block:
    """One parameter block of one of :data:`NETS`."""

    net: str
    name: str

    @property
    def id(self) -> str:
        return f"{self.net}-{self.name}"


#: Blocks checked against the dense oracles: weights and biases, first, middle and last
#: layers, and BatchNorm scales and shifts with BatchNorm (eval) downstream.
BLOCKS = [
    Block("mlp", "fc1.weight"),
    Block("mlp", "fc2.weight"),
    Block("mlp", "head.bias"),
    Block("smooth_cnn", "conv1.weight"),
    Block("smooth_cnn", "conv2.weight"),
    Block("smooth_cnn", "fc.weight"),
    Block("relu_cnn", "conv1.weight"),
    Block("relu_cnn", "conv1.bias"),
    Block("relu_cnn", "bn1.weight"),
    Block("relu_cnn", "conv2.weight"),
    Block("relu_cnn", "bn2.weight"),
    Block("relu_cnn", "bn2.bias"),
    Block("relu_cnn", "fc.weight"),
]
