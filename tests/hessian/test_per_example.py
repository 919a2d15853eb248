"""Per-example block HVPs and exact per-example quadratic forms vs dense per-example Hessians."""

from __future__ import annotations

import pytest
import torch

from hessaudit.errors import HessauditError
from hessaudit.hessian import (
    PerExampleBlockHessians,
    per_example_directional_second_derivative,
    per_example_hvp,
)
from tests.cases import DTYPE, NETS, make_data, make_mlp, random_like_param
from tests.oracles import close, dense_block_hessian, dense_per_example_hessians


def _setup(net, name, n=5):
    model = NETS[net].model(0)
    x, y = NETS[net].data(3, n)
    size = model.get_parameter(name).numel()
    U = torch.randn(n, size, dtype=DTYPE, generator=torch.Generator().manual_seed(4))
    return model, x, y, U


def test_per_example_hvp_equals_dense(block):
    name = block.name
    model, x, y, U = _setup(block.net, name)
    dense = dense_per_example_hessians(model, x, y, name)
    out = per_example_hvp(model, x, y, name, U)
    assert out.shape == U.shape and out.dtype == DTYPE
    assert close(out, torch.einsum("nij,nj->ni", dense, U))
    # chunked vmap gives the same numbers
    assert close(per_example_hvp(model, x, y, name, U, chunk_size=2), out, 1e-14)


def test_directional_second_derivative_equals_dense(block):
    name = block.name
    model, x, y, _ = _setup(block.net, name)
    v = random_like_param(model, name, 7)
    dense = dense_per_example_hessians(model, x, y, name)
    forms = per_example_directional_second_derivative(model, x, y, name, v)
    assert forms.shape == (x.shape[0],)
    assert close(forms, torch.einsum("i,nij,j->n", v, dense, v))
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
    assert close(forms, torch.einsum("i,nij,j->n", v, dense, v))
    assert float(forms.min()) < 0


def test_operator_wrapper_and_row_subsets():
    model, x, y, U = _setup("relu_cnn", "conv2.weight", n=6)
    op = PerExampleBlockHessians(model, x, y, "conv2.weight")
    assert (op.size, op.batch, op.dtype) == (108, 6, DTYPE)
    full = op.matvec(U)
    assert close(full, per_example_hvp(model, x, y, "conv2.weight", U), 1e-14)
    rows = torch.tensor([4, 1])
    assert close(op.matvec(U[rows], rows=rows), full[rows], 1e-13)
    assert op.num_matvecs == 8
    v = random_like_param(model, "conv2.weight", 1)
    same_v = per_example_hvp(model, x, y, "conv2.weight", v.expand(6, -1))
    assert close(op.directional_second_derivatives(v), same_v @ v)


def test_refuses_training_mode_and_mismatched_shapes():
    model, x, y, U = _setup("relu_cnn", "conv1.weight")
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
