"""The finetuner's options: one frozen dataclass, validated in one place (no torch import).

Defaults follow the paper's released code where it has one (Adam, lr 1e-4, step decay x0.1
every 10 epochs, 30 epochs, the reweighted loss with the Frobenius-ball constraint; for text
data the Hugging Face recipe, :mod:`hessaudit.robust.text_recipe`), and the usual published
values for the baselines (smoothing 0.1, GCE q = 0.7, SCE 0.1 / 1.0, L2-SP head 0.01). Ours:

* ``radius = 1.0``, ``radius_growth = 1.0``, no head radius (the new head is free unless
  ``head_radius`` is given): a neutral starting point; tune the radii on validation data.
* ``estimate_method = "confident"``: on the digits demo (40% symmetric noise, first models of a
  few epochs on half the data) the confident joint recovered ``F`` far better than anchor
  points (Frobenius error 0.39 vs 0.95), whose arg-max anchors need a sharp, well-calibrated
  first model. Dual-T (``estimate:dual-t``) was measured too and is at least as far off in every
  setting (docs/finetune.md, "Dual-T").
* ``js_weight = 0.5``: the seed's repository ships the JS loss (``model/loss.py``) but none of its
  configs sets its weights; 0.5 is the default of the JS authors' own ``train.py``
  (ErikEnglesson/GJS), whose tuned CIFAR-10 values were 0.1 (no noise), 0.7 (20-40% symmetric),
  0.9 (60-80% symmetric) and 0.3 (asymmetric).
* ``nonneg_correction = False``: the paper's loss is the plain backward correction.
* ``noise_seed`` defaults to ``seed``; pass it explicitly to vary training seeds over one fixed
  noisy label set.
* ``weight_decay = 0`` (images): the constraint (or ``--penalty``) is the regularizer.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from hessaudit._limits import check_seed
from hessaudit.errors import HessauditError
from hessaudit.robust import text_recipe
from hessaudit.robust.noise_matrix import ESTIMATE_METHODS, parse_rate

__all__ = [
    "CONSTRAINTS",
    "ESTIMATE_METHODS",
    "OPTIMIZERS",
    "RESUMABLE_FIELDS",
    "SCHEDULES",
    "FinetuneConfig",
    "parse_penalty",
]

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("step", "cosine", "linear", "none")
CONSTRAINTS = ("frobenius", "none")
#: Other spellings accepted by ``--estimate-method`` and ``--noise-matrix estimate:METHOD``.
ESTIMATE_ALIASES = {"confident-joint": "confident"}
LOSSES = ("reweight", "ce", "label-smoothing", "forward", "gce", "sce", "js")
NEEDS_NOISE_MATRIX = ("reweight", "forward")
#: Default weight of the plain L2 term on the new head in ``--penalty l2sp:ALPHA[:BETA]``.
L2SP_HEAD_DEFAULT = 0.01
#: Options that may differ from the saved run when resuming (everything else must match).
RESUMABLE_FIELDS = ("epochs", "early_stop", "device", "audit", "audit_samples")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _estimate_method(text: Any, *, flag: str) -> str:
    """``confident`` / ``confident-joint``, ``anchor`` or ``dual-t`` -> the canonical name."""
    name = str(text).strip().lower()
    name = ESTIMATE_ALIASES.get(name, name)
    if name not in ESTIMATE_METHODS:
        raise HessauditError(
            f"{flag}: unknown estimation method {text!r}",
            hint="use confident (alias confident-joint), anchor or dual-t",
        )
    return name


def parse_penalty(spec: str | None) -> tuple[str, float, float] | None:
    """``l2sp:ALPHA[:BETA]`` -> ``("l2sp", ALPHA, BETA)``; ``None``/``none`` -> ``None``.

    ``ALPHA`` weighs ``||W - W_pre||^2 / 2`` over the pretrained tensors, ``BETA`` (default
    0.01) the plain ``||W||^2 / 2`` over the new head's tensors.
    """
    if spec is None or spec.strip().lower() == "none":
        return None
    parts = spec.strip().split(":")
    if parts[0].lower() != "l2sp" or len(parts) not in (2, 3):
        raise HessauditError(
            f"--penalty: unknown penalty {spec!r}", hint="use l2sp:LAMBDA or l2sp:LAMBDA:HEAD"
        )
    values = []
    for text in parts[1:]:
        try:
            v = float(text)
        except ValueError:
            raise HessauditError(f"--penalty {spec}: {text!r} is not a number") from None
        if not math.isfinite(v) or v < 0:
            raise HessauditError(f"--penalty {spec}: weights must be >= 0")
        values.append(v)
    if values[0] <= 0:
        raise HessauditError(f"--penalty {spec}: LAMBDA must be > 0")
    beta = values[1] if len(values) == 2 else L2SP_HEAD_DEFAULT
    return ("l2sp", values[0], beta)


@dataclass(frozen=True)
class FinetuneConfig:
    """Every option of one fine-tuning run; field names follow the CLI flags.

    Build it with the options you want and call :meth:`resolved` (``run_finetune`` does) to
    validate every value and fill in the defaults that depend on others (``constraint``,
    ``noise_seed``). ``to_dict`` / ``from_dict`` round-trip through ``config.json``.
    """

    model: str
    pretrained: str
    data: str
    out: str
    num_classes: int | None = None
    eval_data: str | None = None
    val_fraction: float | None = None
    batch_size: int = 32
    samples: int | None = None
    input_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str | None = None
    crop_pct: float | None = None
    device: str = "cpu"
    seed: int = 0
    allow_hub: bool = False
    text_column: str | None = None  # text data: hessaudit.inputs.text_options
    label_column: str = "label"
    tokenizer: str | None = None
    max_length: int = 128  # its DEFAULT_MAX_LENGTH
    # optimization (None: the data's recipe, hessaudit.robust.text_recipe)
    epochs: int = 30
    lr: float | None = None
    optimizer: str | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    schedule: str | None = None
    lr_step: int = 10
    lr_decay: float = 0.1
    warmup_epochs: float | None = None
    early_stop: int | None = None
    # loss
    loss: str = "reweight"
    smoothing: float = 0.1
    gce_q: float = 0.7
    sce_alpha: float = 0.1
    sce_beta: float = 1.0
    js_weight: float = 0.5
    nonneg_correction: bool = False
    # noise matrix
    noise_matrix: str | None = None
    estimate_method: str = "confident"
    estimate_epochs: int | None = None
    # constraint / penalty
    constraint: str | None = None
    radius: float = 1.0
    radius_growth: float = 1.0
    head_radius: float | None = None
    radius_attention: float | None = None
    radius_linear: float | None = None
    radius_table: str | None = None
    penalty: str | None = None
    # synthetic noise
    inject_noise: str | None = None
    noise_seed: int | None = None
    # audit
    audit: bool = False
    audit_samples: int | None = None

    def __post_init__(self) -> None:
        text_recipe.fill_defaults(self)  # unset optimizer, lr...: the data's recipe

    # ------------------------------------------------------------------ dict round trip

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "config") -> FinetuneConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise HessauditError(
                f"{source}: unknown option(s) {', '.join(unknown)}",
                hint="was it written by a newer hessaudit?",
            )
        missing = [n for n in ("model", "pretrained", "data", "out") if data.get(n) is None]
        if missing:
            raise HessauditError(f"{source}: missing {', '.join(_flag(n) for n in missing)}")
        return cls(**dict(data))

    def replace(self, **changes: Any) -> FinetuneConfig:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ validation

    def resolved(self) -> FinetuneConfig:
        """Validate every option and fill in the dependent defaults: ``constraint``
        (``frobenius`` for ``--loss reweight``, else ``none``), ``noise_matrix`` (normalized;
        ``estimate:METHOD`` becomes ``estimate`` with ``estimate_method = METHOD``),
        ``noise_seed`` (``seed``), and the data-config flags (``mean``, ``std``, ``crop_pct``).

        Raises :class:`HessauditError` naming the flag at fault (checked in a fixed order, so
        the first fault is always the one named).
        """
        from hessaudit.inputs.data_flags import data_config_flags

        _check_required(self)
        _check_integers(self)
        _check_reals(self)
        data_flags = data_config_flags(
            input_size=self.input_size, mean=self.mean, std=self.std,
            interpolation=self.interpolation, crop_pct=self.crop_pct,
        )
        _check_loss_choice(self)
        text_recipe.check_options(self)  # warm-up, group radii, text flags
        estimate_method = _estimate_method(self.estimate_method, flag="--estimate-method")
        constraint = _resolve_constraint(self)
        matrix, estimate_method = _resolve_noise_matrix(self, estimate_method)
        _check_inject_noise(self)
        if self.early_stop is not None and self.val_fraction is None:
            raise HessauditError(
                "--early-stop needs a validation split", hint="pass --val-fraction, e.g. 0.1"
            )
        if self.device != "cpu" and not (
            self.device == "cuda" or self.device.startswith("cuda:")
        ):
            raise HessauditError(f"--device must be cpu, cuda or cuda:N, not {self.device!r}")
        return dataclasses.replace(
            self,
            mean=data_flags["mean"],
            std=data_flags["std"],
            crop_pct=data_flags["crop_pct"],
            constraint=constraint,
            noise_matrix=matrix,
            estimate_method=estimate_method,
            noise_seed=self.seed if self.noise_seed is None else self.noise_seed,
        )


# --------------------------------------------------------------------------- validation steps


def _check_required(config: FinetuneConfig) -> None:
    for name in ("model", "pretrained", "data", "out"):
        value = getattr(config, name)
        if not isinstance(value, str) or not value.strip():
            raise HessauditError(f"{_flag(name)} is required")


def _integer(config: FinetuneConfig, name: str, low: int, *, optional: bool = False) -> None:
    value = getattr(config, name)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise HessauditError(f"{_flag(name)} {value} must be an integer >= {low}")


def _real(
    config: FinetuneConfig,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
    what: str = "",
) -> None:
    value = getattr(config, name)
    if value is None and optional:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise HessauditError(f"{_flag(name)} {value} must be {what}")


def _check_integers(config: FinetuneConfig) -> None:
    """The integer options' lower bounds, then the two seeds (64-bit)."""
    _integer(config, "num_classes", 2, optional=True)
    _integer(config, "batch_size", 1)
    _integer(config, "samples", 1, optional=True)
    _integer(config, "epochs", 1)
    _integer(config, "lr_step", 1)
    _integer(config, "early_stop", 1, optional=True)
    _integer(config, "estimate_epochs", 1, optional=True)
    _integer(config, "audit_samples", 1, optional=True)
    check_seed(config.seed, "--seed")
    check_seed(config.noise_seed, "--noise-seed")


