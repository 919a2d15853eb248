"""The data side of a fine-tuning run: what it trains and evaluates on.

:func:`prepare_data` loads ``config.pretrained`` and ``config.data``, injects the noise
(``--inject-noise``), draws the validation split (``--val-fraction``) and loads
``--eval-data``, into a :class:`~hessaudit.robust.types.DataSetup` on the run's device. Its
seeded steps are public on their own, so that another caller (``hessaudit tune``) builds
exactly the labels and the split a run trains on:

* :func:`inject_label_noise`: the labels trained on, ``noise_seed``'s draw of
  :func:`hessaudit.robust.noise.inject_noise` (the clean labels are then known);
* :func:`split_validation`: ``round(n * val_fraction)`` examples (at least 1, at most
  ``n - 1``), drawn with the generator of ``derive_seed(seed, "split")``; the rest train;
* :func:`label_split`: both, for a loaded dataset (a
  :class:`~hessaudit.robust.types.LabelSplit`).

:func:`_source_positions` maps the training examples back to their positions in ``--data``
(for ``noise.json``'s ``training_labels``, :func:`hessaudit.robust.records.training_labels`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hessaudit.errors import HessauditError
from hessaudit.robust._seeds import _generator
from hessaudit.robust.config import FinetuneConfig
from hessaudit.robust.noise import NoiseInjection, inject_noise
from hessaudit.robust.types import DataSetup, LabelSplit, Split

if TYPE_CHECKING:
    from hessaudit.inputs.data import Dataset

__all__ = [
    "inject_label_noise",
    "label_split",
    "prepare_data",
    "split_validation",
]


def prepare_data(
    config: FinetuneConfig,
    device: torch.device,
    *,
    log: Callable[[str], None] | None = None,
) -> DataSetup:
    """Load and split what a run with ``config`` (resolved: :meth:`FinetuneConfig.resolved`)
    trains and evaluates on, on ``device``.

    In this order: the ``--pretrained`` checkpoint; a fresh ``--model`` (the probe: its input
    config, and a forward pass on the data to check the shapes); ``--data`` (``--samples``
    drawn with ``seed``); the class count ``k`` (``--num-classes``, else the data's; >= 2);
    :func:`label_split`; ``--eval-data``. ``log`` receives the one progress message (training
    labels used as given).

    Building the probe draws from the global torch RNG: :func:`run_finetune` calls this
    inside its seeded ``fork_rng``; call it inside one too when the global state matters.

    Raises:
        HessauditError: a bad input, naming the flag or file at fault.
    """
    from hessaudit.inputs.checkpoints import load_checkpoint

    checkpoint = load_checkpoint(config.pretrained)
    probe, in_cfg, train, text = _load_training_data(config)
    k = int(config.num_classes or train.num_classes)
    if k < 2:
        raise HessauditError(f"--data {config.data} has {k} class; fine-tuning needs 2 or more")
    summary = train.to_dict()
    labels = label_split(config, train, k)
    fingerprint = _fingerprint(train.x, labels.noisy)
    tr, val = _device_splits(train.x, labels, device)
    heldout, heldout_summary = _load_heldout(config, probe, in_cfg, k, device, text)
    del probe
    if labels.clean is None and config.inject_noise is None and log is not None:
        log("training labels are used as given (no clean labels known)")
    positions, source_size = _source_positions(config, train, text)
    train_source = (
        None if positions is None else [positions[int(i)] for i in labels.train_indices]
    )
    return DataSetup(
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
        data_fingerprint=fingerprint,
        input_config=in_cfg,
        labels=labels,
        train_source_indices=train_source,
        source_size=source_size,
    )


def label_split(config: FinetuneConfig, loaded: Dataset, num_classes: int) -> LabelSplit:
    """The labels a run trains on and its validation split, for ``loaded`` (``--data`` as
    :func:`hessaudit.inputs.data.load_data` loaded it, after ``--samples``): first
    :func:`inject_label_noise`, then :func:`split_validation`. On the CPU."""
    noisy, clean, injection = inject_label_noise(config, loaded.y, loaded.clean_y, num_classes)
    val_indices, train_indices = split_validation(config, int(noisy.shape[0]))
    return LabelSplit(
        noisy=noisy, clean=clean, injection=injection,
        train_indices=train_indices, val_indices=val_indices,
    )


def inject_label_noise(
    config: FinetuneConfig,
    labels: torch.Tensor,
    clean_labels: torch.Tensor | None,
    num_classes: int,
) -> tuple[torch.Tensor, torch.Tensor | None, NoiseInjection | None]:
    """``(noisy, clean, injection)``: the labels trained on, the clean labels (None when
    unknown) and the injected noise (None without ``--inject-noise``), as int64.

    With ``config.inject_noise``, ``labels`` are the clean labels (unless the source gave
    ``clean_labels`` of its own) and the trained-on labels are
    ``inject_noise(labels, spec=config.inject_noise, seed=config.noise_seed)``."""
    noisy = labels.to(torch.int64)
    clean = None if clean_labels is None else clean_labels.to(torch.int64)
    injection = None
    if config.inject_noise is not None:
        injection = inject_noise(
            noisy, num_classes=num_classes, spec=config.inject_noise,
            seed=int(config.noise_seed or 0),
        )
        clean = noisy if clean is None else clean
        noisy = injection.noisy_labels
    return noisy, clean, injection


def split_validation(config: FinetuneConfig, n: int) -> tuple[list[int], torch.Tensor]:
    """``(val_indices, train_indices)`` among ``n`` examples, both sorted.

    Without ``--val-fraction``: no validation split, every example trains. With it:
    ``n_val = min(max(round(n * val_fraction), 1), n - 1)`` examples, the first ``n_val`` of a
    permutation drawn with the generator of ``derive_seed(seed, "split")``."""
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
    return val_idx, train_idx


def _load_training_data(config: FinetuneConfig) -> tuple[Any, Any, Dataset, Any]:
    """The probe model, its input config, ``--data`` loaded with it (shapes checked), and the
    tokenizer and text options of text data (:func:`hessaudit.inputs.text_model.text_source`;
    None for other data)."""
    from hessaudit.inputs.data import load_data
    from hessaudit.inputs.models import build_model, input_config
    from hessaudit.inputs.preprocess import check_forward
    from hessaudit.inputs.text_model import text_source
    from hessaudit.robust.text_recipe import text_options

    probe = build_model(config.model, num_classes=config.num_classes, allow_hub=config.allow_hub)
    in_cfg = input_config(
        probe, input_size=config.input_size, mean=config.mean, std=config.std,
        interpolation=config.interpolation, crop_pct=config.crop_pct,
    )
    text = text_source(text_options(config), probe, (config.data, config.eval_data),
                       model_spec=config.model)
    train = load_data(
        config.data,
        role="train",
        input_config=in_cfg,
        num_classes=config.num_classes,
        samples=config.samples,
        seed=config.seed,
        text_source=text,
    )
    # the input shape does not depend on the weights: the fresh model tells whether it fits
    check_forward(probe, train.x, data=config.data, model_spec=config.model, cfg=in_cfg)
    return probe, in_cfg, train, text


def _device_splits(
    x: torch.Tensor, labels: LabelSplit, device: torch.device
) -> tuple[Split, Split | None]:
    """The training split (noisy labels, clean ones alongside) and the validation split
    (evaluated against the clean labels when known), on ``device``."""
    noisy, clean = labels.noisy, labels.clean
    val = None
    if labels.val_indices:
        vi = torch.tensor(labels.val_indices, dtype=torch.long)
        val_labels = clean[vi] if clean is not None else noisy[vi]
        val = Split(x=x[vi].to(device), y=val_labels.to(device), clean=None)
    idx = labels.train_indices
    train = Split(
        x=x[idx].to(device),
        y=noisy[idx].to(device),
        clean=None if clean is None else clean[idx].to(device),
    )
    return train, val


def _load_heldout(
    config: FinetuneConfig, probe: Any, in_cfg: Any, num_classes: int, device: torch.device,
    text: Any = None,
) -> tuple[Split | None, dict[str, Any] | None]:
    """``--eval-data`` (evaluated against its clean labels when known) and its summary."""
    from hessaudit.inputs.data import load_data
    from hessaudit.inputs.preprocess import check_forward

    if config.eval_data is None:
        return None, None
    ev = load_data(config.eval_data, role="eval", input_config=in_cfg, num_classes=num_classes,
                   text_source=text)
    check_forward(probe, ev.x, data=config.eval_data, model_spec=config.model, cfg=in_cfg)
    labels = ev.clean_y if ev.clean_y is not None else ev.y
    heldout = Split(x=ev.x.to(device), y=labels.to(torch.int64).to(device), clean=None)
    return heldout, ev.to_dict()


def _fingerprint(x: torch.Tensor, y: torch.Tensor) -> str:
    h = hashlib.sha256()
    h.update(str(tuple(x.shape)).encode())
    h.update(y.to(torch.int64).cpu().numpy().tobytes())
    h.update(repr(float(x.double().sum())).encode())
    return h.hexdigest()


def _source_positions(
    config: FinetuneConfig, loaded: Any, text: Any = None
) -> tuple[list[int] | None, int | None]:
    """Positions in ``config.data`` (all of it) of the examples loaded with ``--samples``, and
    the source's size, so that ``noise.json``'s labels can be applied by ``measure --labels``
    to ``--data`` as it loads it. Without ``--samples`` they are ``0..n-1``. With it, the
    subset is drawn again exactly as :func:`hessaudit.inputs.data.load_data` draws it and checked
    against the loaded labels; for an ImageFolder (whose subset is drawn among files, some of
    which may be unreadable) the positions are unknown: None."""
    n = len(loaded)
    if config.samples is None:
        return list(range(n)), n
    from hessaudit.inputs.data import choose_subset, load_data

    builtin = str(config.data).partition(":")[0] in ("digits", "digits-pretrain")
    if not builtin and Path(str(config.data)).expanduser().is_dir():
        return None, None
    full = load_data(config.data, role="train", num_classes=config.num_classes,
                     text_source=text)
    chosen = choose_subset(len(full), config.samples, config.seed, full.source)
    if chosen is None or len(chosen) != n or not torch.equal(
        full.y[chosen].to(torch.int64).cpu(), loaded.y.to(torch.int64).cpu()
    ):
        return None, None
    return [int(i) for i in chosen], len(full)
