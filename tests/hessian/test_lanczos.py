"""Batched Lanczos: quadrature for v^T H^+ v and the top eigenvalue, against eigh."""

from __future__ import annotations

import math

import pytest
import torch

from hessaudit.errors import HessauditError
from hessaudit.hessian import (
    BlockHessian,
    PerExampleBlockHessians,
    lanczos_quadrature,
    lanczos_top_eigenvalue,
    lanczos_tridiagonal,
)
from tests.cases import DTYPE, make_data, make_mlp, make_smooth_cnn, random_like_param
from tests.oracles import (
    dense_block_hessian,
    dense_per_example_hessians,
    known_spectrum,
    positive_part,
)

D = 48
SPECTRA = {
    # indefinite, spread out
    "indefinite": torch.linspace(-4.0, 6.0, D),
    # zero and clustered eigenvalues (Krylov space smaller than D)
    "clustered": torch.cat([torch.full((15,), 3.0), torch.zeros(15), torch.full((10,), -1.0),
                            torch.linspace(0.5, 8.0, 8)]),
    # positive semidefinite with a fast-decaying tail
    "psd_decay": 10.0 * 0.8 ** torch.arange(D, dtype=DTYPE),
    # negative definite: the positive part is zero
    "negative": -torch.linspace(0.1, 2.0, D),
}


def _matrix(kind, seed=0):
    return known_spectrum(SPECTRA[kind].to(DTYPE), seed)


def _rows(n, seed):
    return torch.randn(n, D, dtype=DTYPE, generator=torch.Generator().manual_seed(seed))


def _qform(A, V):
    return torch.einsum("bi,ij,bj->b", V, A, V)


@pytest.mark.parametrize("kind", list(SPECTRA))
def test_quadrature_exact_at_full_krylov_dimension(kind):
    A = _matrix(kind)
    V = _rows(3, 1)
    res = lanczos_quadrature(lambda U: U @ A, V, max_steps=D, tol=0.0)
    exact_pos = _qform(positive_part(A), V)
    exact_raw = _qform(A, V)
    scale = float(exact_raw.abs().max() + exact_pos.abs().max())
    assert float((res.positive - exact_pos).abs().max()) <= 1e-8 * scale
    assert torch.allclose(res.raw, exact_raw, rtol=1e-12, atol=1e-12 * scale)
    assert bool(res.converged.all())
    assert res.raw.shape == (3,) and res.positive.dtype == torch.float64
    if kind == "clustered":  # 11 distinct eigenvalues: the Krylov space is exhausted early
        assert bool(res.breakdown.all()) and int(res.row_steps.max()) == 11
    if kind == "negative":
        assert float(res.positive.abs().max()) <= 1e-10 * scale


@pytest.mark.parametrize("kind", ["indefinite", "clustered"])
def test_averaged_rule_exact_on_breakdown_and_close_before(kind):
    A = _matrix(kind)
    V = _rows(3, 11)
    exact = _qform(positive_part(A), V)
    res = lanczos_quadrature(lambda U: U @ A, V, max_steps=D, tol=0.0, rule="averaged")
    assert res.rule == "averaged" and bool(res.breakdown.all())
    assert torch.allclose(res.positive, exact, rtol=1e-8)
    early = lanczos_quadrature(lambda U: U @ A, V, max_steps=8, tol=0.0, rule="averaged")
    assert float(((early.positive - exact).abs() / exact).max()) < 0.1
    with pytest.raises(HessauditError, match="rule"):
        lanczos_quadrature(lambda U: U @ A, V, rule="radau")


def test_raw_form_exact_at_every_step():
    A = _matrix("indefinite")
    V = _rows(4, 2)
    for steps in (1, 2, 5):
        res = lanczos_quadrature(lambda U: U @ A, V, max_steps=steps, tol=0.0)
        assert res.steps == steps and not bool(res.converged.any())
        assert torch.allclose(res.raw, _qform(A, V), rtol=1e-12)
        tri = lanczos_tridiagonal(lambda U: U @ A, V, steps=steps)
        assert torch.allclose(tri.alphas[:, 0] * tri.info.v_norm**2, _qform(A, V), rtol=1e-12)


