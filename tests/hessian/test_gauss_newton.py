"""The piecewise-linear fast path: module checks, JVP forms and the Gauss-Newton operator."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from hessaudit.errors import HessauditError
from hessaudit.hessian import (
    BlockGaussNewton,
    confirm_piecewise_linear,
    gauss_newton_forms,
    gauss_newton_matvec,
    is_piecewise_linear,
    logit_jvp,
    non_piecewise_linear_modules,
    per_example_gauss_newton_forms,
)
from tests.cases import (
    CLASSES,
    DTYPE,
    NETS,
    make_data,
    make_mlp,
    make_relu_cnn,
    make_smooth_cnn,
    random_like_param,
)
from tests.oracles import (
    close,
    dense_block_hessian,
    dense_per_example_hessians,
    softmax_hessian,
)

# ---------------------------------------------------------------- module inspection


def test_piecewise_linear_by_modules():
    assert is_piecewise_linear(make_relu_cnn(0))
    assert non_piecewise_linear_modules(make_relu_cnn(0)) == []
    assert is_piecewise_linear(nn.Sequential(nn.Linear(3, 4), nn.LeakyReLU(), nn.Dropout(),
                                             nn.Linear(4, 2)))
    assert is_piecewise_linear(nn.Linear(3, 2))  # a bare layer is its own root
    offenders = non_piecewise_linear_modules(make_mlp(0))
    assert [o.split(" ")[0] for o in offenders] == ["act1", "act2"]
    assert "Tanh" in offenders[0]
    assert not is_piecewise_linear(make_smooth_cnn(0))


@pytest.mark.parametrize("module", [
    nn.GELU(), nn.SiLU(), nn.Tanh(), nn.Sigmoid(), nn.Softmax(dim=1), nn.Softplus(), nn.ELU(),
    nn.LayerNorm(4), nn.GroupNorm(2, 4), nn.InstanceNorm1d(4), nn.Hardswish(),
    nn.MultiheadAttention(4, 2), nn.BatchNorm1d(4, track_running_stats=False),
], ids=lambda m: type(m).__name__)
def test_smooth_or_coupling_modules_are_rejected(module):
    model = nn.Sequential(nn.Linear(4, 4), module, nn.Linear(4, 2))
    assert not is_piecewise_linear(model)
    assert non_piecewise_linear_modules(model)[0].startswith("1 (")


def test_subclass_overriding_forward_and_attention_composites_are_rejected():
    class StandardizedLinear(nn.Linear):  # nonlinear in its own weight
        def forward(self, x):
            w = (self.weight - self.weight.mean()) / self.weight.std()
            return nn.functional.linear(x, w, self.bias)

    class PlainLinear(nn.Linear):  # keeps the base forward: fine
        pass

    class SelfAttention(nn.Module):  # children all linear, forward is not
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(4, 12)

        def forward(self, x):
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            return torch.softmax(q @ k.transpose(-1, -2), -1) @ v

    class Scaled(nn.Module):  # own parameter used by an unknown forward
        def __init__(self):
            super().__init__()
            self.alpha = nn.Parameter(torch.ones(1))
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) * self.alpha

    assert not is_piecewise_linear(nn.Sequential(StandardizedLinear(4, 2)))
    assert is_piecewise_linear(nn.Sequential(PlainLinear(4, 2)))
    assert not is_piecewise_linear(nn.Sequential(SelfAttention()))
    assert not is_piecewise_linear(nn.Sequential(Scaled()))


def test_timm_resnet18_is_piecewise_linear_and_confirms():
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
    assert is_piecewise_linear(model), non_piecewise_linear_modules(model)
    # timm zero-initialises the last BatchNorm scale of each block, which would make the
    # residual branches (and the checks below) trivial: give them seeded nonzero scales.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bn2.weight"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
    model = model.to(DTYPE)
    x = torch.randn(2, 3, 32, 32, generator=g, dtype=DTYPE)
    y = torch.tensor([0, 2])
    for name in ["layer1.0.conv1.weight", "fc.weight"]:
        v = 0.1 * random_like_param(model, name, 1)
        agrees, deviation = confirm_piecewise_linear(model, x, y, name, v)
        forms = per_example_gauss_newton_forms(model, x, y, name, v)
        assert agrees and deviation < 1e-12 and bool((forms > 0).all())


def test_timm_vit_is_not_piecewise_linear():
    timm = pytest.importorskip("timm")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3)
    offenders = non_piecewise_linear_modules(model)
    assert not is_piecewise_linear(model)
    text = " ".join(offenders)
    assert "GELU" in text and "LayerNorm" in text and "Attention" in text


# ---------------------------------------------------------------- exactness on a ReLU/BN/pool net


def test_gauss_newton_forms_equal_dense_per_example_hessian(piecewise_block):
    net, name = NETS[piecewise_block.net], piecewise_block.name
    model = net.model(0)
    x, y = net.data(5, 6)
    v = random_like_param(model, name, 2)
    dense = dense_per_example_hessians(model, x, y, name)
    forms = per_example_gauss_newton_forms(model, x, y, name, v)
    assert close(forms, torch.einsum("i,nij,j->n", v, dense, v), 1e-12)
    # the per-example block is PSD with rank <= k - 1, so H^+ = H
    evals = torch.linalg.eigvalsh(dense)
    assert float(evals.min()) >= -1e-12
    top = evals.abs().amax(dim=1, keepdim=True)
    assert int((evals.abs() > 1e-10 * top).sum(dim=1).max()) <= CLASSES - 1


def test_block_gauss_newton_equals_block_hessian_on_relu_net():
    model = make_relu_cnn(1)
    batches = [make_data(6, 4), make_data(7, 3)]
    for name in ["conv1.weight", "fc.weight"]:
        dense = dense_block_hessian(model, batches, name)
        size = dense.shape[0]
        U = torch.randn(3, size, dtype=DTYPE, generator=torch.Generator().manual_seed(0))
        for cache in (False, True):
            op = BlockGaussNewton(model, batches, name, cache_graph=cache)
            assert (op.size, op.dtype) == (size, DTYPE)
            assert close(op.matvec(U), U @ dense, 1e-12)
            assert close(op.matvec(U[0]), dense @ U[0], 1e-12)
            assert op.num_matvecs == 4
        assert close(gauss_newton_matvec(model, batches, name, U[1]), dense @ U[1], 1e-12)


def test_block_gauss_newton_is_the_ggn_on_smooth_net():
    model = make_smooth_cnn(0)
    x, y = make_data(8, 5)
    name = "conv2.weight"
    w = model.get_parameter(name).detach()

    def logits(flat):
        return functional_call(model, {name: flat.reshape(w.shape)}, (x,)).detach()

    J = torch.autograd.functional.jacobian(  # (N, k, d)
        lambda f: functional_call(model, {name: f.reshape(w.shape)}, (x,)), w.reshape(-1))
    p = torch.softmax(logits(w.reshape(-1)), dim=1)
    A = softmax_hessian(p)
    ggn = torch.einsum("nkd,nkl,nle->de", J, A, J) / x.shape[0]
    U = torch.randn(2, w.numel(), dtype=DTYPE, generator=torch.Generator().manual_seed(1))
    assert close(BlockGaussNewton(model, [(x, y)], name).matvec(U), U @ ggn, 1e-12)
    # and logit_jvp is J v
    z, u = logit_jvp(model, x, name, U[0])
    assert close(z, logits(w.reshape(-1)), 1e-14)
    assert close(u, J @ U[0], 1e-12)


# ---------------------------------------------------------------- the forms themselves


def test_gauss_newton_forms_formula_and_stability():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(6, 4, generator=g, dtype=DTYPE)
    u = torch.randn(6, 4, generator=g, dtype=DTYPE)
    p = torch.softmax(z, 1)
    A = softmax_hessian(p)
    assert close(gauss_newton_forms(z, u), torch.einsum("nk,nkl,nl->n", u, A, u), 1e-13)
    # saturated softmax: the naive sum p u^2 - (sum p u)^2 cancels; ours stays >= 0 and tiny
    z_sat = torch.tensor([[60.0, 0.0, -5.0]], dtype=torch.float32)
    u_big = torch.tensor([[1e4, 1e4 + 1.0, 1e4]], dtype=torch.float32)
    form = gauss_newton_forms(z_sat, u_big)
    exact = gauss_newton_forms(z_sat.double(), u_big.double())
    assert float(form) >= 0 and math.isclose(float(form), float(exact), rel_tol=1e-3)
    with pytest.raises(HessauditError):
        gauss_newton_forms(z, u[:, :3])


def test_confirm_rejects_smooth_nets_and_accepts_float32_relu():
    model = make_smooth_cnn(0)
    x, y = make_data(9, 6)
    v = random_like_param(model, "conv1.weight", 0)
    agrees, deviation = confirm_piecewise_linear(model, x, y, "conv1.weight", v)
    assert not agrees and deviation > 1e-3
    relu = make_relu_cnn(0).float()
    v32 = random_like_param(relu, "conv1.weight", 0).float()
    agrees, deviation = confirm_piecewise_linear(relu, x.float(), y, "conv1.weight", v32)
    assert agrees and deviation < 1e-4
    # a zero direction is vacuous but exact: both sides are zero
    assert confirm_piecewise_linear(relu, x.float(), y, "conv1.weight", 0 * v32) == (True, 0.0)


def test_label_does_not_matter_and_training_mode_refused():
    model = make_relu_cnn(0)
    x, y = make_data(5, 4)
    v = random_like_param(model, "conv2.weight", 2)
    a = per_example_gauss_newton_forms(model, x, y, "conv2.weight", v)
    b = per_example_gauss_newton_forms(model, x, (y + 1) % CLASSES, "conv2.weight", v)
    assert torch.equal(a, b)
    model.train()
    with pytest.raises(HessauditError, match="training mode"):
        logit_jvp(model, x, "conv2.weight", v)
    with pytest.raises(HessauditError, match="training mode"):
        BlockGaussNewton(model, [(x, y)], "conv2.weight")
