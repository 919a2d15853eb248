"""The factory loader (hessaudit.inputs.factories) and the model-kind dispatch of
hessaudit.inputs.models: which spec goes where, what a factory is called with, and how a new
kind plugs in."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from hessaudit.errors import HessauditError
from hessaudit.inputs import models
from hessaudit.inputs.factories import build_factory, resolve_factory
from hessaudit.inputs.models import (
    MODEL_KINDS,
    ModelKind,
    build_model,
    is_factory_spec,
    load_model,
    model_kind,
)
from hessaudit.inputs.timm_models import build_timm

SOURCE = textwrap.dedent(
    """
    from torch import nn

    WIDTH = 3
    CALLS = []

    def with_classes(num_classes=10):
        CALLS.append(num_classes)
        return nn.Linear(WIDTH, num_classes)

    def fixed():
        CALLS.append(None)
        return nn.Linear(WIDTH, 4)

    class Zoo:
        @staticmethod
        def make(**kwargs):
            return nn.Linear(WIDTH, kwargs.get("num_classes", 2))

    NOT_CALLABLE = 5
    """
)


@pytest.fixture
def factory(tmp_path: Path) -> Path:
    path = tmp_path / "zoo_file.py"
    path.write_text(SOURCE)
    return path


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("net.py:make", True),
        ("pkg.mod:make", True),
        ("./dir/net.py:Zoo.make", True),
        ("resnet18", False),
        ("resnet18.a1_in1k", False),
        ("hf-hub:timm/resnet18.a1_in1k", False),
        ("hf_hub:timm/resnet18", False),
        ("local-dir:/models/resnet", False),
    ],
)
def test_is_factory_spec(spec: str, expected: bool) -> None:
    assert is_factory_spec(spec) is expected
    assert model_kind(spec).name == ("factory" if expected else "timm")


def test_the_kinds_table_ends_with_timm() -> None:
    assert [kind.name for kind in MODEL_KINDS] == ["huggingface", "factory", "timm"]
    assert MODEL_KINDS[1].build is build_factory and MODEL_KINDS[-1].build is build_timm


def test_resolve_a_file_factory_and_its_folder(factory: Path) -> None:
    fn, folder = resolve_factory(f"{factory}:with_classes")
    assert callable(fn) and folder == str(factory.resolve().parent)
    again, _ = resolve_factory(f"{factory}:with_classes")
    assert again is fn  # the file is imported once
    assert str(factory.parent) not in sys.path  # its folder is on sys.path only while in use
    method, _ = resolve_factory(f"{factory}:Zoo.make")  # a dotted name
    assert isinstance(method(num_classes=6), nn.Linear)


def test_resolve_a_module_factory(tmp_path: Path, monkeypatch) -> None:
    pkg = tmp_path / "pkg_hessaudit_loader_t"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(SOURCE)
    monkeypatch.chdir(tmp_path)
    try:
        fn, folder = resolve_factory("pkg_hessaudit_loader_t.nets:fixed")
        assert folder == os.getcwd() and isinstance(fn(), nn.Linear)
    finally:
        for name in [n for n in sys.modules if n.startswith("pkg_hessaudit_loader_t")]:
            del sys.modules[name]


def test_two_files_of_the_same_name_do_not_collide(tmp_path: Path) -> None:
    for width, sub in ((3, "a"), (5, "b")):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "net.py").write_text(SOURCE.replace("WIDTH = 3", f"WIDTH = {width}"))
    assert build_factory(f"{tmp_path}/a/net.py:fixed").in_features == 3
    assert build_factory(f"{tmp_path}/b/net.py:fixed").in_features == 5


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing", r"has no function 'missing' \(callables there: .*with_classes"),
        ("NOT_CALLABLE", r"'NOT_CALLABLE' in .* is not callable"),
        ("", "a factory is written path/to/file.py:function"),
    ],
)
def test_resolve_refuses_what_is_not_a_factory(factory: Path, name: str, message: str) -> None:
    with pytest.raises(HessauditError, match=message):
        resolve_factory(f"{factory}:{name}")


def test_resolve_refuses_missing_files_and_folders(tmp_path: Path) -> None:
    with pytest.raises(HessauditError, match="does not exist"):
        resolve_factory(f"{tmp_path}/gone.py:make")
    (tmp_path / "dir.py").mkdir()
    with pytest.raises(HessauditError, match="is not a file"):
        resolve_factory(f"{tmp_path}/dir.py:make")


def test_num_classes_is_passed_only_when_accepted(factory: Path) -> None:
    assert build_factory(f"{factory}:with_classes", num_classes=7).out_features == 7
    assert build_factory(f"{factory}:Zoo.make", num_classes=6).out_features == 6  # **kwargs
    assert build_factory(f"{factory}:fixed").out_features == 4
    # a factory without num_classes: its head must match, unless check_classes is off
    with pytest.raises(HessauditError, match=r"--num-classes 9: the factory .* takes no "
                       r"num_classes argument and builds a head with 4 outputs"):
        build_factory(f"{factory}:fixed", num_classes=9)
    assert build_factory(f"{factory}:fixed", num_classes=9, check_classes=False).out_features == 4


def test_a_new_kind_plugs_in_with_one_table_entry(monkeypatch) -> None:
    calls: list[tuple[str, dict]] = []

    def build(spec: str, **kwargs) -> nn.Module:
        calls.append((spec, kwargs))
        return nn.Sequential(nn.Linear(2, kwargs["num_classes"] or 3))

    kind = ModelKind("folder", lambda spec: spec.startswith("hf-dir="), build)
    monkeypatch.setattr(models, "MODEL_KINDS", (kind, *MODEL_KINDS))
    assert build_model("  hf-dir=/m ", allow_hub=True)[0].out_features == 3
    assert calls[-1] == ("hf-dir=/m", {"num_classes": None, "allow_hub": True,
                                       "check_classes": True})
    # load_model rebuilds with the checkpoint head's classes through the same kind
    tensors = {"0.weight": torch.zeros(5, 2), "0.bias": torch.zeros(5)}
    model = load_model("hf-dir=/m", tensors)
    assert model[0].out_features == 5 and not model.training
    assert calls[-1] == ("hf-dir=/m", {"num_classes": 5, "allow_hub": False,
                                       "check_classes": False})
