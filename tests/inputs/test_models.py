"""Model specs -> modules, weight loading, heads, input configs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from hessaudit.errors import HessauditError
from hessaudit.inputs.checkpoints import load_checkpoint
from hessaudit.inputs.models import (
    InputConfig,
    build_model,
    classifier_names,
    infer_num_classes,
    input_config,
    load_model,
    load_weights,
)

# ------------------------------------------------------------------ factories


def test_factory_file_spec(factory_spec: str) -> None:
    model = build_model(factory_spec, num_classes=3)
    assert isinstance(model, nn.Module)
    assert model.fc.out_features == 3
    assert build_model(factory_spec).fc.out_features == 10  # the factory's default


def test_factory_relative_path_and_sibling_import(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "helpers_for_factory_xyz.py").write_text("WIDTH = 7\n")
    (tmp_path / "net.py").write_text(
        textwrap.dedent(
            """
            from torch import nn
            import helpers_for_factory_xyz

            def make(**kwargs):
                return nn.Linear(helpers_for_factory_xyz.WIDTH, kwargs.get("num_classes", 2))
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    model = build_model("./net.py:make", num_classes=4)
    assert model.in_features == 7 and model.out_features == 4  # **kwargs receives num_classes
    assert str(tmp_path) not in sys.path
    sys.modules.pop("helpers_for_factory_xyz", None)


def test_package_module_spec(tmp_path: Path, monkeypatch) -> None:
    pkg = tmp_path / "pkg_hessaudit_test_a"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(
        "from torch import nn\n\ndef make(num_classes=10):\n    return nn.Linear(3, num_classes)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert build_model("pkg_hessaudit_test_a.nets:make", num_classes=6).out_features == 6
    finally:
        for name in ("pkg_hessaudit_test_a.nets", "pkg_hessaudit_test_a"):
            sys.modules.pop(name, None)


def test_package_module_found_from_the_current_folder(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "cwd_factory_mod_b.py").write_text(
        "from torch import nn\n\ndef make():\n    return nn.Linear(2, 10)\n"
    )
    monkeypatch.chdir(tmp_path)
    try:
        assert build_model("cwd_factory_mod_b:make").out_features == 10
    finally:
        sys.modules.pop("cwd_factory_mod_b", None)


@pytest.mark.parametrize(
    ("suffix", "match"),
    [
        (":make_raising", r"the factory raised ValueError: bad config: depth must be even"),
        (":make_not_module", "returned a str, not a torch.nn.Module"),
        (":no_such_fn", r"has no function 'no_such_fn'.*make_tiny"),
        (":TINY", "has no function"),
    ],
)
def test_factory_errors(factory_file: Path, suffix: str, match: str) -> None:
    with pytest.raises(HessauditError, match=match):
        build_model(f"{factory_file}{suffix}")


def test_factory_file_errors(tmp_path: Path) -> None:
    with pytest.raises(HessauditError, match="does not exist"):
        build_model(f"{tmp_path / 'missing.py'}:make")
    broken = tmp_path / "broken.py"
    broken.write_text("def make(:\n")
    with pytest.raises(HessauditError, match=r"importing .*broken\.py failed: SyntaxError"):
        build_model(f"{broken}:make")
    with pytest.raises(HessauditError, match="no module named 'no_such_pkg_qq'"):
        build_model("no_such_pkg_qq.nets:make")


def test_factory_without_num_classes(factory_file: Path) -> None:
    spec = f"{factory_file}:make_fixed"
    assert build_model(spec, num_classes=10).fc.out_features == 10
    with pytest.raises(HessauditError, match=r"takes no num_classes argument .* 10 outputs"):
        build_model(spec, num_classes=3)


# ------------------------------------------------------------------ timm


def test_timm_name_is_built_offline() -> None:
    model = build_model("test_resnet", num_classes=4)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert model.get_classifier().out_features == 4
    assert classifier_names(model) == ["fc.weight", "fc.bias"]


def test_unknown_timm_name_suggests_close_names() -> None:
    with pytest.raises(HessauditError, match="not a timm model name") as info:
        build_model("resnet181")
    assert "did you mean" in str(info.value) and "resnet18" in str(info.value)


def test_hub_names_need_allow_hub() -> None:
    with pytest.raises(HessauditError, match="--allow-hub"):
        build_model("hf-hub:timm/resnet18.a1_in1k")


def test_bad_num_classes() -> None:
    with pytest.raises(HessauditError, match="--num-classes 0"):
        build_model("test_resnet", num_classes=0)


def test_importing_the_loading_layer_does_not_import_timm() -> None:
    code = (
        "import sys, hessaudit.inputs.checkpoints, hessaudit.inputs.models\n"
        "import hessaudit.inputs.data, hessaudit.audit.layers\n"
        "assert 'timm' not in sys.modules, 'timm imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ------------------------------------------------------------------ heads and classes


class _SqueezeLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 1))
        self.classifier = nn.Sequential(nn.Dropout(), nn.Conv2d(8, 6, 1), nn.AdaptiveAvgPool2d(1))


