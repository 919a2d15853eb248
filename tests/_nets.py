"""Tiny float64 networks, data and dense Hessian oracles shared by the tests.

Every network is built in eval mode with a deterministic initialisation drawn from its own
``torch.Generator`` (the global RNG is never touched), and is small enough that a dense block
Hessian by ``torch.autograd.functional.hessian`` takes milliseconds. Parameter names are
readable (``conv1.weight``, ``fc.weight``, ...).

- :func:`make_linear`: softmax regression (closed-form Hessian available).
- :func:`make_mlp`: MLP with tanh / softplus activations (smooth).
- :func:`make_smooth_cnn`: conv net with tanh / softplus and average pooling (smooth).
- :func:`make_relu_cnn`: conv + BatchNorm (eval, non-trivial running stats) + ReLU + max-pool
  (piecewise linear).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

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


def block_loss(
    model: nn.Module, batches: Sequence[tuple[Tensor, Tensor]], name: str, *,
    reduction: str = "mean",
):
    """The mean cross-entropy over all examples as a function of the flat block ``name``."""
    p = model.get_parameter(name)
    total = sum(x.shape[0] for x, _ in batches)

    def loss(w_flat: Tensor) -> Tensor:
        w = w_flat.reshape(p.shape)
        out = 0.0
        for x, y in batches:
            logits = functional_call(model, {name: w}, (x,))
            out = out + F.cross_entropy(logits, y, reduction="sum")
        return out / total if reduction == "mean" else out

    return loss


def dense_block_hessian(
    model: nn.Module, batches: Sequence[tuple[Tensor, Tensor]], name: str
) -> Tensor:
    """Independent oracle: torch.autograd.functional.hessian of the flat-block loss."""
    w = model.get_parameter(name).detach().reshape(-1).clone()
    return torch.autograd.functional.hessian(block_loss(model, batches, name), w)


def dense_per_example_hessians(model: nn.Module, x: Tensor, y: Tensor, name: str) -> Tensor:
    """(N, d, d) stack of per-example dense block Hessians (a loop: oracle, not engine)."""
    return torch.stack([
        dense_block_hessian(model, [(x[n : n + 1], y[n : n + 1])], name)
        for n in range(x.shape[0])
    ])


def known_spectrum(
    eigenvalues: Sequence[float] | Tensor, seed: int, *, dtype: torch.dtype = DTYPE
) -> Tensor:
    """Q diag(eigenvalues) Q^T with Q a seeded random orthogonal matrix."""
    lam = torch.as_tensor(eigenvalues, dtype=dtype)
    d = lam.numel()
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=dtype))
    q = q * torch.sign(torch.diagonal(r))
    return (q * lam) @ q.T


def positive_part(matrix: Tensor) -> Tensor:
    """H^+ by eigh: keep the positive eigenvalues."""
    lam, vec = torch.linalg.eigh(matrix)
    return (vec * lam.clamp_min(0)) @ vec.T
