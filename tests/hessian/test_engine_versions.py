"""The issue-16 engine against the one before it (hessaudit.hessian.version) and against dense
float64 oracles: cached per-example graphs, blocked Gram-Schmidt, certified screening, the
Rademacher draws, and whole audits on both paths."""

from __future__ import annotations

import pytest
import torch

import hessaudit.audit._positive_forms as positive_forms_module
from hessaudit.audit.layers import pair_layers
from hessaudit.audit.measure import MeasureSettings, measure_layers
from hessaudit.errors import HessauditError
from hessaudit.hessian import (
    PerExampleBlockHessians,
    lanczos_quadrature,
    lanczos_tridiagonal,
    per_example_hvp,
)
from hessaudit.hessian._util import random_rademacher
from hessaudit.hessian.quadrature import screening_bound
from hessaudit.hessian.version import engine_version, set_engine_version, use_engine_version
from hessaudit.inputs.data import Dataset
from tests.cases import IMAGE, make_data, make_smooth_cnn
from tests.engine_nets import make_resnet
from tests.oracles import dense_per_example_hessians, known_spectrum, positive_part


def test_engine_version_switch():
    assert engine_version() == "new"
    with use_engine_version("old"):
        assert engine_version() == "old"
    assert engine_version() == "new"
    with pytest.raises(HessauditError, match="unknown engine version"):
        set_engine_version("fast")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rademacher_draws_are_those_of_the_old_engine(dtype):
    for shape in [(3, 7), (8, 10_001)]:
        new = random_rademacher(shape, generator=torch.Generator().manual_seed(4), dtype=dtype,
                                device="cpu")
        with use_engine_version("old"):
            old = random_rademacher(shape, generator=torch.Generator().manual_seed(4),
                                    dtype=dtype, device="cpu")
        assert new.dtype == dtype and torch.equal(new, old)