class _Wrapper(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.model = inner


def test_classifier_names_fallbacks(tiny_net) -> None:
    assert classifier_names(tiny_net()) == ["fc.weight", "fc.bias"]
    assert classifier_names(_SqueezeLike()) == ["classifier.1.weight", "classifier.1.bias"]
    assert classifier_names(nn.Sequential(nn.ReLU())) == []
    mlp = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3, bias=False))
    assert classifier_names(mlp) == ["2.weight"]


def test_infer_num_classes() -> None:
    tensors = {
        "conv.weight": torch.zeros(8, 3, 3, 3),
        "fc.weight": torch.zeros(7, 8),
        "fc.bias": torch.zeros(7),
        "proj.weight": torch.zeros(4, 8),
    }
    assert infer_num_classes(tensors) == 4  # last 2-D *.weight
    assert infer_num_classes(tensors, head_names=["fc.weight", "fc.bias"]) == 7
    assert infer_num_classes(tensors, head_names=["head.weight"]) is None
    assert infer_num_classes({"conv.weight": torch.zeros(8, 3, 3, 3)}) is None
    assert infer_num_classes({"c.weight": torch.zeros(6, 8, 1, 1)}, head_names=["c.weight"]) == 6


# ------------------------------------------------------------------ weights


def test_load_weights_mismatch_message(tiny_net) -> None:
    model = tiny_net(num_classes=10)
    state = dict(model.state_dict())
    state["fc.weight"] = torch.zeros(5, 16)
    state.pop("conv1.bias")
    state["extra.weight"] = torch.zeros(2, 2)
    with pytest.raises(HessauditError) as info:
        load_weights(model, state, source="ft.safetensors")
    text = str(info.value)
    assert "ft.safetensors does not fit the model" in text
    assert "fc.weight (5, 16) vs (10, 16)" in text
    assert "conv1.bias" in text and "extra.weight" in text
    assert "another architecture" in text and "\n" not in text


def test_load_weights_tolerates_missing_num_batches_tracked(tiny_net) -> None:
    source = tiny_net(seed=3)
    state = {k: v for k, v in source.state_dict().items() if "num_batches" not in k}
    model = tiny_net(seed=4)
    load_weights(model, state, source="x")
    assert torch.equal(model.conv1.weight, source.conv1.weight)


def test_load_weights_into_a_wrapped_model(tiny_net) -> None:
    source = tiny_net(seed=5)
    wrapped = _Wrapper(tiny_net(seed=6))
    load_weights(wrapped, source.state_dict(), source="x")  # names lack the "model." prefix
    assert torch.equal(wrapped.model.fc.weight, source.fc.weight)


def test_load_model_infers_classes_and_returns_eval_mode(tiny_checkpoints) -> None:
    ft = load_checkpoint(tiny_checkpoints.finetuned)
    model = load_model(tiny_checkpoints.spec, ft.tensors, source=str(tiny_checkpoints.finetuned))
    assert not model.training
    assert model.fc.out_features == 10
    for name, value in model.state_dict().items():
        assert torch.equal(value, tiny_checkpoints.finetuned_state[name])
    pre = load_model(tiny_checkpoints.spec, load_checkpoint(tiny_checkpoints.pretrained).tensors)
    assert pre.fc.out_features == 5


