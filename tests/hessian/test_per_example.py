"""Per-example block HVPs and exact per-example quadratic forms vs dense per-example Hessians."""

from __future__ import annotations

import pytest
import torch
from _nets import (
    DTYPE,
    dense_block_hessian,
    dense_per_example_hessians,
    make_data,
    make_mlp,
    make_relu_cnn,
    make_smooth_cnn,
    random_like_param,
)

from hessaudit.errors import HessauditError
from hessaudit.hessian import (
    PerExampleBlockHessians,
    per_example_directional_second_derivative,
    per_example_hvp,
)

CASES = [
    (make_mlp, (4,), "fc2.weight"),
    (make_smooth_cnn, None, "conv2.weight"),
    (make_relu_cnn, None, "conv1.weight"),  # BatchNorm (eval) downstream
    (make_relu_cnn, None, "bn2.weight"),
]
IDS = ["mlp-fc2", "smooth_cnn-conv2", "relu_cnn-conv1", "relu_cnn-bn2"]


def _setup(make, shape, name, n=5):
    model = make(0)
    x, y = make_data(3, n, shape) if shape else make_data(3, n)
    size = model.get_parameter(name).numel()
    U = torch.randn(n, size, dtype=DTYPE, generator=torch.Generator().manual_seed(4))
    return model, x, y, U


def _close(a, b, rtol=1e-10):
    return float((a - b).abs().max()) <= rtol * max(float(b.abs().max()), 1e-300)


@pytest.mark.parametrize(("make", "shape", "name"), CASES, ids=IDS)
def test_per_example_hvp_equals_dense(make, shape, name):
    model, x, y, U = _setup(make, shape, name)
    dense = dense_per_example_hessians(model, x, y, name)
    out = per_example_hvp(model, x, y, name, U)
    assert out.shape == U.shape and out.dtype == DTYPE
    assert _close(out, torch.einsum("nij,nj->ni", dense, U))
    # chunked vmap gives the same numbers
    assert _close(per_example_hvp(model, x, y, name, U, chunk_size=2), out, 1e-14)


@pytest.mark.parametrize(("make", "shape", "name"), CASES, ids=IDS)
def test_directional_second_derivative_equals_dense(make, shape, name):
    model, x, y, _ = _setup(make, shape, name)
    v = random_like_param(model, name, 7)
    dense = dense_per_example_hessians(model, x, y, name)
    forms = per_example_directional_second_derivative(model, x, y, name, v)
    assert forms.shape == (x.shape[0],)
    assert _close(forms, torch.einsum("i,nij,j->n", v, dense, v))
    # the mean of per-example forms is the form of the batch-mean Hessian
    batch = dense_block_hessian(model, [(x, y)], name)
    assert float(forms.mean()) == pytest.approx(float(v @ batch @ v), rel=1e-10)


def test_smooth_net_forms_can_be_negative():
    # the raw per-example forms of a smooth net are not PSD in general: the engine must not
    # clamp them (the positive part is Lanczos's job)
    model = make_mlp(0)
    x, y = make_data(3, 32, (4,))
    v = random_like_param(model, "fc1.weight", 7)
    forms = per_example_directional_second_derivative(model, x, y, "fc1.weight", v)
    dense = dense_per_example_hessians(model, x, y, "fc1.weight")
    assert _close(forms, torch.einsum("i,nij,j->n", v, dense, v))
    assert float(forms.min()) < 0


def test_operator_wrapper_and_row_subsets():
    model, x, y, U = _setup(make_relu_cnn, None, "conv2.weight", n=6)
    op = PerExampleBlockHessians(model, x, y, "conv2.weight")
    assert (op.size, op.batch, op.dtype) == (108, 6, DTYPE)
    full = op.matvec(U)
    assert _close(full, per_example_hvp(model, x, y, "conv2.weight", U), 1e-14)
    rows = torch.tensor([4, 1])
    assert _close(op.matvec(U[rows], rows=rows), full[rows], 1e-13)
    assert op.num_matvecs == 8
    v = random_like_param(model, "conv2.weight", 1)
    same_v = per_example_hvp(model, x, y, "conv2.weight", v.expand(6, -1))
    assert _close(op.directional_second_derivatives(v), same_v @ v)


def test_refuses_training_mode_and_mismatched_shapes():
    model, x, y, U = _setup(make_relu_cnn, None, "conv1.weight")
    with pytest.raises(HessauditError, match="rows"):
        per_example_hvp(model, x, y, "conv1.weight", U[:3])
    with pytest.raises(HessauditError, match="do not match"):
        per_example_directional_second_derivative(model, x, y[:2], "conv1.weight", U[0])
    model.train()
    with pytest.raises(HessauditError, match="training mode"):
        per_example_hvp(model, x, y, "conv1.weight", U)
    with pytest.raises(HessauditError, match="training mode"):
        per_example_directional_second_derivative(model, x, y, "conv1.weight", U[0])
    with pytest.raises(HessauditError, match="training mode"):
        PerExampleBlockHessians(model, x, y, "conv1.weight")