def test_tridiagonal_has_the_spectrum_and_padding():
    A = _matrix("indefinite")
    tri = lanczos_tridiagonal(lambda U: U @ A, _rows(1, 3)[0], steps=D)
    assert tri.alphas.shape == (1, D) and tri.betas.shape == (1, D - 1)
    T = torch.diag(tri.alphas[0]) + torch.diag(tri.betas[0], 1) + torch.diag(tri.betas[0], -1)
    assert torch.allclose(torch.linalg.eigvalsh(T), SPECTRA["indefinite"].to(DTYPE), atol=1e-10)
    # rows of different operators stop at different lengths; padding is zero
    low_rank = known_spectrum([2.0, -1.0, 0.5] + [0.0] * (D - 3), 4)
    ops = torch.stack([A, low_rank])
    tri = lanczos_tridiagonal(lambda U: torch.einsum("bij,bj->bi", ops, U), _rows(2, 5),
                              steps=10)
    # eigenvalues 2, -1, 0.5 and 0 (v has a null-space part): a 4-dimensional Krylov space
    assert tri.info.lengths.tolist() == [10, 4]
    assert tri.info.breakdown.tolist() == [False, True]
    assert float(tri.alphas[1, 4:].abs().max()) == 0.0 and float(tri.betas[1, 4:].abs().max()) == 0
    assert tri.info.matvecs == 14 and float(tri.info.residual[1]) == 0.0


def test_batched_rows_equal_single_runs_and_rows_keyword():
    mats = torch.stack([_matrix("indefinite", 0), _matrix("psd_decay", 1), _matrix("clustered", 2)])
    V = _rows(3, 6)
    calls = []

    def matvec(U, *, rows):
        calls.append(rows.tolist())
        return torch.einsum("bij,bj->bi", mats[rows], U)

    batched = lanczos_quadrature(matvec, V, max_steps=30, tol=1e-6)
    for b in range(3):
        single = lanczos_quadrature(lambda U, b=b: U @ mats[b], V[b], max_steps=30, tol=1e-6)
        assert single.positive.ndim == 0
        assert float(single.positive) == pytest.approx(float(batched.positive[b]), rel=1e-12)
        assert int(single.row_steps) == int(batched.row_steps[b])
    # finished rows are not applied again
    assert len(calls[-1]) < 3
    assert batched.matvecs == sum(len(c) for c in calls) == int(batched.row_steps.sum())


def test_zero_vectors_and_zero_operator_give_zero_not_nan():
    A = _matrix("indefinite")
    V = _rows(3, 7)
    V[1] = 0
    res = lanczos_quadrature(lambda U: U @ A, V, max_steps=10)
    assert float(res.raw[1]) == 0 and float(res.positive[1]) == 0 and bool(res.converged[1])
    assert int(res.row_steps[1]) == 0
    zero = torch.zeros(D, D, dtype=DTYPE)
    res = lanczos_quadrature(lambda U: U @ zero, V, max_steps=10)
    assert res.raw.tolist() == [0.0] * 3 and res.positive.tolist() == [0.0] * 3
    assert bool(res.converged.all()) and res.steps == 1
    one = lanczos_quadrature(lambda U: U @ zero, torch.zeros(D, dtype=DTYPE))
    assert one.to_dict()["positive"] == 0.0 and one.to_dict()["converged"] is True
    assert not any(math.isnan(x) for x in one.to_dict().values() if isinstance(x, float))


def test_tolerance_stops_early_with_small_error():
    A = _matrix("psd_decay")
    V = _rows(4, 8)
    res = lanczos_quadrature(lambda U: U @ A, V, max_steps=D, tol=1e-6)
    exact = _qform(positive_part(A), V)
    assert bool(res.converged.all()) and int(res.row_steps.max()) < D
    assert float(((res.positive - exact).abs() / exact).max()) < 1e-5
    assert float(res.last_change.max()) < 1e-6


def test_quadrature_on_real_block_hessians():
    # a smooth CNN's batch block (indefinite), both backends, to the full dimension
    model = make_smooth_cnn(0)
    x, y = make_data(1, 6)
    name = "conv1.weight"  # 54 parameters
    H = dense_block_hessian(model, [(x, y)], name)
    v = random_like_param(model, name, 3)
    exact = float(v @ positive_part(H) @ v)
    assert float(torch.linalg.eigvalsh(H).min()) < 0  # the test is about the positive part
    for backend in ("autograd", "func"):
        op = BlockHessian(model, [(x, y)], name, backend=backend)
        res = lanczos_quadrature(op.matvec, v, max_steps=op.size, tol=0.0)
        assert float(res.positive) == pytest.approx(exact, rel=1e-8)
        assert float(res.raw) == pytest.approx(float(v @ H @ v), rel=1e-12)


