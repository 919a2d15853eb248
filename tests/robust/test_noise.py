"""Synthetic noise injection: rates, confusion matrices, seeds, specs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hessaudit.errors import HessauditError
from hessaudit.robust.noise import inject_noise
from hessaudit.robust.noise_matrix import symmetric_noise_matrix


def _labels(n: int, k: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, k, size=n)


def _assert_matches(realized: np.ndarray, counts: np.ndarray, F: np.ndarray) -> None:
    """Every entry of the realized row-normalized confusion is within 5 sigma of F."""
    n_row = counts.sum(axis=1, keepdims=True)
    sigma = np.sqrt(F * (1 - F) / n_row)
    assert np.all(np.abs(realized - F) <= 5 * sigma + 1e-12)


def test_symmetric_rate_and_confusion() -> None:
    k, n, rate = 10, 20000, 0.4
    y = _labels(n, k)
    inj = inject_noise(y, num_classes=k, spec="symmetric:0.4", seed=3)
    assert abs(inj.realized_rate - rate) < 5 * np.sqrt(rate * (1 - rate) / n)
    np.testing.assert_allclose(inj.noise_matrix, symmetric_noise_matrix(k, rate))
    _assert_matches(inj.realized_matrix, inj.confusion, inj.noise_matrix)
    z = inj.noisy_labels.numpy()
    flipped = inj.flipped_indices
    assert np.all(z[flipped] != y[flipped])
    assert np.all(np.delete(z, flipped) == np.delete(y, flipped))
    assert inj.confusion.sum() == n
    np.testing.assert_array_equal(inj.clean_labels.numpy(), y)


def test_symmetric_rate_on_average_over_seeds() -> None:
    y = _labels(300, 5)
    rates = [inject_noise(y, num_classes=5, spec="symmetric:0.25", seed=s).realized_rate
             for s in range(60)]
    assert abs(np.mean(rates) - 0.25) < 5 * np.sqrt(0.25 * 0.75 / (300 * 60))


def test_same_seed_same_flips() -> None:
    y = _labels(1000, 10)
    a = inject_noise(y, num_classes=10, spec="symmetric:0.3", seed=7)
    b = inject_noise(list(y), num_classes=10, spec="symmetric:0.3", seed=7)
    c = inject_noise(y, num_classes=10, spec="symmetric:0.3", seed=8)
    np.testing.assert_array_equal(a.flipped_indices, b.flipped_indices)
    assert a.noisy_labels.equal(b.noisy_labels)
    assert not a.noisy_labels.equal(c.noisy_labels)


def test_asymmetric_default_map() -> None:
    k, n = 4, 8000
    y = _labels(n, k)
    inj = inject_noise(y, num_classes=k, spec="asymmetric:0.3", seed=0)
    z = inj.noisy_labels.numpy()
    flipped = inj.flipped_indices
    np.testing.assert_array_equal(z[flipped], (y[flipped] + 1) % k)  # c -> c + 1 mod k
    assert inj.class_map == (1, 2, 3, 0)
    assert abs(inj.realized_rate - 0.3) < 5 * np.sqrt(0.21 / n)
    _assert_matches(inj.realized_matrix, inj.confusion, inj.noise_matrix)


def test_asymmetric_user_map(tmp_path) -> None:
    (tmp_path / "map.json").write_text(json.dumps({"0": 2, "1": 1}))
    (tmp_path / "list.json").write_text(json.dumps([1, 0, 2]))
    y = _labels(3000, 3)
    inj = inject_noise(y, num_classes=3, spec=f"asymmetric:0.5:{tmp_path / 'map.json'}", seed=1)
    z = inj.noisy_labels.numpy()
    assert np.all(z[y == 1] == 1) and np.all(z[y == 2] == 2)  # unmapped classes never flip
    assert set(z[y == 0]) == {0, 2}
    np.testing.assert_allclose(inj.noise_matrix[0], [0.5, 0.0, 0.5])
    inj2 = inject_noise(y, num_classes=3, spec=f"asymmetric:0.2:{tmp_path / 'list.json'}",
                        seed=1)
    assert inj2.class_map == (1, 0, 2)
    (tmp_path / "bad.json").write_text(json.dumps({"0": 5}))
    with pytest.raises(HessauditError, match="out of range"):
        inject_noise(y, num_classes=3, spec=f"asymmetric:0.2:{tmp_path / 'bad.json'}", seed=0)
    with pytest.raises(HessauditError, match="does not exist"):
        inject_noise(y, num_classes=3, spec=f"asymmetric:0.2:{tmp_path / 'no.json'}", seed=0)


def test_matrix_file(tmp_path) -> None:
    F = np.array([[0.6, 0.4, 0.0], [0.1, 0.8, 0.1], [0.0, 0.5, 0.5]])
    np.save(tmp_path / "F.npy", F)
    y = _labels(9000, 3)
    inj = inject_noise(y, num_classes=3, spec=f"matrix:{tmp_path / 'F.npy'}", seed=2)
    np.testing.assert_allclose(inj.noise_matrix, F)
    _assert_matches(inj.realized_matrix, inj.confusion, F)
    assert inj.confusion[0, 2] == 0 and inj.confusion[2, 0] == 0  # zero-probability cells
    expected = float(np.mean(1 - np.diag(F)[y]))
    assert inj.expected_rate == pytest.approx(expected)
    # a singular F is fine for injection
    np.save(tmp_path / "S.npy", np.full((3, 3), 1 / 3))
    inject_noise(y, num_classes=3, spec=f"matrix:{tmp_path / 'S.npy'}", seed=2)


def test_to_dict_is_json(tmp_path) -> None:
    inj = inject_noise(_labels(50, 3), num_classes=3, spec="symmetric:0.5", seed=0)
    doc = json.loads(json.dumps(inj.to_dict()))
    assert doc["num_flipped"] == len(doc["flipped_indices"])
    assert doc["realized_rate"] == pytest.approx(doc["num_flipped"] / 50)
    assert len(doc["realized_confusion"]) == 3


@pytest.mark.parametrize(
    "spec",
    ["symmetric:1.0", "symmetric:-0.1", "symmetric:1.5", "symmetric:x", "asymmetric:2",
     "uniform:0.2", "symmetric", "matrix:"],
)
def test_bad_specs(spec: str) -> None:
    with pytest.raises(HessauditError, match="--inject-noise"):
        inject_noise([0, 1, 2], num_classes=3, spec=spec, seed=0)


def test_labels_out_of_range() -> None:
    with pytest.raises(HessauditError, match="outside"):
        inject_noise([0, 3], num_classes=3, spec="symmetric:0.1", seed=0)