def _check_reals(config: FinetuneConfig) -> None:
    """The real options' ranges (finite, open or closed ends as each flag's help says)."""
    _real(config, "val_fraction", low=0, high=1, low_open=True, high_open=True, optional=True,
          what="in (0, 1)")
    _real(config, "lr", low=0, low_open=True, what="> 0")
    _real(config, "momentum", low=0, high=1, high_open=True, what="in [0, 1)")
    _real(config, "weight_decay", low=0, what=">= 0")
    _real(config, "lr_decay", low=0, high=1, low_open=True, what="in (0, 1]")
    _real(config, "smoothing", low=0, high=1, high_open=True, what="in [0, 1)")
    _real(config, "gce_q", low=0, high=1, low_open=True, what="in (0, 1]")
    _real(config, "sce_alpha", low=0, what=">= 0")
    _real(config, "sce_beta", low=0, what=">= 0")
    _real(config, "js_weight", low=0, high=1, low_open=True, high_open=True, what="in (0, 1)")
    _real(config, "radius", low=0, low_open=True, what="> 0")
    _real(config, "radius_growth", low=0, low_open=True, what="> 0")
    _real(config, "head_radius", low=0, low_open=True, optional=True, what="> 0")


def _choice(config: FinetuneConfig, name: str, options: tuple[str, ...]) -> None:
    value = getattr(config, name)
    if value not in options:
        raise HessauditError(f"{_flag(name)} {value!r} is not one of {', '.join(options)}")


