"""The Dual-T noise-matrix estimator (hessaudit/robust/dual_t.py), its parts, and
``--noise-matrix estimate:dual-t`` end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from hessaudit.cli import main
from hessaudit.errors import HessauditError
from hessaudit.robust.config import FinetuneConfig
from hessaudit.robust.dual_t import club_matrix, dual_t_estimate, spade_matrix
from hessaudit.robust.noise import noise_spec_matrix, sample_noisy_labels
from hessaudit.robust.noise_matrix import estimate_noise_matrix, validate_noise_matrix

MODEL = "hessaudit.zoo:digits_cnn"


def _confident_classifier(
    F: np.ndarray, n: int, accuracy: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic first-model outputs: true labels ``y`` (balanced), a classifier that predicts
    ``y`` with probability ``accuracy`` (else a uniformly chosen other class) and puts a
    probability in [0.9, 1) on its prediction (the rest spread by a Dirichlet draw), and noisy
    labels ``z ~ F[y]``. Returns (probs, z, y, predicted)."""
    k = F.shape[0]
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    wrong = rng.random(n) >= accuracy
    pred = np.where(wrong, (y + rng.integers(1, k, n)) % k, y)
    top = 1.0 - 0.1 * rng.random(n)
    rest = rng.dirichlet(np.ones(k - 1), size=n) * (1.0 - top)[:, None]
    probs = np.empty((n, k))
    others = (pred[:, None] + np.arange(1, k)[None, :]) % k  # the k - 1 other classes
    probs[np.arange(n)[:, None], others] = rest
    probs[np.arange(n), pred] = top
    z = sample_noisy_labels(y, F, seed=seed + 1)
    return probs, z, y, pred


# --------------------------------------------------------------------------- the two factors


def test_spade_is_row_normalized_counts() -> None:
    pred = [0, 0, 0, 1, 1, 0]
    noisy = [0, 1, 1, 1, 2, 2]
    T, empty = spade_matrix(pred, noisy, 3)
    np.testing.assert_allclose(T[0], [1 / 4, 2 / 4, 1 / 4])
    np.testing.assert_allclose(T[1], [0, 1 / 2, 1 / 2])
    np.testing.assert_array_equal(T[2], [0, 0, 1])  # never predicted: identity row
    assert empty == [2]


def test_club_takes_the_anchor_below_the_97th_percentile() -> None:
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(4) * 0.3, size=500)
    T, anchors = club_matrix(probs)
    for y in range(4):
        col = probs[:, y]
        # independent restatement: sort, the 'higher' 97th percentile, the next value below it
        threshold = np.percentile(col, 97, method="higher")
        candidates = np.sort(col[col < threshold])
        expected = int(np.flatnonzero(col == candidates[-1])[0])
        assert anchors[y] == expected
        np.testing.assert_array_equal(T[y], probs[expected])
        assert (col > col[expected]).sum() >= math.ceil(0.03 * 500) - 1  # the top 3% skipped
    _, anchors1 = club_matrix(probs, quantile=1.0)
    assert anchors1 == [int(np.argmax(probs[:, y])) for y in range(4)]
    np.testing.assert_allclose(T.sum(axis=1), 1.0)
    with pytest.raises(HessauditError, match="quantile"):
        club_matrix(probs, quantile=0.0)


