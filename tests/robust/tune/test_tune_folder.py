"""The folder of one search (:mod:`hessaudit.robust.tune.folder`), tested directly: what
``--resume`` / ``--overwrite`` accept, that only the search's own files are ever removed, the
lock, and the files written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from hessaudit.errors import HessauditError
from hessaudit.robust.config import FinetuneConfig
from hessaudit.robust.tune.folder import OWN_FILES, OWN_FOLDERS, TuneFolder
from hessaudit.robust.tune.results import METRIC_KEYS, TrialRecord
from hessaudit.robust.tune.settings import RESUMABLE, TuneSettings
from hessaudit.robust.tune.space import build_space


def _settings(out: Path, **changes) -> TuneSettings:
    base = FinetuneConfig(model="m.py:f", pretrained="p.safetensors", data="digits",
                          out=str(out), noise_matrix="symmetric:0.2")
    return TuneSettings(**{"base": base, "space": build_space(base), "trials": 4, **changes})


def _fill(out: Path) -> dict[str, bytes]:
    """A previous search's files, and a file of the user's; returns the user's."""
    out.mkdir(parents=True, exist_ok=True)
    for name in OWN_FILES:
        (out / name).write_text("old")
    for name in OWN_FOLDERS:
        (out / name / "0000").mkdir(parents=True)
        (out / name / "0000" / "x.safetensors").write_text("old")
    (out / "notes.txt").write_text("mine")
    (out / "mine").mkdir()
    (out / "mine" / "a.csv").write_text("keep")
    return {"notes.txt": b"mine", "mine/a.csv": b"keep"}


def test_paths(tmp_path) -> None:
    folder = TuneFolder(tmp_path / "s")
    assert folder.trial(7) == tmp_path / "s" / "trials" / "0007"
    assert folder.trial(12345) == tmp_path / "s" / "trials" / "12345"
    assert folder.best == tmp_path / "s" / "best"
    assert folder.audit_data.name == "audit-train.npz"


def test_new_search_needs_an_empty_folder(tmp_path) -> None:
    out = tmp_path / "s"
    folder = TuneFolder(out)
    folder.check(_settings(out), resume=False, overwrite=False)  # missing: fine
    out.mkdir()
    (out / ".lock").write_text("")  # the lock is ours, not a previous search
    folder.check(_settings(out), resume=False, overwrite=False)
    user = _fill(out)
    with pytest.raises(HessauditError, match="already holds files") as exc:
        folder.check(_settings(out), resume=False, overwrite=False)
    assert "--resume" in exc.value.hint and "--overwrite" in exc.value.hint
    assert (out / "trials.csv").read_text() == "old"  # nothing removed
    for name, content in user.items():
        assert (out / name).read_bytes() == content


def test_overwrite_removes_only_the_search_files(tmp_path) -> None:
    out = tmp_path / "s"
    user = _fill(out)
    TuneFolder(out).check(_settings(out), resume=False, overwrite=True)
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert left == [".lock", "mine", "mine/a.csv", "notes.txt"] or left == [
        "mine", "mine/a.csv", "notes.txt"
    ]
    for name, content in user.items():
        assert (out / name).read_bytes() == content


def test_a_file_is_not_a_search_folder(tmp_path) -> None:
    out = tmp_path / "file"
    out.write_text("data")
    for resume in (False, True):
        with pytest.raises(HessauditError, match="is a file, not a folder"):
            TuneFolder(out).check(_settings(out), resume=resume, overwrite=True)
    assert out.read_text() == "data"


def test_resume_needs_the_same_settings(tmp_path) -> None:
    out = tmp_path / "s"
    folder = TuneFolder(out)
    with pytest.raises(HessauditError, match="no search to resume"):
        folder.check(_settings(out), resume=True, overwrite=False)
    folder.create(_settings(out), resume=False)
    saved = json.loads(folder.settings_file.read_text())
    assert saved == json.loads(json.dumps(_settings(out).to_dict(), default=str))
    # the resumable settings may change; anything else is refused, naming what differs
    # (5 trials, like 4, start with 2 random ones: the derived startup_trials is the same)
    folder.check(_settings(out, trials=5, timeout=5.0, final=False, pruning=False),
                 resume=True, overwrite=False)
    assert set(RESUMABLE) == {"trials", "timeout", "final", "pruning"}
    for changes, key in (({"objective": "val-loss"}, "objective"),
                         ({"trial_epochs": 5}, "trial_epochs"),
                         ({"space": {}}, "space")):
        with pytest.raises(HessauditError, match=f"different settings \\({key} differs\\)"):
            folder.check(_settings(out, **changes), resume=True, overwrite=False)
    other = _settings(out)
    other = TuneSettings(base=other.base.replace(seed=3), space=other.space)
    with pytest.raises(HessauditError, match="base differs"):
        folder.check(other, resume=True, overwrite=False)
    # a resumed search does not rewrite tune.json
    folder.create(_settings(out, trials=5), resume=True)
    assert json.loads(folder.settings_file.read_text()) == saved


def test_one_search_per_folder(tmp_path) -> None:
    out = tmp_path / "s"
    held, again = TuneFolder(out), TuneFolder(out)
    with held.lock(), pytest.raises(HessauditError, match="in use by another"), again.lock():
        pass
    with TuneFolder(out).lock():  # released: the next search gets it
        pass
    assert not out.exists()  # the lock made the folder and removes it when left empty


def test_trials_csv_and_best_json(tmp_path) -> None:
    pd = pytest.importorskip("pandas")
    folder = TuneFolder(tmp_path)
    records = [
        TrialRecord(number=0, state="complete", score=0.5, params={"lr": 1e-3, "radius": 2.0},
                    metrics={"val_acc": 0.5, "epochs_run": 1}, seconds=1.5),
        TrialRecord(number=1, state="fail", score=None, params={"lr": 0.1}, metrics={},
                    seconds=None, error="diverged"),
    ]
    folder.write_trials(records, ["lr", "radius"])
    frame = pd.read_csv(folder.trials_csv)
    assert list(frame.columns) == ["number", "state", "score", "param_lr", "param_radius",
                                   *METRIC_KEYS, "seconds", "error"]
    assert frame["param_lr"].tolist() == [1e-3, 0.1] and math.isnan(frame["param_radius"][1])
    assert frame["error"][1] == "diverged"
    folder.write_best({"schema": "hessaudit.tune/1", "score": 0.5})
    assert json.loads(folder.best_json.read_text()) == {"schema": "hessaudit.tune/1",
                                                        "score": 0.5}
    with pytest.raises(ValueError):  # never a NaN in best.json (the caller cleans them)
        folder.write_best({"score": float("nan")})


def test_storage_is_inside_the_folder(tmp_path) -> None:
    optuna = pytest.importorskip("optuna")
    storage, path = TuneFolder(tmp_path).storage(optuna)
    assert Path(path).parent == tmp_path and Path(path).name in ("study.db", "study.journal")
    assert Path(path).name in OWN_FILES
    del storage
