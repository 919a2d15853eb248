"""Shared fixtures: a tiny factory model written to a temporary file, checkpoint pairs built
from it (and from timm's tiny ``test_resnet``), and small image data on disk.

Nothing here downloads anything; timm models are built with ``pretrained=False``.
"""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

# The suite runs many tiny models: on a 2-core machine one intra-op thread is several times
# faster than two competing ones, and keeps timings stable when other processes share the cores.
torch.set_num_threads(1)

#: Source of the factory file written by :func:`factory_file`. ``TinyNet`` takes (N, C, 8, 8)
#: images (any size works: it pools to 2x2), has conv1 / bn1 / fc and a ``num_classes`` head.
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


@pytest.fixture
def factory_file(tmp_path: Path) -> Path:
    """The tiny factory written to ``tmp_path/tinynet.py``."""
    path = tmp_path / "tinynet.py"
    path.write_text(TINY_FACTORY_SOURCE)
    return path


@pytest.fixture
def factory_spec(factory_file: Path) -> str:
    """``--model`` spec of the tiny factory: ``/tmp/.../tinynet.py:make_tiny``."""
    return f"{factory_file}:make_tiny"


def _import_file(path: Path) -> object:
    name = f"_test_factory_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tiny_net(factory_file: Path) -> Callable[..., nn.Module]:
    """``tiny_net(num_classes=10, in_chans=1, seed=0)`` -> a fresh seeded ``TinyNet`` (eval)."""
    module = _import_file(factory_file)

    def make(num_classes: int = 10, in_chans: int = 1, seed: int = 0) -> nn.Module:
        return module.make_tiny(num_classes=num_classes, in_chans=in_chans, seed=seed).eval()

    return make


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


@pytest.fixture
def tiny_checkpoints(tmp_path: Path, factory_spec: str, tiny_net) -> CheckpointPair:
    """TinyNet pretrained with a 5-class head, fine-tuned (perturbed) with a 10-class head,
    as safetensors files; works with ``--data digits``."""
    from hessaudit.inputs.checkpoints import save_checkpoint

    pre = tiny_net(num_classes=5, seed=0).state_dict()
    ft_model = tiny_net(num_classes=10, seed=1)
    ft = perturbed(pre, seed=2)
    ft["fc.weight"] = ft_model.fc.weight.detach().clone()
    ft["fc.bias"] = ft_model.fc.bias.detach().clone()
    pre_path, ft_path = tmp_path / "pretrained.safetensors", tmp_path / "finetuned.safetensors"
    save_checkpoint(pre_path, pre)
    save_checkpoint(ft_path, ft)
    return CheckpointPair(factory_spec, pre_path, ft_path, pre, ft, 10)


@pytest.fixture(scope="session")
def timm_resnet_pair(tmp_path_factory) -> CheckpointPair:
    """timm's tiny ``test_resnet`` (0.37 M parameters): pretrained with 5 classes, fine-tuned
    (perturbed backbone, new head) with 4 classes, as safetensors files."""
    import timm

    from hessaudit.inputs.checkpoints import save_checkpoint

    folder = tmp_path_factory.mktemp("timm_pair")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        pre_model = timm.create_model("test_resnet", pretrained=False, num_classes=5)
        ft_model = timm.create_model("test_resnet", pretrained=False, num_classes=4)
    pre = pre_model.state_dict()
    ft = perturbed(pre, seed=3)
    ft["fc.weight"] = ft_model.fc.weight.detach().clone()
    ft["fc.bias"] = ft_model.fc.bias.detach().clone()
    save_checkpoint(folder / "pre.safetensors", pre)
    save_checkpoint(folder / "ft.safetensors", ft)
    return CheckpointPair(
        "test_resnet", folder / "pre.safetensors", folder / "ft.safetensors", pre, ft, 4
    )


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


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """ImageFolder with classes ``cat`` (3 RGB images) and ``dog`` (2 grayscale), 6x5 px."""
    root = tmp_path / "images"
    for i in range(3):
        write_png(root / "cat" / f"c{i}.png", value=10 * i)
    for i in range(2):
        write_png(root / "dog" / f"d{i}.png", mode="L", value=50 + i)
    return root


@pytest.fixture
def png_writer() -> Callable[..., Path]:
    """:func:`write_png` as a fixture: ``png_writer(path, size=(w, h), mode="RGB", value=128)``."""
    return write_png


@pytest.fixture
def perturb() -> Callable[..., dict[str, torch.Tensor]]:
    """:func:`perturbed` as a fixture: ``perturb(state, seed=..., scale=0.05)``."""
    return perturbed


@pytest.fixture(scope="session")
def digits_pretrained(tmp_path_factory) -> str:
    """``hessaudit.zoo:digits_cnn`` pretrained on the 5-class ``digits-pretrain`` task, shared by
    every test that fine-tunes; the path of its safetensors file."""
    from hessaudit.zoo import pretrain_digits_cnn

    path = tmp_path_factory.mktemp("digits_pretrained") / "pretrained.safetensors"
    accuracy = pretrain_digits_cnn(path, epochs=3)
    assert accuracy > 0.7  # the pretraining task was learned
    return str(path)
