"""Robust fine-tuning under label noise: the paper's Algorithm 1 and its baselines.

:func:`run_finetune` takes a :class:`~hessaudit.robust.config.FinetuneConfig` and writes a run
folder (``config.out``: ``config.json``, ``metrics.csv``, the ``final``/``best``/``last``
checkpoints, ``state.pt``, ``noise.json``, ``audit.json``); the layout and the resume state are
described in :mod:`hessaudit.robust._run_folder`, the data and noise-matrix setup is
:mod:`hessaudit.robust._data_setup`, the per-purpose seeds :mod:`hessaudit.robust._seeds`.

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
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hessaudit.audit import distributed as _dist
from hessaudit.errors import HessauditError
from hessaudit.inputs.devices import resolve_device
from hessaudit.robust._finish import (
    FINISHED_NAME,
    ResumePlan,
    finished_document,
    read_finished,
    remove_finished,
    resume_plan,
)
from hessaudit.robust._lock import run_folder_lock
from hessaudit.robust._model_setup import (
    _build_model,
    _make_optimizer,
    _make_scheduler,
    _ModelBuild,
)
from hessaudit.robust._records import _run_audit, _run_info
from hessaudit.robust._run_folder import (
    OUTPUT_NAMES,
    STATE_FORMAT,
    _check_out,
    _config_document,
    _differs,
    _load_state,
    _prepare_out,
    _save_state,
    _save_weights,
    _write_json,
    _write_metrics,
    load_run_config,
    resume_config,
)
from hessaudit.robust._seeds import _generator, derive_seed
from hessaudit.robust._trust import factory_record, verify_factory
from hessaudit.robust.config import RESUMABLE_FIELDS, FinetuneConfig, parse_penalty
from hessaudit.robust.data_setup import (
    _check_resume_inputs,
    _resolve_noise_matrix,
    noise_document,
    prepare_data,
    training_labels,
)
from hessaudit.robust.losses import l2sp_penalty, make_loss
from hessaudit.robust.noise_matrix import estimate_noise_matrix, validate_noise_matrix
from hessaudit.robust.projection import (
    constrainable_names,
    distances,
    layer_radii,
    load_radius_table,
    project_to_balls_,
)
from hessaudit.robust.types import (
    METRIC_COLUMNS,
    DataSetup,
    FinetuneResult,
    Split,
    TrainingDisplay,
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

_NAN = float("nan")


# --------------------------------------------------------------------------- small helpers


def _batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Mini-batch slices; a last batch of one example joins the previous one (BatchNorm in
    train mode cannot normalize a single example)."""
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2] = (bounds[-2][0], n)
        bounds.pop()
    return bounds


# --------------------------------------------------------------------------- training steps


def _train_epoch(
    model: nn.Module,
    data: Split,
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
def _evaluate(model: nn.Module, data: Split | None, batch_size: int) -> tuple[float, float]:
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


def _estimate_F(setup: DataSetup, display: TrainingDisplay) -> tuple[np.ndarray, dict[str, Any]]:
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
        part = Split(x=data.x[fit_dev], y=data.y[fit_dev], clean=None)
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
    if config.estimate_method == "dual-t":
        from hessaudit.robust.dual_t import dual_t_estimate

        info["dual_t"] = dual_t_estimate(probs.numpy(), noisy.numpy()).to_dict()
    if setup.injection is not None:
        from hessaudit.robust.noise_matrix import estimation_errors

        info["frobenius_error_vs_injected"] = float(
            np.linalg.norm(F_hat - setup.injection.noise_matrix)
        )
        # every method from the same first models, for comparison
        info["errors_vs_injected_by_method"] = estimation_errors(
            probs.numpy(), noisy.numpy(), setup.injection.noise_matrix
        )
    try:
        F = validate_noise_matrix(
            F_hat, num_classes=setup.num_classes,
            source=f"--noise-matrix estimate:{config.estimate_method}",
        )
    except HessauditError as exc:
        accuracy = info["first_model_accuracy_on_noisy_labels"]
        raise HessauditError(
            exc.message,
            hint=f"the first models reached {accuracy:.2f} accuracy on the noisy labels; give "
            "more --estimate-epochs, or estimate with another method",
        ) from None
    return F, info


def _model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}


@contextlib.contextmanager
def _seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(derive_seed(seed, "global"))
        yield


