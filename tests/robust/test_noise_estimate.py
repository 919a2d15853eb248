"""resolve_noise_matrix for every --noise-matrix source, and the cross-fitted estimate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hessaudit.errors import HessauditError
from hessaudit.robust.config import FinetuneConfig
from hessaudit.robust.data_setup import prepare_data
from hessaudit.robust.noise_estimate import resolve_noise_matrix
from hessaudit.robust.noise_matrix import symmetric_noise_matrix
from hessaudit.robust.types import TrainingDisplay


class Phases(TrainingDisplay):
    def __init__(self) -> None:
        self.phases: list[tuple[str, int, int]] = []

    def start_phase(self, name: str, *, epochs: int, first_epoch: int, steps: int) -> None:
        self.phases.append((name, epochs, steps))


def _setup(ckpts, tmp_path, **changes):
    options = {"model": ckpts.spec, "pretrained": str(ckpts.pretrained), "data": "digits",
               "out": str(tmp_path), "samples": 40, "batch_size": 8, "lr": 1e-2,
               "inject_noise": "symmetric:0.2", "loss": "reweight"}
    options.update(changes)
    with torch.random.fork_rng(devices=[]):
        return prepare_data(FinetuneConfig(**options).resolved(), torch.device("cpu"))


def test_sources(tiny_checkpoints, tmp_path) -> None:
    display = TrainingDisplay()
    none = resolve_noise_matrix(_setup(tiny_checkpoints, tmp_path, loss="ce"), display)
    assert none.matrix is None and none.source is None and none.estimated is None

    sym = resolve_noise_matrix(_setup(tiny_checkpoints, tmp_path,
                                      noise_matrix="symmetric:0.2"), display)
    assert np.allclose(sym.matrix, symmetric_noise_matrix(10, 0.2))
    assert sym.source == "symmetric:0.2" and sym.estimated is None

    injected = resolve_noise_matrix(_setup(tiny_checkpoints, tmp_path,
                                           noise_matrix="injected"), display)
    assert injected.source == "injected (symmetric:0.2)"
    assert np.allclose(injected.matrix, symmetric_noise_matrix(10, 0.2))

    # resuming an estimated run: the estimate saved in state.pt, no training
    saved = torch.from_numpy(symmetric_noise_matrix(10, 0.3))
    phases = Phases()
    again = resolve_noise_matrix(_setup(tiny_checkpoints, tmp_path, noise_matrix="estimate"),
                                 phases, saved)
    assert np.array_equal(again.matrix, saved.numpy()) and again.estimated is None
    assert again.source == "estimate (confident)" and phases.phases == []


def test_estimate_cross_fits_two_first_models(tiny_checkpoints, tmp_path) -> None:
    setup = _setup(tiny_checkpoints, tmp_path, noise_matrix="estimate", estimate_epochs=1)
    phases = Phases()
    try:
        choice = resolve_noise_matrix(setup, phases)
    except HessauditError as exc:  # tiny first models may give a singular estimate
        assert "accuracy on the noisy labels" in exc.hint
    else:
        assert choice.source == "estimate (confident)"
        record = choice.estimated
        assert record["folds"] == 2 and record["epochs"] == 1
        assert np.allclose(record["noise_matrix"], choice.matrix, atol=1e-4)
        assert set(record["errors_vs_injected_by_method"]) == {"anchor", "confident", "dual-t"}
    # one phase per fold, each on half of the 40 examples (8 per batch -> 3 steps)
    assert phases.phases == [("estimate F (fold 1/2)", 1, 3), ("estimate F (fold 2/2)", 1, 3)]


def test_estimate_needs_four_examples(tiny_checkpoints, tmp_path) -> None:
    setup = _setup(tiny_checkpoints, tmp_path, noise_matrix="estimate", samples=3)
    with pytest.raises(HessauditError, match="at least 4 training examples"):
        resolve_noise_matrix(setup, TrainingDisplay())
