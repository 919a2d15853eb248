"""Power iteration against eigh on known spectra and a real block."""

from __future__ import annotations

import math

import pytest
import torch

from hessaudit.errors import HessauditError
from hessaudit.hessian import BlockHessian, lanczos_top_eigenvalue, power_iteration
from tests.cases import DTYPE, make_data, make_mlp
from tests.oracles import dense_block_hessian, known_spectrum

D = 40


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_psd_top_eigenvalue_and_stopping_rule():
    lam = torch.cat([torch.tensor([5.0, 3.0]), torch.linspace(0.0, 2.0, D - 2)]).to(DTYPE)
    A = known_spectrum(lam, 0)
    res = power_iteration(lambda u: A @ u, D, generator=_gen(), dtype=DTYPE, tol=1e-6)
    assert res.converged and res.method == "power" and res.matvecs == res.steps
    assert res.value == pytest.approx(5.0, rel=1e-5)
    # the documented rule: both the relative change and the residual are small
    assert res.last_change <= 1e-6 and res.residual <= math.sqrt(1e-6)
    # change alone would have stopped earlier (PyHessian's rule): ours demands the residual too
    loose = power_iteration(lambda u: A @ u, D, generator=_gen(), dtype=DTYPE, tol=1e-6,
                            residual_tol=math.inf)
    assert loose.steps <= res.steps


def test_dominant_magnitude_can_be_negative():
    lam = torch.cat([torch.tensor([-6.0, 4.0]), torch.linspace(-1.0, 1.0, D - 2)]).to(DTYPE)
    A = known_spectrum(lam, 1)
    res = power_iteration(lambda u: A @ u, D, generator=_gen(1), dtype=DTYPE, tol=1e-8,
                          max_iters=500)
    assert res.converged and res.value == pytest.approx(-6.0, rel=1e-6)
    # Lanczos finds the largest algebraic one instead
    lz = lanczos_top_eigenvalue(lambda u: A @ u, D, generator=_gen(1), dtype=DTYPE, tol=1e-10)
    assert lz.value == pytest.approx(4.0, rel=1e-8)


def test_tied_magnitudes_do_not_converge():
    lam = torch.cat([torch.tensor([-3.0, 3.0]), torch.linspace(-1.0, 1.0, D - 2)]).to(DTYPE)
    A = known_spectrum(lam, 2)
    res = power_iteration(lambda u: A @ u, D, generator=_gen(2), dtype=DTYPE, max_iters=60)
    assert not res.converged and res.steps == 60 and res.residual > 0.1


def test_zero_operator_and_determinism():
    zero = torch.zeros(D, D, dtype=DTYPE)
    res = power_iteration(lambda u: zero @ u, D, generator=_gen(), dtype=DTYPE)
    assert (res.value, res.residual, res.converged, res.steps) == (0.0, 0.0, True, 1)
    A = known_spectrum(torch.linspace(0.0, 3.0, D), 3)
    state = torch.random.get_rng_state()
    a = power_iteration(lambda u: A @ u, D, generator=_gen(7), dtype=DTYPE)
    b = power_iteration(lambda u: A @ u, D, generator=_gen(7), dtype=DTYPE)
    assert a == b and a.to_dict() == b.to_dict()
    assert torch.equal(state, torch.random.get_rng_state())
    with pytest.raises(HessauditError, match="Generator"):
        power_iteration(lambda u: A @ u, D, generator=7, dtype=DTYPE)


def test_block_hessian_top_eigenvalue():
    model = make_mlp(2)
    x, y = make_data(4, 10, (4,))
    dense = dense_block_hessian(model, [(x, y)], "fc2.weight")
    evals = torch.linalg.eigvalsh(dense)
    dominant = float(evals[evals.abs().argmax()])
    op = BlockHessian(model, [(x, y)], "fc2.weight", backend="func")
    res = power_iteration(op.matvec, op.size, generator=_gen(), dtype=DTYPE, tol=1e-8,
                          max_iters=1000)
    assert res.converged and res.value == pytest.approx(dominant, rel=1e-6)
    assert op.num_matvecs == res.matvecs
