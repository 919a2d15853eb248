"""Robust fine-tuning under label noise: the paper's Algorithm 1 and its baselines.

:func:`run_finetune` takes a :class:`~hessaudit.robust.config.FinetuneConfig` and writes a run
folder (``config.out``):

* ``config.json``: every resolved option, plus what the run found (class count, which tensors
  came from the pretrained checkpoint and which are new, per-tensor radii, data sizes, seeds);
* ``metrics.csv``: one row per epoch (row 0 evaluates the starting point): training loss and
  accuracy on the (noisy) training labels, validation and held-out loss and accuracy on clean
  labels where known, the largest per-layer distance and distance / radius;
* ``final.safetensors`` (the last epoch's weights) and ``best.safetensors`` (the epoch with the
  best validation accuracy; the final weights when there is no validation split), with
  metadata: config, pretrained SHA-256, noise matrix, seed, tool version, new tensors;
* ``noise.json`` when noise was injected or ``F`` estimated (see :func:`noise_document`);
* ``last.safetensors`` + ``state.pt``: the per-epoch checkpoint that ``resume=True`` continues
  from (model, optimizer, scheduler, RNG and early-stopping state; ``state.pt`` is written with
  ``torch.save`` and read with ``weights_only=True``; it holds the weights too, so one atomic
  file is the single source of truth);
* ``audit.json`` with ``config.audit``: the Hessian measure of the final checkpoint against the
  pretrained one (``hessaudit.audit/1``). The audit reads ``config.data`` with the source's own
  labels (the clean ones when the noise was injected by hessaudit) and n = the training-set
  size.

Model setup: the model is built with ``k`` classes (``num_classes``, default the data's), every
pretrained tensor whose name and shape match is loaded, and the tensors that don't (the new
head) are initialized from the seed with hessaudit's own ``torch.Generator`` (Kaiming-uniform
weights, as ``nn.Linear``/``nn.Conv`` do; uniform biases; unit/zero normalization). Training
runs in train mode (BatchNorm statistics update, as in standard fine-tuning), evaluation in eval
mode.

Reproducibility: shuffling, initialization, the validation split and the noise estimation draw
from generators seeded from ``seed`` (the noise injection from ``noise_seed``, default
``seed``). The global torch RNG (used by dropout) is seeded too, inside ``fork_rng``, so the
caller's global state is left untouched. ``resume`` restores all of it, so an interrupted run
resumed on the CPU reaches bit-identical final weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hessaudit import distributed as _dist
from hessaudit._version import __version__
from hessaudit.devices import resolve_device
from hessaudit.errors import HessauditError
from hessaudit.robust.config import RESUMABLE_FIELDS, FinetuneConfig, parse_penalty
from hessaudit.robust.losses import l2sp_penalty, make_loss
from hessaudit.robust.noise import NoiseInjection, inject_noise
from hessaudit.robust.noise_matrix import (
    estimate_noise_matrix,
    load_noise_matrix,
    validate_noise_matrix,
)
from hessaudit.robust.projection import (
    constrainable_names,
    distances,
    layer_radii,
    load_radius_table,
    project_to_balls_,
)

__all__ = [
    "METRIC_COLUMNS",
    "OUTPUT_NAMES",
    "FinetuneResult",
    "TrainingDisplay",
    "derive_seed",
    "load_run_config",
    "resume_config",
    "run_finetune",
]

SCHEMA = "hessaudit.finetune/1"
NOISE_SCHEMA = "hessaudit.noise/1"
STATE_FORMAT = "hessaudit.finetune-state/1"
#: Files a run writes; ``overwrite=True`` removes exactly these (never anything else).
OUTPUT_NAMES = (
    "config.json",
    "metrics.csv",
    "noise.json",
    "final.safetensors",
    "best.safetensors",
    "last.safetensors",
    "state.pt",
    "audit.json",
)
METRIC_COLUMNS = (
    "epoch",
    "lr",
    "train_loss",
    "train_penalty",
    "train_acc",
    "train_acc_clean",
    "val_loss",
    "val_acc",
    "heldout_loss",
    "heldout_acc",
    "max_distance",
    "max_distance_layer",
    "head_distance",
    "max_radius_ratio",
    "seconds",
)
_NAN = float("nan")


# --------------------------------------------------------------------------- display protocol


class TrainingDisplay:
    """What :func:`run_finetune` reports while it runs. This base class ignores everything;
    ``hessaudit.report.training`` has the rich live display and the plain-log one."""

    def start(self, info: Mapping[str, Any]) -> None:
        """The run is set up (``info``: sizes, classes, loss, constraint, noise...)."""

    def log(self, message: str) -> None:
        """A progress message."""

    def warn(self, message: str) -> None:
        """Something the user should know."""

    def start_phase(self, name: str, *, epochs: int, first_epoch: int, steps: int) -> None:
        """A training phase begins: ``name`` is ``"fine-tune"`` or ``"estimate F (fold i/2)"``;
        epochs ``first_epoch..epochs`` remain, ``steps`` optimizer steps each."""

    def start_epoch(self, epoch: int) -> None:
        """An epoch begins."""

    def step(self, step: int, *, loss: float, acc: float) -> None:
        """Optimizer step ``step`` (1-based) of the epoch is done: running mean loss and
        accuracy on the training labels so far."""

    def end_epoch(self, row: Mapping[str, Any]) -> None:
        """An epoch is done and saved; ``row`` is its ``metrics.csv`` row."""

    def end_phase(self) -> None:
        """The phase is over."""

    def finish(self, result: FinetuneResult) -> None:
        """The run is over; show the summary."""


# --------------------------------------------------------------------------- result


@dataclass(frozen=True)
class FinetuneResult:
    """What a run produced. ``metrics`` are the ``metrics.csv`` rows."""

    config: FinetuneConfig
    out: Path
    files: dict[str, str]
    metrics: list[dict[str, Any]]
    num_classes: int
    epochs_run: int
    best_epoch: int | None
    best_val_acc: float | None
    stopped_early: bool
    resumed_from: int | None
    new_tensors: list[str]
    unused_pretrained: list[str]
    noise_matrix: np.ndarray | None
    noise_matrix_source: str | None
    noise: NoiseInjection | None
    audit: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> dict[str, Any]:
        return self.metrics[-1] if self.metrics else {}

    @property
    def initial(self) -> dict[str, Any]:
        return self.metrics[0] if self.metrics else {}

    def metrics_frame(self):
        """The metrics as a pandas DataFrame (columns :data:`METRIC_COLUMNS`)."""
        import pandas as pd

        return pd.DataFrame(self.metrics, columns=list(METRIC_COLUMNS))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "config": self.config.to_dict(),
            "out": str(self.out),
            "files": dict(self.files),
            "num_classes": self.num_classes,
            "epochs_run": self.epochs_run,
            "best_epoch": self.best_epoch,
            "best_val_acc": self.best_val_acc,
            "stopped_early": self.stopped_early,
            "resumed_from": self.resumed_from,
            "new_tensors": list(self.new_tensors),
            "unused_pretrained": list(self.unused_pretrained),
            "noise_matrix": None if self.noise_matrix is None else self.noise_matrix.tolist(),
            "noise_matrix_source": self.noise_matrix_source,
            "noise": None if self.noise is None else self.noise.to_dict(),
            "metrics": [_jsonable_row(r) for r in self.metrics],
        }


# --------------------------------------------------------------------------- small helpers


def derive_seed(seed: int, purpose: str) -> int:
    """A seed for one purpose (``"shuffle"``, ``"init"``...), derived from the run's seed."""
    digest = hashlib.sha256(f"hessaudit:{int(seed)}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _generator(seed: int, purpose: str) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(derive_seed(seed, purpose))


def _jsonable_row(row: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, float) and not math.isfinite(value):
            out[key] = None
        else:
            out[key] = value
    return out


def _write_json(path: Path, document: Mapping[str, Any]) -> None:
    from hessaudit._atomic import write_text

    if not _dist.is_main():  # torchrun: only rank 0 writes
        return
    write_text(path, json.dumps(document, indent=2, allow_nan=False) + "\n")


def _batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Mini-batch slices; a last batch of one example joins the previous one (BatchNorm in
    train mode cannot normalize a single example)."""
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2] = (bounds[-2][0], n)
        bounds.pop()
    return bounds


# --------------------------------------------------------------------------- run folder


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _check_out(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse a run folder we may not write to, before any work (and any deletion)."""
    if out.exists() and not out.is_dir():
        raise HessauditError(f"--out {out} is a file, not a folder")
    if resume:
        if not (out / "config.json").is_file():
            raise HessauditError(
                f"--resume {out}: no run to resume there (config.json is missing)",
                hint="start a new run with --out",
            )
        return
    if out.is_dir() and not _is_empty_dir(out) and not overwrite:
        raise HessauditError(
            f"--out {out} already holds files",
            hint=f"pass --resume {out} to continue that run, --overwrite to replace its "
            "outputs, or choose another --out",
        )


def _prepare_out(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Create the run folder; with ``overwrite``, delete the previous run's outputs (only the
    files in :data:`OUTPUT_NAMES`). Called once the run is set up, so that a bad option never
    costs the user a previous run."""
    if not _dist.is_main():
        return
    if not resume and overwrite and out.is_dir():
        for name in OUTPUT_NAMES:
            with contextlib.suppress(FileNotFoundError):
                (out / name).unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HessauditError(f"--out {out}: cannot create the folder ({exc.strerror})") from None


def load_run_config(out: str | Path) -> FinetuneConfig:
    """The :class:`FinetuneConfig` saved in ``out/config.json``."""
    path = Path(out) / "config.json"
    if not path.is_file():
        raise HessauditError(f"--resume {out}: no run to resume there (config.json is missing)")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        saved = document["config"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise HessauditError(f"{path} is not a hessaudit finetune config") from None
    return FinetuneConfig.from_dict(saved, source=str(path))


def resume_config(out: str | Path, overrides: Mapping[str, Any] | None = None) -> FinetuneConfig:
    """The saved config of the run in ``out``, with ``overrides`` applied.

    Only the options in :data:`~hessaudit.robust.config.RESUMABLE_FIELDS` (``epochs``,
    ``early_stop``, ``device``, ``audit``, ``audit_samples``) may differ from the saved ones;
    any other override must equal the saved value.
    """
    saved = load_run_config(out)
    changes: dict[str, Any] = {}
    for name, value in (overrides or {}).items():
        if name == "out":
            if Path(value).resolve() != Path(out).resolve():
                raise HessauditError(f"--out {value} differs from --resume {out}")
            continue
        if not hasattr(saved, name):
            raise HessauditError(f"unknown option {name!r}")
        if name in RESUMABLE_FIELDS:
            changes[name] = value
        elif _differs(getattr(saved, name), value, name, saved):
            raise HessauditError(
                f"--{name.replace('_', '-')} {value} differs from the run being resumed "
                f"({getattr(saved, name)!r})",
                hint=f"only {', '.join('--' + f.replace('_', '-') for f in RESUMABLE_FIELDS)} "
                "may change on --resume",
            )
    return dataclasses.replace(saved, **changes, out=str(out))


def _differs(saved_value: Any, value: Any, name: str, saved: FinetuneConfig) -> bool:
    if saved_value == value:
        return False
    # options whose resolved value is saved: the unresolved default is no change
    if value is None and name in ("constraint", "noise_seed"):
        return False
    resolved = dataclasses.replace(saved, **{name: value})
    try:
        return getattr(resolved.resolved(), name) != getattr(saved.resolved(), name)
    except HessauditError:
        return True


# --------------------------------------------------------------------------- model setup


def _init_new_parameters_(model: nn.Module, names: list[str], generator: torch.Generator) -> None:
    """Seeded re-initialization of the tensors that did not come from the checkpoint, with the
    schemes torch's own layers use (Kaiming-uniform with a = sqrt(5) for weights, uniform
    +-1/sqrt(fan_in) for biases, ones/zeros for normalization)."""
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    norm_types = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
    with torch.no_grad():
        for name in names:
            if name not in params:
                continue
            p = params[name]
            module_name, _, attr = name.rpartition(".")
            module = modules.get(module_name)
            if p.ndim >= 2:
                nn.init.kaiming_uniform_(p, a=math.sqrt(5), generator=generator)
            elif isinstance(module, norm_types):
                if attr == "weight":
                    p.fill_(1.0)
                else:
                    p.zero_()
            else:
                weight = getattr(module, "weight", None)
                if isinstance(weight, torch.Tensor) and weight.ndim >= 2:
                    fan_in = weight[0].numel()
                else:
                    fan_in = max(p.numel(), 1)
                bound = 1.0 / math.sqrt(fan_in)
                nn.init.uniform_(p, -bound, bound, generator=generator)


@dataclass
class _ModelBuild:
    model: nn.Module
    loaded: list[str]
    new: list[str]
    unused: list[str]


def _build_model(
    config: FinetuneConfig,
    num_classes: int,
    pretrained: Mapping[str, torch.Tensor],
    *,
    device: torch.device,
    init_seed: int,
) -> _ModelBuild:
    from hessaudit.models import build_model

    model = build_model(config.model, num_classes=num_classes, allow_hub=config.allow_hub)
    state = model.state_dict()
    matched = {
        name: t
        for name, t in pretrained.items()
        if name in state and tuple(state[name].shape) == tuple(t.shape)
    }
    param_names = [n for n, _ in model.named_parameters()]
    if not any(n in matched for n in param_names):
        raise HessauditError(
            f"--pretrained {config.pretrained}: none of its tensors matches the model "
            f"{config.model} by name and shape",
            hint="is it a checkpoint of this architecture?",
        )
    model.load_state_dict(matched, strict=False)
    new = [n for n in state if n not in matched and not n.endswith("num_batches_tracked")]
    unused = [n for n in pretrained if n not in matched]
    gen = torch.Generator(device="cpu").manual_seed(init_seed)
    _init_new_parameters_(model, new, gen)
    return _ModelBuild(model=model.to(device), loaded=list(matched), new=new, unused=unused)


def _make_optimizer(config: FinetuneConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def _make_scheduler(
    config: FinetuneConfig, optimizer: torch.optim.Optimizer, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=config.lr_step, gamma=config.lr_decay
        )
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    return None


# --------------------------------------------------------------------------- training steps


@dataclass
class _Split:
    x: torch.Tensor
    y: torch.Tensor  # labels trained on / evaluated against
    clean: torch.Tensor | None  # clean labels when known (training split only)

    def __len__(self) -> int:
        return int(self.y.shape[0])


def _train_epoch(
    model: nn.Module,
    data: _Split,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    generator: torch.Generator,
    penalty: Callable[[], torch.Tensor] | None,
    after_step: Callable[[], None] | None,
    display: TrainingDisplay,
    epoch: int,
) -> dict[str, float]:
    model.train()
    n = len(data)
    perm = torch.randperm(n, generator=generator)
    loss_sum = penalty_sum = 0.0
    correct = correct_clean = seen = 0
    device = data.x.device
    # DistributedDataParallel: this rank's slice of each global batch (see distributed.py).
    ctx = _dist.current() if isinstance(model, _dist.DDP) else _dist.SINGLE
    for step, (start, stop) in enumerate(_batch_bounds(n, batch_size), start=1):
        idx, weight = _dist.batch_slice(perm[start:stop].to(device), ctx)
        xb, yb = data.x[idx], data.y[idx]
        optimizer.zero_grad(set_to_none=True)
        logits = model(xb)
        loss = loss_fn(logits, yb)
        total = loss
        pen_value = 0.0
        if penalty is not None:
            pen = penalty()
            total = loss + pen
            pen_value = float(pen.detach())
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value) or not math.isfinite(pen_value):
            raise HessauditError(
                f"training diverged at epoch {epoch}, step {step}: the loss is {loss_value}",
                hint="lower --lr, tighten --radius, or check the noise matrix",
            )
        (total if weight is None else loss * weight + (total - loss)).backward()
        optimizer.step()
        if after_step is not None:
            after_step()
        b = len(idx) if weight is None or weight > 0 else 0
        seen += b
        loss_sum += loss_value * b
        penalty_sum += pen_value * b
        with torch.no_grad():
            pred = logits.argmax(dim=1)
            correct += int((pred == yb).sum())
            if data.clean is not None:
                correct_clean += int((pred == data.clean[idx]).sum())
        display.step(step, loss=loss_sum / max(seen, 1), acc=correct / max(seen, 1))
    if ctx.enabled:
        sums = torch.tensor([loss_sum, penalty_sum, correct, correct_clean, seen],
                            dtype=torch.float64)
        loss_sum, penalty_sum, correct, correct_clean, seen = ctx.sum(sums).tolist()
    return {
        "train_loss": loss_sum / seen,
        "train_penalty": penalty_sum / seen if penalty is not None else _NAN,
        "train_acc": correct / seen,
        "train_acc_clean": correct_clean / seen if data.clean is not None else _NAN,
    }


@torch.no_grad()
def _evaluate(model: nn.Module, data: _Split | None, batch_size: int) -> tuple[float, float]:
    """Cross-entropy and accuracy in eval mode, against ``data.y`` (clean labels)."""
    if data is None or len(data) == 0:
        return _NAN, _NAN
    model.eval()
    loss_sum = 0.0
    correct = 0
    for start in range(0, len(data), batch_size):
        xb = data.x[start : start + batch_size]
        yb = data.y[start : start + batch_size]
        logits = model(xb)
        loss_sum += float(
            torch.nn.functional.cross_entropy(logits.float(), yb, reduction="sum")
        )
        correct += int((logits.argmax(dim=1) == yb).sum())
    return loss_sum / len(data), correct / len(data)


@torch.no_grad()
def _predict_proba(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    model.eval()
    out = [
        torch.softmax(model(x[s : s + batch_size]).double(), dim=1).cpu()
        for s in range(0, x.shape[0], batch_size)
    ]
    return torch.cat(out)


# --------------------------------------------------------------------------- the run


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


def _fingerprint(x: torch.Tensor, y: torch.Tensor) -> str:
    h = hashlib.sha256()
    h.update(str(tuple(x.shape)).encode())
    h.update(y.to(torch.int64).cpu().numpy().tobytes())
    h.update(repr(float(x.double().sum())).encode())
    return h.hexdigest()


def _prepare_data(config: FinetuneConfig, device: torch.device, display: TrainingDisplay) -> _Setup:
    from hessaudit.checkpoints import load_checkpoint
    from hessaudit.data import load_data
    from hessaudit.models import build_model, input_config

    checkpoint = load_checkpoint(config.pretrained)
    probe = build_model(config.model, num_classes=config.num_classes, allow_hub=config.allow_hub)
    in_cfg = input_config(probe, input_size=config.input_size)
    del probe
    train = load_data(
        config.data,
        role="train",
        input_config=in_cfg,
        num_classes=config.num_classes,
        samples=config.samples,
        seed=config.seed,
    )
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
        heldout_summary = ev.to_dict()
        labels = ev.clean_y if ev.clean_y is not None else ev.y
        heldout = _Split(x=ev.x.to(device), y=labels.to(torch.int64).to(device), clean=None)
    if clean is None and config.inject_noise is None:
        display.log("training labels are used as given (no clean labels known)")
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
    )


def _estimate_F(setup: _Setup, display: TrainingDisplay) -> tuple[np.ndarray, dict[str, Any]]:
    """Fit first models on the noisy training labels (two-fold cross-fitting: each half is
    predicted by a model trained on the other half, so the probabilities are out-of-sample),
    then estimate ``F`` from their predictions."""
    config = setup.config
    epochs = config.estimate_epochs or config.epochs
    data = setup.train
    n = len(data)
    if n < 4:
        raise HessauditError("--noise-matrix estimate needs at least 4 training examples")
    perm = torch.randperm(n, generator=_generator(config.seed, "estimate-split"))
    folds = [torch.sort(perm[: n // 2]).values, torch.sort(perm[n // 2 :]).values]
    probs = torch.zeros(n, setup.num_classes, dtype=torch.float64)
    ce = make_loss("ce")
    for f, (fit, held) in enumerate(((folds[0], folds[1]), (folds[1], folds[0])), start=1):
        build = _build_model(
            config,
            setup.num_classes,
            setup.pretrained_tensors,
            device=setup.device,
            init_seed=derive_seed(config.seed, f"estimate-init-{f}"),
        )
        model = build.model
        optimizer = _make_optimizer(config, model)
        scheduler = _make_scheduler(config, optimizer, epochs)
        fit_dev = fit.to(setup.device)
        part = _Split(x=data.x[fit_dev], y=data.y[fit_dev], clean=None)
        gen = _generator(config.seed, f"estimate-shuffle-{f}")
        display.start_phase(
            f"estimate F (fold {f}/2)",
            epochs=epochs,
            first_epoch=1,
            steps=len(_batch_bounds(len(part), config.batch_size)),
        )
        for epoch in range(1, epochs + 1):
            display.start_epoch(epoch)
            stats = _train_epoch(
                model,
                part,
                loss_fn=ce,
                optimizer=optimizer,
                batch_size=config.batch_size,
                generator=gen,
                penalty=None,
                after_step=None,
                display=display,
                epoch=epoch,
            )
            if scheduler is not None:
                scheduler.step()
            display.end_epoch({"epoch": epoch, **stats})
        display.end_phase()
        held_dev = held.to(setup.device)
        probs[held] = _predict_proba(model, data.x[held_dev], config.batch_size)
    noisy = data.y.cpu()
    F_hat = estimate_noise_matrix(
        probs.numpy(), noisy.numpy(), method=config.estimate_method,
        num_classes=setup.num_classes,
    )
    info: dict[str, Any] = {
        "method": config.estimate_method,
        "epochs": epochs,
        "folds": 2,
        "noise_matrix": F_hat.tolist(),
        "first_model_accuracy_on_noisy_labels": float(
            (probs.argmax(dim=1) == noisy).double().mean()
        ),
    }
    if setup.injection is not None:
        info["frobenius_error_vs_injected"] = float(
            np.linalg.norm(F_hat - setup.injection.noise_matrix)
        )
    F = validate_noise_matrix(
        F_hat, num_classes=setup.num_classes, source="--noise-matrix estimate"
    )
    return F, info


def _resolve_noise_matrix(
    setup: _Setup, display: TrainingDisplay, saved: torch.Tensor | None
) -> tuple[np.ndarray | None, str | None, dict[str, Any] | None]:
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
        F, info = _estimate_F(setup, display)
        return F, f"estimate ({config.estimate_method})", info
    return load_noise_matrix(spec, num_classes=k), spec, None


def noise_document(
    injection: NoiseInjection | None,
    noise_matrix: np.ndarray | None,
    source: str | None,
    estimated: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The ``noise.json`` document. ``noise_matrix`` is the ``F`` the loss used (so the file
    can be passed back as ``--noise-matrix noise.json``); ``injected.flipped_indices`` are
    positions in the loaded training data, before the validation split."""
    return {
        "schema": NOISE_SCHEMA,
        "convention": "F[true, noisy] = P(noisy label | true label), rows sum to 1; "
        "cleanlab's noise_matrix is the transpose",
        "noise_matrix": None if noise_matrix is None else noise_matrix.tolist(),
        "noise_matrix_source": source,
        "injected": None if injection is None else injection.to_dict(),
        "estimated": None if estimated is None else dict(estimated),
    }


