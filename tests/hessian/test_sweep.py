"""The exact path's shared reverse passes (hessaudit.hessian.sweep) against dense float64
Hessians and against the per-layer JVP path, and every case where it must fall back."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hessaudit.hessian import (
    BlockGaussNewton,
    LayerwiseGaussNewton,
    OutputJacobianGaussNewton,
    confirm_piecewise_linear,
    gauss_newton_probe_forms,
    is_piecewise_linear,
    per_example_gauss_newton_forms,
)
from tests.cases import _init, make_data, make_relu_cnn
from tests.engine_nets import HiddenGelu, make_resnet
from tests.oracles import dense_block_hessian, dense_per_example_hessians

RTOL = 1e-10


def _vectors(model: nn.Module, seed: int = 5, scale: float = 0.3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: scale * torch.randn(p.shape, generator=g, dtype=p.dtype)
            for n, p in model.named_parameters() if p.ndim >= 2}


def test_forms_equal_dense_per_example_hessians_and_the_per_layer_path():
    model = make_resnet()
    x, y = make_data(1, 6)
    vectors = _vectors(model)
    gn = LayerwiseGaussNewton(model, vectors)
    for name, v in vectors.items():
        forms = gn.forms(x, y, name, v)
        dense = dense_per_example_hessians(model, x, y, name)
        flat = v.reshape(-1)
        expected = torch.einsum("i,nij,j->n", flat, dense, flat)
        assert torch.allclose(forms, expected, rtol=RTOL, atol=1e-14), name
        per_layer = per_example_gauss_newton_forms(model, x, y, name, v)
        assert torch.allclose(forms, per_layer, rtol=1e-12, atol=1e-15), name
    assert gn.fallbacks == {}
    assert gn.reverse_passes == 3  # one batched pass over the 3 classes served every layer


def test_spectrum_operator_and_probe_forms_match_dense_and_per_layer():
    model = make_resnet()
    batches = [make_data(1, 4), make_data(2, 3)]
    vectors = _vectors(model)
    gn = LayerwiseGaussNewton(model, vectors)
    g = torch.Generator().manual_seed(3)
    for name in vectors:
        op = gn.block(batches, name)
        assert isinstance(op, OutputJacobianGaussNewton)
        dense = dense_block_hessian(model, batches, name)
        U = torch.randn(2, op.size, generator=g, dtype=torch.float64)
        assert torch.allclose(op.matvec(U), U @ dense.T, rtol=RTOL, atol=1e-13), name
        reference = BlockGaussNewton(model, batches, name).matvec(U[0])
        assert torch.allclose(op.matvec(U[0]), reference, rtol=1e-12, atol=1e-14), name
        for x, _ in batches:
            probes = gn.probe_forms(x, name, U)
            expected = gauss_newton_probe_forms(model, x, name, U)
            assert torch.allclose(probes, expected, rtol=1e-12, atol=1e-14), name
    assert gn.reverse_passes == 2 * 3  # all layers fit one group: one pass per batch


def test_spectrum_group_respects_the_memory_budget():
    model = make_resnet()
    batches = [make_data(1, 4)]
    vectors = _vectors(model)
    gn = LayerwiseGaussNewton(model, vectors, memory_budget=4 * 3 * 4 * 64 * 8)
    for name in vectors:
        op = gn.block(batches, name)
        dense = dense_block_hessian(model, batches, name)
        u = torch.ones(op.size, dtype=torch.float64)
        assert torch.allclose(op.matvec(u), dense @ u, rtol=RTOL, atol=1e-13)
    # conv layers take 3 classes x 4 examples x 192 outputs x 8 bytes each: one per group
    assert gn.reverse_passes > 3 * 2
    tiny = LayerwiseGaussNewton(model, vectors, memory_budget=1)
    assert isinstance(tiny.block(batches, "stem.weight"), BlockGaussNewton)


@pytest.mark.parametrize("make", [make_relu_cnn, make_resnet, HiddenGelu])
def test_confirm_matches_the_per_layer_check(make):
    model = make() if make is not HiddenGelu else _init(HiddenGelu(), 0)
    assert is_piecewise_linear(model)  # the GELU hides in a forward
    x, y = make_data(1, 5)
    vectors = _vectors(model)
    gn = LayerwiseGaussNewton(model, vectors)
    for name, v in vectors.items():
        agrees, deviation = gn.confirm(x, y, name, v)
        ref_agrees, ref_deviation = confirm_piecewise_linear(model, x, y, name, v)
        assert agrees == ref_agrees, name
        assert deviation == pytest.approx(ref_deviation, rel=1e-6, abs=1e-12), name
        if make is HiddenGelu:
            assert agrees == (name == "fc.weight"), name  # only the head is after the GELU


# --------------------------------------------------------------------------- fall-backs
class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))))


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(torch.relu(self.a(torch.relu(self.a(x)))))


class _UsedOutside(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(self.a(x)) + F.linear(x, self.a.weight)
        return self.head(h)


class _Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x), x


class _TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = _Pair()
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h, _ = self.a(x)
        return self.head(torch.relu(h))


class _InPlaceAfter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Linear(4, 4)
        self.a = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        p = self.pre(x)
        h = torch.relu(self.a(p))
        p.mul_(2.0)  # a's recorded input changes after the call
        return self.head(h + p)


class _NoGrad(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        with torch.no_grad():
            scale = h.abs().sum(dim=1, keepdim=True)
        return self.head(h * scale)


class _Counting(nn.Linear):
    """Computes something else on every call after the first: re-running it does not
    reproduce the recorded output."""

    calls = 0

    def forward(self, x):
        type(self).calls += 1
        return super().forward(x) * (1.0 + 0.5 * (type(self).calls > 1))


class _HiddenState(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = _Counting(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        _Counting.calls = 0
        return self.head(torch.relu(self.a(x)))


class _RootParam(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3, 4))
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(torch.relu(x * self.scale[0] + x @ self.scale.T @ self.scale))


def _hooked() -> nn.Module:
    model = _Twice()
    model.a = nn.Linear(4, 4)
    model.forward = lambda x: model.head(torch.relu(model.a(x)))
    model.a.register_forward_hook(lambda m, a, out: out * 2.0)
    return model


@pytest.mark.parametrize(("make", "name", "reason"), [
    (_Tied, "a.weight", "tied"),
    (_Twice, "a.weight", "more than once"),
    (_UsedOutside, "a.weight", "outside the module"),
    (_TupleOut, "a.lin.weight", None),  # the Linear itself is fine: tapped inside the pair
    (_InPlaceAfter, "a.weight", "modified in place"),
    (_NoGrad, "a.weight", "gradients disabled"),
    (_HiddenState, "a.weight", "does not reproduce"),
    (_RootParam, "scale", "root module"),
    (_hooked, "a.weight", "hooks"),
])
def test_untrustworthy_chain_rule_falls_back_to_the_per_layer_path(make, name, reason):
    model = _init(make(), 0)
    x, y = make_data(1, 5, (4,))
    vectors = _vectors(model)
    gn = LayerwiseGaussNewton(model, vectors)
    forms = gn.forms(x, y, name, vectors[name])
    expected = per_example_gauss_newton_forms(model, x, y, name, vectors[name])
    assert torch.allclose(forms, expected, rtol=1e-12, atol=1e-15)
    if reason is None:
        assert name not in gn.fallbacks
    else:
        assert reason in gn.fallbacks[name]
        assert isinstance(gn.block([(x, y)], name), BlockGaussNewton)


def test_tuple_output_module_is_refused_but_its_child_is_not():
    model = _init(_TupleOut(), 0)
    x, _ = make_data(1, 3, (4,))
    from hessaudit.hessian._taps import record

    model.a.register_parameter("own", nn.Parameter(torch.ones(2, 2, dtype=torch.float64)))
    rec = record(model, x, ["a.own", "a.lin.weight"])
    assert "floating-point tensor" in rec.refused["a.own"]
    assert "a.lin.weight" in rec.sites


def test_other_vectors_and_many_classes_take_the_per_layer_path():
    model = make_resnet()
    x, y = make_data(1, 4)
    vectors = _vectors(model)
    gn = LayerwiseGaussNewton(model, vectors)
    other = 2 * vectors["stem.weight"]
    expected = per_example_gauss_newton_forms(model, x, y, "stem.weight", other)
    assert torch.allclose(gn.forms(x, y, "stem.weight", other), expected, rtol=1e-12)
    few = LayerwiseGaussNewton(model, {"fc.weight": vectors["fc.weight"]})  # 3 > 2 x 1
    expected = per_example_gauss_newton_forms(model, x, y, "fc.weight", vectors["fc.weight"])
    assert torch.allclose(few.forms(x, y, "fc.weight", vectors["fc.weight"]), expected,
                          rtol=1e-12)
    assert "classes" in few.fallbacks["fc.weight"]
