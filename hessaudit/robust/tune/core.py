"""Automatic choice of the finetuner's radii, learning rate and loss options (``hessaudit tune``).

A seeded Optuna search (TPE sampler, median pruning) over a space of
:class:`~hessaudit.robust.config.FinetuneConfig` fields. Each trial is a short
:func:`~hessaudit.robust.trainer.run_finetune` run in ``DIR/trials/NNNN``, scored on a validation
split carved from ``--data`` whose labels are **as noisy as the training labels** (the clean
labels the finetuner knows for injected noise are never used to choose). Then the best
parameters are trained to completion, exactly as ``hessaudit finetune`` would, in ``DIR/best``.

Objectives (``objective``):

* ``val-acc`` (default, maximized): accuracy on the noisy validation labels. Needs no noise
  matrix; under class-conditional noise whose diagonal dominates, it orders models as clean
  accuracy does in expectation (for symmetric noise at rate rho it is the affine, increasing
  map ``(1 - rho) acc + rho / (k - 1) (1 - acc)`` of clean accuracy).
* ``val-loss`` (minimized): the noise-corrected validation loss, the same backward correction
  ``sum_j (F^-1)[z, j] CE(f(x), j)`` as the training loss: an unbiased estimate of the clean
  validation cross-entropy, but with a high variance at high noise (``F^-1`` has large and
  negative entries). Needs ``F`` (``noise_matrix``), taken from each trial's checkpoint.
* ``bound`` (minimized): the Hessian generalization bound (``hessaudit measure``) of each
  trial's final weights against the pretrained ones, over the trial's training split with its
  noisy labels. No per-epoch values, so no pruning.

Reproducibility: the sampler of trial ``t`` is ``TPESampler(seed=derive(seed, t))`` (so a
resumed search draws what an uninterrupted one would), trials run one at a time, and every trial
fine-tunes with the search's own ``seed``: the finetuner derives the data subset, the injected
noise, the validation split, the head's init and the shuffling from ``seed``, so all trials see
the same data and labels and differ only by their parameters (common random numbers). A
``timeout`` makes the number of trials depend on the machine's speed.

Files in ``DIR``: ``tune.json`` (the settings), ``study.db`` (Optuna storage: SQLite when
SQLAlchemy is installed, else ``study.journal``), ``trials/NNNN/`` (each trial's run folder),
``trials.csv``, ``best.json``, ``best/`` (the best model trained to completion),
``audit-train.npz`` (for ``bound``).

Optuna is an optional dependency (``pip install "hessaudit[tune]"``), imported only here and
only when a search runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hessaudit.errors import HessauditError
from hessaudit.inputs.guard import refuse_special_file
from hessaudit.robust.config import FinetuneConfig

__all__ = [
    "DEFAULT_SPACE",
    "OBJECTIVES",
    "ParamSpec",
    "TrialRecord",
    "TuneDisplay",
    "TuneResult",
    "TuneSettings",
    "build_space",
    "load_space_file",
    "run_tune",
]

SCHEMA = "hessaudit.tune/1"
OBJECTIVES = ("val-acc", "val-loss", "bound")
DIRECTIONS = {"val-acc": "maximize", "val-loss": "minimize", "bound": "minimize"}
STUDY_NAME = "hessaudit-tune"
#: Settings that may change when a search is resumed.
RESUMABLE = ("trials", "timeout", "final", "pruning")
_NOT_TUNABLE = {
    "model", "pretrained", "data", "out", "eval_data", "val_fraction", "device", "seed",
    "allow_hub", "inject_noise", "noise_seed", "noise_matrix", "audit", "audit_samples",
    "epochs", "samples", "num_classes", "input_size", "radius_table", "early_stop",
    "mean", "std", "interpolation", "crop_pct",
}


def _import_optuna():
    try:
        import optuna
    except ImportError:
        raise HessauditError(
            "hessaudit tune needs Optuna, which is not installed",
            hint='pip install "hessaudit[tune]"',
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


# --------------------------------------------------------------------------- search space


@dataclass(frozen=True)
class ParamSpec:
    """One searched option: ``float``/``int`` in ``[low, high]`` (log-uniform when ``log``),
    or ``categorical`` over ``choices``."""

    name: str
    kind: str = "float"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "categorical":
            return {"choices": list(self.choices)}
        return {"type": self.kind, "low": self.low, "high": self.high, "log": self.log}

    @classmethod
    def from_dict(cls, name: str, spec: Any, *, source: str = "--space") -> ParamSpec:
        if not isinstance(spec, Mapping):
            raise HessauditError(
                f"{source}: {name} must be an object like "
                '{"low": 1e-4, "high": 1e-2, "log": true} or {"choices": [...]}'
            )
        unknown = sorted(set(spec) - {"type", "low", "high", "log", "choices"})
        if unknown:
            raise HessauditError(f"{source}: {name}: unknown key(s) {', '.join(unknown)}")
        if "choices" in spec:
            choices = spec["choices"]
            if not isinstance(choices, list) or not choices:
                raise HessauditError(f"{source}: {name}: choices must be a non-empty list")
            return cls(name=name, kind="categorical", choices=tuple(choices))
        kind = spec.get("type", "float")
        if kind not in ("float", "int"):
            raise HessauditError(f"{source}: {name}: type must be float or int, not {kind!r}")
        low, high, log = spec.get("low"), spec.get("high"), bool(spec.get("log", False))
        ok = all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in (low, high)
        )
        if not ok or low > high:
            raise HessauditError(f"{source}: {name}: needs finite numbers low <= high")
        if log and low <= 0:
            raise HessauditError(f"{source}: {name}: a log-uniform range needs low > 0")
        return cls(name=name, kind=kind, low=float(low), high=float(high), log=log)


#: The default space: log-uniform where the option is a scale (lr, radii, weights).
DEFAULT_SPACE: dict[str, ParamSpec] = {
    "lr": ParamSpec("lr", low=1e-5, high=1e-2, log=True),
    "radius": ParamSpec("radius", low=0.1, high=10.0, log=True),
    "radius_growth": ParamSpec("radius_growth", low=1.0, high=4.0, log=True),
    "head_radius": ParamSpec("head_radius", low=0.5, high=50.0, log=True),
    "smoothing": ParamSpec("smoothing", low=0.01, high=0.4, log=True),
    "gce_q": ParamSpec("gce_q", low=0.1, high=1.0),
    "sce_alpha": ParamSpec("sce_alpha", low=0.01, high=1.0, log=True),
    "sce_beta": ParamSpec("sce_beta", low=0.1, high=10.0, log=True),
    "js_weight": ParamSpec("js_weight", low=0.1, high=0.9),
}
_RADII = ("radius", "radius_growth", "head_radius")
_LOSS_PARAMS = {
    "smoothing": ("label-smoothing",),
    "gce_q": ("gce",),
    "sce_alpha": ("sce",),
    "sce_beta": ("sce",),
    "js_weight": ("js",),
}


def load_space_file(path: str | Path) -> tuple[dict[str, ParamSpec | None], bool]:
    """Read a ``--space`` JSON file: ``{"defaults": true, "params": {NAME: SPEC | null}}``.

    ``SPEC`` is ``{"low": .., "high": .., "log": bool, "type": "float"|"int"}`` or
    ``{"choices": [..]}``; ``null`` removes a default parameter. ``"defaults": false`` starts
    from an empty space instead of :data:`DEFAULT_SPACE`. Returns (params, use_defaults).
    """
    p = Path(path)
    refuse_special_file(p, "--space")  # a FIFO would block the read forever
    try:
        document = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise HessauditError(f"--space {path}: cannot be read ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise HessauditError(f"--space {path}: not valid JSON ({exc.msg}, line {exc.lineno})") \
            from None
    if not isinstance(document, Mapping):
        raise HessauditError(f"--space {path}: must hold a JSON object")
    document = dict(document)
    use_defaults = document.pop("defaults", True)
    params = document.pop("params", None)
    if params is None:
        params = document
    elif document:
        raise HessauditError(f"--space {path}: unknown key(s) {', '.join(sorted(document))}")
    if not isinstance(params, Mapping):
        raise HessauditError(f"--space {path}: params must be an object")
    known = {f.name for f in dataclasses.fields(FinetuneConfig)}
    out: dict[str, ParamSpec | None] = {}
    for name, spec in params.items():
        key = str(name).replace("-", "_")
        if key not in known:
            raise HessauditError(f"--space {path}: {name} is not a finetune option")
        if key in _NOT_TUNABLE:
            raise HessauditError(f"--space {path}: {name} cannot be searched")
        source = f"--space {path}"
        out[key] = None if spec is None else ParamSpec.from_dict(key, spec, source=source)
    return out, bool(use_defaults)


def build_space(
    base: FinetuneConfig,
    *,
    overrides: Mapping[str, ParamSpec | None] | None = None,
    use_defaults: bool = True,
    fixed: set[str] | frozenset[str] = frozenset(),
) -> dict[str, ParamSpec]:
    """The parameters searched for ``base``: the defaults that apply to its loss and constraint
    (radii only with the Frobenius constraint and no radius table; a loss option only for its
    loss), updated by ``overrides``, minus the ``fixed`` options (given explicitly)."""
    resolved = base.resolved()
    space: dict[str, ParamSpec] = {}
    if use_defaults:
        for name, spec in DEFAULT_SPACE.items():
            if name in _RADII and (
                resolved.constraint != "frobenius" or resolved.radius_table is not None
            ):
                continue
            if name in _LOSS_PARAMS and resolved.loss not in _LOSS_PARAMS[name]:
                continue
            space[name] = spec
    for name, spec in (overrides or {}).items():
        if spec is None:
            space.pop(name, None)
        else:
            space[name] = spec
    for name in fixed:
        space.pop(name, None)
    return space


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class TuneSettings:
    """A search: ``base`` is the finetune config every trial starts from (``base.out`` is the
    search folder DIR; ``base.epochs`` the final run's epochs)."""

    base: FinetuneConfig
    space: dict[str, ParamSpec]
    trials: int = 20
    timeout: float | None = None
    objective: str = "val-acc"
    trial_epochs: int | None = None
    pruning: bool = True
    startup_trials: int | None = None
    final: bool = True

    @property
    def out(self) -> Path:
        return Path(self.base.out)

    @property
    def epochs_per_trial(self) -> int:
        if self.trial_epochs is not None:
            return self.trial_epochs
        return max(1, math.ceil(self.base.epochs / 3))

    @property
    def n_startup(self) -> int:
        if self.startup_trials is not None:
            return self.startup_trials
        return max(2, min(10, self.trials // 3))

    def validate(self) -> TuneSettings:
        base = self.base.resolved()
        if base.val_fraction is None:
            raise HessauditError("--val-fraction is required (the trials are scored on it)")
        if isinstance(self.trials, bool) or not isinstance(self.trials, int) or self.trials < 1:
            raise HessauditError(f"--trials {self.trials} must be an integer >= 1")
        if self.timeout is not None and not (self.timeout > 0):
            raise HessauditError(f"--timeout {self.timeout} must be > 0 seconds")
        if self.objective not in OBJECTIVES:
            raise HessauditError(
                f"--objective {self.objective!r} is not one of {', '.join(OBJECTIVES)}"
            )
        if self.trial_epochs is not None and self.trial_epochs < 1:
            raise HessauditError(f"--trial-epochs {self.trial_epochs} must be >= 1")
        if self.startup_trials is not None and self.startup_trials < 1:
            raise HessauditError(f"--startup-trials {self.startup_trials} must be >= 1")
        if self.objective == "val-loss" and base.noise_matrix is None:
            raise HessauditError(
                "--objective val-loss needs the noise matrix F for the corrected loss",
                hint="pass --noise-matrix (symmetric:RATE, a file, 'estimate' or 'injected'); "
                "it is recorded but not used for training by losses other than reweight/forward",
            )
        if not self.space:
            raise HessauditError(
                "nothing to search: every parameter is fixed or removed",
                hint="drop a fixed option from the command line, or add parameters in --space",
            )
        for name, spec in self.space.items():
            probe = {name: spec.choices[0] if spec.kind == "categorical" else spec.low}
            if spec.kind == "int":
                probe = {name: int(spec.low)}
            try:
                base.replace(**probe).resolved()
            except HessauditError as exc:
                raise HessauditError(f"search space: {name} = {probe[name]!r}: {exc}") from None
            except TypeError:
                raise HessauditError(f"search space: {name} is not a finetune option") from None
        return dataclasses.replace(self, base=base)

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": self.base.to_dict(),
            "space": {name: spec.to_dict() for name, spec in self.space.items()},
            "trials": self.trials,
            "timeout": self.timeout,
            "objective": self.objective,
            "trial_epochs": self.epochs_per_trial,
            "pruning": self.pruning,
            "startup_trials": self.n_startup,
            "final": self.final,
        }


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class TrialRecord:
    """One row of ``trials.csv``."""

    number: int
    state: str
    score: float | None
    params: dict[str, Any]
    metrics: dict[str, Any]
    seconds: float | None
    error: str | None = None

    def row(self, names: list[str]) -> dict[str, Any]:
        row: dict[str, Any] = {"number": self.number, "state": self.state, "score": self.score}
        for name in names:
            row[f"param_{name}"] = self.params.get(name)
        for key in _METRIC_KEYS:
            row[key] = self.metrics.get(key)
        row["seconds"] = self.seconds
        row["error"] = self.error
        return row


_METRIC_KEYS = (
    "val_acc",
    "val_loss_corrected",
    "val_loss",
    "bound",
    "epochs_run",
    "val_acc_clean",
    "heldout_acc",
)


@dataclass(frozen=True)
class TuneResult:
    settings: TuneSettings
    out: Path
    trials: list[TrialRecord]
    best: TrialRecord | None
    best_config: FinetuneConfig | None
    final: Any = None  # FinetuneResult of DIR/best
    seconds: float = 0.0
    document: dict[str, Any] = field(default_factory=dict)


class TuneDisplay:
    """What :func:`run_tune` reports; ``hessaudit.report.tuning`` has the rich one."""

    def start(self, info: Mapping[str, Any]) -> None:
        """The search is set up."""

    def log(self, message: str) -> None:
        """A progress message."""

    def warn(self, message: str) -> None:
        """Something the user should know."""

    def start_trial(self, number: int, params: Mapping[str, Any]) -> None:
        """Trial ``number`` starts with ``params``."""

    def trial_epoch(self, number: int, epoch: int, epochs: int, metrics: Mapping[str, Any]) -> None:
        """An epoch of the trial is done (``metrics``: the validation scores)."""

    def end_trial(self, record: TrialRecord, best: TrialRecord | None) -> None:
        """A trial is over (complete, pruned or failed)."""

    def final_display(self) -> Any:
        """The :class:`~hessaudit.robust.trainer.TrainingDisplay` of the final run."""
        return None

    def finish(self, result: TuneResult) -> None:
        """The search and the final run are over."""


# --------------------------------------------------------------------------- validation data


@dataclass
class _ValData:
    x: Any
    y_noisy: Any
    val_indices: list[int]
    train_indices: list[int]
    num_classes: int


def _study_data(base: FinetuneConfig) -> tuple[_ValData, Any, Any]:
    """The validation split and its noisy labels, built as the finetuner builds them from
    ``base`` (checked against the first trial's ``config.json``). Returns (val, train x, train
    noisy y) on the CPU."""
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
    val = _ValData(
        x=train.x[val_idx],
        y_noisy=noisy[val_idx],
        val_indices=[int(i) for i in val_idx],
        train_indices=[int(i) for i in train_idx],
        num_classes=k,
    )
    return val, train.x[train_idx], noisy[train_idx]


class _Scorer:
    """Scores a checkpoint on the noisy validation split."""

    def __init__(self, base: FinetuneConfig, val: _ValData) -> None:
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


class _TrialWatcher:
    """The finetune display of one trial: scores every fine-tuning epoch's checkpoint on the
    noisy validation split, reports it to Optuna and prunes."""

    def __init__(self, trainer_display_cls, *, trial, scorer, settings, display, out) -> None:
        self._phase = ""
        self._inner = trainer_display_cls()
        self.trial = trial
        self.scorer = scorer
        self.settings = settings
        self.display = display
        self.out = out
        self.last: dict[str, float] = {}
        self.last_row: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def start_phase(self, name: str, **kwargs: Any) -> None:
        self._phase = name

    def warn(self, message: str) -> None:
        pass

    def end_epoch(self, row: Mapping[str, Any]) -> None:
        if self._phase != "fine-tune":
            return
        optuna = _import_optuna()
        epoch = int(row["epoch"])
        metrics = self.scorer.score(self.out / "last.safetensors")
        self.last = metrics
        self.last_row = dict(row)
        self.display.trial_epoch(self.trial.number, epoch, self.settings.epochs_per_trial, metrics)
        key = {"val-acc": "val_acc", "val-loss": "val_loss_corrected"}.get(
            self.settings.objective
        )
        if key is None:
            return
        value = metrics[key]
        if math.isfinite(value):
            self.trial.report(value, epoch)
            last = epoch >= self.settings.epochs_per_trial  # nothing left to save
            if self.settings.pruning and not last and self.trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch} ({key} {value:.4f})")


# --------------------------------------------------------------------------- the search


def _storage(out: Path, optuna: Any) -> tuple[Any, str]:
    try:
        import sqlalchemy  # noqa: F401
    except ImportError:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = out / "study.journal"
        return JournalStorage(JournalFileBackend(str(path))), str(path)
    path = out / "study.db"
    return optuna.storages.RDBStorage(f"sqlite:///{path.resolve()}"), str(path)


def _trial_seed(seed: int, number: int) -> int:
    digest = hashlib.sha256(f"hessaudit-tune:{int(seed)}:{int(number)}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _write_json(path: Path, document: Mapping[str, Any]) -> None:
    from hessaudit._atomic import write_text

    write_text(path, json.dumps(document, indent=2, allow_nan=False, default=str) + "\n")


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def _check_out(settings: TuneSettings, *, resume: bool, overwrite: bool) -> None:
    out = settings.out
    if out.exists() and not out.is_dir():
        raise HessauditError(f"--out {out} is a file, not a folder")
    if resume:
        path = out / "tune.json"
        if not path.is_file():
            raise HessauditError(
                f"--resume: no search to resume in {out} (tune.json is missing)",
                hint="start a new search without --resume",
            )
        saved = json.loads(path.read_text(encoding="utf-8"))
        now = settings.to_dict()
        for key, value in now.items():
            if key in RESUMABLE:
                continue
            if json.loads(json.dumps(saved.get(key), default=str)) != json.loads(
                json.dumps(value, default=str)
            ):
                raise HessauditError(
                    f"--resume: the search in {out} was started with different settings "
                    f"({key} differs)",
                    hint="pass the same options as the first run (only --trials, --timeout, "
                    "--no-final and --no-prune may change)",
                )
        return
    if out.is_dir() and any(p.name != ".lock" for p in out.iterdir()):  # .lock: ours
        if not overwrite:
            raise HessauditError(
                f"--out {out} already holds files",
                hint="pass --resume to continue that search, --overwrite to start it again, "
                "or choose another --out",
            )
        import shutil

        for name in ("tune.json", "study.db", "study.journal", "trials.csv", "best.json",
                     "audit-train.npz"):
            with contextlib.suppress(FileNotFoundError):
                (out / name).unlink()
        for name in ("trials", "best"):
            if (out / name).is_dir():
                shutil.rmtree(out / name)


def _record(trial: Any) -> TrialRecord:
    state = trial.state.name.lower()
    seconds = None
    if trial.datetime_start is not None and trial.datetime_complete is not None:
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
    attrs = dict(trial.user_attrs)
    value = trial.value if state == "complete" else None
    return TrialRecord(
        number=trial.number,
        state=state,
        score=value,
        params=dict(trial.params),
        metrics={k: attrs.get(k) for k in _METRIC_KEYS},
        seconds=seconds,
        error=attrs.get("error"),
    )


def _write_trials(out: Path, records: list[TrialRecord], names: list[str]) -> None:
    import pandas as pd

    from hessaudit._atomic import atomic_path

    columns = ["number", "state", "score", *[f"param_{n}" for n in names], *_METRIC_KEYS,
               "seconds", "error"]
    frame = pd.DataFrame([r.row(names) for r in records], columns=columns)
    with atomic_path(out / "trials.csv") as tmp:
        frame.to_csv(tmp, index=False)


def _audit_bound(settings: TuneSettings, trial_out: Path, audit_data: Path, n_train: int,
                 k: int) -> float:
    from hessaudit.audit.run import AuditRequest, run_audit

    base = settings.base
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


def _write_audit_data(base: FinetuneConfig, path: Path, x: Any, y: Any) -> None:
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


def run_tune(
    settings: TuneSettings,
    *,
    display: TuneDisplay | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> TuneResult:
    """Run (or, with ``resume``, continue) the search described by ``settings``; see the
    module docstring. Raises :class:`HessauditError` for bad options, and when no trial
    completed."""
    from hessaudit.robust._lock import run_folder_lock

    display = display or TuneDisplay()
    optuna = _import_optuna()
    settings = settings.validate()
    if resume and overwrite:
        raise HessauditError("--resume and --overwrite cannot be combined")
    # one search per folder: a second `tune` into it stops at once, naming this one's pid
    with run_folder_lock(settings.out, flag="--out"):
        return _run_tune(settings, optuna, display, resume=resume, overwrite=overwrite)


def _run_tune(
    settings: TuneSettings, optuna: Any, display: TuneDisplay, *, resume: bool, overwrite: bool
) -> TuneResult:
    from optuna.trial import TrialState

    from hessaudit.robust.trainer import TrainingDisplay, run_finetune

    _check_out(settings, resume=resume, overwrite=overwrite)
    out = settings.out
    started = time.perf_counter()
    base = settings.base
    val, train_x, train_y = _study_data(base)
    scorer = _Scorer(base, val)
    out.mkdir(parents=True, exist_ok=True)
    (out / "trials").mkdir(exist_ok=True)
    if not resume:
        _write_json(out / "tune.json", settings.to_dict())
    audit_data = out / "audit-train.npz"
    if settings.objective == "bound" and not audit_data.is_file():
        _write_audit_data(base, audit_data, train_x, train_y)

    storage, storage_path = _storage(out, optuna)
    direction = DIRECTIONS[settings.objective]
    pruner = (
        optuna.pruners.MedianPruner(
            n_startup_trials=min(3, settings.n_startup),
            n_warmup_steps=max(1, settings.epochs_per_trial // 3),
        )
        if settings.pruning
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        study_name=STUDY_NAME, storage=storage, direction=direction, pruner=pruner,
        load_if_exists=resume,
    )
    # trials left RUNNING by an interrupted search failed; they count towards the budget
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, "error", "interrupted")
        study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
    names = list(settings.space)
    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    done = len(study.get_trials(deepcopy=False, states=finished))
    display.start(
        {
            "out": str(out),
            "objective": settings.objective,
            "direction": direction,
            "trials": settings.trials,
            "done": done,
            "trial_epochs": settings.epochs_per_trial,
            "final_epochs": base.epochs,
            "space": {n: s.to_dict() for n, s in settings.space.items()},
            "val_size": len(val.val_indices),
            "train_size": len(val.train_indices),
            "storage": storage_path,
            "seed": base.seed,
        }
    )

    checked_split = False
    while done < settings.trials:
        if settings.timeout is not None and time.perf_counter() - started >= settings.timeout:
            display.log(f"timeout: {settings.timeout:g} s spent, no new trial started")
            break
        number = len(study.get_trials(deepcopy=False))
        study.sampler = optuna.samplers.TPESampler(
            seed=_trial_seed(base.seed, number), n_startup_trials=settings.n_startup
        )
        trial = study.ask()
        params = {name: spec.suggest(trial) for name, spec in settings.space.items()}
        display.start_trial(trial.number, params)
        trial_out = out / "trials" / f"{trial.number:04d}"
        config = base.replace(
            **params, out=str(trial_out), epochs=settings.epochs_per_trial, audit=False,
            early_stop=None,
        )
        watcher = _TrialWatcher(
            TrainingDisplay, trial=trial, scorer=scorer, settings=settings, display=display,
            out=trial_out,
        )
        state, value = TrialState.COMPLETE, None
        try:
            result = run_finetune(config, display=watcher, overwrite=True)  # type: ignore[arg-type]
            if not checked_split:
                if list(result.info.get("val_indices", [])) != val.val_indices:
                    raise RuntimeError(
                        "the validation split differs from the finetuner's; please report it"
                    )
                checked_split = True
            metrics = dict(watcher.last)
            if settings.objective == "bound":
                metrics["bound"] = _audit_bound(
                    settings, trial_out, audit_data, len(val.train_indices), val.num_classes
                )
            key = {"val-acc": "val_acc", "val-loss": "val_loss_corrected", "bound": "bound"}
            value = metrics.get(key[settings.objective])
            trial.set_user_attr("epochs_run", result.epochs_run)
            if value is None or not math.isfinite(value):
                state = TrialState.FAIL
                trial.set_user_attr("error", f"the score is {value}")
        except optuna.TrialPruned:
            state = TrialState.PRUNED
            metrics = dict(watcher.last)
            trial.set_user_attr("epochs_run", int(watcher.last_row.get("epoch", 0)))
        except RuntimeError as exc:
            if "validation split differs" in str(exc):
                raise
            state, metrics = TrialState.FAIL, dict(watcher.last)
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
        except (HessauditError, ValueError, ArithmeticError) as exc:
            state, metrics = TrialState.FAIL, dict(watcher.last)
            trial.set_user_attr("error", str(exc).splitlines()[0][:300] if str(exc) else
                                type(exc).__name__)
        for k in ("val_acc", "val_loss", "val_loss_corrected", "bound"):
            v = metrics.get(k)
            if v is not None and math.isfinite(v):
                trial.set_user_attr(k, float(v))
        for k, col in (("val_acc_clean", "val_acc"), ("heldout_acc", "heldout_acc")):
            v = watcher.last_row.get(col)
            if isinstance(v, float) and math.isfinite(v):
                trial.set_user_attr(k, v)
        if state == TrialState.COMPLETE:
            study.tell(trial, float(value))
        else:
            study.tell(trial, state=state)
        done += 1
        records = [_record(t) for t in study.get_trials(deepcopy=False)]
        _write_trials(out, records, names)
        best_record = _best(records, direction)
        display.end_trial(records[-1] if records else None, best_record)

    records = [_record(t) for t in study.get_trials(deepcopy=False)]
    _write_trials(out, records, names)
    best_record = _best(records, direction)
    if best_record is None:
        raise HessauditError(
            f"no trial completed ({len(records)} ran; see {out / 'trials.csv'})",
            hint="widen the search space, lower the learning rate range, or add trials",
        )
    best_config = base.replace(**best_record.params, out=str(out / "best"))
    final = None
    if settings.final:
        display.log(
            f"training trial {best_record.number}'s parameters to completion "
            f"({base.epochs} epochs) in {out / 'best'}"
        )
        final = run_finetune(
            best_config, display=display.final_display(), overwrite=True
        )
    seconds = time.perf_counter() - started
    document = _best_document(settings, records, best_record, best_config, final, seconds,
                              storage_path)
    _write_json(out / "best.json", document)
    result = TuneResult(
        settings=settings, out=out, trials=records, best=best_record, best_config=best_config,
        final=final, seconds=seconds, document=document,
    )
    display.finish(result)
    return result


def _best(records: list[TrialRecord], direction: str) -> TrialRecord | None:
    complete = [r for r in records if r.state == "complete" and r.score is not None]
    if not complete:
        return None
    sign = -1.0 if direction == "maximize" else 1.0
    return min(complete, key=lambda r: (sign * r.score, r.number))


def _command(config: FinetuneConfig) -> str:
    defaults = FinetuneConfig(model="", pretrained="", data="", out="")
    parts = ["hessaudit", "finetune"]
    for f in dataclasses.fields(FinetuneConfig):
        value = getattr(config, f.name)
        if f.name not in ("model", "pretrained", "data", "out") and value == getattr(
            defaults, f.name
        ):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            if value:
                parts.append(flag)
            continue
        if value is None:
            continue
        if isinstance(value, (tuple, list)):  # --mean / --std: one comma-separated value
            value = ",".join(f"{v:.6g}" for v in value)
        parts += [flag, f"{value:.6g}" if isinstance(value, float) else str(value)]
    return " ".join(parts)


def _best_document(
    settings: TuneSettings,
    records: list[TrialRecord],
    best: TrialRecord,
    config: FinetuneConfig,
    final: Any,
    seconds: float,
    storage: str,
) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for r in records:
        counts[r.state] = counts.get(r.state, 0) + 1
    final_doc = None
    if final is not None:
        last = final.final
        final_doc = _clean(
            {
                "out": str(final.out),
                "epochs_run": final.epochs_run,
                "val_acc_clean": last.get("val_acc"),
                "heldout_acc": last.get("heldout_acc"),
                "heldout_loss": last.get("heldout_loss"),
                "files": dict(final.files),
            }
        )
    return {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "objective": settings.objective,
        "direction": DIRECTIONS[settings.objective],
        "best_trial": best.number,
        "score": best.score,
        "params": dict(best.params),
        "metrics": _clean(dict(best.metrics)),
        "trials": counts,
        "seed": settings.base.seed,
        "storage": storage,
        "seconds": seconds,
        "config": config.to_dict(),
        "command": _command(config),
        "final": final_doc,
    }
