"""resume_plan: what a resume still has to do, from state.pt and finished.json alone."""

from __future__ import annotations

import pytest

from hessaudit.errors import HessauditError
from hessaudit.robust.config import FinetuneConfig
from hessaudit.robust.resume import ResumePlan, resume_plan
from hessaudit.robust.run_folder import RunFolder


def _config(**changes) -> FinetuneConfig:
    options = {"model": "m", "pretrained": "p", "data": "d", "out": "o", "epochs": 3}
    return FinetuneConfig(**{**options, **changes})


def _finished(epochs_run: int, audit=None) -> dict:
    return {"epochs_run": epochs_run, "audit": audit}


@pytest.mark.parametrize(
    ("config", "state", "finished", "plan"),
    [
        (_config(), None, None, ResumePlan(train=True, weights=True, audit=False)),
        (_config(audit=True), {"epoch": 1, "bad_epochs": 0}, None,
         ResumePlan(train=True, weights=True, audit=True)),
        # training done, killed before the marker: rewrite the final outputs
        (_config(), {"epoch": 3, "bad_epochs": 0}, None,
         ResumePlan(train=False, weights=True, audit=False)),
        # finished, and now an audit is asked for: only the audit
        (_config(audit=True), {"epoch": 3, "bad_epochs": 0}, _finished(3),
         ResumePlan(train=False, weights=False, audit=True)),
        (_config(audit=True, audit_samples=8), {"epoch": 3, "bad_epochs": 0},
         _finished(3, {"samples": 4}), ResumePlan(train=False, weights=False, audit=True)),
        # a marker of another epoch count does not count
        (_config(), {"epoch": 3, "bad_epochs": 0}, _finished(2),
         ResumePlan(train=False, weights=True, audit=False)),
        # --epochs extended: train on
        (_config(epochs=5), {"epoch": 3, "bad_epochs": 0}, _finished(3),
         ResumePlan(train=True, weights=True, audit=False)),
    ],
)
def test_plan(tmp_path, config, state, finished, plan) -> None:
    assert resume_plan(RunFolder(tmp_path), config, state, finished) == plan


def test_nothing_to_do(tmp_path) -> None:
    with pytest.raises(HessauditError, match="already finished its 3 epochs; nothing to do"):
        resume_plan(RunFolder(tmp_path), _config(), {"epoch": 3, "bad_epochs": 0}, _finished(3))
    stopped = _config(early_stop=2, val_fraction=0.1, epochs=10)
    with pytest.raises(HessauditError, match="stopped early at epoch 4"):
        resume_plan(RunFolder(tmp_path), stopped, {"epoch": 4, "bad_epochs": 2}, _finished(4))
