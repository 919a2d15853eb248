"""Hutchinson and Hutch++ trace estimates: exactness where it must hold, error bars checked
statistically over many seeds on known-spectrum matrices."""

from __future__ import annotations

import math

import pytest
import torch

from hessaudit.errors import HessauditError
from hessaudit.hessian import BlockHessian, hutchinson_trace, hutchpp_trace
from hessaudit.hessian.trace import student_t_quantile
from tests.cases import DTYPE, make_data, make_smooth_cnn
from tests.oracles import dense_block_hessian, known_spectrum

D = 30


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _mv(A):
    return lambda U: U @ A  # symmetric: works row-wise for (k, d) and for (d,)


def test_hutchinson_error_bars_are_honest():
    A = known_spectrum(torch.linspace(-2.0, 5.0, D), 0)
    true = float(torch.trace(A))
    # Var[z^T A z] = 2 sum_{i != j} A_ij^2 for Rademacher z
    sd_one = math.sqrt(2 * float((A**2).sum() - (torch.diagonal(A) ** 2).sum()))
    probes, seeds = 20, 300
    runs = [hutchinson_trace(_mv(A), D, probes=probes, generator=_gen(s), dtype=DTYPE)
            for s in range(seeds)]
    values = torch.tensor([r.value for r in runs], dtype=DTYPE)
    stderrs = torch.tensor([r.stderr for r in runs], dtype=DTYPE)
    true_se = sd_one / math.sqrt(probes)
    # unbiased: the mean over seeds is within 4 of its own standard errors of the truth
    assert abs(float(values.mean()) - true) < 4 * true_se / math.sqrt(seeds)
    # the spread over seeds is the true stderr, and the reported stderr estimates it
    assert float(values.std()) == pytest.approx(true_se, rel=0.15)
    assert float(stderrs.mean()) == pytest.approx(true_se, rel=0.1)
    coverage = sum(r.ci_low <= true <= r.ci_high for r in runs) / seeds
    assert 0.88 <= coverage <= 0.99
    assert all(r.probes == r.matvecs == probes and r.method == "hutchinson" for r in runs)


def test_hutchinson_probe_batching_does_not_change_the_result():
    A = known_spectrum(torch.linspace(0.0, 1.0, D), 1)
    a = hutchinson_trace(_mv(A), D, probes=10, generator=_gen(3), dtype=DTYPE, probe_batch=1)
    b = hutchinson_trace(_mv(A), D, probes=10, generator=_gen(3), dtype=DTYPE, probe_batch=4)
    c = hutchinson_trace(_mv(A), D, probes=10, generator=_gen(3), dtype=DTYPE)
    assert a.value == pytest.approx(b.value, rel=1e-14) and b == c
    assert a.to_dict()["method"] == "hutchinson"


def test_exact_cases_diagonal_and_zero():
    diag = torch.diag(torch.linspace(-1.0, 3.0, D, dtype=DTYPE))
    res = hutchinson_trace(_mv(diag), D, probes=5, generator=_gen(0), dtype=DTYPE)
    assert res.value == pytest.approx(float(torch.trace(diag)), abs=1e-12)
    assert res.stderr == pytest.approx(0.0, abs=1e-12)
    zero = torch.zeros(D, D, dtype=DTYPE)
    for res in (hutchinson_trace(_mv(zero), D, probes=3, generator=_gen(0), dtype=DTYPE),
                hutchpp_trace(_mv(zero), D, matvecs_budget=9, generator=_gen(0), dtype=DTYPE)):
        assert (res.value, res.stderr, res.ci_low, res.ci_high) == (0.0, 0.0, 0.0, 0.0)


def test_hutchpp_exact_when_the_sketch_spans_everything():
    A = known_spectrum(torch.linspace(-2.0, 5.0, D), 2)
    res = hutchpp_trace(_mv(A), D, matvecs_budget=3 * D, generator=_gen(0), dtype=DTYPE)
    assert res.value == pytest.approx(float(torch.trace(A)), rel=1e-12)
    assert res.stderr == 0.0 and res.method == "hutch++" and res.matvecs == 2 * D


