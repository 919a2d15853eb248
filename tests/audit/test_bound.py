"""Theorem 2.1's bound, evaluated by hand on small numbers."""

from __future__ import annotations

import math

import pytest

from hessaudit.audit.bound import compute_bound, hessian_term
from hessaudit.errors import HessauditError


def test_hessian_term_is_the_formula():
    assert hessian_term([4.0, 9.0], loss_bound=2.0, n=16) == pytest.approx(
        math.sqrt(2.0) * (2.0 + 3.0) / 4.0
    )


def test_negative_values_count_as_zero():
    assert hessian_term([-1.0, 4.0], loss_bound=1.0, n=1) == pytest.approx(2.0)


def test_bound_with_epsilon_and_gap():
    result = compute_bound(
        [1.0, 0.25],
        train_loss=0.5,
        n=100,
        loss_bound=4.0,
        loss_bound_source="user",
        epsilon=0.1,
        eval_loss=0.8,
    )
    g = 2.0 * (1.0 + 0.5) / 10.0
    assert result.hessian_term == pytest.approx(g)
    assert result.bound == pytest.approx(1.1 * 0.5 + 1.1 * g)
    assert result.gap == pytest.approx(0.3)
    assert result.ratio_to_gap == pytest.approx(g / 0.3)
    assert result.C_source == "user"
    assert "not included" in result.note


def test_no_ratio_without_a_positive_gap():
    below = compute_bound(
        [1.0], train_loss=0.5, n=4, loss_bound=1.0, loss_bound_source="user", eval_loss=0.4
    )
    assert below.gap == pytest.approx(-0.1)
    assert below.ratio_to_gap is None
    none = compute_bound([1.0], train_loss=0.5, n=4, loss_bound=1.0, loss_bound_source="user")
    assert none.gap is None and none.ratio_to_gap is None and none.eval_loss is None


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"n": 0}, "--n-train"),
        ({"loss_bound": -1.0}, "--loss-bound"),
        ({"epsilon": -0.1}, "--epsilon"),
    ],
)
def test_rejects_impossible_values(kwargs, flag):
    base = dict(train_loss=0.1, n=10, loss_bound=1.0, loss_bound_source="user", epsilon=0.0)
    with pytest.raises(HessauditError, match=flag):
        compute_bound([1.0], **{**base, **kwargs})
