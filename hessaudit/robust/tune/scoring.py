"""What a trial is scored on, and how.

* :class:`ValData` / :func:`study_data`: the validation split carved from ``--data``, with
  labels **as noisy as the training labels** (the clean labels the finetuner knows for injected
  noise are never used to choose), built as the finetuner builds it from the same config;
* :class:`Scorer`: a checkpoint's accuracy, cross-entropy and noise-corrected loss on it;
* :func:`audit_bound` / :func:`write_audit_data`: the ``bound`` objective, the Hessian
  generalization bound of a trial's final weights over the trials' training split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hessaudit.errors import HessauditError
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
    """The validation split, and the training split's inputs and noisy labels (for ``bound``)."""

    val: ValData
    train_x: Any
    train_y: Any


def study_data(base: FinetuneConfig) -> StudyData:
    """The validation split and its noisy labels, built as the finetuner builds them from
    ``base`` (checked against the first trial's ``config.json``), and the training split, on
    the CPU."""
    import torch

    from hessaudit.inputs.data import load_data
    from hessaudit.inputs.models import build_model, input_config
    from hessaudit.robust.noise import inject_noise
    from hessaudit.robust.trainer import derive_seed

    with torch.random.fork_rng(devices=[]):
        probe = build_model(base.model, num_classes=base.num_classes, allow_hub=base.allow_hub)
    in_cfg = input_config(
        probe, input_size=base.input_size, mean=base.mean, std=base.std,
        interpolation=base.interpolation, crop_pct=base.crop_pct,
    )
    del probe
    train = load_data(
        base.data, role="train", input_config=in_cfg, num_classes=base.num_classes,
        samples=base.samples, seed=base.seed,
    )
    k = int(base.num_classes or train.num_classes)
    noisy = train.y.to(torch.int64)
    if base.inject_noise is not None:
        noisy = inject_noise(
            noisy, num_classes=k, spec=base.inject_noise, seed=int(base.noise_seed or 0)
        ).noisy_labels
    n = int(noisy.shape[0])
    if n < 2:
        raise HessauditError(f"--data {base.data} has fewer than 2 examples")
    n_val = min(max(round(n * float(base.val_fraction)), 1), n - 1)
    gen = torch.Generator(device="cpu").manual_seed(derive_seed(base.seed, "split"))
    perm = torch.randperm(n, generator=gen)
    val_idx = torch.sort(perm[:n_val]).values
    train_idx = torch.sort(perm[n_val:]).values
    val = ValData(
        x=train.x[val_idx],
        y_noisy=noisy[val_idx],
        val_indices=[int(i) for i in val_idx],
        train_indices=[int(i) for i in train_idx],
        num_classes=k,
    )
    return StudyData(val=val, train_x=train.x[train_idx], train_y=noisy[train_idx])


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
    from hessaudit.audit.run import AuditRequest, run_audit

    request = AuditRequest(
        pretrained=str(base.pretrained),
        finetuned=str(trial_out / "final.safetensors"),
        model=base.model,
        data=str(audit_data),
        num_classes=k,
        samples=base.audit_samples,
        batch_size=base.batch_size,
        input_size=base.input_size,
        mean=base.mean,
        std=base.std,
        interpolation=base.interpolation,
        crop_pct=base.crop_pct,
        n_train=n_train,
        seed=base.seed,
        device=base.device,
        allow_hub=base.allow_hub,
    )
    return float(run_audit(request).bound.bound)


def write_audit_data(base: FinetuneConfig, path: Path, x: Any, y: Any) -> None:
    """The trials' training split with its noisy labels, for the audit. The audit re-applies
    the model's normalization, so the inputs are stored before it."""
    import numpy as np
    import torch

    from hessaudit._atomic import atomic_path
    from hessaudit.inputs.models import build_model, input_config

    with torch.random.fork_rng(devices=[]):
        probe = build_model(base.model, num_classes=base.num_classes, allow_hub=base.allow_hub)
    cfg = input_config(
        probe, input_size=base.input_size, mean=base.mean, std=base.std,
        interpolation=base.interpolation, crop_pct=base.crop_pct,
    )
    if cfg.mean is not None or cfg.std is not None:
        mean = torch.tensor(cfg.mean or (0.0,), dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(cfg.std or (1.0,), dtype=x.dtype).view(1, -1, 1, 1)
        x = x * std + mean
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, x=x.numpy(), y=y.numpy())
