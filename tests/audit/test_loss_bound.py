"""Issue 15, "The loss bound C": ``--loss-bound max | quantile:Q | VALUE`` and ``C_source``.

The quantile is checked against numpy's default (linear) quantile of the per-example losses,
computed independently from the checkpoint; a quantile C makes the audit an estimate.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hessaudit.audit.bound import classify_bound, estimate_label
from hessaudit.audit.loss_bound import (
    LossBoundChoice,
    c_source_label,
    parse_loss_bound,
    resolve_loss_bound,
)
from hessaudit.cli import main
from hessaudit.errors import HessauditError

N_DATA = 40


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return int(exc.value.code), captured.out, captured.err


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, LossBoundChoice("max")),
        ("max", LossBoundChoice("max")),
        (" MAX ", LossBoundChoice("max")),
        ("quantile:0.99", LossBoundChoice("quantile", 0.99)),
        ("quantile: 0.5", LossBoundChoice("quantile", 0.5)),
        ("2", LossBoundChoice("user", 2.0)),
        ("1e3", LossBoundChoice("user", 1000.0)),
        (2.5, LossBoundChoice("user", 2.5)),
        (3, LossBoundChoice("user", 3.0)),
    ],
)
def test_parse_loss_bound(spec, expected):
    assert parse_loss_bound(spec) == expected


@pytest.mark.parametrize(
    "spec",
    ["quantile:1", "quantile:0", "quantile:1.5", "quantile:-0.1", "quantile:nan", "quantile:",
     "quantile:abc", "abc", "-2", "0", "nan", "inf", "", True, float("inf"), -1.0],
)
def test_parse_loss_bound_refuses(spec):
    with pytest.raises(HessauditError) as info:
        parse_loss_bound(spec)
    message = str(info.value)
    assert "--loss-bound" in message and "\n" not in message


def test_sources_and_labels():
    assert parse_loss_bound(None).source == "empirical_max"
    assert parse_loss_bound("quantile:0.99").source == "empirical_quantile:0.99"
    assert parse_loss_bound("7").source == "user"
    assert c_source_label("empirical_quantile:0.9").startswith("empirical 0.9 quantile")
    # from a hostile file: never echoed
    assert c_source_label("empirical_quantile:<b>") == "unknown"
    assert c_source_label("<script>") == "unknown"


@pytest.mark.parametrize("q", [0.01, 0.25, 0.5, 0.9, 0.99])
def test_quantile_matches_numpy(q):
    losses = torch.rand(37, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    value, source = resolve_loss_bound(parse_loss_bound(f"quantile:{q}"), losses.float())
    assert value == pytest.approx(float(np.quantile(losses.float().double().numpy(), q)),
                                  rel=1e-12)
    assert source == f"empirical_quantile:{q:g}"
    assert resolve_loss_bound(parse_loss_bound("max"), losses)[0] == float(losses.max())


def test_a_quantile_c_is_an_estimate():
    common = dict(data_examples=10, hcal_examples=10, loss_bound_examples=10,
                  reduce="example-max", form="positive", n=10)
    assert classify_bound(loss_bound_source="empirical_max", **common).bound_kind == "bound"
    assert classify_bound(loss_bound_source="user", **common).bound_kind == "bound"
    kind = classify_bound(loss_bound_source="empirical_quantile:0.99", **common)
    assert kind.bound_kind == "estimate"
    assert kind.estimate_reasons == ("C is the 0.99 quantile of the loss, not a bound on it",)
    assert "0.99 quantile" in estimate_label(kind.to_dict())


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "train.npz"
    np.savez(path, x=rng.standard_normal((N_DATA, 1, 8, 8)).astype(np.float32),
             y=rng.integers(0, 10, N_DATA))
    return path


def _per_example_losses(pair, data: Path, tiny_net) -> np.ndarray:
    model = tiny_net(num_classes=pair.num_classes)
    model.load_state_dict(pair.finetuned_state)
    with np.load(data) as arrays:
        x, y = torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"])
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(model(x), y, reduction="none").double().numpy()


def test_cli_quantile_records_c_source(tiny_checkpoints, data_file, tiny_net, tmp_path, capsys):
    out = tmp_path / "audit.json"
    pair = tiny_checkpoints
    base = ["measure", pair.pretrained, pair.finetuned, "--model", pair.spec,
            "--data", data_file, "--no-spectrum", "--json", out]
    code, stdout, err = run_cli([*base, "--loss-bound", "quantile:0.5"], capsys)
    assert code == 0
    document = json.loads(out.read_text())
    losses = _per_example_losses(pair, data_file, tiny_net)
    assert document["C_source"] == "empirical_quantile:0.5"
    assert document["C"] == pytest.approx(float(np.quantile(losses, 0.5)), rel=1e-5)
    assert document["bound_kind"] == "estimate"
    assert document["estimate_reasons"] == [
        "C is the 0.5 quantile of the loss, not a bound on it"]
    assert "0.5 quantile" in stdout and "0.5 quantile" in err
    # the default and an explicit "max" are the same audit, and a bound
    assert run_cli([*base, "--quiet"], capsys)[0] == 0
    default = json.loads(out.read_text())
    assert run_cli([*base, "--quiet", "--loss-bound", "max"], capsys)[0] == 0
    explicit = json.loads(out.read_text())
    assert default["C_source"] == explicit["C_source"] == "empirical_max"
    assert default["C"] == explicit["C"] == pytest.approx(float(losses.max()), rel=1e-5)
    assert default["bound_kind"] == "bound"


@pytest.mark.parametrize("value", ["quantile:2", "abc", "-2", "quantile:"])
def test_cli_bad_loss_bound(tiny_checkpoints, tmp_path, capsys, value):
    out = tmp_path / "audit.json"
    pair = tiny_checkpoints
    code, _, err = run_cli(["measure", pair.pretrained, pair.finetuned, "--model", pair.spec,
                            "--data", "digits", "--json", out, "--loss-bound", value], capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --loss-bound"), err
    assert not out.exists()