def _check_loss_choice(config: FinetuneConfig) -> None:
    """``--optimizer``, ``--schedule``, ``--loss`` are known; ``--nonneg-correction`` is a flag
    and goes with ``--loss reweight`` only."""
    _choice(config, "optimizer", OPTIMIZERS)
    _choice(config, "schedule", SCHEDULES)
    _choice(config, "loss", LOSSES)
    if not isinstance(config.nonneg_correction, bool):
        raise HessauditError(f"--nonneg-correction {config.nonneg_correction!r} must be a flag")
    if config.nonneg_correction and config.loss != "reweight":
        raise HessauditError(
            f"--nonneg-correction applies to --loss reweight, not --loss {config.loss}",
            hint="drop --nonneg-correction or use --loss reweight",
        )


def _resolve_constraint(config: FinetuneConfig) -> str:
    """``--constraint`` (default: ``frobenius`` for ``--loss reweight``, else ``none``); also
    checks the SCE weights and ``--penalty``."""
    constraint = config.constraint
    if constraint is None:
        constraint = "frobenius" if config.loss == "reweight" else "none"
    if constraint not in CONSTRAINTS:
        raise HessauditError(
            f"--constraint {constraint!r} is not one of {', '.join(CONSTRAINTS)}"
        )
    if config.loss == "sce" and config.sce_alpha == 0 and config.sce_beta == 0:
        raise HessauditError("--sce-alpha and --sce-beta are both 0; the loss would be 0")
    parse_penalty(config.penalty)
    return constraint


