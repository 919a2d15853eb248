"""What a trial is scored on, and how.

* :class:`ValData` / :func:`study_data`: the validation split carved from ``--data``, with
  labels **as noisy as the training labels** (the clean labels the finetuner knows for injected
  noise are never used to choose), built by the finetuner's own data preparation;
* :class:`Scorer`: a checkpoint's accuracy, cross-entropy and noise-corrected loss on it;
* :func:`audit_bound` / :func:`write_audit_data`: the ``bound`` objective, the Hessian
  generalization bound of a trial's final weights over the trials' training split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hessaudit.robust.config import FinetuneConfig

__all__ = ["Scorer", "StudyData", "ValData", "audit_bound", "study_data", "write_audit_data"]


@dataclass
class ValData:
    """The validation split (inputs, noisy labels) and the positions of both splits."""

    x: Any
    y_noisy: Any
    val_indices: list[int]
    train_indices: list[int]
    num_classes: int


@dataclass
class StudyData:
    """The validation split, the training split's inputs and noisy labels (for ``bound``),
    and the model's input config."""

    val: ValData
    train_x: Any
    train_y: Any
    input_config: Any


def study_data(base: FinetuneConfig) -> StudyData:
    """The data every trial sees, on the CPU: :func:`~hessaudit.robust.data_setup.prepare_data`
    of ``base``, the finetuner's own, with the validation split's **noisy** labels.

    Each trial's config differs from ``base`` only by searched options, and
    :meth:`~hessaudit.robust.tune.settings.TuneSettings.validate` refuses to search any of
    :data:`~hessaudit.robust.tune.space.NOT_TUNABLE` (every option ``prepare_data`` reads), so
    every trial trains and is scored on exactly this split."""
    import torch

    from hessaudit.robust.data_setup import prepare_data

    with torch.random.fork_rng(devices=[]):  # the probe model draws from the global RNG
        setup = prepare_data(base, torch.device("cpu"))
    labels = setup.labels
    assert setup.val is not None  # validate() requires --val-fraction
    val = ValData(
        x=setup.val.x,
        y_noisy=labels.noisy[torch.tensor(labels.val_indices, dtype=torch.long)],
        val_indices=list(labels.val_indices),
        train_indices=[int(i) for i in labels.train_indices],
        num_classes=setup.num_classes,
    )
    return StudyData(val=val, train_x=setup.train.x, train_y=setup.train.y,
                     input_config=setup.input_config)


class Scorer:
    """Scores a checkpoint on the noisy validation split: accuracy, cross-entropy and the
    backward-corrected loss ``sum_j (F^-1)[z, j] CE(f(x), j)`` with the checkpoint's ``F``
    (NaN without one)."""

    def __init__(self, base: FinetuneConfig, val: ValData) -> None:
        import torch

        from hessaudit.inputs.models import build_model

        self.device = torch.device(base.device)
        with torch.random.fork_rng(devices=[]):
            self.model = build_model(
                base.model, num_classes=val.num_classes, allow_hub=base.allow_hub
            ).to(self.device)
        self.x = val.x.to(self.device)
        self.y = val.y_noisy.to(self.device)
        self.batch_size = base.batch_size

    def score(self, checkpoint: Path) -> dict[str, float]:
        import numpy as np
        import torch

        from hessaudit.inputs.checkpoints import load_checkpoint
        from hessaudit.robust.losses import backward_corrected_loss

        ckpt = load_checkpoint(str(checkpoint))
        self.model.load_state_dict(dict(ckpt.tensors), strict=False)
        self.model.eval()
        with torch.no_grad():
            logits = torch.cat(
                [
                    self.model(self.x[s : s + self.batch_size]).float()
                    for s in range(0, self.x.shape[0], self.batch_size)
                ]
            )
        acc = float((logits.argmax(dim=1) == self.y).double().mean())
        ce = float(torch.nn.functional.cross_entropy(logits, self.y))
        corrected = float("nan")
        F = ckpt.metadata.get("noise_matrix")
        if F is not None:
            corrected = float(
                backward_corrected_loss(logits.double(), self.y, np.asarray(F, dtype=np.float64))
            )
        return {"val_acc": acc, "val_loss": ce, "val_loss_corrected": corrected}


def audit_bound(base: FinetuneConfig, trial_out: Path, audit_data: Path, n_train: int,
                k: int) -> float:
    """The audit's generalization bound of ``trial_out/final.safetensors`` against the
    pretrained weights, over ``audit_data`` (the training split, noisy labels)."""
    from hessaudit.audit.request import AuditRequest
    from hessaudit.audit.run import run_audit

    request = AuditRequest.for_checkpoints(
        base.pretrained, trial_out / "final.safetensors", model=base.model,
        data=str(audit_data), num_classes=k, samples=base.audit_samples, n_train=n_train,
        finetune=base,
    )
    return float(run_audit(request).bound.bound)


def write_audit_data(path: Path, data: StudyData) -> None:
    """The trials' training split with its noisy labels, for the audit. The audit re-applies
    the model's normalization, so the inputs are stored before it."""
    import numpy as np
    import torch

    from hessaudit._atomic import atomic_path

    x, y, cfg = data.train_x, data.train_y, data.input_config
    if cfg.mean is not None or cfg.std is not None:
        mean = torch.tensor(cfg.mean or (0.0,), dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(cfg.std or (1.0,), dtype=x.dtype).view(1, -1, 1, 1)
        x = x * std + mean
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, x=x.numpy(), y=y.numpy())