def test_load_model_num_classes_mismatch_names_both(tiny_checkpoints) -> None:
    tensors = load_checkpoint(tiny_checkpoints.finetuned).tensors
    with pytest.raises(HessauditError, match=r"--num-classes 7 disagrees with ft\.st.* 10 outputs"):
        load_model(tiny_checkpoints.spec, tensors, num_classes=7, source="ft.st")
    assert load_model(tiny_checkpoints.spec, tensors, num_classes=10).fc.out_features == 10


def test_load_model_fixed_factory_reports_head_shape(tiny_checkpoints, factory_file) -> None:
    tensors = load_checkpoint(tiny_checkpoints.pretrained).tensors  # 5-class head
    with pytest.raises(HessauditError, match=r"fc.weight \(5, 16\) vs \(10, 16\)"):
        load_model(f"{factory_file}:make_fixed", tensors, source="pre")


def test_load_model_wrong_architecture(timm_resnet_pair, factory_spec) -> None:
    tensors = load_checkpoint(timm_resnet_pair.finetuned).tensors
    with pytest.raises(HessauditError, match="does not fit the model"):
        load_model(factory_spec, tensors, source="resnet.safetensors")


def test_load_model_timm_pair(timm_resnet_pair) -> None:
    tensors = load_checkpoint(timm_resnet_pair.finetuned).tensors
    model = load_model("test_resnet", tensors)
    assert model.get_classifier().out_features == 4 and not model.training
    cfg = input_config(model, input_size=32)
    # timm's resolved config: test_resnet's own interpolation and crop_pct
    assert cfg == InputConfig(
        3, (32, 32), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear", 0.95, "center"
    )
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 4)


# ------------------------------------------------------------------ input configs


def test_input_config_for_factory_models(tiny_net) -> None:
    assert input_config(tiny_net()) == InputConfig(1, None, None, None)
    assert input_config(tiny_net(in_chans=3)).channels == 3
    # a model whose first layer is not a convolution: channels unknown, data fed as it is
    assert input_config(nn.Linear(4, 2)) == InputConfig(None, None, None, None)
    cfg = input_config(tiny_net(), input_size=(12, 10), mean=0.5, std=[0.25])
    assert cfg == InputConfig(1, (12, 10), (0.5,), (0.25,))
    assert cfg.to_dict() == {
        "channels": 1, "size": [12, 10], "mean": [0.5], "std": [0.25],
        "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "squash",
    }


def test_input_config_for_timm_and_overrides() -> None:
    model = build_model("test_resnet", num_classes=2)
    cfg = input_config(model)
    assert cfg.channels == 3 and cfg.size == (160, 160) and cfg.mean == (0.5, 0.5, 0.5)
    assert input_config(model, input_size=64, mean=(0, 0, 0), std=(1, 1, 1)) == InputConfig(
        3, (64, 64), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bilinear", 0.95, "center"
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_size": 0}, "--input-size"),
        ({"input_size": (3, 4, 5)}, "--input-size"),
        ({"input_size": "big"}, "--input-size"),
        ({"channels": 0}, "channels 0"),
        ({"mean": (0.1, 0.2)}, "--mean has 2 values"),
        ({"std": (0.0,)}, "--std"),
        ({"mean": "abc"}, "--mean"),
    ],
)
def test_input_config_errors(tiny_net, kwargs: dict, match: str) -> None:
    with pytest.raises(HessauditError, match=match):
        input_config(tiny_net(), **kwargs)


def test_resnet18_runs_on_digits_at_32(tmp_path: Path) -> None:
    """The documented quick start: digits fed to a timm resnet18 at --input-size 32."""
    from hessaudit.inputs.checkpoints import save_checkpoint
    from hessaudit.inputs.data import load_data

    model = build_model("resnet18", num_classes=10)
    path = tmp_path / "r18.safetensors"
    save_checkpoint(path, model.state_dict())
    loaded = load_model("resnet18", load_checkpoint(path).tensors, source=str(path))
    assert loaded.fc.out_features == 10
    cfg = input_config(loaded, input_size=32)
    data = load_data("digits", role="eval", input_config=cfg, samples=8)
    assert data.x.shape == (8, 3, 32, 32)
    with torch.no_grad():
        logits = loaded(data.x)
    assert logits.shape == (8, 10) and bool(torch.isfinite(logits).all())
