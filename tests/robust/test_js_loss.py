"""The Jensen-Shannon divergence loss (``--loss js``) against its definition, computed
independently here in float64 numpy from the full distributions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from hessaudit.cli import main
from hessaudit.errors import HessauditError
from hessaudit.robust.js_loss import jensen_shannon_loss
from hessaudit.robust.losses import make_loss

MODEL = "hessaudit.zoo:digits_cnn"


def _kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise KL(a || b) with 0 log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(a > 0, a * (np.log(a) - np.log(b)), 0.0)
    return terms.sum(axis=1)


def _js_reference(logits: np.ndarray, labels: np.ndarray, pi1: float) -> np.ndarray:
    """JS_pi(e_y, p) = pi KL(e_y || m) + (1 - pi) KL(p || m), m = pi e_y + (1 - pi) p, scaled by
    -1 / ((1 - pi) log(1 - pi)): the definition, over all k classes."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    onehot = np.eye(logits.shape[1])[labels]
    m = pi1 * onehot + (1 - pi1) * p
    js = pi1 * _kl(onehot, m) + (1 - pi1) * _kl(p, m)
    return js * (-1.0 / ((1 - pi1) * np.log(1 - pi1)))


@pytest.mark.parametrize("pi1", [0.05, 0.3, 0.5, 0.7, 0.9, 0.99])
@pytest.mark.parametrize("k", [2, 3, 10])
def test_matches_the_definition(pi1: float, k: int) -> None:
    rng = np.random.default_rng(k)
    logits = rng.normal(scale=4.0, size=(64, k))
    labels = rng.integers(0, k, 64)
    got = jensen_shannon_loss(torch.from_numpy(logits), torch.from_numpy(labels), pi1=pi1,
                              reduction="none")
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), _js_reference(logits, labels, pi1), rtol=1e-10,
                               atol=1e-13)
    mean = jensen_shannon_loss(torch.from_numpy(logits), torch.from_numpy(labels), pi1=pi1)
    assert float(mean) == pytest.approx(_js_reference(logits, labels, pi1).mean(), rel=1e-10)


def test_float32_is_accurate_near_a_perfect_prediction() -> None:
    """p_y -> 1: the first two terms nearly cancel; the closed form keeps float32 accurate."""
    logits = np.array([[12.0, 0.0, 0.0], [6.0, 0.0, 1.0], [0.0, 0.0, -20.0]])
    labels = np.array([0, 0, 0])
    for pi1 in (0.1, 0.5, 0.9):
        got = jensen_shannon_loss(torch.tensor(logits, dtype=torch.float32),
                                  torch.from_numpy(labels), pi1=pi1, reduction="none")
        np.testing.assert_allclose(got.double().numpy(), _js_reference(logits, labels, pi1),
                                   rtol=2e-5, atol=1e-9)


def test_limits_are_cross_entropy_and_mae() -> None:
    rng = np.random.default_rng(1)
    logits = torch.from_numpy(rng.normal(scale=2.0, size=(32, 5)))
    labels = torch.from_numpy(rng.integers(0, 5, 32))
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    p_y = torch.softmax(logits, dim=1).gather(1, labels.view(-1, 1)).squeeze(1)
    near_ce = jensen_shannon_loss(logits, labels, pi1=1e-6, reduction="none")
    assert torch.allclose(near_ce, ce, rtol=1e-4)
    # towards pi = 1 the approach is slow: L = (1 - p) + ((1 - p) + p log p) / (-log(1 - pi))
    # + O(1 - pi), from expanding the closed form; check the limit and its first correction
    for eps in (1e-6, 1e-9, 1e-12):
        near_mae = jensen_shannon_loss(logits, labels, pi1=1 - eps, reduction="none")
        first = ((1 - p_y) + p_y * torch.log(p_y)) / -math.log(eps)
        assert torch.allclose(near_mae, 1 - p_y + first, atol=1e-4)
        assert float((near_mae - (1 - p_y)).abs().max()) <= 1.0 / -math.log(eps)


@pytest.mark.parametrize("pi1", [0.1, 0.5, 0.9])
def test_bounds_and_dependence_on_p_y_only(pi1: float) -> None:
    k = 6
    labels = torch.zeros(3, dtype=torch.long)
    logits = torch.tensor([[40.0] + [0.0] * 5, [-40.0] + [0.0] * 5, [0.0] * 6],
                          dtype=torch.float64)
    values = jensen_shannon_loss(logits, labels, pi1=pi1, reduction="none")
    entropy = -pi1 * math.log(pi1) - (1 - pi1) * math.log(1 - pi1)
    top = entropy / (-(1 - pi1) * math.log(1 - pi1))
    assert float(values[0]) == pytest.approx(0.0, abs=1e-12)  # p_y = 1
    assert float(values[1]) == pytest.approx(top, rel=1e-9)  # p_y = 0: the maximum
    assert 0.0 < float(values[2]) < top
    # the same p_y spread differently over the other classes: the same loss
    a = torch.tensor([[1.0, 3.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    b = torch.log(torch.softmax(a, dim=1))
    b = torch.cat([b[:, :1], torch.log((1 - b[:, :1].exp()) / (k - 1)).repeat(1, k - 1)], 1)
    assert float(jensen_shannon_loss(a, labels[:1], pi1=pi1)) == pytest.approx(
        float(jensen_shannon_loss(b, labels[:1], pi1=pi1)), rel=1e-12)


def test_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(2)
    logits = torch.from_numpy(rng.normal(size=(5, 4))).requires_grad_()
    labels = torch.from_numpy(rng.integers(0, 4, 5))
    assert torch.autograd.gradcheck(lambda t: jensen_shannon_loss(t, labels, pi1=0.7), (logits,))


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, float("nan"), float("inf")])
def test_weight_outside_the_open_interval_is_refused(bad: float) -> None:
    with pytest.raises(HessauditError, match="--js-weight"):
        make_loss("js", js_weight=bad)
    with pytest.raises(HessauditError, match="--js-weight"):
        jensen_shannon_loss(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), pi1=bad)


def test_make_loss_records_the_weight() -> None:
    loss = make_loss("js", js_weight=0.7)
    assert loss.to_dict()["options"] == {"pi1": 0.7}
    logits, labels = torch.randn(8, 3), torch.randint(0, 3, (8,))
    assert torch.equal(loss(logits, labels), jensen_shannon_loss(logits, labels, pi1=0.7))


def _run(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(args)
    return int(exc.value.code)


def _args(pretrained: str, out, *extra: str) -> list[str]:
    return ["finetune", "--model", MODEL, "--pretrained", pretrained, "--data", "digits",
            "--out", str(out), "--epochs", "1", "--lr", "3e-3", "--batch-size", "64",
            "--samples", "200", "--loss", "js", "--quiet", *extra]


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.2", "nan", "abc"])
def test_cli_bad_weight_exits_1_with_one_line(tmp_path, capsys, value: str) -> None:
    out = tmp_path / "run"
    assert _run(_args(str(tmp_path / "p.safetensors"), out, "--js-weight", value)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error:") and "--js-weight" in err
    assert "Traceback" not in err
    assert not out.exists()


def test_cli_js_run_records_the_choice(digits_pretrained, tmp_path) -> None:
    out = tmp_path / "run"
    assert _run(_args(digits_pretrained, out, "--js-weight", "0.7")) == 0
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["loss"] == "js" and config["js_weight"] == 0.7
    assert config["constraint"] == "none" and config["nonneg_correction"] is False
