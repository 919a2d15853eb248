"""Shared fixtures: a tiny factory model written to a temporary file, checkpoint pairs built
from it (and from timm's tiny ``test_resnet``), small image data on disk (all from
:mod:`tests.files`), and the engine tests' nets and blocks (from :mod:`tests.cases`).

Nothing here downloads anything; timm models are built with ``pretrained=False``.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from tests import cases
from tests.files import TINY_FACTORY_SOURCE, CheckpointPair, perturbed, write_png

# The suite runs many tiny models: on a 2-core machine one intra-op thread is several times
# faster than two competing ones, and keeps timings stable when other processes share the cores.
torch.set_num_threads(1)


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


# --------------------------------------------------------------------------- nets and blocks


@pytest.fixture(params=cases.BLOCKS, ids=lambda block: block.id)
def block(request) -> cases.Block:
    """Each of :data:`tests.cases.BLOCKS`."""
    return request.param


@pytest.fixture(
    params=[b for b in cases.BLOCKS if cases.NETS[b.net].piecewise_linear],
    ids=lambda block: block.id,
)
def piecewise_block(request) -> cases.Block:
    """Each block of a piecewise-linear net (where the Gauss-Newton forms are exact)."""
    return request.param


@pytest.fixture(params=cases.SMOOTH_NETS)
def smooth_net(request) -> cases.Net:
    """Each smooth net with hidden layers, by name (ids ``mlp``, ``smooth_cnn``)."""
    return cases.NETS[request.param]
