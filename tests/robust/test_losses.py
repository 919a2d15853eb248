"""The noisy-label losses against formulas written independently here (numpy, float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hessaudit.errors import HessauditError
from hessaudit.robust.losses import (
    LOSS_NAMES,
    backward_corrected_loss,
    forward_corrected_loss,
    generalized_cross_entropy,
    l2sp_penalty,
    label_smoothing_cross_entropy,
    make_loss,
    symmetric_cross_entropy,
)
from hessaudit.robust.noise_matrix import symmetric_noise_matrix


def _random_F(k: int, rng: np.random.Generator, keep: float = 0.6) -> np.ndarray:
    """A random row-stochastic, diagonally dominant (hence invertible) noise matrix."""
    off = rng.dirichlet(np.ones(k), size=k)
    return keep * np.eye(k) + (1.0 - keep) * off


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _ce_all(z: np.ndarray) -> np.ndarray:
    """(B, k): -log softmax(z)_j for every class j."""
    return -np.log(_softmax(z))


@pytest.mark.parametrize("k", [2, 3, 5, 10])
def test_backward_corrected_loss_is_unbiased(k: int) -> None:
    rng = np.random.default_rng(k)
    F = _random_F(k, rng)
    logits = torch.from_numpy(rng.normal(scale=3.0, size=(64, k)))
    clean = torch.from_numpy(rng.integers(0, k, size=64))
    expected = torch.zeros(64, dtype=torch.float64)
    for z in range(k):  # exact expectation over ytilde ~ F[y, :]
        noisy = torch.full((64,), z, dtype=torch.long)
        lbar = backward_corrected_loss(logits, noisy, F, reduction="none")
        expected += torch.from_numpy(F[clean.numpy(), z]) * lbar
    clean_loss = torch.nn.functional.cross_entropy(logits, clean, reduction="none")
    assert logits.dtype == torch.float64
    assert torch.allclose(expected, clean_loss, rtol=0, atol=1e-10)


@settings(max_examples=30, deadline=None)
@given(
    k=st.integers(2, 8),
    seed=st.integers(0, 2**31),
    rate=st.floats(0.0, 0.6),
)
def test_backward_corrected_loss_unbiased_symmetric(k: int, seed: int, rate: float) -> None:
    rng = np.random.default_rng(seed)
    F = symmetric_noise_matrix(k, rate * (k - 1) / k)  # strictly below the singular rate
    logits = torch.from_numpy(rng.normal(scale=2.0, size=(16, k)))
    clean = rng.integers(0, k, size=16)
    expected = np.zeros(16)
    for z in range(k):
        lbar = backward_corrected_loss(
            logits, torch.full((16,), z, dtype=torch.long), F, reduction="none"
        ).numpy()
        expected += F[clean, z] * lbar
    np.testing.assert_allclose(expected, _ce_all(logits.numpy())[np.arange(16), clean],
                               rtol=0, atol=1e-10)


def test_backward_corrected_loss_formula_and_sign() -> None:
    rng = np.random.default_rng(0)
    k = 4
    F = _random_F(k, rng)
    logits = rng.normal(size=(8, k))
    noisy = rng.integers(0, k, size=8)
    expected = (np.linalg.inv(F)[noisy] * _ce_all(logits)).sum(axis=1)
    got = backward_corrected_loss(torch.from_numpy(logits), torch.from_numpy(noisy), F,
                                  reduction="none")
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    # the mean reduction and the make_loss wrapper (precomputed F^-1) agree
    loss = make_loss("reweight", noise_matrix=F)
    assert float(loss(torch.from_numpy(logits), torch.from_numpy(noisy))) == pytest.approx(
        expected.mean(), rel=1e-12
    )
    # negative (and unbounded below): a confident prediction of a class z, labelled z, under
    # heavy noise
    F2 = symmetric_noise_matrix(3, 0.5)
    confident = torch.tensor([[30.0, 0.0, -30.0]], dtype=torch.float64)
    assert float(backward_corrected_loss(confident, torch.tensor([0]), F2)) < 0


def test_backward_loss_gradient_flows() -> None:
    logits = torch.randn(5, 3, requires_grad=True)
    loss = make_loss("reweight", noise_matrix=symmetric_noise_matrix(3, 0.3))
    loss(logits, torch.tensor([0, 1, 2, 0, 1])).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_forward_corrected_loss_formula() -> None:
    rng = np.random.default_rng(1)
    k = 5
    F = _random_F(k, rng)
    F[0, 3] = 0.0
    F[0] /= F[0].sum()
    logits = rng.normal(scale=2.0, size=(32, k))
    noisy = rng.integers(0, k, size=32)
    expected = -np.log((_softmax(logits) @ F)[np.arange(32), noisy])
    got = forward_corrected_loss(torch.from_numpy(logits), torch.from_numpy(noisy), F,
                                 reduction="none")
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
    # identity F gives plain cross-entropy
    ce = _ce_all(logits)[np.arange(32), noisy]
    got_id = forward_corrected_loss(torch.from_numpy(logits), torch.from_numpy(noisy),
                                    np.eye(k), reduction="none")
    np.testing.assert_allclose(got_id.numpy(), ce, rtol=1e-10)


@pytest.mark.parametrize("q", [0.1, 0.7, 1.0])
def test_generalized_cross_entropy_formula(q: float) -> None:
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(16, 6))
    y = rng.integers(0, 6, size=16)
    p_y = _softmax(logits)[np.arange(16), y]
    expected = (1.0 - p_y**q) / q
    got = generalized_cross_entropy(torch.from_numpy(logits), torch.from_numpy(y), q=q,
                                    reduction="none")
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)


@pytest.mark.parametrize(("alpha", "beta"), [(0.1, 1.0), (1.0, 0.0), (0.5, 2.0)])
def test_symmetric_cross_entropy_formula(alpha: float, beta: float) -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(16, 4))
    y = rng.integers(0, 4, size=16)
    p = _softmax(logits)
    ce = -np.log(p[np.arange(16), y])
    off = np.clip(p, 1e-7, 1.0)
    off[np.arange(16), y] = 0.0
    rce = -np.log(1e-4) * off.sum(axis=1)  # log(1) = 0 on the true class
    expected = alpha * ce + beta * rce
    got = symmetric_cross_entropy(torch.from_numpy(logits), torch.from_numpy(y), alpha=alpha,
                                  beta=beta, reduction="none")
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)


@pytest.mark.parametrize("s", [0.0, 0.1, 0.3])
def test_label_smoothing_formula(s: float) -> None:
    rng = np.random.default_rng(4)
    k = 7
    logits = rng.normal(size=(16, k))
    y = rng.integers(0, k, size=16)
    target = (1 - s) * np.eye(k)[y] + s / k
    expected = (target * _ce_all(logits)).sum(axis=1)
    got = label_smoothing_cross_entropy(torch.from_numpy(logits), torch.from_numpy(y),
                                        smoothing=s, reduction="none")
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
    ref = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits), torch.from_numpy(y), label_smoothing=s
    )
    assert float(make_loss("label-smoothing", smoothing=s)(
        torch.from_numpy(logits), torch.from_numpy(y))) == pytest.approx(float(ref), rel=1e-10)


def test_l2sp_penalty_formula() -> None:
    w = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[3.0]]), "head": torch.tensor([2.0])}
    anchors = {"a": torch.tensor([0.0, 0.0]), "b": torch.tensor([[1.0]])}
    got = l2sp_penalty(w, anchors, alpha=0.5, beta=0.1, new_names=["head"])
    assert float(got) == pytest.approx(0.5 / 2 * (1 + 4 + 4) + 0.1 / 2 * 4)


def test_make_loss_names_and_errors() -> None:
    for name in LOSS_NAMES:
        kwargs = {"noise_matrix": symmetric_noise_matrix(3, 0.2)}
        loss = make_loss(name, **kwargs)
        value = loss(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
        assert value.ndim == 0 and torch.isfinite(value)
        assert loss.to_dict()["name"] == name
    with pytest.raises(HessauditError, match="--loss"):
        make_loss("focal")
    with pytest.raises(HessauditError, match="needs a noise matrix"):
        make_loss("reweight")
    with pytest.raises(HessauditError, match="needs a noise matrix"):
        make_loss("forward")
    with pytest.raises(HessauditError, match="--gce-q"):
        make_loss("gce", gce_q=0.0)
    with pytest.raises(HessauditError, match="--smoothing"):
        make_loss("label-smoothing", smoothing=1.0)
    with pytest.raises(HessauditError, match="--sce-alpha"):
        make_loss("sce", sce_alpha=-1.0)
    with pytest.raises(HessauditError, match="singular"):
        make_loss("reweight", noise_matrix=np.full((4, 4), 0.25))
