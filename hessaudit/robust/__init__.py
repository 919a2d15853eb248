"""Robust fine-tuning under label noise (the paper's Algorithm 1 and its baselines).

* :mod:`~hessaudit.robust.losses`: the backward-corrected ("reweighted") loss with ``F^-1``,
  forward correction, GCE, SCE, label smoothing, L2-SP;
* :mod:`~hessaudit.robust.noise_matrix`: the noise matrix ``F`` (rows = true label, columns =
  noisy label): symmetric, from a file, validated, estimated;
* :mod:`~hessaudit.robust.dual_t`, :mod:`~hessaudit.robust.js_loss`,
  :mod:`~hessaudit.robust.nonneg`: the seed's Dual-T estimator, the JS loss and the non-negative
  backward correction;
* :mod:`~hessaudit.robust.noise`: seeded synthetic noise injection;
* :mod:`~hessaudit.robust.projection`: per-layer radii and the projection onto Frobenius balls;
* :mod:`~hessaudit.robust.config` / :mod:`~hessaudit.robust.trainer`: :class:`FinetuneConfig`
  and :func:`run_finetune`, which runs :func:`~hessaudit.robust.data_setup.prepare_data`, a
  :class:`~hessaudit.robust.training_run.TrainingRun` and its
  :class:`~hessaudit.robust.run_folder.RunFolder` (see the trainer's docstring for the rest).

Names are re-exported lazily, so ``import hessaudit.robust`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FinetuneConfig": "config",
    "parse_penalty": "config",
    "LossFunction": "losses",
    "backward_corrected_loss": "losses",
    "cross_entropy": "losses",
    "forward_corrected_loss": "losses",
    "generalized_cross_entropy": "losses",
    "l2sp_penalty": "losses",
    "label_smoothing_cross_entropy": "losses",
    "make_loss": "losses",
    "symmetric_cross_entropy": "losses",
    "estimate_noise_matrix": "noise_matrix",
    "dual_t_estimate": "dual_t",
    "jensen_shannon_loss": "js_loss",
    "nonneg_backward_corrected_loss": "nonneg",
    "load_noise_matrix": "noise_matrix",
    "symmetric_noise_matrix": "noise_matrix",
    "validate_noise_matrix": "noise_matrix",
    "NoiseInjection": "noise",
    "inject_noise": "noise",
    "constrainable_names": "projection",
    "distances": "projection",
    "layer_radii": "projection",
    "load_radius_table": "projection",
    "project_to_balls_": "projection",
    "FinetuneResult": "types",
    "TrainingDisplay": "types",
    "load_run_config": "resume",
    "resume_config": "resume",
    "run_finetune": "trainer",
    "prepare_data": "data_setup",
    "RunFolder": "run_folder",
    "TrainingRun": "training_run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hessaudit.robust' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"hessaudit.robust.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
