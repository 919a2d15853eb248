"""The finetuner end to end on the built-in digits data with a tiny CNN (hessaudit.zoo)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hessaudit.errors import HessauditError
from hessaudit.inputs.checkpoints import load_checkpoint
from hessaudit.robust.config import FinetuneConfig
from hessaudit.robust.trainer import (
    METRIC_COLUMNS,
    TrainingDisplay,
    load_run_config,
    resume_config,
    run_finetune,
)

MODEL = "hessaudit.zoo:digits_cnn"



@pytest.fixture
def pretrained(digits_pretrained: str) -> str:
    return digits_pretrained


def _config(pretrained: str, out: Path, **changes) -> FinetuneConfig:
    base = {
        "model": MODEL,
        "pretrained": pretrained,
        "data": "digits",
        "out": str(out),
        "batch_size": 64,
        "lr": 3e-3,
        "epochs": 2,
        "samples": 400,
        "inject_noise": "symmetric:0.4",
        "noise_matrix": "injected",
        "radius": 2.0,
        "head_radius": 3.0,
    }
    base.update(changes)
    return FinetuneConfig(**base)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).tensors


def _assert_same_weights(a: Path, b: Path) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert list(ta) == list(tb)
    for name in ta:
        assert torch.equal(ta[name], tb[name]), name


def test_end_to_end_reweight_with_projection_improves(pretrained, tmp_path) -> None:
    out = tmp_path / "run"
    config = _config(pretrained, out, epochs=4, samples=None, eval_data="digits",
                     val_fraction=0.1)
    result = run_finetune(config)

    # accuracy: from chance (a new random head) to clearly learned, on clean held-out labels,
    # although 40% of the training labels are wrong
    start, final = result.initial["heldout_acc"], result.final["heldout_acc"]
    assert start < 0.3
    assert final > 0.75 and final > start + 0.45
    assert result.final["train_acc"] < 0.75  # the noisy labels were not memorized

    # every constrained tensor stayed in its ball at every epoch
    frame = pd.read_csv(out / "metrics.csv")
    assert list(frame.columns) == list(METRIC_COLUMNS)
    assert list(frame["epoch"]) == [0, 1, 2, 3, 4]
    assert (frame["max_radius_ratio"] <= 1 + 1e-5).all()
    assert frame["max_distance"].max() <= 2.0 * (1 + 1e-5)
    assert frame["head_distance"].max() <= 3.0 * (1 + 1e-5)

    # outputs
    for name in ("final.safetensors", "best.safetensors", "last.safetensors", "state.pt",
                 "config.json", "metrics.csv", "noise.json"):
        assert (out / name).is_file(), name
    assert not (out / "audit.json").exists()
    assert result.new_tensors == ["fc.weight", "fc.bias"]
    assert "fc.weight" in result.unused_pretrained

    final_ckpt = load_checkpoint(out / "final.safetensors")
    meta = final_ckpt.metadata
    assert meta["pretrained_sha256"] == load_checkpoint(pretrained).record.sha256
    assert meta["seed"] == 0 and meta["tool_version"]
    assert meta["config"]["loss"] == "reweight" and meta["config"]["constraint"] == "frobenius"
    np.testing.assert_allclose(np.array(meta["noise_matrix"]), result.noise_matrix)
    assert meta["new_tensors"] == ["fc.weight", "fc.bias"]
    assert final_ckpt.tensors["fc.weight"].shape == (10, 32)
    best_meta = load_checkpoint(out / "best.safetensors").metadata
    assert best_meta["epoch"] == result.best_epoch
    assert best_meta["val_acc"] == pytest.approx(frame["val_acc"][1:].max())

    config_doc = json.loads((out / "config.json").read_text())
    assert config_doc["config"] == result.config.to_dict()
    assert config_doc["resolved"]["num_classes"] == 10
    assert config_doc["resolved"]["radii"]["layer1.0.weight"] == 2.0
    assert config_doc["resolved"]["radii"]["fc.weight"] == 3.0
    assert load_run_config(out) == result.config

    noise = json.loads((out / "noise.json").read_text())
    injected = noise["injected"]
    assert injected["spec"] == "symmetric:0.4"
    assert injected["num_flipped"] == len(injected["flipped_indices"])
    assert abs(injected["realized_rate"] - 0.4) < 0.05
    assert np.array(noise["noise_matrix"]).shape == (10, 10)


def test_resume_reaches_the_same_weights(pretrained, tmp_path) -> None:
    straight = run_finetune(_config(pretrained, tmp_path / "a", epochs=3))
    run_finetune(_config(pretrained, tmp_path / "b", epochs=2))
    extended = resume_config(tmp_path / "b", {"epochs": 3})
    resumed = run_finetune(extended, resume=True)
    assert resumed.resumed_from == 2 and resumed.epochs_run == 3
    _assert_same_weights(tmp_path / "a" / "final.safetensors",
                         tmp_path / "b" / "final.safetensors")
    for row_a, row_b in zip(straight.metrics, resumed.metrics, strict=True):
        row_a, row_b = dict(row_a), dict(row_b)
        row_a.pop("seconds")
        row_b.pop("seconds")
        assert row_a.keys() == row_b.keys()
        for key in row_a:
            same = row_a[key] == row_b[key] or (
                isinstance(row_a[key], float) and math.isnan(row_a[key])
                and math.isnan(row_b[key])
            )
            assert same, key
    doc = json.loads((tmp_path / "b" / "config.json").read_text())
    assert doc["config"]["epochs"] == 3 and doc["resumes"][0]["after_epoch"] == 2


class _Interrupt(TrainingDisplay):
    def __init__(self, after: int) -> None:
        self.after = after
        self.phase = ""

    def start_phase(self, name, **kwargs) -> None:
        self.phase = name

    def end_epoch(self, row) -> None:
        if self.phase == "fine-tune" and row["epoch"] == self.after:
            raise KeyboardInterrupt


def test_interrupted_run_resumes_bit_identical(pretrained, tmp_path) -> None:
    """Ctrl-C after epoch 2 of 3, with a cosine schedule, SGD momentum, early-stopping state,
    and an estimated noise matrix that must not be re-estimated."""
    changes = {
        "epochs": 3,
        "schedule": "cosine",
        "optimizer": "sgd",
        "lr": 0.02,
        "val_fraction": 0.2,
        "early_stop": 5,
        "noise_matrix": "estimate",
        "estimate_epochs": 1,
    }
    straight = run_finetune(_config(pretrained, tmp_path / "a", **changes))
    with pytest.raises(KeyboardInterrupt):
        run_finetune(_config(pretrained, tmp_path / "b", **changes), display=_Interrupt(2))
    assert not (tmp_path / "b" / "final.safetensors").exists()
    assert torch.load(tmp_path / "b" / "state.pt", weights_only=True)["epoch"] == 2

    class _NoEstimate(TrainingDisplay):
        def start_phase(self, name, **kwargs) -> None:
            assert name == "fine-tune", "the estimate must come from the saved state"

    resumed = run_finetune(resume_config(tmp_path / "b"), display=_NoEstimate(), resume=True)
    _assert_same_weights(tmp_path / "a" / "final.safetensors",
                         tmp_path / "b" / "final.safetensors")
    _assert_same_weights(tmp_path / "a" / "best.safetensors",
                         tmp_path / "b" / "best.safetensors")
    np.testing.assert_array_equal(straight.noise_matrix, resumed.noise_matrix)
    assert resumed.best_epoch == straight.best_epoch
    noise = json.loads((tmp_path / "b" / "noise.json").read_text())
    assert noise["estimated"]["method"] == "confident"
    assert np.array(noise["noise_matrix"]).shape == (10, 10)


def test_out_folder_is_protected(pretrained, tmp_path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(HessauditError, match="already holds files"):
        run_finetune(_config(pretrained, out, epochs=1))
    assert [p.name for p in out.iterdir()] == ["notes.txt"]

    run_finetune(_config(pretrained, out, epochs=1), overwrite=True)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "final.safetensors" in before and before["notes.txt"] == b"mine"
    with pytest.raises(HessauditError, match="--out"):
        run_finetune(_config(pretrained, out, epochs=1))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    # a bad option with --overwrite costs nothing either
    with pytest.raises(HessauditError, match="--noise-matrix"):
        run_finetune(_config(pretrained, out, epochs=1, noise_matrix="symmetric:0.9"),
                     overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    with pytest.raises(HessauditError, match="already finished its 1 epochs"):
        run_finetune(resume_config(out), resume=True)
    with pytest.raises(HessauditError, match="--lr"):
        resume_config(out, {"lr": 0.5})
    with pytest.raises(HessauditError, match="--lr"):
        run_finetune(dataclasses.replace(resume_config(out, {"epochs": 2}), lr=0.5), resume=True)
    with pytest.raises(HessauditError, match="no run to resume"):
        resume_config(tmp_path / "nothing")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize(
    "changes",
    [
        {"loss": "ce", "noise_matrix": None},
        {"loss": "label-smoothing", "noise_matrix": None},
        {"loss": "forward", "noise_matrix": "symmetric:0.4"},
        {"loss": "gce", "noise_matrix": None},
        {"loss": "sce", "noise_matrix": None},
        {"loss": "ce", "noise_matrix": None, "penalty": "l2sp:0.1"},
        {"loss": "reweight", "noise_matrix": "estimate", "estimate_method": "anchor",
         "estimate_epochs": 1},
        {"loss": "ce", "noise_matrix": None, "constraint": "frobenius", "optimizer": "adamw",
         "schedule": "none", "inject_noise": "asymmetric:0.3"},
    ],
)
def test_every_loss_runs(pretrained, tmp_path, changes) -> None:
    result = run_finetune(_config(pretrained, tmp_path / "run", epochs=1, samples=200,
                                  **changes))
    row = result.final
    assert math.isfinite(row["train_loss"])
    assert result.config.constraint == changes.get(
        "constraint", "frobenius" if changes["loss"] == "reweight" else "none"
    )
    if result.config.constraint == "none":
        assert math.isnan(row["max_radius_ratio"])
    if "penalty" in changes:
        assert row["train_penalty"] > 0
    if changes.get("noise_matrix") == "estimate":
        assert json.loads((tmp_path / "run" / "noise.json").read_text())["estimated"]


def test_early_stopping_keeps_the_best(pretrained, tmp_path) -> None:
    result = run_finetune(_config(pretrained, tmp_path / "run", epochs=5, lr=1e-12,
                                  val_fraction=0.2, early_stop=1))
    assert result.stopped_early and result.epochs_run == 2 and result.best_epoch == 1
    assert load_checkpoint(tmp_path / "run" / "best.safetensors").metadata["epoch"] == 1
    assert load_checkpoint(tmp_path / "run" / "final.safetensors").metadata["epoch"] == 2
    with pytest.raises(HessauditError, match="stopped early"):
        run_finetune(resume_config(tmp_path / "run", {"epochs": 9}), resume=True)


def test_same_seed_same_run_and_global_rng_untouched(pretrained, tmp_path) -> None:
    state = torch.get_rng_state()
    run_finetune(_config(pretrained, tmp_path / "a", epochs=1, samples=200))
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(12345)  # the global RNG must not matter
    run_finetune(_config(pretrained, tmp_path / "b", epochs=1, samples=200))
    _assert_same_weights(tmp_path / "a" / "final.safetensors",
                         tmp_path / "b" / "final.safetensors")
    run_finetune(_config(pretrained, tmp_path / "c", epochs=1, samples=200, seed=1))
    assert not torch.equal(_tensors(tmp_path / "a" / "final.safetensors")["fc.weight"],
                           _tensors(tmp_path / "c" / "final.safetensors")["fc.weight"])


@pytest.mark.parametrize(
    ("changes", "flag"),
    [
        ({"epochs": 0}, "--epochs"),
        ({"lr": 0.0}, "--lr"),
        ({"lr": -1e-3}, "--lr"),
        ({"lr": float("nan")}, "--lr"),
        ({"batch_size": 0}, "--batch-size"),
        ({"val_fraction": 0.0}, "--val-fraction"),
        ({"val_fraction": 1.0}, "--val-fraction"),
        ({"radius": 0.0}, "--radius"),
        ({"radius": -2.0}, "--radius"),
        ({"radius_growth": 0.0}, "--radius-growth"),
        ({"head_radius": 0.0}, "--head-radius"),
        ({"inject_noise": "symmetric:1.0"}, "--inject-noise"),
        ({"inject_noise": "symmetric:-0.2"}, "--inject-noise"),
        ({"inject_noise": "gaussian:0.2"}, "--inject-noise"),
        ({"noise_matrix": "symmetric:1.5"}, "--noise-matrix"),
        ({"noise_matrix": None}, "--noise-matrix"),
        ({"noise_matrix": "injected", "inject_noise": None}, "--inject-noise"),
        ({"optimizer": "lbfgs"}, "--optimizer"),
        ({"schedule": "exponential"}, "--schedule"),
        ({"loss": "focal"}, "--loss"),
        ({"constraint": "spectral"}, "--constraint"),
        ({"early_stop": 3}, "--early-stop"),
        ({"early_stop": 0, "val_fraction": 0.1}, "--early-stop"),
        ({"penalty": "l2:0.1"}, "--penalty"),
        ({"penalty": "l2sp:-1"}, "--penalty"),
        ({"gce_q": 0.0}, "--gce-q"),
        ({"smoothing": 1.0}, "--smoothing"),
        ({"momentum": 1.0}, "--momentum"),
        ({"weight_decay": -1.0}, "--weight-decay"),
        ({"estimate_method": "bogus"}, "--estimate-method"),
        ({"device": "tpu"}, "--device"),
        ({"seed": -1}, "--seed"),
    ],
)
def test_bad_options_name_the_flag(tmp_path, changes, flag) -> None:
    with pytest.raises(HessauditError, match=flag):
        run_finetune(_config("unused.safetensors", tmp_path / "run", **changes))
    assert not (tmp_path / "run").exists()


def test_bad_inputs_at_run_time(pretrained, tmp_path) -> None:
    with pytest.raises(HessauditError, match="singular"):  # (k - 1) / k for k = 10
        run_finetune(_config(pretrained, tmp_path / "a", noise_matrix="symmetric:0.9"))
    np.save(tmp_path / "F.npy", np.eye(3))
    with pytest.raises(HessauditError, match="10 classes"):
        run_finetune(_config(pretrained, tmp_path / "b", noise_matrix=str(tmp_path / "F.npy")))
    with pytest.raises(HessauditError, match="does not exist"):
        run_finetune(_config(str(tmp_path / "missing.safetensors"), tmp_path / "c"))
    with pytest.raises(HessauditError, match="matches no constrained tensor"):
        (tmp_path / "t.json").write_text(json.dumps({"blocks.*": 1.0}))
        run_finetune(_config(pretrained, tmp_path / "d", radius_table=str(tmp_path / "t.json")))
    for sub in "abcd":
        assert not (tmp_path / sub).exists() or not any((tmp_path / sub).iterdir())
