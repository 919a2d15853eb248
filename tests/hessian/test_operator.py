"""BlockHessian and cross_term_forms against independent dense float64 oracles."""

from __future__ import annotations

import copy

import pytest
import torch

from hessaudit.errors import HessauditError
from hessaudit.hessian import BlockHessian, batch_quadratic_form, cross_term_forms
from tests.cases import DTYPE, NETS, make_data, make_linear, random_like_param
from tests.oracles import (
    block_loss,
    close,
    dense_block_hessian,
    dense_joint_hessian,
    softmax_hessian,
)


def _setup(net: str, sizes=(5, 3)):
    return NETS[net].model(0), NETS[net].batches(sizes, seed=10)


_DENSE: dict[tuple[str, str], torch.Tensor] = {}


def _dense(net, name, model, batches):
    # the oracle is the slow part; both backends compare against the same one
    if (net, name) not in _DENSE:
        _DENSE[net, name] = dense_block_hessian(model, batches, name)
    return _DENSE[net, name]


@pytest.mark.parametrize("backend", ["autograd", "func"])
def test_block_equals_dense_sub_block(block, backend):
    net, name = block.net, block.name
    model, batches = _setup(net)
    dense = _dense(net, name, model, batches)
    op = BlockHessian(model, batches, name, backend=backend)
    assert op.size == dense.shape[0] and op.dtype == DTYPE and op.backend == backend
    # (B, size) path, all unit vectors at once: the whole block.
    eye = torch.eye(op.size, dtype=DTYPE)
    assert close(op.matvec(eye), dense)  # rows of H I = columns of symmetric H
    # flat 1-D path
    u = random_like_param(model, name, 1)
    assert op.matvec(u).shape == (op.size,)
    assert close(op.matvec(u), dense @ u)
    assert op.num_matvecs == op.size + 2


def test_backends_agree_and_cache_is_transparent(block):
    model, batches = _setup(block.net)
    name = block.name
    U = torch.randn(3, model.get_parameter(name).numel(), dtype=DTYPE,
                    generator=torch.Generator().manual_seed(2))
    ref = BlockHessian(model, batches, name, backend="autograd").matvec(U)
    for backend, cache in [("func", False), ("autograd", True)]:
        op = BlockHessian(model, batches, name, backend=backend, cache_graph=cache)
        assert close(op.matvec(U), ref, 1e-12)
        assert close(op.matvec(U[1]), ref[1], 1e-12)  # a cached graph is reused
        assert op.num_matvecs == 4


def test_closed_form_softmax_regression():
    model = make_linear(0, in_features=4, classes=3)
    x, y = make_data(1, 7, (4,))
    W, b = model.fc.weight.detach(), model.fc.bias.detach()
    p = torch.softmax(x @ W.T + b, dim=1)
    A = softmax_hessian(p)
    # vec(W) is row-major (class-major), so the block is sum_n A_n kron x_n x_n^T / N
    expected = sum(torch.kron(A[n], torch.outer(x[n], x[n])) for n in range(7)) / 7
    for backend in ("autograd", "func"):
        H = BlockHessian(model, [(x, y)], "fc.weight", backend=backend).to_dense()
        assert close(H, expected, 1e-12)


def test_finite_differences_of_gradients():
    model, batches = _setup("smooth_cnn")
    name = "conv1.weight"
    loss = block_loss(model, batches, name)
    w = model.get_parameter(name).detach().reshape(-1)
    u = random_like_param(model, name, 5)
    h = 1e-5

    def grad_at(point):
        point = point.clone().requires_grad_(True)
        return torch.autograd.grad(loss(point), point)[0]

    fd = (grad_at(w + h * u) - grad_at(w - h * u)) / (2 * h)
    hv = BlockHessian(model, batches, name).matvec(u)
    assert close(hv, fd, 1e-7)


def test_batches_weigh_by_size():
    model, batches = _setup("mlp", sizes=(2, 6))
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    u = random_like_param(model, "fc1.weight", 3)
    split = BlockHessian(model, batches, "fc1.weight").matvec(u)
    whole = BlockHessian(model, [(x, y)], "fc1.weight").matvec(u)
    assert close(split, whole, 1e-13)


