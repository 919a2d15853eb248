"""Noise matrices F (rows = true label, columns = noisy label): build, validate, load, estimate."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hessaudit.errors import HessauditError
from hessaudit.robust.noise import sample_noisy_labels
from hessaudit.robust.noise_matrix import (
    estimate_noise_matrix,
    load_noise_matrix,
    symmetric_noise_matrix,
    validate_noise_matrix,
)


def test_symmetric_noise_matrix() -> None:
    F = symmetric_noise_matrix(4, 0.3)
    np.testing.assert_allclose(np.diag(F), 0.7)
    np.testing.assert_allclose(F[0, 1:], 0.1)
    np.testing.assert_allclose(F.sum(axis=1), 1.0)
    assert validate_noise_matrix(F, num_classes=4) is not F  # a validated copy
    np.testing.assert_array_equal(symmetric_noise_matrix(3, 0.0), np.eye(3))


@pytest.mark.parametrize(
    ("matrix", "k", "message"),
    [
        (np.ones((2, 3)) / 3, None, "square"),
        (np.ones(3), None, "square"),
        (np.eye(3), 4, "task has 4 classes"),
        (np.array([[1.2, -0.2], [0.0, 1.0]]), 2, "negative"),
        (np.array([[0.5, 0.4], [0.0, 1.0]]), 2, "row 0 .* sums to 0.9"),
        (np.array([[np.nan, 1.0], [0.0, 1.0]]), 2, "NaN"),
        (np.full((3, 3), 1 / 3), 3, "singular"),
        (np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]), 3, "singular"),
        ([["a", "b"], ["c", "d"]], 2, "numeric"),
    ],
)
def test_validate_rejects_bad_matrices(matrix, k, message) -> None:
    with pytest.raises(HessauditError, match=message):
        validate_noise_matrix(matrix, num_classes=k)


@pytest.mark.parametrize("k", [2, 3, 10])
def test_symmetric_at_chance_rate_is_singular(k: int) -> None:
    F = symmetric_noise_matrix(k, (k - 1) / k)
    with pytest.raises(HessauditError, match="singular"):
        validate_noise_matrix(F, num_classes=k)
    with pytest.raises(HessauditError, match="singular"):
        load_noise_matrix(f"symmetric:{(k - 1) / k!r}", num_classes=k)
    # allowed where only sampling from F is needed
    validate_noise_matrix(F, num_classes=k, allow_singular=True)
    # just below the singular rate it is invertible
    validate_noise_matrix(symmetric_noise_matrix(k, (k - 1) / k - 0.05), num_classes=k)


def test_validate_renormalizes_rounded_rows() -> None:
    F = validate_noise_matrix([[0.33333, 0.66667], [0.5, 0.5 + 5e-5]], num_classes=2)
    np.testing.assert_allclose(F.sum(axis=1), 1.0, rtol=0, atol=1e-15)


def test_load_noise_matrix_formats(tmp_path) -> None:
    F = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.0, 0.3, 0.7]])
    np.save(tmp_path / "f.npy", F)
    (tmp_path / "f.csv").write_text("cat,dog,bird\n" + "\n".join(",".join(map(str, r)) for r in F))
    (tmp_path / "f.json").write_text(json.dumps(F.tolist()))
    (tmp_path / "g.json").write_text(json.dumps({"noise_matrix": F.tolist(), "other": 1}))
    for name in ("f.npy", "f.csv", "f.json", "g.json"):
        np.testing.assert_allclose(load_noise_matrix(str(tmp_path / name), num_classes=3), F)
    np.testing.assert_allclose(
        load_noise_matrix("symmetric:0.2", num_classes=3), symmetric_noise_matrix(3, 0.2)
    )
    with pytest.raises(HessauditError, match="task has 4 classes"):
        load_noise_matrix(str(tmp_path / "f.csv"), num_classes=4)
    with pytest.raises(HessauditError, match="does not exist"):
        load_noise_matrix(str(tmp_path / "missing.csv"), num_classes=3)
    (tmp_path / "f.txt").write_text("1")
    with pytest.raises(HessauditError, match="unknown matrix file type"):
        load_noise_matrix(str(tmp_path / "f.txt"), num_classes=3)
    (tmp_path / "h.json").write_text(json.dumps({"x": 1}))
    with pytest.raises(HessauditError, match="no 'noise_matrix'"):
        load_noise_matrix(str(tmp_path / "h.json"), num_classes=3)
    for bad in ("symmetric:1.0", "symmetric:-0.1", "symmetric:abc", "uniform"):
        with pytest.raises(HessauditError, match="--noise-matrix"):
            load_noise_matrix(bad, num_classes=3)


def _synthetic(k: int, n: int, seed: int):
    rng = np.random.default_rng(seed)
    F = 0.7 * np.eye(k) + 0.3 * rng.dirichlet(np.ones(k) * 2, size=k)
    y = rng.integers(0, k, n)
    clean_post = 0.97 * np.eye(k)[y] + 0.03 * rng.dirichlet(np.ones(k), size=n)
    clean_post[:k] = np.eye(k)  # one exact anchor point per class
    z = sample_noisy_labels(y, F, seed=seed + 1)
    return F, clean_post @ F, z  # a perfect model of the noisy labels


def test_estimate_anchor_exact_with_anchor_points() -> None:
    F, probs, z = _synthetic(4, 3000, 0)
    np.testing.assert_allclose(
        estimate_noise_matrix(probs, z, method="anchor", quantile=1.0), F, atol=1e-12
    )
    assert np.abs(estimate_noise_matrix(probs, z, method="anchor") - F).max() < 0.03


@pytest.mark.parametrize("seed", [0, 1])
def test_estimate_confident_joint(seed: int) -> None:
    F, probs, z = _synthetic(4, 20000, seed)
    E = estimate_noise_matrix(probs, z, method="confident")
    np.testing.assert_allclose(E.sum(axis=1), 1.0)
    assert np.abs(E - F).max() < 0.03


def test_estimate_errors() -> None:
    probs = np.full((4, 2), 0.5)
    with pytest.raises(HessauditError, match="method"):
        estimate_noise_matrix(probs, [0, 1, 0, 1], method="bogus")
    with pytest.raises(HessauditError, match="length"):
        estimate_noise_matrix(probs, [0, 1], method="anchor")
    with pytest.raises(HessauditError, match="outside"):
        estimate_noise_matrix(probs, [0, 1, 2, 1], method="anchor")
    with pytest.raises(HessauditError, match="3 classes"):
        estimate_noise_matrix(probs, [0, 1, 0, 1], num_classes=3)