def _save_state(path: Path, state: Mapping[str, Any]) -> None:
    from hessaudit._atomic import atomic_path

    if not _dist.is_main():
        return
    with atomic_path(path) as tmp:
        torch.save(dict(state), tmp)


def _load_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise HessauditError(
            f"--resume: {path} cannot be read ({type(exc).__name__}); the run cannot continue",
            hint="start again with --overwrite",
        ) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise HessauditError(f"--resume: {path} is not a hessaudit finetune state")
    return state


def _metadata(
    config: FinetuneConfig,
    setup: _Setup,
    *,
    epoch: int,
    F: np.ndarray | None,
    F_source: str | None,
    new: list[str],
    kind: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    meta = {
        "format": SCHEMA,
        "kind": kind,
        "tool_version": __version__,
        "epoch": epoch,
        "seed": config.seed,
        "config": config.to_dict(),
        "pretrained_sha256": setup.pretrained_record.sha256,
        "num_classes": setup.num_classes,
        "noise_matrix": None if F is None else F.tolist(),
        "noise_matrix_source": F_source,
        "new_tensors": list(new),
    }
    meta.update(extra or {})
    return meta


def _model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}


@contextlib.contextmanager
def _seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(derive_seed(seed, "global"))
        yield


def run_finetune(
    config: FinetuneConfig,
    *,
    display: TrainingDisplay | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> FinetuneResult:
    """Fine-tune ``config.model`` from ``config.pretrained`` on ``config.data``; see the module
    docstring for what is written.

    ``resume=True`` continues the run in ``config.out`` from its last per-epoch checkpoint (see
    :func:`resume_config` to build the config); without ``resume`` or ``overwrite`` an
    existing non-empty ``config.out`` is an error. ``overwrite=True`` deletes only the files a
    run writes (:data:`OUTPUT_NAMES`).

    Raises:
        HessauditError: any bad option or input, naming the flag or file at fault.
    """
    display = display or TrainingDisplay()
    ctx = _dist.init(config.device)  # torchrun: join the job; rank 0 alone writes and reports
    if not ctx.is_main:
        display = TrainingDisplay()
    else:
        _check_out(Path(config.out), resume=resume, overwrite=overwrite)
    config = config.resolved()
    out = Path(config.out)
    if resume:
        saved = load_run_config(out)
        for f in dataclasses.fields(FinetuneConfig):
            if f.name in (*RESUMABLE_FIELDS, "out"):
                continue
            if _differs(getattr(saved, f.name), getattr(config, f.name), f.name, saved):
                raise HessauditError(
                    f"--{f.name.replace('_', '-')} differs from the run being resumed in {out}",
                    hint="use resume_config() / pass only --epochs, --early-stop, --device, "
                    "--audit with --resume",
                )
        if config.schedule == "cosine" and config.epochs != saved.epochs:
            raise HessauditError(
                f"--epochs {config.epochs}: a cosine schedule is planned for the run's "
                f"{saved.epochs} epochs and cannot be extended",
                hint="start a new run, or use --schedule step",
            )
    device = resolve_device(_dist.local_device(config.device, ctx))
    radius_table = load_radius_table(config.radius_table) if config.radius_table else None
    penalty_spec = parse_penalty(config.penalty)

    state: dict[str, Any] | None = None
    if resume and (out / "state.pt").is_file():
        state = _load_state(out / "state.pt")
        _check_can_continue(out, config, state)

    with _seeded_global_rng(config.seed, device):
        setup = _prepare_data(config, device, display)
        if resume:
            _check_resume_inputs(out, setup)
        saved_F = None if state is None else state.get("noise_matrix")
        F, F_source, estimated = _resolve_noise_matrix(setup, display, saved_F)
        loss_fn = make_loss(
            config.loss,
            noise_matrix=F,
            smoothing=config.smoothing,
            gce_q=config.gce_q,
            sce_alpha=config.sce_alpha,
            sce_beta=config.sce_beta,
        )
        if F is not None and config.loss not in ("reweight", "forward"):
            display.warn(f"--noise-matrix is recorded but not used by --loss {config.loss}")

        build = _build_model(
            config,
            setup.num_classes,
            setup.pretrained_tensors,
            device=device,
            init_seed=derive_seed(config.seed, "init"),
        )
        model = build.model
        params = dict(model.named_parameters())
        loaded_params = [n for n in build.loaded if n in params and params[n].requires_grad]
        new_params = [n for n in build.new if n in params and params[n].requires_grad]
        if len(loaded_params) < len(params) / 2:
            display.warn(
                f"only {len(loaded_params)} of {len(params)} parameter tensors came from "
                f"{config.pretrained}"
            )
        anchors = {
            n: setup.pretrained_tensors[n].to(device=device, dtype=params[n].dtype).clone()
            for n in loaded_params
        }
        layer_names = constrainable_names(model)
        new_layers = [n for n in layer_names if n in set(new_params)]
        radii: dict[str, float] = {}
        if config.constraint == "frobenius":
            radii = layer_radii(
                layer_names,
                radius=config.radius,
                growth=config.radius_growth,
                head_radius=config.head_radius,
                head_names=new_layers,
                table=radius_table,
                model_name=config.model,
            )

        def after_step() -> None:
            project_to_balls_(params, anchors, radii)

        penalty_fn = None
        if penalty_spec is not None:
            _, alpha, beta = penalty_spec

            def penalty_fn() -> torch.Tensor:
                return l2sp_penalty(params, anchors, alpha=alpha, beta=beta, new_names=new_params)

        optimizer = _make_optimizer(config, model)
        scheduler = _make_scheduler(config, optimizer, config.epochs)
        shuffle = _generator(config.seed, "shuffle")

        # ---- run folder: config.json and noise.json
        info = _run_info(setup, build, radii, layer_names, F_source, penalty_spec, device)
        _prepare_out(out, resume=resume, overwrite=overwrite)
        _write_json(out / "config.json", _config_document(out, config, info, state, resume))
        if state is None and (setup.injection is not None or estimated is not None):
            _write_json(
                out / "noise.json",
                noise_document(setup.injection, F, F_source, estimated),
            )
        display.start({**info, "config": config.to_dict(), "noise_matrix_source": F_source})

        # ---- restore or start
        metrics: list[dict[str, Any]] = []
        best_epoch: int | None = None
        best_val_acc: float | None = None
        bad_epochs = 0
        epoch = 0
        resumed_from: int | None = None
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None and state.get("scheduler"):
                scheduler.load_state_dict(state["scheduler"])
            shuffle.set_state(state["shuffle_rng"])
            torch.set_rng_state(state["global_rng"])
            if device.type == "cuda" and state.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(state["cuda_rng"], device)
            metrics = [dict(r) for r in state["metrics"]]
            best_epoch = state["best_epoch"]
            best_val_acc = state["best_val_acc"]
            bad_epochs = int(state["bad_epochs"])
            epoch = resumed_from = int(state["epoch"])
            display.log(f"resuming {out} after epoch {epoch}")
        else:
            metrics.append(_row(0, optimizer, {}, model, setup, anchors, radii, layer_names,
                                new_layers, seconds=0.0))
            _write_metrics(out, metrics)

        # ---- train
        steps = len(_batch_bounds(len(setup.train), config.batch_size))
        display.start_phase("fine-tune", epochs=config.epochs, first_epoch=epoch + 1, steps=steps)
        stopped_early = False
        train_model = _dist.ddp(model, device)
        while epoch < config.epochs:
            epoch += 1
            display.start_epoch(epoch)
            started = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            stats = _train_epoch(
                train_model,
                setup.train,
                loss_fn=loss_fn,
                optimizer=optimizer,
                batch_size=config.batch_size,
                generator=shuffle,
                penalty=penalty_fn,
                after_step=after_step if radii else None,
                display=display,
                epoch=epoch,
            )
            if scheduler is not None:
                scheduler.step()
            row = _row(epoch, optimizer, stats, model, setup, anchors, radii, layer_names,
                       new_layers, seconds=time.perf_counter() - started, lr=lr)
            metrics.append(row)
            if setup.val is not None:
                if best_val_acc is None or row["val_acc"] > best_val_acc:
                    best_val_acc = float(row["val_acc"])
                    best_epoch = epoch
                    bad_epochs = 0
                    _save_weights(
                        out / "best.safetensors", model, config, setup, epoch=epoch, F=F,
                        F_source=F_source, new=build.new, kind="best",
                        extra={"selected_by": "best validation accuracy", "val_acc": best_val_acc},
                    )
                else:
                    bad_epochs += 1
            stopped_early = config.early_stop is not None and bad_epochs >= config.early_stop
            finished = stopped_early or epoch >= config.epochs
            _write_metrics(out, metrics)
            _save_state(
                out / "state.pt",
                {
                    "format": STATE_FORMAT,
                    "epoch": epoch,
                    "finished": finished,
                    "stopped_early": stopped_early,
                    "model": _model_state(model),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": None if scheduler is None else scheduler.state_dict(),
                    "shuffle_rng": shuffle.get_state(),
                    "global_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda"
                    else None,
                    "metrics": [dict(r) for r in metrics],
                    "best_epoch": best_epoch,
                    "best_val_acc": best_val_acc,
                    "bad_epochs": bad_epochs,
                    "noise_matrix": None if F is None else torch.from_numpy(F.copy()),
                    "noise_matrix_source": F_source,
                },
            )
            _save_weights(
                out / "last.safetensors", model, config, setup, epoch=epoch, F=F,
                F_source=F_source, new=build.new, kind="last",
            )
            display.end_epoch(row)
            if stopped_early:
                display.log(
                    f"early stopping after epoch {epoch}: no better validation accuracy for "
                    f"{bad_epochs} epochs (best {best_val_acc:.4f} at epoch {best_epoch})"
                )
                break
        display.end_phase()

        # ---- final outputs
        _save_weights(
            out / "final.safetensors", model, config, setup, epoch=epoch, F=F,
            F_source=F_source, new=build.new, kind="final",
        )
        if setup.val is None:
            best_epoch = epoch
            _save_weights(
                out / "best.safetensors", model, config, setup, epoch=epoch, F=F,
                F_source=F_source, new=build.new, kind="best",
                extra={"selected_by": "final epoch (no validation split)"},
            )

    files = {
        name.split(".")[0]: str(out / name)
        for name in OUTPUT_NAMES
        if (out / name).is_file()
    }
    audit_doc = None
    if config.audit:
        audit_doc = _run_audit(config, setup, out, display)
        files["audit"] = str(out / "audit.json")
    result = FinetuneResult(
        config=config,
        out=out,
        files=files,
        metrics=metrics,
        num_classes=setup.num_classes,
        epochs_run=epoch,
        best_epoch=best_epoch,
        best_val_acc=best_val_acc,
        stopped_early=stopped_early,
        resumed_from=resumed_from,
        new_tensors=list(build.new),
        unused_pretrained=list(build.unused),
        noise_matrix=F,
        noise_matrix_source=F_source,
        noise=setup.injection,
        audit=audit_doc,
        info=info,
    )
    display.finish(result)
    return result


def _config_document(
    out: Path,
    config: FinetuneConfig,
    info: Mapping[str, Any],
    state: Mapping[str, Any] | None,
    resume: bool,
) -> dict[str, Any]:
    """``config.json``; on resume the (possibly extended) config replaces the saved one and
    the resume is appended to ``resumes``."""
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    created, resumes = now, []
    if resume:
        with contextlib.suppress(OSError, json.JSONDecodeError, AttributeError):
            previous = json.loads((out / "config.json").read_text(encoding="utf-8"))
            created = previous.get("created", now)
            resumes = list(previous.get("resumes", []))
        resumes.append({"after_epoch": 0 if state is None else int(state["epoch"]), "at": now})
    return {
        "schema": SCHEMA,
        "tool_version": __version__,
        "created": created,
        "resumes": resumes,
        "config": config.to_dict(),
        "resolved": dict(info),
    }


def _check_can_continue(out: Path, config: FinetuneConfig, state: Mapping[str, Any]) -> None:
    epoch = int(state["epoch"])
    bad_epochs = int(state["bad_epochs"])
    stopped = config.early_stop is not None and bad_epochs >= config.early_stop
    if stopped or epoch >= config.epochs:
        why = (
            f"stopped early at epoch {epoch} (no better validation accuracy for "
            f"{bad_epochs} epochs)"
            if stopped
            else f"already finished its {epoch} epochs"
        )
        raise HessauditError(
            f"--resume {out}: the run {why}; nothing to do",
            hint="pass a larger --epochs (or --early-stop) to continue it",
        )


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


def _run_info(
    setup: _Setup,
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


def _row(
    epoch: int,
    optimizer: torch.optim.Optimizer,
    stats: Mapping[str, float],
    model: nn.Module,
    setup: _Setup,
    anchors: Mapping[str, torch.Tensor],
    radii: Mapping[str, float],
    layer_names: list[str],
    new_layers: list[str],
    *,
    seconds: float,
    lr: float | None = None,
) -> dict[str, Any]:
    batch = setup.config.batch_size
    val_loss, val_acc = _evaluate(model, setup.val, batch)
    held_loss, held_acc = _evaluate(model, setup.heldout, batch)
    pre_layers = [n for n in layer_names if n in anchors]
    dist = distances(model, anchors, pre_layers + new_layers)
    max_name = max(pre_layers, key=lambda n: dist[n]) if pre_layers else ""
    ratio = max((dist[n] / r for n, r in radii.items()), default=_NAN)
    return {
        "epoch": epoch,
        "lr": float(optimizer.param_groups[0]["lr"] if lr is None else lr),
        "train_loss": stats.get("train_loss", _NAN),
        "train_penalty": stats.get("train_penalty", _NAN),
        "train_acc": stats.get("train_acc", _NAN),
        "train_acc_clean": stats.get("train_acc_clean", _NAN),
        "val_loss": val_loss,
        "val_acc": val_acc,
        "heldout_loss": held_loss,
        "heldout_acc": held_acc,
        "max_distance": dist[max_name] if max_name else _NAN,
        "max_distance_layer": max_name,
        "head_distance": max((dist[n] for n in new_layers), default=_NAN),
        "max_radius_ratio": ratio,
        "seconds": float(seconds),
    }


def _write_metrics(out: Path, rows: list[dict[str, Any]]) -> None:
    import pandas as pd

    from hessaudit._atomic import atomic_path

    frame = pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
    if not _dist.is_main():
        return
    with atomic_path(out / "metrics.csv") as tmp:
        frame.to_csv(tmp, index=False)


def _save_weights(
    path: Path,
    model: nn.Module,
    config: FinetuneConfig,
    setup: _Setup,
    *,
    epoch: int,
    F: np.ndarray | None,
    F_source: str | None,
    new: list[str],
    kind: str,
    extra: Mapping[str, Any] | None = None,
) -> None:
    from hessaudit.checkpoints import save_checkpoint

    if not _dist.is_main():
        return
    save_checkpoint(
        path,
        model.state_dict(),
        metadata=_metadata(
            config, setup, epoch=epoch, F=F, F_source=F_source, new=new, kind=kind, extra=extra
        ),
    )


def _run_audit(
    config: FinetuneConfig, setup: _Setup, out: Path, display: TrainingDisplay
) -> dict[str, Any]:
    try:
        from hessaudit.audit import AuditRequest, run_audit, write_audit_json
    except ImportError as exc:  # pragma: no cover - the audit ships with hessaudit
        raise HessauditError(f"--audit: the audit is not available ({exc})") from None
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
        n_train=len(setup.train),
        seed=config.seed,
        device=config.device,
        allow_hub=config.allow_hub,
    )
    from hessaudit.data import Dataset

    # Audit exactly the examples trained on, with their clean labels when they are known.
    trained_on = Dataset(
        x=setup.train.x.cpu(),
        y=(setup.train.clean if setup.train.clean is not None else setup.train.y).cpu(),
        num_classes=setup.num_classes,
        source=f"{config.data} (the examples fine-tuned on)",
    )
    result = run_audit(request, train_data=trained_on)
    if _dist.is_main():
        write_audit_json(str(out / "audit.json"), result)
    return result.to_dict()
