"""``hessaudit tune``: a tiny seeded search on the digits data, through the CLI and the library."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("optuna")

from hessaudit.cli import main
from hessaudit.errors import HessauditError
from hessaudit.robust.config import FinetuneConfig
from hessaudit.robust.tune.run import run_tune
from hessaudit.robust.tune.settings import TuneSettings
from hessaudit.robust.tune.space import DEFAULT_SPACE, ParamSpec, build_space, load_space_file

MODEL = "hessaudit.zoo:digits_cnn"



@pytest.fixture
def pretrained(digits_pretrained: str) -> str:
    return digits_pretrained


def _run(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(args)
    return int(exc.value.code)


def _cli(pretrained: str, out: Path, *extra: str) -> list[str]:
    return [
        "tune", "--model", MODEL, "--pretrained", pretrained, "--data", "digits",
        "--samples", "200", "--batch-size", "64", "--inject-noise", "symmetric:0.3",
        "--noise-matrix", "injected", "--epochs", "1", "--trial-epochs", "1",
        "--out", str(out), "--quiet", *extra,
    ]


def _base(pretrained: str, out: Path, **changes) -> FinetuneConfig:
    options = {
        "model": MODEL, "pretrained": pretrained, "data": "digits", "out": str(out),
        "samples": 200, "batch_size": 64, "inject_noise": "symmetric:0.3",
        "noise_matrix": "injected", "epochs": 1, "val_fraction": 0.1,
    }
    return FinetuneConfig(**{**options, **changes})


def _settings(pretrained: str, out: Path, trials: int, **kw) -> TuneSettings:
    base = _base(pretrained, out)
    return TuneSettings(base=base, space=build_space(base), trials=trials, trial_epochs=1,
                        **kw)


def _trial_rows(out: Path) -> list[dict]:
    import pandas as pd

    frame = pd.read_csv(out / "trials.csv").drop(columns=["seconds"])
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def test_cli_search_end_to_end_and_best_reloads(pretrained, tmp_path) -> None:
    out = tmp_path / "search"
    code = _run(_cli(pretrained, out, "--trials", "3", "--eval-data", "digits", "--lr", "3e-3"))
    assert code == 0
    for name in ("trials.csv", "best.json", "tune.json", "study.db"):
        assert (out / name).is_file(), name
    rows = _trial_rows(out)
    assert [r["number"] for r in rows] == [0, 1, 2]
    # --lr given on the command line: fixed, not searched
    assert "param_lr" not in rows[0] and "param_radius" in rows[0]
    best = json.loads((out / "best.json").read_text())
    assert best["schema"] == "hessaudit.tune/1" and best["objective"] == "val-acc"
    assert best["config"]["lr"] == 3e-3 and best["config"]["out"] == str(out / "best")
    complete = [r for r in rows if r["state"] == "complete"]
    assert best["score"] == max(r["score"] for r in complete)
    # the best model, written as finetune writes it, reloads and reproduces its held-out acc
    for name in ("final.safetensors", "best.safetensors", "config.json", "metrics.csv"):
        assert (out / "best" / name).is_file(), name
    from hessaudit.inputs.checkpoints import load_checkpoint
    from hessaudit.inputs.data import load_data
    from hessaudit.inputs.models import build_model

    model = build_model(MODEL, num_classes=10)
    model.load_state_dict(dict(load_checkpoint(str(out / "best" / "final.safetensors")).tensors))
    model.eval()
    held = load_data("digits", role="eval")
    with torch.no_grad():
        acc = float((model(held.x).argmax(1) == held.y).double().mean())
    assert acc == pytest.approx(best["final"]["heldout_acc"], abs=1e-9)
    # every trial (whatever its parameters) and the final run trained on one validation split
    splits = [json.loads((run / "config.json").read_text())["resolved"]["val_indices"]
              for run in (out / "trials" / "0000", out / "trials" / "0001", out / "best")]
    assert splits[0] and splits[0] == splits[1] == splits[2]
    # a second search into the same folder is refused without --resume / --overwrite
    assert _run(_cli(pretrained, out, "--trials", "3")) == 1


def test_same_seed_same_trials_and_resume_matches(pretrained, tmp_path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    run_tune(_settings(pretrained, a, 3, final=False))
    run_tune(_settings(pretrained, b, 3, final=False))
    assert _trial_rows(a) == _trial_rows(b)
    # an interrupted search (2 trials) resumed to 3 draws what the uninterrupted one drew
    run_tune(_settings(pretrained, c, 2, final=False))
    run_tune(_settings(pretrained, c, 3, final=False), resume=True)
    assert _trial_rows(c) == _trial_rows(a)
    # another seed draws other parameters
    other = tmp_path / "other"
    base = _base(pretrained, other, seed=1)
    run_tune(TuneSettings(base=base, space=build_space(base), trials=1, trial_epochs=1,
                          final=False))
    assert _trial_rows(other)[0]["param_lr"] != _trial_rows(a)[0]["param_lr"]


def test_pruned_and_failed_trials_do_not_stop_the_search(pretrained, tmp_path, monkeypatch):
    import optuna

    import hessaudit.robust.trainer as trainer

    real = trainer.run_finetune

    def flaky(config, **kwargs):
        name = Path(config.out).name
        if name == "0001":
            raise HessauditError("training diverged at epoch 1, step 1: the loss is nan")
        if name == "0002":
            raise optuna.TrialPruned("pruned")
        return real(config, **kwargs)

    monkeypatch.setattr(trainer, "run_finetune", flaky)
    out = tmp_path / "flaky"
    result = run_tune(_settings(pretrained, out, 4, final=False))
    states = [r["state"] for r in _trial_rows(out)]
    assert states == ["complete", "fail", "pruned", "complete"]
    assert "diverged" in _trial_rows(out)[1]["error"]
    assert result.best is not None and result.best.state == "complete"
    assert json.loads((out / "best.json").read_text())["final"] is None


def test_every_trial_failed_is_a_clear_error(pretrained, tmp_path) -> None:
    # lr so large that every trial diverges or scores nothing: the search ends with a clear error
    base = _base(pretrained, tmp_path / "bad", constraint="none", loss="ce")
    space = {"lr": ParamSpec("lr", kind="categorical", choices=(1e12,))}
    with pytest.raises(HessauditError, match="no trial completed"):
        run_tune(TuneSettings(base=base, space=space, trials=2, trial_epochs=1, final=False))
    rows = _trial_rows(tmp_path / "bad")
    assert [r["state"] for r in rows] == ["fail", "fail"]


def test_space_rules(pretrained, tmp_path) -> None:
    base = _base(pretrained, tmp_path / "s")
    assert set(build_space(base)) == {"lr", "radius", "radius_growth", "head_radius"}
    ce = base.replace(loss="ce", noise_matrix=None)
    assert set(build_space(ce)) == {"lr"}  # no constraint by default for ce: no radii
    assert "gce_q" in build_space(base.replace(loss="gce"))
    assert set(build_space(base.replace(loss="js", noise_matrix=None))) == {"lr", "js_weight"}
    assert set(build_space(base, fixed={"lr", "radius"})) == {"radius_growth", "head_radius"}
    path = tmp_path / "space.json"
    path.write_text(json.dumps({
        "params": {"head-radius": None, "lr": {"low": 1e-3, "high": 1e-2, "log": True},
                   "batch_size": {"choices": [32, 64]}},
    }))
    overrides, defaults = load_space_file(path)
    space = build_space(base, overrides=overrides, use_defaults=defaults)
    assert "head_radius" not in space and space["lr"].low == 1e-3
    assert space["batch_size"].choices == (32, 64)
    assert space["radius"] == DEFAULT_SPACE["radius"]
    path.write_text(json.dumps({"defaults": False, "params": {"lr": {"low": 1, "high": 2}}}))
    assert set(build_space(base, overrides=load_space_file(path)[0], use_defaults=False)) == {
        "lr"
    }
    for bad in ({"model": {"choices": ["x"]}}, {"nope": {"low": 1, "high": 2}},
                {"lr": {"low": 0, "high": 1, "log": True}}, {"lr": [1, 2]}):
        path.write_text(json.dumps(bad))
        with pytest.raises(HessauditError, match="--space"):
            load_space_file(path)


def test_settings_errors(pretrained, tmp_path) -> None:
    base = _base(pretrained, tmp_path / "e", loss="ce", noise_matrix=None)
    with pytest.raises(HessauditError, match="needs the noise matrix"):
        TuneSettings(base=base, space=build_space(base), objective="val-loss").validate()
    with pytest.raises(HessauditError, match="--objective"):
        TuneSettings(base=base, space=build_space(base), objective="acc").validate()
    with pytest.raises(HessauditError, match="nothing to search"):
        TuneSettings(base=base, space={}).validate()
    # an option that fixes the data, labels or split cannot be searched: every trial shares them
    for name in ("seed", "val_fraction", "noise_seed", "samples"):
        space = {name: ParamSpec(name, kind="categorical", choices=(1,))}
        with pytest.raises(HessauditError, match=f"search space: {name} cannot be searched"):
            TuneSettings(base=base, space=space).validate()
    with pytest.raises(HessauditError, match="no search to resume"):
        run_tune(TuneSettings(base=base, space=build_space(base)), resume=True)


def test_bad_pretrained_stops_before_any_trial(pretrained, tmp_path, capsys) -> None:
    # the search prepares its data as the finetuner does, so a checkpoint the finetuner would
    # refuse stops the search at once (not one failed trial after another), leaving no folder
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    out = tmp_path / "search"
    assert _run(_cli(str(bad), out, "--trials", "2")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: checkpoint") and str(bad) in err[0]
    assert "Traceback" not in err[0] and not out.exists()


def test_missing_optuna_is_a_clear_error(pretrained, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)
    assert _run(_cli(pretrained, tmp_path / "x", "--trials", "1")) == 1
    err = capsys.readouterr().err
    assert "needs Optuna" in err and 'pip install "hessaudit[tune]"' in err


def test_help_lists_search_and_finetune_options() -> None:
    from typer.testing import CliRunner

    from hessaudit.cli import app

    result = CliRunner().invoke(app, ["tune", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for flag in ("--trials", "--objective", "--space", "--timeout", "--resume", "--radius",
                 "--head-radius", "--inject-noise", "--val-fraction"):
        assert flag in result.output, flag
