"""The non-negative backward correction (``--nonneg-correction``) against its formula."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from hessaudit.cli import main
from hessaudit.robust.losses import backward_corrected_loss, make_loss
from hessaudit.robust.noise_matrix import symmetric_noise_matrix
from hessaudit.robust.nonneg import nonneg_backward_corrected_loss, partial_risks

MODEL = "hessaudit.zoo:digits_cnn"


def _ce_all(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return -(z - np.log(np.exp(z).sum(axis=1, keepdims=True)))


def _reference(logits: np.ndarray, noisy: np.ndarray, F: np.ndarray) -> np.ndarray:
    """Rhat_j = (1/B) sum_i (F^-1)[z_i, j] CE(x_i, j), in float64."""
    Finv = np.linalg.inv(F)
    return (Finv[noisy] * _ce_all(logits)).mean(axis=0)


@pytest.mark.parametrize("k", [2, 4, 10])
def test_partial_risks_sum_to_the_backward_loss_and_the_clamp_matches(k: int) -> None:
    rng = np.random.default_rng(k)
    F = symmetric_noise_matrix(k, 0.6 * (k - 1) / k)
    logits = rng.normal(scale=3.0, size=(32, k))
    noisy = rng.integers(0, k, 32)
    t_logits, t_noisy = torch.from_numpy(logits), torch.from_numpy(noisy)
    risks = partial_risks(t_logits, t_noisy, np.linalg.inv(F))
    np.testing.assert_allclose(risks.numpy(), _reference(logits, noisy, F), rtol=1e-12)
    assert float(risks.sum()) == pytest.approx(
        float(backward_corrected_loss(t_logits, t_noisy, F)), rel=1e-12)
    got = nonneg_backward_corrected_loss(t_logits, t_noisy, F)
    expected = np.maximum(_reference(logits, noisy, F), 0.0).sum()
    assert float(got) == pytest.approx(expected, rel=1e-12)
    assert float(got) >= max(0.0, float(risks.sum()))
    summed = nonneg_backward_corrected_loss(t_logits, t_noisy, F, reduction="sum")
    assert float(summed) == pytest.approx(32 * expected, rel=1e-12)


def test_partial_risks_are_unbiased_per_class() -> None:
    """E over z ~ F[y] of Rhat_j is the clean partial risk (1/B) sum_i 1{y_i = j} CE(x_i, j)."""
    k, B = 4, 16
    rng = np.random.default_rng(0)
    F = 0.6 * np.eye(k) + 0.4 * rng.dirichlet(np.ones(k), size=k)
    logits = rng.normal(scale=2.0, size=(B, k))
    clean = rng.integers(0, k, B)
    Finv = np.linalg.inv(F)
    expected = np.zeros(k)
    ce = _ce_all(logits)
    for i in range(B):  # exact expectation, example by example
        for z in range(k):
            expected += F[clean[i], z] * Finv[z] * ce[i] / B
    truth = np.array([(ce[np.arange(B), j] * (clean == j)).sum() / B for j in range(k)])
    np.testing.assert_allclose(expected, truth, atol=1e-12)


def test_clean_labels_need_no_clamp() -> None:
    """With F = I every partial risk is a plain (non-negative) cross-entropy sum."""
    rng = np.random.default_rng(1)
    logits = torch.from_numpy(rng.normal(size=(20, 5)))
    labels = torch.from_numpy(rng.integers(0, 5, 20))
    got = nonneg_backward_corrected_loss(logits, labels, np.eye(5))
    assert float(got) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, labels)), rel=1e-12)


def test_a_clamped_class_has_no_gradient() -> None:
    k = 3
    F = symmetric_noise_matrix(k, 0.5)
    logits = torch.tensor([[6.0, -6.0, 0.0], [5.0, -5.0, 0.0], [0.0, 0.0, -6.0]],
                          dtype=torch.float64, requires_grad=True)
    noisy = torch.tensor([0, 0, 2])
    risks = partial_risks(logits, noisy, np.linalg.inv(F))
    negative = risks.detach() < 0
    assert negative.any() and not negative.all()  # the case the clamp exists for
    nonneg_backward_corrected_loss(logits, noisy, F).backward()
    got = logits.grad.clone()
    logits.grad = None
    risks = partial_risks(logits, noisy, np.linalg.inv(F))
    risks[~negative].sum().backward()
    assert torch.allclose(got, logits.grad, rtol=0, atol=1e-14)


def test_per_example_values_are_refused() -> None:
    with pytest.raises(ValueError, match="per-example"):
        nonneg_backward_corrected_loss(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long),
                                       np.eye(2), reduction="none")


def test_make_loss_wires_the_option() -> None:
    F = symmetric_noise_matrix(3, 0.4)
    loss = make_loss("reweight", noise_matrix=F, nonneg_correction=True)
    assert loss.to_dict()["nonneg_correction"] is True
    logits, labels = torch.randn(8, 3), torch.randint(0, 3, (8,))
    assert torch.allclose(loss(logits, labels),
                          nonneg_backward_corrected_loss(logits, labels, F))
    assert make_loss("reweight", noise_matrix=F).to_dict()["nonneg_correction"] is False


def _run(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(args)
    return int(exc.value.code)


def _args(pretrained: str, out, *extra: str) -> list[str]:
    return ["finetune", "--model", MODEL, "--pretrained", pretrained, "--data", "digits",
            "--out", str(out), "--epochs", "2", "--lr", "1e-2", "--batch-size", "32",
            "--samples", "200", "--inject-noise", "symmetric:0.6", "--noise-matrix",
            "injected", "--constraint", "none", "--quiet", *extra]


@pytest.mark.parametrize("extra", [["--loss", "ce"], ["--loss", "js"]])
def test_cli_refuses_it_for_other_losses(tmp_path, capsys, extra) -> None:
    out = tmp_path / "run"
    args = _args(str(tmp_path / "p.safetensors"), out, "--nonneg-correction", *extra)
    assert _run(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --nonneg-correction")
    assert not out.exists()


def test_cli_training_loss_stays_non_negative(digits_pretrained, tmp_path) -> None:
    out = tmp_path / "run"
    assert _run(_args(digits_pretrained, out, "--nonneg-correction")) == 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert all(float(r["train_loss"]) >= 0 for r in rows[1:])
    assert json.loads((out / "config.json").read_text())["config"]["nonneg_correction"] is True
