"""Issue 15, "Measures side by side": the ``measures`` object of the audit JSON.

Oracles: the per-layer rows of the same JSON (every layer-based measure is a closed-form sum
over them), and for noise stability the exact dense trace of the mean-loss Hessian of a small
smooth float64 network (E[loss change] = (EPS^2 / 2) * trace + O(EPS^4)).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hessaudit.audit.compare import compare_audits
from hessaudit.audit.measures import MEASURE_NAMES, document_measures, noise_stability
from hessaudit.cli import main
from tests.cases import make_data, make_mlp
from tests.oracles import dense_block_hessian


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return int(exc.value.code), captured.out, captured.err


def measure_args(pair, out: Path, *extra) -> list:
    return [
        "measure", pair.pretrained, pair.finetuned, "--model", pair.spec, "--data", "digits",
        "--samples", "32", "--json", out, *extra,
    ]


# --------------------------------------------------------------------------- noise stability


def _mlp_setup():
    model = make_mlp(0, in_features=4, hidden=(5, 4))
    x, y = make_data(1, 64, (4,))
    names = [name for name, p in model.named_parameters() if p.ndim >= 2]
    return model, [(x, y)], names


def test_noise_stability_matches_half_eps_squared_trace():
    """For small EPS the mean loss change is (EPS^2 / 2) * the sum of the layers' exact traces,
    to within 4 standard errors; the same errors are small enough to reject a factor of 2."""
    model, batches, names = _mlp_setup()
    trace = sum(float(torch.trace(dense_block_hessian(model, batches, n))) for n in names)
    eps = 0.05
    result = noise_stability(model, names, batches, eps=eps, draws=2000, seed=0)
    expected = eps**2 / 2 * trace
    assert result.stderr > 0
    assert abs(result.mean - expected) < 4 * result.stderr
    assert abs(result.mean - 2 * expected) > 4 * result.stderr  # the check has power
    assert abs(result.mean) > 4 * result.stderr
    assert result.stderr == pytest.approx(result.std / math.sqrt(2000))
    assert (result.draws, result.eps, result.examples) == (2000, eps, 64)


def test_noise_stability_restores_the_weights_and_follows_the_seed():
    model, batches, names = _mlp_setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = noise_stability(model, names, batches, eps=1e-2, draws=5, seed=3)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    again = noise_stability(model, names, batches, eps=1e-2, draws=5, seed=3)
    other = noise_stability(model, names, batches, eps=1e-2, draws=5, seed=4)
    assert first == again
    assert first.mean != other.mean
    # Only the named weights move: perturbing nothing changes nothing.
    still = noise_stability(model, [], batches, eps=1e-2, draws=3, seed=0)
    assert still.mean == 0 and still.std == 0


# --------------------------------------------------------------------------- the JSON


def _expected_from_layers(document: dict) -> dict:
    layers = document["layers"]
    dist = [layer["dist_fro"] for layer in layers]
    return {
        "hessian_term": document["hessian_term"],
        "sum_sqrt_hcal": sum(math.sqrt(max(layer["hcal"], 0)) for layer in layers),
        "distance_fro": sum(dist),
        "distance_fro_sq": sum(d * d for d in dist),
        "trace_distance": sum(
            d * d * layer["trace"] for d, layer in zip(dist, layers, strict=True)
        ),
        "trace_distance_stderr": math.sqrt(
            sum(d**4 * layer["trace_stderr"] ** 2 for d, layer in zip(dist, layers, strict=True))
        ),
    }


def test_measures_are_recomputed_from_the_layers(tiny_checkpoints, tmp_path, capsys):
    out = tmp_path / "audit.json"
    code, stdout, _ = run_cli(
        measure_args(
            tiny_checkpoints, out, "--eval-data", "digits", "--noise-stability", "1e-3",
            "--noise-draws", "4", "--label", "sweep=size", "--label", "value=",
        ),
        capsys,
    )
    assert code == 0
    document = json.loads(out.read_text())
    measures = document["measures"]
    assert len(document["layers"]) >= 2
    for key, value in _expected_from_layers(document).items():
        assert measures[key] == pytest.approx(value, rel=1e-12), key
    assert measures["trace_distance_trace"] == "mean-hessian-hutchinson"
    assert (measures["trace_examples"], measures["trace_probes"]) == (32, 8)
    assert measures["layers"] == len(document["layers"])
    noise = measures["noise_stability"]
    assert (noise["eps"], noise["draws"], noise["data"], noise["seed"]) == (
        1e-3, 4, "eval_data", 0)
    assert noise["examples"] == document["inputs"]["eval_data_summary"]["n"]
    assert noise["stderr"] == pytest.approx(noise["std"] / 2)
    assert noise["loss_before"] == pytest.approx(document["eval_loss"], rel=1e-5)
    assert document["inputs"]["tags"] == {"sweep": "size", "value": ""}
    # the summary panel shows them compactly
    assert "other measures" in stdout and "Σ√Hcal" in stdout and "noise stability" in stdout
    # compare diffs them
    diff = compare_audits(document, document)
    assert set(diff["measures"]) == set(MEASURE_NAMES)
    assert diff["measures"]["distance_fro"]["abs_change"] == 0


def test_no_spectrum_and_no_noise_give_null_entries(tiny_checkpoints, tmp_path, capsys):
    out = tmp_path / "audit.json"
    code, _, _ = run_cli(measure_args(tiny_checkpoints, out, "--no-spectrum", "--quiet"), capsys)
    assert code == 0
    document = json.loads(out.read_text())
    measures = document["measures"]
    for key in ("trace_distance", "trace_distance_stderr", "trace_distance_trace",
                "trace_examples", "trace_probes", "noise_stability"):
        assert measures[key] is None, key
    assert measures["distance_fro"] > 0
    assert document["inputs"]["tags"] == {}


def test_noise_stability_over_data_without_eval_data(tiny_checkpoints, tmp_path, capsys):
    out = tmp_path / "audit.json"
    args = measure_args(tiny_checkpoints, out, "--no-spectrum", "--quiet",
                        "--noise-stability", "0.01", "--noise-draws", "3", "--seed", "5")
    assert run_cli(args, capsys)[0] == 0
    noise = json.loads(out.read_text())["measures"]["noise_stability"]
    assert (noise["data"], noise["seed"], noise["examples"]) == ("data", 5, 1201)
    first = noise["mean"]
    assert run_cli(args, capsys)[0] == 0
    assert json.loads(out.read_text())["measures"]["noise_stability"]["mean"] == first


def test_older_audit_without_measures_is_recomputed_for_compare():
    layers = [
        {"name": "a", "hcal": 4.0, "dist_fro": 2.0, "trace": 3.0, "trace_stderr": 0.5},
        {"name": "b", "hcal": 9.0, "dist_fro": 1.0, "trace": 1.0, "trace_stderr": 0.1},
    ]
    document = {"layers": layers, "hessian_term": 0.7}
    values = document_measures(document)
    assert values["sum_sqrt_hcal"] == 5.0
    assert values["distance_fro"] == 3.0 and values["distance_fro_sq"] == 5.0
    assert values["trace_distance"] == 4 * 3 + 1 * 1
    assert values["hessian_term"] == 0.7 and values["noise_stability"] is None
    broken = copy.deepcopy(document)
    broken["layers"][1]["dist_fro"] = "1.0"  # a string is not a number: no partial sums
    values = document_measures(broken)
    assert values["distance_fro"] is None and values["trace_distance"] is None
    assert values["sum_sqrt_hcal"] == 5.0
    hostile = {"measures": {"distance_fro": True, "noise_stability": {"mean": float("nan")}}}
    values = document_measures(hostile)
    assert values["distance_fro"] is None and values["noise_stability"] is None


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--noise-draws", "5"], "--noise-draws"),
        (["--noise-stability", "0"], "--noise-stability"),
        (["--noise-stability", "-1e-3"], "--noise-stability"),
        (["--noise-stability", "nan"], "--noise-stability"),
        (["--noise-stability", "1e-3", "--noise-draws", "1"], "--noise-draws"),
        (["--label", "novalue"], "--label"),
        (["--label", "=x"], "--label"),
        (["--label", "a.b=1"], "--label"),
        (["--label", "k=1", "--label", "k=2"], "--label"),
        (["--label", "k=a\x1b[31mred"], "--label"),
        (["--label", "k=" + "x" * 201], "--label"),
    ],
)
def test_bad_noise_and_label_flags(tiny_checkpoints, tmp_path, capsys, extra, flag):
    out = tmp_path / "audit.json"
    code, _, err = run_cli(measure_args(tiny_checkpoints, out, *extra), capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and flag in lines[0], err
    assert "Traceback" not in err and "\x1b" not in err
    assert not out.exists()


def test_measure_labels_round_trip_through_the_library():
    from hessaudit.audit.tags import check_labels, parse_labels

    assert parse_labels(["sweep=size", "value=a=b", "x_1-2= spaced "]) == (
        ("sweep", "size"), ("value", "a=b"), ("x_1-2", " spaced "))
    assert check_labels({"k": "v"}) == (("k", "v"),)
    assert np.all([len(k) <= 64 for k, _ in parse_labels(["a" * 64 + "=1"])])
