"""The example scripts' ``--quick`` modes (seconds each), run as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

# Each runs a whole example script in a subprocess (about 10 s each on 2 cores): end-to-end
# checks that CI runs with `pytest -m slow`, kept out of the quick default suite.
pytestmark = pytest.mark.slow

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _run(name: str, out: Path) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name / "run.py"), "--quick", "--out", str(out),
         "--threads", "1"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_measure_vs_gap_quick(tmp_path) -> None:
    stdout = _run("measure_vs_gap", tmp_path)
    assert "Spearman(G, gap)" in stdout
    frame = pd.read_csv(tmp_path / "results.csv")
    assert len(frame) == 3 and set(frame["sweep"]) == {"size"}
    assert (frame["G"] > 0).all()
    assert frame["gap"].notna().all() and frame["distance"].gt(0).all()
    # the audit's training data is the subset trained on: n is the subset size
    assert frame["n"].tolist() == frame["value"].tolist()
    correlations = pd.read_csv(tmp_path / "correlations.csv")
    assert {"spearman_G_gap", "pearson_G_gap", "spearman_distance_gap"} <= set(correlations)
    assert (tmp_path / "measure_vs_gap.png").stat().st_size > 1000
    assert json.loads((tmp_path / "meta.json").read_text())["seeds"] == [0]
    # every audit is also in audits/, labelled for `hessaudit correlate --group-by sweep`
    audits = sorted((tmp_path / "audits").glob("*.json"))
    assert len(audits) == 3
    labels = json.loads(audits[0].read_text())["inputs"]["tags"]
    assert labels["sweep"] == "size" and labels["seed"] == "0"


def test_noisy_labels_quick(tmp_path) -> None:
    stdout = _run("noisy_labels", tmp_path)
    assert "Clean held-out accuracy" in stdout and "Per-layer Hcal" in stdout
    frame = pd.read_csv(tmp_path / "results.csv")
    assert set(frame["method"]) == {"ce", "reweight+proj", "reweight"}
    assert frame["heldout_acc"].between(0, 1).all() and (frame["G"] > 0).all()
    assert frame["realized_noise"].gt(0.2).all()
    selection = pd.read_csv(tmp_path / "selection.csv")
    assert len(selection) == 2
    layers = pd.read_csv(tmp_path / "layers.csv")
    assert "fc.weight" in set(layers["layer"])
    assert (tmp_path / "noisy_labels.png").stat().st_size > 1000


def test_timm_resnet_quick(tmp_path) -> None:
    pytest.importorskip("timm")
    stdout = _run("timm_resnet", tmp_path)
    assert "Peak resident memory" in stdout and "hessaudit measure" in stdout
    audit = json.loads((tmp_path / "audit.json").read_text())
    assert [layer["name"] for layer in audit["layers"]] == ["layer4.1.conv2.weight", "fc.weight"]
    assert audit["inputs"]["input_config"]["size"] == [32, 32]
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["peak_rss_mib"] > 0 and meta["wall_seconds"] > 0


def test_text_noisy_labels_quick(tmp_path) -> None:
    pytest.importorskip("transformers")
    stdout = _run("text_noisy_labels", tmp_path)
    assert "Clean held-out accuracy" in stdout and "G per module group" in stdout
    frame = pd.read_csv(tmp_path / "results.csv")
    assert set(frame["method"]) == {"ce", "reweight+proj"}
    assert frame["heldout_acc"].between(0, 1).all() and (frame["G"] > 0).all()
    assert frame["realized_noise"].gt(0.2).all()
    # the group terms add up to G
    groups = [c for c in frame.columns if c.startswith("G_")]
    assert {"G_attention", "G_linear", "G_predictor"} <= set(groups)
    assert (frame[groups].sum(axis=1) - frame["G"]).abs().max() < 1e-9 * frame["G"].max() + 1e-12
    assert len(pd.read_csv(tmp_path / "selection.csv")) == 1
    # the pretrained model is the pretraining run's final/ model folder, with its tokenizer
    pretrained = tmp_path / "runs" / "pretrain" / "final"
    assert (pretrained / "config.json").is_file() and (pretrained / "tokenizer.json").is_file()
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert 0.85 < meta["bayes_heldout_acc"] < 0.98 and meta["wall_seconds"] > 0