def test_model_left_untouched():
    model, batches = _setup("relu_cnn")
    before = copy.deepcopy(model.state_dict())
    for backend in ("autograd", "func"):
        BlockHessian(model, batches, "conv1.weight", backend=backend).matvec(
            torch.ones(54, dtype=DTYPE))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training
    assert all(p.grad is None for p in model.parameters())


def test_refuses_training_mode_and_bad_inputs():
    model, batches = _setup("relu_cnn")
    model.train()
    with pytest.raises(HessauditError, match="training mode"):
        BlockHessian(model, batches, "conv1.weight")
    model.eval()
    op = BlockHessian(model, batches, "conv1.weight")
    model.bn1.train()  # a submodule flipped after construction is caught too
    with pytest.raises(HessauditError, match="training mode"):
        op.matvec(torch.zeros(op.size, dtype=DTYPE))
    model.eval()
    with pytest.raises(HessauditError, match="no parameter"):
        BlockHessian(model, batches, "conv9.weight")
    with pytest.raises(HessauditError, match="backend"):
        BlockHessian(model, batches, "conv1.weight", backend="jax")
    with pytest.raises(HessauditError, match="cache_graph"):
        BlockHessian(model, batches, "conv1.weight", backend="func", cache_graph=True)
    with pytest.raises(HessauditError, match="elements"):
        op.matvec(torch.zeros(op.size + 1, dtype=DTYPE))
    with pytest.raises(HessauditError, match="single"):
        BlockHessian(model, batches[0], "conv1.weight")
    with pytest.raises(HessauditError, match="no batches"):
        BlockHessian(model, [], "conv1.weight")


@pytest.mark.parametrize("net", ["mlp", "relu_cnn"])
def test_cross_term_forms_match_dense_formula(net):
    model, batches = _setup(net)
    names = [n for n, p in model.named_parameters() if p.ndim >= 2 and n != "conv2.weight"]
    vectors = {n: random_like_param(model, n, i).reshape(model.get_parameter(n).shape)
               for i, n in enumerate(names)}
    forms = cross_term_forms(model, batches, vectors)
    H, sizes = dense_joint_hessian(model, batches, names)
    v = torch.cat([vectors[n].reshape(-1) for n in names])
    Hv = torch.split(H @ v, sizes)
    vs = torch.split(v, sizes)
    assert list(forms) == names
    for n, vi, hvi in zip(names, vs, Hv, strict=True):
        assert forms[n] == pytest.approx(float(vi @ hvi), rel=1e-10, abs=1e-12)
    assert sum(forms.values()) == pytest.approx(float(v @ H @ v), rel=1e-10)
    # cross terms make them differ from the block forms
    block0 = float(vs[0] @ H[: sizes[0], : sizes[0]] @ vs[0])
    assert forms[names[0]] != pytest.approx(block0, rel=1e-6)


def test_cross_term_forms_can_be_negative():
    # choose v_2 = -c * (H_21 v_1) direction so that v_2^T H_21 v_1 dominates negatively
    model, batches = _setup("mlp")
    names = ["fc1.weight", "head.weight"]
    H, sizes = dense_joint_hessian(model, batches, names)
    v1 = random_like_param(model, names[0], 0)
    H21 = H[sizes[0]:, : sizes[0]]
    v2 = -10.0 * (H21 @ v1)
    vectors = {names[0]: v1, names[1]: v2}
    forms = cross_term_forms(model, batches, vectors)
    v = torch.cat([v1, v2])
    assert forms[names[1]] == pytest.approx(float(v2 @ (H @ v)[sizes[0]:]), rel=1e-10)
    assert min(forms.values()) < 0


def test_batch_quadratic_form_is_raw_block_form():
    model, batches = _setup("smooth_cnn", sizes=(6,))
    name = "conv1.weight"
    v = random_like_param(model, name, 4)
    dense = dense_block_hessian(model, batches, name)
    x, y = batches[0]
    assert batch_quadratic_form(model, x, y, name, v) == pytest.approx(float(v @ dense @ v),
                                                                       rel=1e-11)