def _resolve_noise_matrix(config: FinetuneConfig, estimate_method: str) -> tuple[str | None, str]:
    """``(noise_matrix, estimate_method)``: ``--noise-matrix`` normalized (``none``/empty ->
    None; ``estimate``/``injected`` lower-cased; ``estimate:METHOD`` -> ``estimate`` and the
    method), checked against the loss and ``--inject-noise``."""
    matrix = config.noise_matrix.strip() if config.noise_matrix is not None else None
    if matrix is not None and matrix.lower() in ("none", ""):
        matrix = None
    if config.loss in NEEDS_NOISE_MATRIX and matrix is None:
        raise HessauditError(
            f"--loss {config.loss} needs --noise-matrix",
            hint="symmetric:RATE, a .csv/.npy/.json file, 'estimate', or 'injected' "
            "with --inject-noise",
        )
    if matrix is not None and matrix.lower() == "injected" and config.inject_noise is None:
        raise HessauditError("--noise-matrix injected needs --inject-noise")
    if matrix is not None and matrix.lower() in ("estimate", "injected"):
        matrix = matrix.lower()
    if matrix is not None and matrix.lower().startswith("estimate:"):
        # estimate:METHOD picks the method; a non-default --estimate-method must agree
        method = _estimate_method(matrix.split(":", 1)[1], flag="--noise-matrix")
        if estimate_method not in (method, "confident"):
            raise HessauditError(
                f"--noise-matrix {matrix} and --estimate-method {config.estimate_method} "
                "disagree",
                hint="give the method once, e.g. --noise-matrix estimate:dual-t",
            )
        matrix, estimate_method = "estimate", method
    if matrix is not None and matrix.lower().startswith("symmetric:"):
        parse_rate(matrix.split(":", 1)[1], flag="--noise-matrix")
    return matrix, estimate_method


def _check_inject_noise(config: FinetuneConfig) -> None:
    """``--inject-noise`` is ``symmetric:RATE``, ``asymmetric:RATE[:MAP.json]`` or
    ``matrix:FILE`` (the file is read when the run starts)."""
    if config.inject_noise is None:
        return
    kind, _, rest = config.inject_noise.strip().partition(":")
    if kind.lower() not in ("symmetric", "asymmetric", "matrix") or not rest:
        raise HessauditError(
            f"--inject-noise: unknown noise spec {config.inject_noise!r}",
            hint="use symmetric:RATE, asymmetric:RATE[:MAP.json] or matrix:FILE",
        )
    if kind.lower() in ("symmetric", "asymmetric"):
        parse_rate(rest.split(":", 1)[0], flag="--inject-noise")
