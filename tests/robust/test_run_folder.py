"""RunFolder on its own: the checks before a run, overwrite, the files it writes and reads
back, the finished marker and the lock (no training)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from hessaudit.errors import HessauditError
from hessaudit.robust.config import FinetuneConfig
from hessaudit.robust.run_folder import (
    FINISHED_NAME,
    OUTPUT_NAMES,
    STATE_FORMAT,
    RunFolder,
)
from hessaudit.robust.types import METRIC_COLUMNS, SCHEMA


def _config(out, **changes) -> FinetuneConfig:
    return FinetuneConfig(model="m", pretrained="p.safetensors", data="digits", out=str(out),
                          **changes)


def test_check_refuses_what_it_may_not_write(tmp_path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    with pytest.raises(HessauditError, match="is a file, not a folder"):
        RunFolder(a_file).check(resume=False, overwrite=False)

    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    with pytest.raises(HessauditError, match="already holds files"):
        RunFolder(used).check(resume=False, overwrite=False)
    RunFolder(used).check(resume=False, overwrite=True)  # allowed: only outputs would go
    with pytest.raises(HessauditError, match="no run to resume there"):
        RunFolder(used).check(resume=True, overwrite=False)

    # a lock and the temporary file of a killed atomic write do not make a folder "used"
    left = tmp_path / "left"
    left.mkdir()
    (left / ".lock").write_text("123\n")
    (left / ".final.safetensors.abcd.tmp").write_bytes(b"half")
    assert RunFolder(left).is_empty()
    RunFolder(left).check(resume=False, overwrite=False)
    (left / ".notes.tmp").write_text("not ours")
    assert not RunFolder(left).is_empty()


def test_prepare_with_overwrite_removes_only_the_runs_outputs(tmp_path) -> None:
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    for name in OUTPUT_NAMES:
        (folder.path / name).write_text("old")
    (folder.path / "notes.txt").write_text("mine")
    (folder.path / ".metrics.csv.x1.tmp").write_text("stale")
    (folder.path / ".lock").write_text("1\n")
    folder.prepare(resume=False, overwrite=True)
    assert sorted(p.name for p in folder.path.iterdir()) == [".lock", "notes.txt"]

    fresh = RunFolder(tmp_path / "a" / "b")
    fresh.prepare(resume=False, overwrite=False)
    assert fresh.path.is_dir() and fresh.files() == {}


def test_json_config_and_metrics(tmp_path) -> None:
    folder = RunFolder(tmp_path)
    config = _config(tmp_path)
    folder.write_config(config, {"num_classes": 3}, None, resume=False)
    first = json.loads((tmp_path / "config.json").read_text())
    assert first["schema"] == SCHEMA and first["resumes"] == []
    assert first["config"] == config.to_dict() and first["resolved"] == {"num_classes": 3}
    assert folder.saved_resolved() == {"num_classes": 3}

    folder.write_config(config, {"num_classes": 3}, {"epoch": 2}, resume=True)
    second = json.loads((tmp_path / "config.json").read_text())
    assert second["created"] == first["created"]
    assert [r["after_epoch"] for r in second["resumes"]] == [2]

    before = (tmp_path / "config.json").read_bytes()
    with pytest.raises(ValueError):  # NaN is not JSON: refused, and nothing is half-written
        folder.write_json("config.json", {"x": math.nan})
    assert (tmp_path / "config.json").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    folder.write_metrics([{"epoch": 0, "lr": 0.1}, {"epoch": 1, "lr": 0.01, "val_acc": 0.5}])
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0].split(",") == list(METRIC_COLUMNS) and len(lines) == 3


def test_saved_resolved_of_an_unreadable_config(tmp_path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(HessauditError, match="cannot be read"):
        RunFolder(tmp_path).saved_resolved()
    (tmp_path / "config.json").write_text("[1, 2]")
    assert RunFolder(tmp_path).saved_resolved() == {}


def test_state_round_trip_and_refusals(tmp_path) -> None:
    folder = RunFolder(tmp_path)
    assert not folder.has_state()
    state = {"format": STATE_FORMAT, "epoch": 3, "model": {"w": torch.arange(4.0)}}
    folder.save_state(state)
    assert folder.has_state()
    back = folder.load_state()
    assert back["epoch"] == 3 and torch.equal(back["model"]["w"], torch.arange(4.0))

    torch.save({"format": "something else"}, tmp_path / "state.pt")
    with pytest.raises(HessauditError, match="not a hessaudit finetune state"):
        folder.load_state()
    (tmp_path / "state.pt").write_bytes(b"garbage")
    with pytest.raises(HessauditError, match=r"state\.pt cannot be read"):
        folder.load_state()


def test_save_weights_writes_the_runs_model_and_metadata(tmp_path) -> None:
    from hessaudit.inputs.checkpoints import load_checkpoint

    model = nn.Linear(3, 2)
    run = SimpleNamespace(
        model=model,
        weights_metadata=lambda kind, extra=None: {"kind": kind, "epoch": 4, **(extra or {})},
    )
    folder = RunFolder(tmp_path)
    folder.save_weights(run, "best", extra={"val_acc": 0.5})
    ckpt = load_checkpoint(str(tmp_path / "best.safetensors"))
    assert torch.equal(ckpt.tensors["weight"], model.weight.detach())
    assert ckpt.metadata["kind"] == "best" and ckpt.metadata["val_acc"] == 0.5
    assert folder.files() == {"best": str(tmp_path / "best.safetensors")}


def test_finished_marker(tmp_path) -> None:
    folder = RunFolder(tmp_path)
    (tmp_path / "final.safetensors").write_bytes(b"x")
    assert folder.read_finished() is None
    files = folder.write_finished(_config(tmp_path, audit=True, audit_samples=8), epoch=3,
                                  stopped_early=False, best_epoch=2)
    assert files == {"final": str(tmp_path / "final.safetensors"),
                     "finished": str(tmp_path / FINISHED_NAME)}
    marker = folder.read_finished()
    assert marker["epochs_run"] == 3 and marker["best_epoch"] == 2
    assert marker["audit"] == {"samples": 8} and marker["files"] == ["final.safetensors"]

    (tmp_path / FINISHED_NAME).write_text('{"schema": "other"}')
    assert folder.read_finished() is None  # not ours: as if missing
    folder.remove_finished()
    folder.remove_finished()  # twice is fine
    assert not (tmp_path / FINISHED_NAME).exists()


def test_lock_is_exclusive(tmp_path) -> None:
    folder = RunFolder(tmp_path / "run")
    with folder.lock(flag="--out"):
        assert (folder.path / ".lock").is_file()
        second = RunFolder(tmp_path / "run")
        with pytest.raises(HessauditError, match="in use by another hessaudit run"), \
                second.lock(flag="--resume"):
            pass
    assert not (folder.path / ".lock").exists()
    assert not folder.path.exists()  # the lock created it, and the run left it empty