def test_estimate_is_club_times_spade_and_reachable_by_name() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=300)
    z = rng.integers(0, 5, 300)
    est = dual_t_estimate(probs, z)
    club, _ = club_matrix(probs)
    spade, _ = spade_matrix(probs.argmax(axis=1), z, 5)
    np.testing.assert_allclose(est.F, club @ spade, rtol=0, atol=1e-12)
    np.testing.assert_allclose(est.F.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(estimate_noise_matrix(probs, z, method="dual-t"), est.F, atol=1e-15)
    record = est.to_dict()
    assert record["anchor_quantile"] == 0.97 and len(record["anchors"]) == 5


# --------------------------------------------------------------------------- known F


@pytest.mark.parametrize("spec", ["symmetric:0.4", "asymmetric:0.4"])
@pytest.mark.parametrize("k", [5, 10])
def test_recovers_injected_noise_within_the_stated_bound(spec: str, k: int) -> None:
    """The bound, from F_hat - F = (T_club - I) T_spade + (T_spade - F):

    * ``|(T_club - I) T_spade| <= max_y sum_l |T_club - I|[y, l] = 2 (1 - min_y T_club[y, y])``
      (rows of T_club and T_spade are distributions);
    * ``E[T_spade[l, z] | labels] = sum_y phat(y | yhat = l) F[y, z]``, within
      ``1 - precision_l`` of ``F[l, z]``; the counts add at most ``2 / sqrt(n_l)`` (4 standard
      deviations of a mean of ``n_l`` indicators).
    """
    F = noise_spec_matrix(spec, num_classes=k)[2]
    n = 4000 * k
    probs, z, y, pred = _confident_classifier(F, n, accuracy=0.95, seed=k)
    est = dual_t_estimate(probs, z, num_classes=k)
    error = np.abs(est.F - F).max()
    precision = min(float((y[pred == c] == c).mean()) for c in range(k))
    n_min = min(int((pred == c).sum()) for c in range(k))
    bound = 2 * (1 - est.T_club.diagonal().min()) + (1 - precision) + 2 / math.sqrt(n_min)
    assert bound < 0.15  # the bound itself is informative: F's off-diagonal mass is 0.4
    assert error <= bound, (error, bound)
    validate_noise_matrix(est.F, num_classes=k)  # invertible: usable by the loss


def test_calibrated_noisy_posteriors_count_the_noise_twice() -> None:
    """The documented failure (module docstring): when the outputs are the noisy posteriors
    ``P(z | x)`` themselves, the anchors already give F and the product is F @ T_spade."""
    k, n = 4, 20000
    F = noise_spec_matrix("symmetric:0.4", num_classes=k)[2]
    rng = np.random.default_rng(0)
    y = np.arange(n) % k
    clean_post = np.eye(k)[y]  # every example an anchor point
    probs = clean_post @ F + 1e-9 * rng.random((n, k))  # break ties
    z = sample_noisy_labels(y, F, seed=1)
    est = dual_t_estimate(probs, z)
    assert np.abs(est.T_club - F).max() < 1e-6
    assert np.abs(est.F - F @ F).max() < 0.03  # twice the noise
    assert np.abs(est.F - F).max() > 0.1
    confident = estimate_noise_matrix(probs, z, method="confident")
    assert np.abs(confident - F).max() < 0.03  # the confident joint is right here


def test_degenerate_outputs_give_a_singular_estimate_that_is_refused() -> None:
    probs = np.tile([0.7, 0.2, 0.1], (60, 1))  # one output for every example
    z = np.arange(60) % 3
    est = dual_t_estimate(probs, z)
    assert est.unpredicted_classes == (1, 2)
    with pytest.raises(HessauditError, match="singular"):
        validate_noise_matrix(est.F, num_classes=3, source="--noise-matrix estimate:dual-t")


@pytest.mark.parametrize(
    ("probs", "labels", "message"),
    [
        (np.ones(4), [0, 1, 0, 1], "(n, k)"),
        (np.full((4, 2), 0.5), [0, 1], "length"),
        (np.full((4, 2), 0.5), [0, 1, 2, 1], "outside"),
        (np.array([[np.nan, 1.0], [0.5, 0.5]]), [0, 1], "NaN"),
    ],
)
def test_bad_inputs(probs, labels, message) -> None:
    with pytest.raises(HessauditError, match=message):
        dual_t_estimate(probs, labels)


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("spec", "method", "expected"),
    [
        ("estimate:dual-t", "confident", "dual-t"),
        ("estimate:DUAL-T", "confident", "dual-t"),
        ("estimate:confident-joint", "confident", "confident"),
        ("estimate:anchor", "confident", "anchor"),
        ("estimate:dual-t", "dual-t", "dual-t"),
        ("estimate", "confident-joint", "confident"),
        ("estimate", "dual-t", "dual-t"),
    ],
)
def test_estimate_spec_resolves_the_method(spec: str, method: str, expected: str) -> None:
    config = FinetuneConfig(model="m", pretrained="p", data="d", out="o", noise_matrix=spec,
                            estimate_method=method).resolved()
    assert config.noise_matrix == "estimate" and config.estimate_method == expected
    assert config.resolved() == config  # idempotent, so resume compares like with like