@dataclass
class _Training:
    """Everything the training loop and the final writes share."""

    config: FinetuneConfig
    out: Path
    setup: DataSetup
    build: _ModelBuild
    F: np.ndarray | None
    F_source: str | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    shuffle: torch.Generator
    anchors: dict[str, torch.Tensor]
    radii: dict[str, float]
    layer_names: list[str]
    new_layers: list[str]
    device: torch.device
    metrics: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_acc: float | None = None
    bad_epochs: int = 0
    epoch: int = 0

    @property
    def model(self) -> nn.Module:
        return self.build.model

    def save(self, name: str, kind: str, extra: Mapping[str, Any] | None = None) -> None:
        _save_weights(
            self.out / name, self.model, self.config, self.setup, epoch=self.epoch, F=self.F,
            F_source=self.F_source, new=self.build.new, kind=kind, extra=extra,
        )

    def row(self, stats: Mapping[str, float], *, seconds: float,
            lr: float | None = None) -> dict[str, Any]:
        return _row(self.epoch, self.optimizer, stats, self.model, self.setup, self.anchors,
                    self.radii, self.layer_names, self.new_layers, seconds=seconds, lr=lr)

    @property
    def stopped_early(self) -> bool:
        return self.config.early_stop is not None and self.bad_epochs >= self.config.early_stop

    def state(self) -> dict[str, Any]:
        """The per-epoch resume state (``state.pt``)."""
        device = self.device
        return {
            "format": STATE_FORMAT,
            "epoch": self.epoch,
            "finished": self.stopped_early or self.epoch >= self.config.epochs,
            "stopped_early": self.stopped_early,
            "model": _model_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "shuffle_rng": self.shuffle.get_state(),
            "global_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "metrics": [dict(r) for r in self.metrics],
            "best_epoch": self.best_epoch,
            "best_val_acc": self.best_val_acc,
            "bad_epochs": self.bad_epochs,
            "noise_matrix": None if self.F is None else torch.from_numpy(self.F.copy()),
            "noise_matrix_source": self.F_source,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        self.shuffle.set_state(state["shuffle_rng"])
        torch.set_rng_state(state["global_rng"])
        if self.device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.metrics = [dict(r) for r in state["metrics"]]
        self.best_epoch = state["best_epoch"]
        self.best_val_acc = state["best_val_acc"]
        self.bad_epochs = int(state["bad_epochs"])
        self.epoch = int(state["epoch"])


def run_finetune(
    config: FinetuneConfig,
    *,
    display: TrainingDisplay | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> FinetuneResult:
    """Fine-tune ``config.model`` from ``config.pretrained`` on ``config.data``; see the module
    docstring for what is written.

    ``resume=True`` continues the run in ``config.out`` from its last per-epoch checkpoint, or
    completes its final outputs and audit when training was done (see :func:`resume_config` to
    build the config, and :mod:`hessaudit.robust._finish`); without ``resume`` or
    ``overwrite`` an existing non-empty ``config.out`` is an error. ``overwrite=True`` deletes
    only the files a run writes (:data:`OUTPUT_NAMES`). The folder is locked for the whole run
    (:mod:`hessaudit.robust._lock`): a second run into it fails at once.

    Raises:
        HessauditError: any bad option or input, naming the flag or file at fault.
    """
    display = display or TrainingDisplay()
    ctx = _dist.init(config.device)  # torchrun: join the job; rank 0 alone writes and reports
    if not ctx.is_main:
        return _run(config, TrainingDisplay(), ctx, resume=resume, overwrite=overwrite)
    out = Path(config.out)
    _check_out(out, resume=resume, overwrite=overwrite)  # fail before creating anything
    with run_folder_lock(out, flag="--resume" if resume else "--out"):
        _check_out(out, resume=resume, overwrite=overwrite)  # again, now that we own it
        return _run(config, display, ctx, resume=resume, overwrite=overwrite)


def _check_resume_options(config: FinetuneConfig, out: Path) -> None:
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
    verify_factory(out, config.model, _saved_resolved(out).get("model_factory"))


def _saved_resolved(out: Path) -> dict[str, Any]:
    import json

    try:
        document = json.loads((out / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise HessauditError(f"--resume: {out / 'config.json'} cannot be read") from None
    resolved = document.get("resolved") if isinstance(document, dict) else None
    return resolved if isinstance(resolved, dict) else {}


def _run(
    config: FinetuneConfig,
    display: TrainingDisplay,
    ctx: Any,
    *,
    resume: bool,
    overwrite: bool,
) -> FinetuneResult:
    config = config.resolved()
    out = Path(config.out)
    if resume:
        _check_resume_options(config, out)  # the factory file is checked before any import
    device = resolve_device(_dist.local_device(config.device, ctx))
    radius_table = load_radius_table(config.radius_table) if config.radius_table else None
    penalty_spec = parse_penalty(config.penalty)

    state: dict[str, Any] | None = None
    if resume and (out / "state.pt").is_file():
        state = _load_state(out / "state.pt")
    plan = resume_plan(out, config, state, read_finished(out) if resume else None)
    factory = factory_record(config.model)  # hashed before its first import

    with _seeded_global_rng(config.seed, device):
        setup = prepare_data(config, device, log=display.log)
        if resume:
            _check_resume_inputs(out, setup)
        saved_F = None if state is None else state.get("noise_matrix")
        F, F_source, estimated = _resolve_noise_matrix(
            setup, display, saved_F, estimate=_estimate_F
        )
        run, loss_fn, penalty_fn = _set_up_training(
            config, out, setup, F, F_source, penalty_spec, radius_table, device, display
        )

        # ---- run folder: config.json and noise.json
        info = _run_info(setup, run.build, run.radii, run.layer_names, F_source, penalty_spec,
                         device)
        info["model_factory"] = factory
        _prepare_out(out, resume=resume, overwrite=overwrite)
        if _dist.is_main():
            remove_finished(out)  # not finished until the marker is written again, last
        _write_json(out / "config.json", _config_document(out, config, info, state, resume))
        if state is None and (setup.injection is not None or estimated is not None):
            _write_json(
                out / "noise.json",
                noise_document(setup.injection, F, F_source, estimated,
                               training_labels=training_labels(setup)),
            )
        display.start({**info, "config": config.to_dict(), "noise_matrix_source": F_source})

        resumed_from = _restore_or_start(run, state, plan, display)
        if plan.train:
            _train(run, loss_fn, penalty_fn, display)
        if plan.weights:
            _write_final(run, rewrite_last=not plan.train, display=display)

    audit_doc = None
    if plan.audit:
        audit_doc = _run_audit(config, setup, out, display)
    files = _mark_finished(run)
    result = FinetuneResult(
        config=config,
        out=out,
        files=files,
        metrics=run.metrics,
        num_classes=setup.num_classes,
        epochs_run=run.epoch,
        best_epoch=run.best_epoch,
        best_val_acc=run.best_val_acc,
        stopped_early=run.stopped_early,
        resumed_from=resumed_from,
        new_tensors=list(run.build.new),
        unused_pretrained=list(run.build.unused),
        noise_matrix=F,
        noise_matrix_source=F_source,
        noise=setup.injection,
        audit=audit_doc,
        info=info,
    )
    display.finish(result)
    return result


def _mark_finished(run: _Training) -> dict[str, str]:
    """Write ``finished.json``, last of all outputs; the run's files by short name."""
    out = run.out
    files = {
        name.split(".")[0]: str(out / name)
        for name in OUTPUT_NAMES
        if (out / name).is_file()
    }
    _write_json(
        out / FINISHED_NAME,
        finished_document(run.config, epoch=run.epoch, stopped_early=run.stopped_early,
                          best_epoch=run.best_epoch, files=files),
    )
    files["finished"] = str(out / FINISHED_NAME)
    return files


def _restore_or_start(
    run: _Training, state: Mapping[str, Any] | None, plan: ResumePlan, display: TrainingDisplay
) -> int | None:
    """Continue from ``state`` (the epoch it holds), or evaluate the starting point (row 0 of
    metrics.csv) of a new run (None)."""
    if state is None:
        run.metrics.append(run.row({}, seconds=0.0))
        _write_metrics(run.out, run.metrics)
        return None
    run.restore(state)
    if plan.train:
        display.log(f"resuming {run.out} after epoch {run.epoch}")
    else:
        display.log(f"resuming {run.out}: training ended at epoch {run.epoch}; "
                    "completing the final outputs")
    return run.epoch


def _set_up_training(
    config: FinetuneConfig,
    out: Path,
    setup: DataSetup,
    F: np.ndarray | None,
    F_source: str | None,
    penalty_spec: tuple[str, float, float] | None,
    radius_table: list[tuple[str, float | None]] | None,
    device: torch.device,
    display: TrainingDisplay,
) -> tuple[_Training, Callable[..., torch.Tensor], Callable[[], torch.Tensor] | None]:
    """The model (pretrained tensors loaded, new ones seeded), its anchors and radii, the
    optimizer, schedule and loss: everything that training or resuming starts from."""
    loss_fn = make_loss(
        config.loss,
        noise_matrix=F,
        smoothing=config.smoothing,
        gce_q=config.gce_q,
        sce_alpha=config.sce_alpha,
        sce_beta=config.sce_beta,
        js_weight=config.js_weight,
        nonneg_correction=config.nonneg_correction,
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
    penalty_fn = None
    if penalty_spec is not None:
        _, alpha, beta = penalty_spec

        def penalty_fn() -> torch.Tensor:
            return l2sp_penalty(params, anchors, alpha=alpha, beta=beta, new_names=new_params)

    optimizer = _make_optimizer(config, model)
    run = _Training(
        config=config, out=out, setup=setup, build=build, F=F, F_source=F_source,
        optimizer=optimizer, scheduler=_make_scheduler(config, optimizer, config.epochs),
        shuffle=_generator(config.seed, "shuffle"), anchors=anchors, radii=radii,
        layer_names=layer_names, new_layers=new_layers, device=device,
    )
    return run, loss_fn, penalty_fn


def _train(
    run: _Training,
    loss_fn: Callable[..., torch.Tensor],
    penalty_fn: Callable[[], torch.Tensor] | None,
    display: TrainingDisplay,
) -> None:
    """The remaining epochs; after each: metrics.csv, best.safetensors (on a better validation
    accuracy), state.pt, last.safetensors, in that order (each written atomically)."""
    config, setup, out = run.config, run.setup, run.out
    params = dict(run.model.named_parameters())

    def after_step() -> None:
        project_to_balls_(params, run.anchors, run.radii)

    steps = len(_batch_bounds(len(setup.train), config.batch_size))
    display.start_phase("fine-tune", epochs=config.epochs, first_epoch=run.epoch + 1,
                        steps=steps)
    train_model = _dist.ddp(run.model, run.device)
    while run.epoch < config.epochs and not run.stopped_early:
        run.epoch += 1
        display.start_epoch(run.epoch)
        started = time.perf_counter()
        lr = run.optimizer.param_groups[0]["lr"]
        stats = _train_epoch(
            train_model,
            setup.train,
            loss_fn=loss_fn,
            optimizer=run.optimizer,
            batch_size=config.batch_size,
            generator=run.shuffle,
            penalty=penalty_fn,
            after_step=after_step if run.radii else None,
            display=display,
            epoch=run.epoch,
        )
        if run.scheduler is not None:
            run.scheduler.step()
        row = run.row(stats, seconds=time.perf_counter() - started, lr=lr)
        run.metrics.append(row)
        if setup.val is not None:
            if run.best_val_acc is None or row["val_acc"] > run.best_val_acc:
                run.best_val_acc = float(row["val_acc"])
                run.best_epoch = run.epoch
                run.bad_epochs = 0
                run.save("best.safetensors", "best", extra={
                    "selected_by": "best validation accuracy", "val_acc": run.best_val_acc,
                })
            else:
                run.bad_epochs += 1
        _write_metrics(out, run.metrics)
        _save_state(out / "state.pt", run.state())
        run.save("last.safetensors", "last")
        display.end_epoch(row)
        if run.stopped_early:
            display.log(
                f"early stopping after epoch {run.epoch}: no better validation accuracy for "
                f"{run.bad_epochs} epochs (best {run.best_val_acc:.4f} at epoch "
                f"{run.best_epoch})"
            )
    display.end_phase()


def _write_final(run: _Training, *, rewrite_last: bool, display: TrainingDisplay) -> None:
    """final.safetensors (and best.safetensors without a validation split) from the model as
    trained. ``rewrite_last`` (completing an interrupted run): also metrics.csv and
    last.safetensors, which a kill right after ``state.pt`` may have left one epoch behind."""
    out = run.out
    if rewrite_last:
        _write_metrics(out, run.metrics)
        run.save("last.safetensors", "last")
    run.save("final.safetensors", "final")
    if run.setup.val is None:
        run.best_epoch = run.epoch
        run.save("best.safetensors", "best",
                 extra={"selected_by": "final epoch (no validation split)"})
    elif not (out / "best.safetensors").is_file() and _dist.is_main():
        display.warn(f"{out / 'best.safetensors'} is missing and cannot be rebuilt (the best "
                     f"epoch was {run.best_epoch}; state.pt holds epoch {run.epoch})")


def _row(
    epoch: int,
    optimizer: torch.optim.Optimizer,
    stats: Mapping[str, float],
    model: nn.Module,
    setup: DataSetup,
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
