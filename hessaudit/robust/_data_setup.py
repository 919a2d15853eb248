"""The data side of a fine-tuning run: what is trained and evaluated on, and the noise matrix.

* :class:`_Split` / :class:`_Setup`: the device tensors of the training, validation and
  held-out splits, with everything resolved from the inputs (class count, the pretrained
  checkpoint, the injected noise, the data fingerprint);
* :func:`_prepare_data`: loads ``config.pretrained`` and ``config.data``, injects the noise,
  draws the validation split (seeded, see :mod:`hessaudit.robust._seeds`);
* :func:`_check_resume_inputs`: refuses to resume when the pretrained checkpoint or the data
  changed since the run started;
* :func:`_resolve_noise_matrix` / :func:`noise_document`: the ``F`` the loss uses and the
  ``noise.json`` document. Estimating ``F`` trains models, so the trainer passes its
  ``_estimate_F`` in.

Split out of :mod:`hessaudit.robust.trainer`; it imports nothing from the trainer (the display
type is a hint only).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hessaudit.errors import HessauditError
from hessaudit.robust._seeds import _generator
from hessaudit.robust.config import FinetuneConfig
from hessaudit.robust.noise import NoiseInjection, inject_noise
from hessaudit.robust.noise_matrix import load_noise_matrix, validate_noise_matrix

if TYPE_CHECKING:
    from hessaudit.robust.trainer import TrainingDisplay

NOISE_SCHEMA = "hessaudit.noise/1"


# --------------------------------------------------------------------------- splits


@dataclass
class _Split:
    x: torch.Tensor
    y: torch.Tensor  # labels trained on / evaluated against
    clean: torch.Tensor | None  # clean labels when known (training split only)

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class _Setup:
    config: FinetuneConfig
    device: torch.device
    num_classes: int
    pretrained_record: Any
    pretrained_tensors: dict[str, torch.Tensor]
    train: _Split
    val: _Split | None
    heldout: _Split | None
    data_summary: dict[str, Any]
    heldout_summary: dict[str, Any] | None
    val_indices: list[int]
    data_fingerprint: str
    injection: NoiseInjection | None
    input_config: Any
    #: positions in ``config.data`` (all of it, before ``--samples``) of the training split's
    #: examples, and that source's size; None when they cannot be known (see
    #: :func:`_source_positions`)
    train_source_indices: list[int] | None = None
    source_size: int | None = None


def _fingerprint(x: torch.Tensor, y: torch.Tensor) -> str:
    h = hashlib.sha256()
    h.update(str(tuple(x.shape)).encode())
    h.update(y.to(torch.int64).cpu().numpy().tobytes())
    h.update(repr(float(x.double().sum())).encode())
    return h.hexdigest()


def _prepare_data(config: FinetuneConfig, device: torch.device, display: TrainingDisplay) -> _Setup:
    from hessaudit.inputs.checkpoints import load_checkpoint
    from hessaudit.inputs.data import load_data
    from hessaudit.inputs.models import build_model, input_config
    from hessaudit.inputs.preprocess import check_forward

    checkpoint = load_checkpoint(config.pretrained)
    probe = build_model(config.model, num_classes=config.num_classes, allow_hub=config.allow_hub)
    in_cfg = input_config(
        probe, input_size=config.input_size, mean=config.mean, std=config.std,
        interpolation=config.interpolation, crop_pct=config.crop_pct,
    )
    train = load_data(
        config.data,
        role="train",
        input_config=in_cfg,
        num_classes=config.num_classes,
        samples=config.samples,
        seed=config.seed,
    )
    # the input shape does not depend on the weights: the fresh model tells whether it fits
    check_forward(probe, train.x, data=config.data, model_spec=config.model, cfg=in_cfg)
    k = int(config.num_classes or train.num_classes)
    if k < 2:
        raise HessauditError(f"--data {config.data} has {k} class; fine-tuning needs 2 or more")
    summary = train.to_dict()
    x = train.x
    noisy = train.y.to(torch.int64)
    clean = None if train.clean_y is None else train.clean_y.to(torch.int64)
    injection = None
    if config.inject_noise is not None:
        injection = inject_noise(
            noisy, num_classes=k, spec=config.inject_noise, seed=int(config.noise_seed or 0)
        )
        clean = noisy if clean is None else clean
        noisy = injection.noisy_labels
    fingerprint = _fingerprint(x, noisy)

    n = int(noisy.shape[0])
    val_idx: list[int] = []
    train_idx = torch.arange(n)
    if config.val_fraction is not None:
        n_val = round(n * config.val_fraction)
        n_val = min(max(n_val, 1), n - 1)
        if n < 2:
            raise HessauditError(f"--val-fraction: --data {config.data} has only {n} example")
        perm = torch.randperm(n, generator=_generator(config.seed, "split"))
        val_t = torch.sort(perm[:n_val]).values
        train_idx = torch.sort(perm[n_val:]).values
        val_idx = [int(i) for i in val_t]
    val = None
    if val_idx:
        vi = torch.tensor(val_idx, dtype=torch.long)
        val_labels = clean[vi] if clean is not None else noisy[vi]
        val = _Split(x=x[vi].to(device), y=val_labels.to(device), clean=None)
    tr = _Split(
        x=x[train_idx].to(device),
        y=noisy[train_idx].to(device),
        clean=None if clean is None else clean[train_idx].to(device),
    )
    heldout = None
    heldout_summary = None
    if config.eval_data is not None:
        ev = load_data(config.eval_data, role="eval", input_config=in_cfg, num_classes=k)
        check_forward(probe, ev.x, data=config.eval_data, model_spec=config.model, cfg=in_cfg)
        heldout_summary = ev.to_dict()
        labels = ev.clean_y if ev.clean_y is not None else ev.y
        heldout = _Split(x=ev.x.to(device), y=labels.to(torch.int64).to(device), clean=None)
    del probe
    if clean is None and config.inject_noise is None:
        display.log("training labels are used as given (no clean labels known)")
    positions, source_size = _source_positions(config, train)
    train_source = None if positions is None else [positions[int(i)] for i in train_idx]
    return _Setup(
        config=config,
        device=device,
        num_classes=k,
        pretrained_record=checkpoint.record,
        pretrained_tensors=dict(checkpoint.tensors),
        train=tr,
        val=val,
        heldout=heldout,
        data_summary=summary,
        heldout_summary=heldout_summary,
        val_indices=val_idx,
        data_fingerprint=fingerprint,
        injection=injection,
        input_config=in_cfg,
        train_source_indices=train_source,
        source_size=source_size,
    )


def _source_positions(config: FinetuneConfig, loaded: Any) -> tuple[list[int] | None, int | None]:
    """Positions in ``config.data`` (all of it) of the examples loaded with ``--samples``, and
    the source's size, so that ``noise.json``'s labels can be applied by ``measure --labels``
    to ``--data`` as it loads it. Without ``--samples`` they are ``0..n-1``. With it, the
    subset is drawn again exactly as :func:`hessaudit.inputs.data.load_data` draws it and checked
    against the loaded labels; for an ImageFolder (whose subset is drawn among files, some of
    which may be unreadable) the positions are unknown: None."""
    from hessaudit.inputs.data import choose_subset, load_data

    n = len(loaded)
    if config.samples is None:
        return list(range(n)), n
    builtin = str(config.data).partition(":")[0] in ("digits", "digits-pretrain")
    if not builtin and Path(str(config.data)).expanduser().is_dir():
        return None, None
    full = load_data(config.data, role="train", num_classes=config.num_classes)
    chosen = choose_subset(len(full), config.samples, config.seed, full.source)
    if chosen is None or len(chosen) != n or not torch.equal(
        full.y[chosen].to(torch.int64).cpu(), loaded.y.to(torch.int64).cpu()
    ):
        return None, None
    return [int(i) for i in chosen], len(full)


def training_labels(setup: _Setup) -> dict[str, Any]:
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


def _check_resume_inputs(out: Path, setup: _Setup) -> None:
    try:
        document = json.loads((out / "config.json").read_text(encoding="utf-8"))
        resolved = document.get("resolved", {})
    except (OSError, json.JSONDecodeError):
        raise HessauditError(f"--resume: {out / 'config.json'} cannot be read") from None
    saved_sha = resolved.get("pretrained", {}).get("sha256")
    if saved_sha is not None and saved_sha != setup.pretrained_record.sha256:
        raise HessauditError(
            f"--pretrained {setup.config.pretrained} changed since the run in {out} started "
            "(SHA-256 differs); the run cannot be resumed"
        )
    saved_fp = resolved.get("data_fingerprint")
    if saved_fp is not None and saved_fp != setup.data_fingerprint:
        raise HessauditError(
            f"--data {setup.config.data} changed since the run in {out} started; "
            "the run cannot be resumed"
        )


# --------------------------------------------------------------------------- noise matrix


def _resolve_noise_matrix(
    setup: _Setup,
    display: TrainingDisplay,
    saved: torch.Tensor | None,
    *,
    estimate: Callable[[_Setup, TrainingDisplay], tuple[np.ndarray, dict[str, Any]]],
) -> tuple[np.ndarray | None, str | None, dict[str, Any] | None]:
    """The noise matrix ``F`` the loss uses, its source label, and (when estimated now) the
    estimation record for ``noise.json``. ``estimate`` is the trainer's ``_estimate_F``
    (passed in because it trains models: the training loop lives in the trainer)."""
    config = setup.config
    spec = config.noise_matrix
    if spec is None:
        return None, None, None
    k = setup.num_classes
    if spec == "injected":
        assert setup.injection is not None  # config.resolved() checks
        F = validate_noise_matrix(
            setup.injection.noise_matrix,
            num_classes=k,
            source=f"--noise-matrix injected ({setup.injection.spec})",
        )
        return F, f"injected ({setup.injection.spec})", None
    if spec == "estimate":
        if saved is not None:  # resuming: the estimate is part of the run's state
            return saved.numpy().astype(np.float64), f"estimate ({config.estimate_method})", None
        F, info = estimate(setup, display)
        return F, f"estimate ({config.estimate_method})", info
    return load_noise_matrix(spec, num_classes=k), spec, None


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