def test_blocked_gram_schmidt_matches_the_old_loop_and_stays_orthogonal():
    ops = torch.stack([known_spectrum(torch.linspace(-1, 2, 30) * (k + 1), seed=k)
                       for k in range(3)])
    V = torch.randn(3, 30, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def matvec(U):
        return torch.einsum("bij,bj->bi", ops, U)

    new = lanczos_tridiagonal(matvec, V, steps=20)  # crosses two 8-vector blocks
    with use_engine_version("old"):
        old = lanczos_tridiagonal(matvec, V, steps=20)
    assert torch.allclose(new.alphas, old.alphas, rtol=1e-10, atol=1e-12)
    assert torch.allclose(new.betas, old.betas, rtol=1e-10, atol=1e-12)
    from hessaudit.hessian.lanczos import _Lanczos

    lz = _Lanczos(matvec, V, max_steps=20, breakdown_tol=None)
    while lz.steps < 20:
        lz.step()
    Q = torch.stack([lz.vector(j) for j in range(lz.stored)], dim=1)  # (B, m, d)
    gram = Q @ Q.transpose(1, 2)
    assert torch.allclose(gram, torch.eye(lz.stored, dtype=torch.float64).expand_as(gram),
                          atol=1e-12)


def test_cached_per_example_products_equal_recomputed_ones():
    model = make_smooth_cnn()
    x, y = make_data(1, 6)
    name = "conv1.weight"
    g = torch.Generator().manual_seed(2)
    size = model.get_parameter(name).numel()
    U = torch.randn(6, size, generator=g, dtype=torch.float64)
    op = PerExampleBlockHessians(model, x, y, name)
    assert torch.allclose(op.matvec(U), per_example_hvp(model, x, y, name, U),
                          rtol=1e-12, atol=1e-14)
    rows = torch.tensor([1, 4, 5])  # half or more of the cached rows: same graph
    assert torch.allclose(op.matvec(U[rows], rows=rows),
                          per_example_hvp(model, x[rows], y[rows], name, U[rows]),
                          rtol=1e-12, atol=1e-14)
    assert op._cached.rebuilds == 1
    rows = torch.tensor([2])  # fewer than half: the graph is rebuilt on the live rows
    assert torch.allclose(op.matvec(U[rows], rows=rows),
                          per_example_hvp(model, x[rows], y[rows], name, U[rows]),
                          rtol=1e-12, atol=1e-14)
    assert op._cached.rebuilds == 2
    op._cached.budget = 0  # no graph fits: the recomputing product
    op._cached.clear()
    assert torch.allclose(op.matvec(U), per_example_hvp(model, x, y, name, U),
                          rtol=1e-12, atol=1e-14)
    assert op._cached.rebuilds == 2
    with use_engine_version("old"):
        assert PerExampleBlockHessians(model, x, y, name)._cached is None


def test_screening_bound_is_an_upper_bound_and_tight():
    g = torch.Generator().manual_seed(0)
    for seed in range(20):
        lam = torch.randn(12, generator=g, dtype=torch.float64) * (1 + seed)
        H = known_spectrum(lam, seed=seed)
        v = torch.randn(12, generator=g, dtype=torch.float64)
        exact = v @ positive_part(H) @ v
        bound = screening_bound(v @ v, (H @ v).norm(), v @ H @ v)
        assert exact <= bound * (1 + 1e-12)
    H = known_spectrum([-2.0, 2.0], seed=1)  # the extremal spectrum: eigenvalues +-c
    v = torch.tensor([1.0, 1.0], dtype=torch.float64)
    v = torch.linalg.eigh(H).eigenvectors.sum(dim=1)
    assert screening_bound(v @ v, (H @ v).norm(), v @ H @ v) == pytest.approx(
        float(v @ positive_part(H) @ v), rel=1e-12)


def test_screened_rows_cannot_be_the_maximum():
    lam = torch.cat([torch.linspace(-1.0, 3.0, 16)])
    scales = torch.tensor([1.0, 1e-3, 2e-3, 0.9])
    ops = torch.stack([known_spectrum(lam * s, seed=k) for k, s in enumerate(scales)])
    V = torch.randn(4, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    exact = torch.stack([V[k] @ positive_part(ops[k]) @ V[k] for k in range(4)])
    raw = torch.einsum("bi,bij,bj->b", V, ops, V)
    floor = max(float(raw.max()), 0.0)

    def matvec(U):
        return torch.einsum("bij,bj->bi", ops, U)

    plain = lanczos_quadrature(matvec, V, atol=1e-3 * floor)
    screened = lanczos_quadrature(matvec, V, atol=1e-3 * floor, screen_below=floor)
    bounds = screening_bound((V * V).sum(1), torch.einsum("bij,bj->bi", ops, V).norm(dim=1), raw)
    assert screened.screened.tolist() == (bounds * 1.001 < floor).tolist()
    assert screened.screened[1:3].all() and not screened.screened[0]
    assert bool((exact[screened.screened] < floor).all())  # certified: not the maximum
    assert float(screened.positive.max()) == pytest.approx(float(plain.positive.max()),
                                                           rel=1e-12)
    assert float(screened.positive.max()) == pytest.approx(float(exact.max()), rel=1e-3)
    assert screened.matvecs < plain.matvecs
    assert bool(screened.converged[screened.screened].all())
    assert float(screened.error[screened.screened].abs().max()) == 0.0
    with use_engine_version("old"):
        assert not bool(lanczos_quadrature(matvec, V, screen_below=floor).screened.any())


def test_floor_from_raw_screens_like_the_reduced_raw_form_given():
    """The quadrature's own lower bound of the maximum (the largest raw form, known after the
    first step) screens and stops exactly as the same bound passed in by the caller."""
    lam = torch.linspace(-1.0, 3.0, 16)
    ops = torch.stack([known_spectrum(lam * s, seed=k)
                       for k, s in enumerate([1.0, 1e-3, 2e-3, 0.9, 0.05])])
    V = torch.randn(5, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    floor = max(float(torch.einsum("bi,bij,bj->b", V, ops, V).max()), 0.0)

    def matvec(U):
        return torch.einsum("bij,bj->bi", ops, U)

    given = lanczos_quadrature(matvec, V, atol=1e-3 * floor, screen_below=floor)
    own = lanczos_quadrature(matvec, V, floor_from_raw=True)
    assert given.screened.any() and torch.equal(own.screened, given.screened)
    assert torch.equal(own.row_steps, given.row_steps)
    assert torch.allclose(own.positive, given.positive, rtol=1e-12, atol=0)
    assert torch.allclose(own.raw, torch.einsum("bi,bij,bj->b", V, ops, V), rtol=1e-12)
    # a larger bound from the caller (rows of an earlier chunk) wins
    higher = lanczos_quadrature(lambda U: torch.einsum("bij,bj->bi", ops[1:3], U), V[1:3],
                                screen_below=floor, floor_from_raw=True)
    assert bool(higher.screened.all())


def _audit(make, shape, n, *, seed=0, scale_half=1.0):
    model = make(seed)
    x, y = make_data(seed + 1, n, shape)
    x[: n // 2] *= scale_half
    g = torch.Generator().manual_seed(seed + 2)
    pretrained = {k: (t - 0.3 * torch.randn(t.shape, generator=g, dtype=t.dtype)
                      if t.is_floating_point() else t.clone())
                  for k, t in model.state_dict().items()}
    pairing = pair_layers(pretrained, model.state_dict(),
                          parameter_names={k for k, _ in model.named_parameters()})
    return model, pairing.layers, Dataset(x=x, y=y, num_classes=3, source="test")


@pytest.mark.parametrize("reduce", ["example-max", "batch-max", "mean"])
def test_jvp_path_audits_of_both_engines_agree(reduce):
    model, layers, data = _audit(make_resnet, IMAGE, 10)
    settings = MeasureSettings(reduce=reduce, batch_size=4)
    new = measure_layers(model, layers, data, settings, generator=torch.Generator())
    with use_engine_version("old"):
        old = measure_layers(model, layers, data, settings, generator=torch.Generator())
    for a, b in zip(new, old, strict=True):
        assert a.engine_path == b.engine_path == "jvp"
        for key in ("quad_raw", "quad_pos", "hcal", "top_eig", "trace", "trace_stderr"):
            assert getattr(a, key) == pytest.approx(getattr(b, key), rel=1e-9, abs=1e-14), key


def test_lanczos_path_screens_and_matches_the_dense_oracle(monkeypatch):
    # half the examples scaled down: flat, confident-looking losses whose blocks are small
    model, layers, data = _audit(make_smooth_cnn, IMAGE, 8, scale_half=0.05)
    seen = []
    original = positive_forms_module.lanczos_quadrature

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        seen.append(result)
        return result

    monkeypatch.setattr(positive_forms_module, "lanczos_quadrature", spy)
    settings = MeasureSettings(spectrum=False)
    results = measure_layers(model, layers, data, settings, generator=torch.Generator())
    assert any(bool(r.screened.any()) for r in seen)
    for layer, result in zip(layers, results, strict=True):
        v = layer.delta_as(dtype=torch.float64, device="cpu").reshape(-1)
        hessians = dense_per_example_hessians(model, data.x, data.y, layer.name)
        exact = max(float(v @ positive_part(h) @ v) for h in hessians)
        assert result.converged
        assert result.quad_pos == pytest.approx(exact, rel=settings.tol), layer.name
