"""Layerwise projection onto Frobenius balls, and the per-layer radii."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from hessaudit.errors import HessauditError
from hessaudit.robust.projection import (
    constrainable_names,
    distances,
    layer_radii,
    load_radius_table,
    project_to_balls_,
)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    scale=st.floats(0.01, 100.0),
    radius=st.floats(1e-3, 10.0),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_projection_lands_inside_every_ball(seed, scale, radius, dtype) -> None:
    g = torch.Generator().manual_seed(seed)
    shapes = {"a": (3, 4), "b": (2, 2, 3, 3), "c": (5,), "head": (4, 3)}
    params = {n: torch.randn(s, generator=g, dtype=dtype) * scale for n, s in shapes.items()}
    anchors = {n: torch.randn(s, generator=g, dtype=dtype) for n, s in shapes.items()
               if n != "head"}
    radii = {"a": radius, "b": radius * 2, "c": radius / 2, "head": radius}
    before = {n: p.clone() for n, p in params.items()}
    out = project_to_balls_(params, anchors, radii)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for name, r in radii.items():
        anchor = anchors.get(name, torch.zeros_like(params[name]))
        d_before = float(torch.linalg.vector_norm((before[name] - anchor).double()))
        d_after = float(torch.linalg.vector_norm((params[name] - anchor).double()))
        assert d_after <= r * (1 + tol) + tol
        assert out[name] == pytest.approx(min(d_before, r), rel=1e-6)
        if d_before <= r:  # the identity inside the ball: not a single bit changes
            assert torch.equal(params[name], before[name])
        else:  # the Euclidean projection: along the same direction, onto the sphere
            expected = anchor + (before[name] - anchor) * (r / d_before)
            torch.testing.assert_close(params[name], expected, rtol=tol * 10, atol=tol * 10)


def test_projection_on_a_module_in_place() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    anchors = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        model[0].weight.add_(10.0)
        model[1].weight.add_(1e-4)
    weight_ptr = model[0].weight.data_ptr()
    untouched = model[1].weight.detach().clone()
    dist = project_to_balls_(model, anchors, {"0.weight": 0.5, "1.weight": 0.5})
    assert model[0].weight.data_ptr() == weight_ptr
    assert dist["0.weight"] == 0.5
    assert torch.equal(model[1].weight, untouched)
    d = distances(model, anchors, ["0.weight", "1.weight"])
    assert d["0.weight"] == pytest.approx(0.5, rel=1e-6)
    assert d["1.weight"] < 0.5


def test_projection_inside_ball_is_identity_bitwise() -> None:
    w = torch.randn(10, 10)
    a = w + 1e-3 * torch.randn(10, 10)
    before = w.clone()
    project_to_balls_({"w": w}, {"w": a}, {"w": 1.0})
    assert torch.equal(w, before)


RESNET_NAMES = [
    "conv1.weight",
    "layer1.0.conv1.weight",
    "layer1.0.conv2.weight",
    "layer2.0.conv1.weight",
    "layer2.0.downsample.0.weight",
    "layer3.1.conv2.weight",
    "layer4.0.conv1.weight",
    "fc.weight",
]


def test_radii_by_resnet_stage() -> None:
    radii = layer_radii(RESNET_NAMES, radius=2.0, growth=1.5, head_radius=7.0,
                        head_names=["fc.weight"], model_name="resnet18")
    assert radii == {
        "conv1.weight": 2.0,  # the stem is stage 0 and shares layer1's radius
        "layer1.0.conv1.weight": 2.0,
        "layer1.0.conv2.weight": 2.0,
        "layer2.0.conv1.weight": 3.0,
        "layer2.0.downsample.0.weight": 3.0,
        "layer3.1.conv2.weight": 4.5,
        "layer4.0.conv1.weight": 6.75,
        "fc.weight": 7.0,
    }
    # no head radius: the new head is unconstrained
    assert "fc.weight" not in layer_radii(RESNET_NAMES, radius=1.0, head_names=["fc.weight"])
    # a pretrained head kept after the last stage shares the last stage's radius
    assert layer_radii(RESNET_NAMES, radius=1.0, growth=2.0)["fc.weight"] == 8.0


def test_radii_for_a_timm_resnet() -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet18", pretrained=False, num_classes=3)
    names = constrainable_names(model)
    radii = layer_radii(names, radius=1.0, growth=2.0, head_radius=5.0, head_names=["fc.weight"])
    assert radii["conv1.weight"] == 1.0
    assert {radii[n] for n in names if n.startswith("layer1.")} == {1.0}
    assert {radii[n] for n in names if n.startswith("layer4.")} == {8.0}
    assert radii["fc.weight"] == 5.0
    assert all(model.get_parameter(n).ndim >= 2 for n in radii)


def test_radii_by_layer_order_for_other_models() -> None:
    names = ["features.0.weight", "features.3.weight", "blocks.attn.weight", "head.weight"]
    radii = layer_radii(names, radius=1.0, growth=2.0, head_radius=0.5,
                        head_names=["head.weight"])
    assert radii == {"features.0.weight": 1.0, "features.3.weight": 2.0,
                     "blocks.attn.weight": 4.0, "head.weight": 0.5}


def test_radius_table(tmp_path) -> None:
    (tmp_path / "r.json").write_text(
        json.dumps({"layer1.*": 0.5, "layer2.0.conv1.weight": None, "layer*": 9.0})
    )
    (tmp_path / "r.csv").write_text("pattern,radius\nlayer1.*,0.5\nlayer2.0.conv1.weight,\n"
                                    "layer*,9\n")
    (tmp_path / "l.json").write_text(json.dumps(
        [{"pattern": "layer1.*", "radius": 0.5}, {"pattern": "layer2.0.conv1.weight"},
         {"pattern": "layer*", "radius": 9}]))
    for name in ("r.json", "r.csv", "l.json"):
        table = load_radius_table(tmp_path / name)
        radii = layer_radii(RESNET_NAMES, radius=1.0, table=table)
        assert radii["layer1.0.conv1.weight"] == 0.5  # first matching pattern wins
        assert "layer2.0.conv1.weight" not in radii  # null / empty: unconstrained
        assert radii["layer3.1.conv2.weight"] == 9.0
        assert radii["conv1.weight"] == 1.0  # unmatched: the default rule
    with pytest.raises(HessauditError, match="matches no constrained tensor"):
        layer_radii(RESNET_NAMES, radius=1.0, table=[("nothing.*", 1.0)])
    (tmp_path / "bad.json").write_text(json.dumps({"layer1.*": -1}))
    with pytest.raises(HessauditError, match="--radius-table"):
        load_radius_table(tmp_path / "bad.json")
    (tmp_path / "bad.csv").write_text("name,value\na,1\n")
    with pytest.raises(HessauditError, match="pattern,radius"):
        load_radius_table(tmp_path / "bad.csv")
    with pytest.raises(HessauditError, match="does not exist"):
        load_radius_table(tmp_path / "missing.json")
    (tmp_path / "r.yaml").write_text("a: 1")
    with pytest.raises(HessauditError, match="unknown table type"):
        load_radius_table(tmp_path / "r.yaml")


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"radius": 0.0}, "--radius"),
        ({"radius": -1.0}, "--radius"),
        ({"radius": float("inf")}, "--radius"),
        ({"radius": 1.0, "growth": 0.0}, "--radius-growth"),
        ({"radius": 1.0, "head_radius": -2.0}, "--head-radius"),
    ],
)
def test_radii_reject_bad_values(kwargs, flag) -> None:
    with pytest.raises(HessauditError, match=flag):
        layer_radii(RESNET_NAMES, **kwargs)


def test_constrainable_names() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 3))
    assert constrainable_names(model) == ["0.weight", "3.weight"]