def test_quadrature_on_per_example_blocks():
    model = make_mlp(0)
    x, y = make_data(2, 5, (4,))
    name = "fc1.weight"  # 20 parameters
    dense = dense_per_example_hessians(model, x, y, name)
    V = torch.randn(5, 20, dtype=DTYPE, generator=torch.Generator().manual_seed(9))
    exact = torch.stack([V[n] @ positive_part(dense[n]) @ V[n] for n in range(5)])
    res = lanczos_quadrature(PerExampleBlockHessians(model, x, y, name).matvec, V,
                             max_steps=20, tol=0.0)
    assert torch.allclose(res.positive, exact, rtol=1e-8)
    assert torch.allclose(res.raw, torch.einsum("ni,nij,nj->n", V, dense, V), rtol=1e-12)


@pytest.mark.parametrize("kind", ["indefinite", "psd_decay", "negative"])
def test_top_eigenvalue_matches_eigh(kind):
    A = _matrix(kind)
    true = float(torch.linalg.eigvalsh(A)[-1])
    res = lanczos_top_eigenvalue(lambda u: A @ u, D, generator=torch.Generator().manual_seed(0),
                                 tol=1e-10, max_steps=D, dtype=DTYPE)
    assert res.converged and res.method == "lanczos"
    assert res.value == pytest.approx(true, rel=1e-8)
    assert res.matvecs == res.steps <= D
    # the reported residual is the true one
    again = lanczos_top_eigenvalue(lambda u: A @ u, D, generator=torch.Generator().manual_seed(0),
                                   tol=1e-10, max_steps=D, dtype=DTYPE)
    assert again == res  # same seed, identical result


def test_top_eigenvalue_default_tolerance_and_block():
    model = make_mlp(1)
    x, y = make_data(3, 8, (4,))
    op = BlockHessian(model, [(x, y)], "fc1.weight")
    true = float(torch.linalg.eigvalsh(dense_block_hessian(model, [(x, y)], "fc1.weight"))[-1])
    res = lanczos_top_eigenvalue(op.matvec, op.size, generator=torch.Generator().manual_seed(1),
                                 dtype=DTYPE)
    assert res.converged and res.value == pytest.approx(true, rel=1e-3)
    assert res.residual <= math.sqrt(1e-3) and res.last_change <= 1e-3
    assert set(res.to_dict()) >= {"value", "steps", "residual", "converged", "matvecs", "method"}


def test_top_eigenvalue_zero_operator_and_global_rng_untouched():
    state = torch.random.get_rng_state()
    zero = torch.zeros(D, D, dtype=DTYPE)
    res = lanczos_top_eigenvalue(lambda u: zero @ u, D, generator=torch.Generator(),
                                 dtype=DTYPE)
    assert res.value == 0.0 and res.converged and res.residual == 0.0
    assert torch.equal(state, torch.random.get_rng_state())
    with pytest.raises(HessauditError, match="Generator"):
        lanczos_top_eigenvalue(lambda u: zero @ u, D, generator=None, dtype=DTYPE)


def _hidden_negative_part(seed=0):
    """60 eigenvalues: 40 log-spaced in [0.01, 10] and 20 in [-0.1, -0.001], where v has twice
    the weight. v^T H^+ v is 3% above v^T H v, and the first Ritz values are all positive: the
    old rule stopped after 4 steps with the raw form, 3.0e-2 off, and said converged."""
    lam = torch.cat([torch.logspace(-2, 1, 40, dtype=DTYPE), -torch.logspace(-3, -1, 20,
                                                                           dtype=DTYPE)])
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(60, 60, generator=g, dtype=DTYPE))
    q = q * torch.sign(torch.diagonal(r))
    coef = torch.cat([torch.ones(40, dtype=DTYPE), torch.full((20,), 2.0, dtype=DTYPE)])
    return (q * lam) @ q.T, q @ coef


def test_all_positive_ritz_values_do_not_fake_convergence():
    """The old failure: while every Ritz value is >= 0 the Gauss value equals the raw form, so
    its change is 0 and the old rule stopped with quad_pos == quad_raw and converged true."""
    A, v = _hidden_negative_part()
    exact = float(v @ positive_part(A) @ v)
    raw = float(v @ A @ v)
    assert exact > raw * 1.02  # the negative part matters at tol = 1e-3
    early = lanczos_tridiagonal(lambda U: U @ A, v, steps=4)
    T = torch.diag(early.alphas[0]) + torch.diag(early.betas[0], 1) + torch.diag(early.betas[0], -1)
    assert float(torch.linalg.eigvalsh(T).min()) > 0  # the premise: no negative Ritz value yet
    for steps in (2, 3, 4, 5, 8, 12, 20, 30, 45, 60):
        res = lanczos_quadrature(lambda U: U @ A, v, max_steps=steps, tol=1e-3)
        err = abs(float(res.positive) - exact)
        if bool(res.converged):
            assert err <= 1e-3 * exact, (steps, float(res.positive), exact)
        if int(res.row_steps) <= 4:  # one-sided phase: the error bound is rigorous
            assert err <= float(res.error)
    assert bool(res.converged) and int(res.row_steps) < 60


