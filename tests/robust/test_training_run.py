"""TrainingRun on its own: what it builds from a DataSetup, its metrics rows, the best-so-far,
and its state (a restored run continues bit-identically). The tiny factory net on 48 digits."""

from __future__ import annotations

import math

import pytest
import torch

from hessaudit.robust.config import FinetuneConfig, parse_penalty
from hessaudit.robust.data_setup import prepare_data
from hessaudit.robust.epoch import train_epoch
from hessaudit.robust.noise_estimate import resolve_noise_matrix
from hessaudit.robust.run_folder import RunFolder
from hessaudit.robust.training_run import TrainingRun
from hessaudit.robust.types import METRIC_COLUMNS, SCHEMA, TrainingDisplay

CPU = torch.device("cpu")


def _setup(ckpts, tmp_path, **changes):
    options = {
        "model": ckpts.spec, "pretrained": str(ckpts.pretrained), "data": "digits",
        "out": str(tmp_path / "run"), "samples": 48, "batch_size": 16, "lr": 1e-2,
        "epochs": 3, "inject_noise": "symmetric:0.3", "noise_matrix": "injected",
        "radius": 0.05, "val_fraction": 0.25,
    }
    options.update(changes)
    config = FinetuneConfig(**options).resolved()
    with torch.random.fork_rng(devices=[]):
        return prepare_data(config, CPU)


def _run(setup, warnings=None) -> TrainingRun:
    config = setup.config
    return TrainingRun.create(
        setup, resolve_noise_matrix(setup, TrainingDisplay()),
        penalty_spec=parse_penalty(config.penalty), radius_table=None, device=CPU,
        warn=(warnings.append if warnings is not None else lambda message: None),
    )


def _epoch(run: TrainingRun) -> dict[str, float]:
    params = dict(run.model.named_parameters())
    run.epoch += 1
    stats = train_epoch(
        run.model, run.setup.train, loss_fn=run.loss_fn, optimizer=run.optimizer,
        batch_size=run.config.batch_size, generator=run.shuffle, penalty=run.penalty_fn,
        after_step=lambda: run.project_(params), display=TrainingDisplay(), epoch=run.epoch,
    )
    if run.scheduler is not None:
        run.scheduler.step()
    return stats


def test_create_loads_the_checkpoint_and_seeds_the_new_head(tiny_checkpoints, tmp_path):
    setup = _setup(tiny_checkpoints, tmp_path)
    run, again = _run(setup), _run(setup)
    pre = tiny_checkpoints.pretrained_state
    assert set(run.build.new) == {"fc.weight", "fc.bias"}  # 5-class checkpoint, 10-class task
    assert run.new_layers == ["fc.weight"] and "fc.weight" not in run.anchors
    for name, anchor in run.anchors.items():
        assert torch.equal(anchor, pre[name])
        assert torch.equal(dict(run.model.named_parameters())[name].detach(), pre[name])
    # the new head comes from derive_seed(seed, "init"): the same in two runs of one seed
    assert torch.equal(run.model.fc.weight, again.model.fc.weight)
    # --loss reweight: the Frobenius constraint, on the pretrained layers (no --head-radius)
    assert set(run.radii) == {"conv1.weight"} and run.radii["conv1.weight"] == 0.05
    head = _run(_setup(tiny_checkpoints, tmp_path, head_radius=3.0))
    assert head.radii == {"conv1.weight": 0.05, "fc.weight": 3.0}
    assert run.loss_fn.name == "reweight" and run.penalty_fn is None
    assert run.shuffle.initial_seed() == again.shuffle.initial_seed()


def test_create_warns_about_an_unused_noise_matrix_and_builds_the_penalty(tiny_checkpoints,
                                                                          tmp_path):
    setup = _setup(tiny_checkpoints, tmp_path, loss="ce", penalty="l2sp:0.5:0.1")
    warnings: list[str] = []
    run = _run(setup, warnings)
    assert warnings == ["--noise-matrix is recorded but not used by --loss ce"]
    assert run.radii == {}  # --loss ce: no constraint by default
    assert float(run.penalty_fn().detach()) > 0  # only the new head is away from zero / its anchor


def test_row_at_the_start_and_after_an_epoch(tiny_checkpoints, tmp_path):
    run = _run(_setup(tiny_checkpoints, tmp_path))
    row = run.row({}, seconds=0.0)
    assert list(row) == list(METRIC_COLUMNS)
    assert row["epoch"] == 0 and row["max_distance"] == 0.0  # still the pretrained weights
    assert math.isnan(row["train_loss"]) and math.isnan(row["heldout_acc"])  # no --eval-data
    assert 0.0 <= row["val_acc"] <= 1.0 and row["lr"] == pytest.approx(1e-2)

    stats = _epoch(run)
    row = run.row(stats, seconds=1.5, lr=0.5)
    assert row["epoch"] == 1 and row["lr"] == 0.5 and row["seconds"] == 1.5
    assert row["train_loss"] == stats["train_loss"]
    assert row["max_distance"] > 0 and row["max_radius_ratio"] <= 1 + 1e-5  # projected
    assert row["max_distance_layer"] in run.layer_names


def test_record_epoch_keeps_the_best_and_stops_early(tiny_checkpoints, tmp_path):
    run = _run(_setup(tiny_checkpoints, tmp_path, early_stop=2, epochs=10))
    improved = []
    for epoch, acc in enumerate([0.5, 0.7, 0.7, 0.6], start=1):
        run.epoch = epoch
        improved.append(run.record_epoch({"epoch": epoch, "val_acc": acc}))
    assert improved == [True, True, False, False]  # equal is not better
    assert (run.best_epoch, run.best_val_acc, run.bad_epochs) == (2, 0.7, 2)
    assert run.stopped_early and run.finished_training and len(run.metrics) == 4

    no_val = _run(_setup(tiny_checkpoints, tmp_path, val_fraction=None))
    assert not no_val.record_epoch({"epoch": 1, "val_acc": float("nan")})
    assert no_val.best_epoch is None


def test_weights_metadata(tiny_checkpoints, tmp_path):
    run = _run(_setup(tiny_checkpoints, tmp_path))
    run.epoch = 2
    meta = run.weights_metadata("best", {"val_acc": 0.5})
    assert meta["format"] == SCHEMA and meta["kind"] == "best" and meta["epoch"] == 2
    assert meta["noise_matrix_source"] == "injected (symmetric:0.3)"
    assert len(meta["noise_matrix"]) == 10 and meta["new_tensors"] == ["fc.weight", "fc.bias"]
    assert meta["config"] == run.config.to_dict() and meta["val_acc"] == 0.5


def test_restored_state_continues_bit_identically(tiny_checkpoints, tmp_path):
    setup = _setup(tiny_checkpoints, tmp_path, schedule="cosine")
    with torch.random.fork_rng(devices=[]):
        first = _run(setup)
        _epoch(first)
        first.record_epoch(first.row({}, seconds=0.0))
        folder = RunFolder(tmp_path)
        folder.save_state(first.state())  # as the epoch loop does: the state is a snapshot
        state = folder.load_state()
        assert state["epoch"] == 1 and not state["finished"]
        _epoch(first)

        second = _run(setup)  # a fresh process would build the same, then restore
        second.restore(state)
        assert second.epoch == 1 and repr(second.metrics) == repr(first.metrics[:1])
        assert second.best_epoch == 1
        _epoch(second)
    weights = second.model.state_dict()
    for name, value in first.model.state_dict().items():
        assert torch.equal(value, weights[name]), name
    assert first.optimizer.param_groups[0]["lr"] == second.optimizer.param_groups[0]["lr"]