def test_hutchpp_unbiased_honest_and_better_on_decaying_spectra():
    A = known_spectrum(10.0 * 0.5 ** torch.arange(D, dtype=DTYPE), 3)
    true = float(torch.trace(A))
    budget, seeds = 15, 200
    pp = [hutchpp_trace(_mv(A), D, matvecs_budget=budget, generator=_gen(s), dtype=DTYPE)
          for s in range(seeds)]
    hu = [hutchinson_trace(_mv(A), D, probes=budget, generator=_gen(s), dtype=DTYPE)
          for s in range(seeds)]
    err_pp = torch.tensor([r.value - true for r in pp], dtype=DTYPE)
    err_hu = torch.tensor([r.value - true for r in hu], dtype=DTYPE)
    assert all(r.matvecs == budget and r.probes == budget - 2 * (budget // 3) for r in pp)
    assert abs(float(err_pp.mean())) < 4 * float(err_pp.std()) / math.sqrt(seeds)
    assert float(err_pp.square().mean()) < 0.25 * float(err_hu.square().mean())
    # 5 deflated probes: the normal interval undercovers (documented), the t interval less so
    coverage = sum(r.ci_low <= true <= r.ci_high for r in pp) / seeds
    assert 0.7 <= coverage < 0.95
    t_runs = [hutchpp_trace(_mv(A), D, matvecs_budget=budget, generator=_gen(s), dtype=DTYPE,
                            interval="t") for s in range(seeds)]
    t_coverage = sum(r.ci_low <= true <= r.ci_high for r in t_runs) / seeds
    assert t_coverage > coverage and t_runs[0].value == pp[0].value
    assert t_runs[0].to_dict()["interval"] == "t"


def test_student_t_quantiles_match_tables():
    for dof, expected in [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423)]:
        assert student_t_quantile(0.975, dof) == pytest.approx(expected, rel=1.5e-3)


def test_block_hessian_trace_and_batched_probes():
    model = make_smooth_cnn(0)
    x, y = make_data(1, 6)
    name = "fc.weight"  # 48 parameters
    true = float(torch.trace(dense_block_hessian(model, [(x, y)], name)))
    for backend, cache in [("func", False), ("autograd", True)]:
        op = BlockHessian(model, [(x, y)], name, backend=backend, cache_graph=cache)
        res = hutchinson_trace(op.matvec, op.size, probes=16, generator=_gen(0), dtype=DTYPE)
        assert abs(res.value - true) < 5 * res.stderr
        assert op.num_matvecs == 16
    pp = hutchpp_trace(op.matvec, op.size, matvecs_budget=3 * op.size, generator=_gen(0),
                       dtype=DTYPE)
    assert pp.value == pytest.approx(true, rel=1e-10)


def test_same_seed_same_result_and_bad_arguments():
    A = known_spectrum(torch.linspace(-1.0, 1.0, D), 4)
    state = torch.random.get_rng_state()
    a = hutchpp_trace(_mv(A), D, matvecs_budget=12, generator=_gen(9), dtype=DTYPE)
    b = hutchpp_trace(_mv(A), D, matvecs_budget=12, generator=_gen(9), dtype=DTYPE)
    assert a == b
    assert torch.equal(state, torch.random.get_rng_state())
    with pytest.raises(HessauditError, match="2 probes"):
        hutchinson_trace(_mv(A), D, probes=1, generator=_gen(0), dtype=DTYPE)
    with pytest.raises(HessauditError, match="budget"):
        hutchpp_trace(_mv(A), D, matvecs_budget=3, generator=_gen(0), dtype=DTYPE)
    with pytest.raises(HessauditError, match="Generator"):
        hutchinson_trace(_mv(A), D, probes=4, generator=None, dtype=DTYPE)
    with pytest.raises(HessauditError, match="confidence"):
        hutchinson_trace(_mv(A), D, probes=4, generator=_gen(0), dtype=DTYPE, confidence=1.5)