def test_one_sided_error_bound_is_rigorous():
    """While every Ritz value has one sign, ``error`` bounds |v^T H^+ v - estimate| (a
    polynomial majorant argument, not a heuristic): check it at every step on random spectra
    with a bulk near zero, both signs."""
    checked = 0
    for seed in range(8):
        g = torch.Generator().manual_seed(100 + seed)
        high = -2.0 + 1.5 * float(torch.rand(1, generator=g))
        lam = torch.cat([torch.logspace(-2, 1, 30, dtype=DTYPE),
                         -torch.logspace(-3, high, 10, dtype=DTYPE)])
        lam = lam if seed % 2 else -lam  # even seeds: mostly negative
        A = known_spectrum(lam, seed)
        v = torch.rand(40, generator=g, dtype=DTYPE) * torch.randn(40, generator=g, dtype=DTYPE)
        exact = float(v @ positive_part(A) @ v)
        for steps in range(1, 9):
            res = lanczos_quadrature(A.__rmatmul__, v, max_steps=steps, tol=0.0)
            tri = lanczos_tridiagonal(A.__rmatmul__, v, steps=steps)
            T = (torch.diag(tri.alphas[0]) + torch.diag(tri.betas[0], 1)
                 + torch.diag(tri.betas[0], -1))
            theta = torch.linalg.eigvalsh(T)
            if bool((theta > 0).all()) or bool((theta < 0).all()):
                assert abs(float(res.positive) - exact) <= float(res.error) * (1 + 1e-9)
                checked += bool(res.error.isfinite())
    assert checked >= 20


def test_converged_implies_within_tolerance_on_indefinite_spectra():
    for kind in ("indefinite", "clustered", "negative"):
        A = _matrix(kind)
        V = _rows(6, 21)
        exact = _qform(positive_part(A), V)
        scale = float(_qform(A.abs() if kind == "negative" else A, V).abs().max())
        for steps in (5, 10, 20, 30, D):
            res = lanczos_quadrature(A.__rmatmul__, V, max_steps=steps, tol=1e-3)
            err = (res.positive - exact).abs()
            bound = torch.maximum(1e-3 * exact.abs(), torch.full_like(exact, 1e-8 * scale))
            assert bool((err[res.converged] <= bound[res.converged]).all()), (kind, steps)
        assert bool(res.converged.all())


def test_atol_lets_small_rows_stop_early():
    """Rows of a maximum only need an absolute accuracy relative to that maximum."""
    A, v = _hidden_negative_part()
    V = torch.stack([v, 0.05 * v])  # the second row's form is 400x smaller
    exact = _qform(positive_part(A), V)
    plain = lanczos_quadrature(lambda U: U @ A, V, max_steps=60, tol=1e-3)
    loose = lanczos_quadrature(lambda U: U @ A, V, max_steps=60, tol=1e-3,
                               atol=1e-3 * float(exact[0]))
    assert int(loose.row_steps[1]) < int(plain.row_steps[1])
    assert bool(loose.converged.all())
    assert float((loose.positive - exact).abs().max()) <= 1e-3 * float(exact[0])


def test_gamma_is_the_supremum_of_its_definition():
    """gamma = sup_{s >= 0} s / l(-s)^2 (l: the Lagrange polynomial of the smallest node), found
    by bisection on a monotone function; compare with a dense grid search."""
    from hessaudit.hessian.quadrature import _gamma

    g = torch.Generator().manual_seed(0)
    nodes = torch.sort(torch.rand(5, 7, generator=g, dtype=DTYPE) * 10 + 1e-3, dim=1).values
    nodes[0, 0] = 1e-6  # a node next to zero
    s = torch.logspace(-9, 4, 400_001, dtype=DTYPE)
    for row, gamma in zip(nodes, _gamma(nodes), strict=True):
        gaps = row[1:] - row[0]
        l2 = ((row[1:][None] + s[:, None]) / gaps[None]).square().prod(dim=1)
        grid = float((s / l2).max())
        assert grid <= float(gamma) <= grid * (1 + 1e-6)
    assert _gamma(nodes[:, :1]).isinf().all()  # one node: no bound
