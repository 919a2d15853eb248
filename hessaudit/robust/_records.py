"""What a run records about itself: the ``resolved`` part of ``config.json`` and the audit of
the final checkpoint. Split out of :mod:`hessaudit.robust.trainer` (move only).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from hessaudit.audit import distributed as _dist
from hessaudit.robust._model_setup import _ModelBuild
from hessaudit.robust.config import FinetuneConfig
from hessaudit.robust.types import DataSetup, TrainingDisplay


def _run_info(
    setup: DataSetup,
    build: _ModelBuild,
    radii: Mapping[str, float],
    layer_names: list[str],
    F_source: str | None,
    penalty_spec: tuple[str, float, float] | None,
    device: torch.device,
) -> dict[str, Any]:
    config = setup.config
    return {
        "num_classes": setup.num_classes,
        "device": str(device),
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
        "layers": list(layer_names),
        "radii": dict(radii),
        "penalty": None
        if penalty_spec is None
        else {"kind": penalty_spec[0], "lambda": penalty_spec[1], "head_lambda": penalty_spec[2]},
        "noise_matrix_source": F_source,
        "injected_noise": None
        if setup.injection is None
        else {
            "spec": setup.injection.spec,
            "realized_rate": setup.injection.realized_rate,
            "num_flipped": len(setup.injection.flipped_indices),
        },
        "seeds": {"seed": config.seed, "noise_seed": config.noise_seed},
    }


def _run_audit(
    config: FinetuneConfig, setup: DataSetup, out: Path, display: TrainingDisplay
) -> dict[str, Any]:
    from hessaudit.audit.bound import estimate_label
    from hessaudit.audit.run import AuditRequest, run_audit, write_audit_json

    display.log("auditing the final checkpoint against the pretrained one")
    request = AuditRequest(
        pretrained=str(config.pretrained),
        finetuned=str(out / "final.safetensors"),
        model=config.model,
        data=config.data,
        eval_data=config.eval_data,
        num_classes=setup.num_classes,
        samples=config.audit_samples,
        batch_size=config.batch_size,
        input_size=config.input_size,
        mean=config.mean,
        std=config.std,
        interpolation=config.interpolation,
        crop_pct=config.crop_pct,
        n_train=len(setup.train),
        seed=config.seed,
        device=config.device,
        allow_hub=config.allow_hub,
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
