"""What a run records about itself: the ``resolved`` part of ``config.json``
(:func:`run_info`), ``noise.json`` (:func:`noise_document`, with :func:`training_labels`), and
the audit of the final checkpoint (:func:`audit_final_checkpoint`, ``audit.json``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hessaudit.audit import distributed as _dist
from hessaudit.robust.config import FinetuneConfig
from hessaudit.robust.group_radii import tensor_groups
from hessaudit.robust.noise import NoiseInjection
from hessaudit.robust.text_recipe import GROUP_RADII, linear_plan, text_options
from hessaudit.robust.training_run import TrainingRun
from hessaudit.robust.types import DataSetup, TrainingDisplay

__all__ = [
    "NOISE_SCHEMA",
    "audit_final_checkpoint",
    "noise_document",
    "run_info",
    "training_labels",
]

NOISE_SCHEMA = "hessaudit.noise/1"


def run_info(
    run: TrainingRun, penalty_spec: tuple[str, float, float] | None
) -> dict[str, Any]:
    """``config.json``'s ``resolved``: what the run found (class count, device, the pretrained
    record, data summaries and sizes, which tensors were loaded and which are new, the layers
    and their radii, the penalty, the noise, the seeds)."""
    setup, build, radii = run.setup, run.build, run.radii
    config = setup.config
    info = {
        "num_classes": setup.num_classes,
        "device": str(run.device),
        "torch_version": torch.__version__,
        "pretrained": setup.pretrained_record.to_dict(),
        "data": setup.data_summary,
        "data_fingerprint": setup.data_fingerprint,
        "eval_data": setup.heldout_summary,
        "input_config": setup.input_config.to_dict() if setup.input_config is not None else None,
        "train_size": len(setup.train),
        "val_size": 0 if setup.val is None else len(setup.val),
        "heldout_size": 0 if setup.heldout is None else len(setup.heldout),
        "val_indices": list(setup.val_indices),
        "labels_clean_known": setup.train.clean is not None,
        "loaded_tensors": len(build.loaded),
        "new_tensors": list(build.new),
        "unused_pretrained_tensors": list(build.unused),
        "constraint": config.constraint,
        "constrained_layers": len(radii),
        "layers": list(run.layer_names),
        "radii": dict(radii),
        "penalty": None
        if penalty_spec is None
        else {"kind": penalty_spec[0], "lambda": penalty_spec[1], "head_lambda": penalty_spec[2]},
        "noise_matrix_source": run.noise.source,
        "injected_noise": None
        if setup.injection is None
        else {
            "spec": setup.injection.spec,
            "realized_rate": setup.injection.realized_rate,
            "num_flipped": len(setup.injection.flipped_indices),
        },
        "seeds": {"seed": config.seed, "noise_seed": config.noise_seed},
    }
    return {**info, **_recipe_info(run)}


def _recipe_info(run: TrainingRun) -> dict[str, Any]:
    """What only some runs record: the module group of each constrained tensor (with
    ``--radius-attention`` / ``--radius-linear``) and the linear schedule's steps."""
    config, info = run.config, {}
    if any(getattr(config, name) is not None for name in GROUP_RADII) and run.radii:
        info["radius_groups"] = tensor_groups(run.model, list(run.radii))
    if config.schedule == "linear":
        warmup, total = linear_plan(config.warmup_epochs, config.epochs, run.steps_per_epoch)
        info["schedule"] = {"kind": "linear", "warmup_steps": warmup, "total_steps": total,
                            "steps_per_epoch": run.steps_per_epoch}
    return info


def audit_final_checkpoint(
    config: FinetuneConfig, setup: DataSetup, out: Path, display: TrainingDisplay
) -> dict[str, Any]:
    """Audit ``out/final.safetensors`` against ``config.pretrained`` on exactly the examples
    trained on (their clean labels when known), n = the training-set size; write
    ``audit.json`` and return its document."""
    from hessaudit.audit.bound import estimate_label
    from hessaudit.audit.request import AuditRequest
    from hessaudit.audit.run import run_audit, write_audit_json

    display.log("auditing the final checkpoint against the pretrained one")
    request = AuditRequest.for_checkpoints(
        config.pretrained, out / "final.safetensors", model=config.model, data=config.data,
        eval_data=config.eval_data, num_classes=setup.num_classes,
        samples=config.audit_samples, n_train=len(setup.train), finetune=config,
        text=text_options(config),
    )
    from hessaudit.inputs.data import Dataset

    # Audit exactly the examples trained on, with their clean labels when they are known.
    trained_on = Dataset(
        x=setup.train.x.cpu(),
        y=(setup.train.clean if setup.train.clean is not None else setup.train.y).cpu(),
        num_classes=setup.num_classes,
        source=f"{config.data} (the examples fine-tuned on)",
        scaling=str(setup.data_summary.get("scaling", "none")),
        preprocessing=tuple(setup.data_summary.get("preprocessing", ())),
    )
    result = run_audit(request, train_data=trained_on)
    document = result.to_dict()
    if _dist.is_main():
        write_audit_json(str(out / "audit.json"), result)
        label = estimate_label(document)
        if label is not None:  # as measure does: a CI log must show it
            display.warn(f"the audit's bound is an {label}, not Theorem 2.1's bound")
    return document


def training_labels(setup: DataSetup) -> dict[str, Any]:
    """The labels the run trained on, for ``noise.json`` (``training_labels``): one per
    training example (after ``--samples`` and the validation split), with its position in
    ``--data``; ``hessaudit measure --labels noise.json`` audits on exactly these."""
    return {
        "data": str(setup.config.data),
        "source_size": setup.source_size,
        "indices": setup.train_source_indices,
        "labels": [int(v) for v in setup.train.y.cpu().tolist()],
        "clean_labels": None
        if setup.train.clean is None
        else [int(v) for v in setup.train.clean.cpu().tolist()],
        "num_classes": setup.num_classes,
        "note": "labels[i] is the (noisy) label trained on for example indices[i] of --data "
        "(positions in all of --data, before --samples); the validation split is left out",
    }


def noise_document(
    injection: NoiseInjection | None,
    noise_matrix: np.ndarray | None,
    source: str | None,
    estimated: Mapping[str, Any] | None,
    *,
    training_labels: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``noise.json`` document. ``noise_matrix`` is the ``F`` the loss used (so the file
    can be passed back as ``--noise-matrix noise.json``); ``injected.flipped_indices`` are
    positions in the loaded training data, before the validation split;
    ``training_labels`` (see :func:`training_labels`) the labels actually trained on."""
    return {
        "schema": NOISE_SCHEMA,
        "convention": "F[true, noisy] = P(noisy label | true label), rows sum to 1; "
        "cleanlab's noise_matrix is the transpose",
        "noise_matrix": None if noise_matrix is None else noise_matrix.tolist(),
        "noise_matrix_source": source,
        "injected": None if injection is None else injection.to_dict(),
        "estimated": None if estimated is None else dict(estimated),
        "training_labels": None if training_labels is None else dict(training_labels),
    }