def _run(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(args)
    return int(exc.value.code)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--noise-matrix", "estimate:magic"], "--noise-matrix: unknown estimation method"),
        (["--noise-matrix", "estimate:"], "--noise-matrix: unknown estimation method"),
        (["--noise-matrix", "estimate:dual-t", "--estimate-method", "anchor"], "disagree"),
        (["--noise-matrix", "estimate", "--estimate-method", "dual"], "--estimate-method"),
    ],
)
def test_bad_estimate_specs_exit_1_with_one_line(tmp_path, capsys, extra, needle) -> None:
    out = tmp_path / "run"
    args = ["finetune", "--model", MODEL, "--pretrained", str(tmp_path / "p.safetensors"),
            "--data", "digits", "--out", str(out), *extra]
    assert _run(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error:") and needle in err
    assert "Traceback" not in err
    assert not out.exists()


# --------------------------------------------------------------------------- end to end


def _estimate_args(pretrained: str, out: Path, estimate_epochs: int) -> list[str]:
    return [
        "finetune", "--model", MODEL, "--pretrained", pretrained, "--data", "digits",
        "--out", str(out), "--epochs", "1", "--estimate-epochs", str(estimate_epochs),
        "--lr", "3e-3", "--batch-size", "64", "--samples", "300",
        "--inject-noise", "symmetric:0.4", "--noise-matrix", "estimate:dual-t",
        "--radius", "2", "--head-radius", "3", "--quiet",
    ]


def test_cli_estimate_dual_t_writes_the_matrix(digits_pretrained, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert _run(_estimate_args(digits_pretrained, out, 4)) == 0
    noise = json.loads((out / "noise.json").read_text())
    assert noise["noise_matrix_source"] == "estimate (dual-t)"
    estimated = noise["estimated"]
    assert estimated["method"] == "dual-t" and estimated["folds"] == 2
    F = np.array(noise["noise_matrix"])
    assert F.shape == (10, 10)
    np.testing.assert_allclose(F.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(F, np.array(estimated["noise_matrix"]), atol=1e-12)
    parts = estimated["dual_t"]
    np.testing.assert_allclose(np.array(parts["T_club"]) @ np.array(parts["T_spade"]), F,
                               atol=1e-9)
    errors = estimated["errors_vs_injected_by_method"]
    assert set(errors) == {"anchor", "confident", "dual-t"}
    assert errors["dual-t"]["frobenius"] == pytest.approx(estimated["frobenius_error_vs_injected"])
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["noise_matrix"] == "estimate" and config["estimate_method"] == "dual-t"
    assert Path(out / "final.safetensors").is_file()


def test_cli_singular_dual_t_estimate_is_a_clear_error(digits_pretrained, tmp_path,
                                                        capsys) -> None:
    """First models of 2 epochs on 150 examples predict too few classes: Dual-T's F is
    singular, and the run stops with one line; a previous run's outputs stay (--overwrite only
    replaces them once the setup succeeded)."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "final.safetensors").write_bytes(b"previous run")
    assert _run([*_estimate_args(digits_pretrained, out, 2), "--overwrite"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("error: --noise-matrix estimate:dual-t: noise matrix is singular")
    assert "--estimate-epochs" in err[-1]
    assert not any(line.startswith(("error", "Traceback")) for line in err[:-1])
    assert sorted(p.name for p in out.iterdir()) == ["final.safetensors", "notes.txt"]
    assert (out / "final.safetensors").read_bytes() == b"previous run"


def test_resume_refuses_another_estimation_method(tmp_path) -> None:
    """``estimate:METHOD`` resolves to ``estimate`` plus ``estimate_method``: on --resume a
    different method must be refused, not silently ignored."""
    from hessaudit.robust.trainer import resume_config

    saved = FinetuneConfig(model=MODEL, pretrained="p.safetensors", data="digits",
                           out=str(tmp_path), noise_matrix="estimate").resolved()
    (tmp_path / "config.json").write_text(json.dumps({"config": saved.to_dict()}))
    assert resume_config(tmp_path, {"noise_matrix": "estimate"}) == saved
    assert resume_config(tmp_path, {"noise_matrix": "estimate:confident-joint"}) == saved
    with pytest.raises(HessauditError, match="--noise-matrix estimate:dual-t differs"):
        resume_config(tmp_path, {"noise_matrix": "estimate:dual-t"})
