"""One audit request: every option of an audit, normalized, validated once, frozen.

:class:`AuditRequest` is what :func:`hessaudit.audit.run.run_audit` takes. Its field names are
the flags of ``hessaudit measure`` (``--lanczos-steps`` is ``lanczos_steps``) and its defaults
are written once, here (the measure's own in :class:`~hessaudit.audit.settings.MeasureSettings`)
and exported as :data:`DEFAULTS` for the command line's defaults.

One constructor, :meth:`AuditRequest.for_checkpoints`, is shared by everything that audits a
pair of checkpoints: ``hessaudit measure`` (from its parameters), ``finetune --audit`` and
``tune``'s bound objective (from their :class:`~hessaudit.robust.config.FinetuneConfig`, see
:data:`FINETUNE_OPTIONS`) and the demo. It applies the recipe
(:func:`hessaudit.audit.recipes.resolve_request`), so the request it returns is the one that runs.

Every option is checked when the request is built, before any file is read; an invalid request
cannot exist. Limits (a value outside is an error naming the flag):

* ``--model``, ``--data``: not empty.   ``--label``: :mod:`hessaudit.audit.tags`.
* ``--loss-bound``: ``max``, ``quantile:Q`` with 0 < Q < 1, or a finite number > 0
  (:mod:`hessaudit.audit.loss_bound`).   ``--epsilon``: finite, >= 0.
* ``--noise-stability``: finite, > 0; ``--noise-draws``: 2 .. 100 000, only with it
  (:func:`hessaudit.audit.measures.check_noise_options`).
* ``--reduce``, ``--form``, ``--engine``, ``--tol``, ``--lanczos-steps``, ``--batch-size``,
  ``--spectrum-samples``, ``--trace-probes``: :class:`~hessaudit.audit.settings.MeasureSettings`.
* ``--samples``, ``--n-train``, ``--num-classes``: >= 1 when given.
* ``--seed``: 0 .. 2^64 - 1; upper limits of ``--lanczos-steps`` (the per-example Lanczos keeps
  steps + 2 vectors of the layer's size per example), ``--trace-probes`` and
  ``--spectrum-samples``: :mod:`hessaudit._limits`.
* ``--dtype``: float32 or float64.
* ``--input-size``, ``--mean``, ``--std``, ``--interpolation``, ``--crop-pct``:
  :func:`hessaudit.inputs.data_flags.data_config_flags`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from hessaudit._checks import check_int, check_real
from hessaudit._limits import check_measure_flags
from hessaudit.audit.loss_bound import parse_loss_bound
from hessaudit.audit.measures import check_noise_options
from hessaudit.audit.recipes import resolve_request
from hessaudit.audit.settings import MeasureSettings
from hessaudit.audit.tags import check_labels
from hessaudit.errors import HessauditError
from hessaudit.inputs.data_flags import data_config_flags, parse_floats
from hessaudit.inputs.text_options import TextOptions

__all__ = ["DEFAULTS", "FIELDS", "FINETUNE_OPTIONS", "AuditRequest", "validate_request"]

_MEASURE = MeasureSettings()  # the measure's defaults, written once (in MeasureSettings)


@dataclass(frozen=True)
class AuditRequest:
    """Everything an audit needs; field names follow the CLI flags."""

    pretrained: str
    finetuned: str
    model: str
    data: str
    eval_data: str | None = None
    num_classes: int | None = None
    samples: int | None = None
    batch_size: int = _MEASURE.batch_size
    input_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str | None = None
    crop_pct: float | None = None
    n_train: int | None = None
    # None or "max" | "quantile:Q" | a number (hessaudit.audit.loss_bound); a float is a user C.
    loss_bound: float | str | None = None
    epsilon: float = 0.0
    reduce: str = _MEASURE.reduce
    form: str = _MEASURE.form
    engine: str = _MEASURE.engine
    lanczos_steps: int = _MEASURE.lanczos_steps
    tol: float = _MEASURE.tol
    spectrum: bool = _MEASURE.spectrum
    spectrum_samples: int = _MEASURE.spectrum_samples
    trace_probes: int = _MEASURE.trace_probes
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    include_bias: bool = False
    include_norm: bool = False
    exclude_new_head: bool = False
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    allow_hub: bool = False
    recipe: str = "theorem"  # hessaudit.audit.recipes: "theorem" | "released"
    labels: str | None = None  # --labels FILE: the labels trained on (hessaudit.inputs.labels)
    noise_stability: float | None = None  # EPS of the noise-stability measure (None: off)
    noise_draws: int | None = None  # None: hessaudit.audit.measures.DEFAULT_NOISE_DRAWS
    tags: tuple[tuple[str, str], ...] = ()  # --label KEY=VALUE, stored in inputs.tags
    # --text-column, --label-column, --tokenizer, --max-length (hessaudit.inputs.text_options)
    text: TextOptions = field(default_factory=TextOptions)

    def __post_init__(self) -> None:
        for name, value in _normalized(self).items():
            object.__setattr__(self, name, value)
        validate_request(self)

    @classmethod
    def for_checkpoints(
        cls,
        pretrained: str | os.PathLike[str],
        finetuned: str | os.PathLike[str],
        *,
        model: str,
        data: str,
        finetune: Any = None,
        given: Collection[str] | None = None,
        **options: Any,
    ) -> AuditRequest:
        """The request that audits ``finetuned`` against ``pretrained``, its recipe applied.

        ``options`` are any other fields, in the shapes a command line gives them (paths,
        lists or None for repeatable flags). ``finetune`` (a
        :class:`~hessaudit.robust.config.FinetuneConfig`) supplies the options a fine-tuning
        run shares with the audit of its checkpoints (:data:`FINETUNE_OPTIONS`); ``options``
        win over it. ``given`` names the options the user gave explicitly (the command line's),
        for the recipe's conflict check (:func:`~hessaudit.audit.recipes.resolve_request`).
        """
        shared = {} if finetune is None else {n: getattr(finetune, n) for n in FINETUNE_OPTIONS}
        request = cls(
            pretrained=os.fspath(pretrained),
            finetuned=os.fspath(finetuned),
            model=model,
            data=data,
            **{**shared, **options},
        )
        return resolve_request(request, given)

    def settings(self) -> MeasureSettings:
        """The measure's part of the request."""
        return MeasureSettings(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(MeasureSettings)}
        )


#: The name of every field (a command picks its request options by these names).
FIELDS = frozenset(f.name for f in dataclasses.fields(AuditRequest))

#: Every field's default, for the command line's option defaults (written once: above).
DEFAULTS = MappingProxyType(
    {
        f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
        for f in dataclasses.fields(AuditRequest)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    }
)

#: The fields a fine-tuning run shares with the audit of its checkpoints: a
#: :class:`~hessaudit.robust.config.FinetuneConfig` has each of them, with the same flag and
#: meaning (not ``samples``: the audit's is ``--audit-samples``).
FINETUNE_OPTIONS = (
    "batch_size", "input_size", "mean", "std", "interpolation", "crop_pct", "seed", "device",
    "allow_hub",
)


def _normalized(request: AuditRequest) -> dict[str, Any]:
    """The fields given in another accepted shape, converted: paths to strings, repeatable
    flags to tuples (None: not given), ``--mean`` / ``--std`` to floats, labels to pairs."""
    changes: dict[str, Any] = {
        name: os.fspath(getattr(request, name))
        for name in ("pretrained", "finetuned")
        if isinstance(getattr(request, name), os.PathLike)
    }
    changes["tags"] = check_labels(request.tags)
    changes["mean"] = parse_floats(request.mean, "--mean")
    changes["std"] = parse_floats(request.std, "--std")
    changes["include"] = tuple(request.include or ())
    changes["exclude"] = tuple(request.exclude or ())
    return changes


def validate_request(request: AuditRequest) -> None:
    """Check every option of ``request`` (the limits of the module docstring); raise
    :class:`HessauditError` naming the flag of the first bad one."""
    parse_loss_bound(request.loss_bound)  # max | quantile:Q | a positive number
    check_noise_options(request.noise_stability, request.noise_draws)
    for flag, value in (("--model", request.model), ("--data", request.data)):
        if not isinstance(value, str) or not value.strip():
            raise HessauditError(f"{flag} is empty")
    check_real("--epsilon", request.epsilon, low=0)
    request.settings()  # --reduce, --form, --engine, --tol, ... (MeasureSettings checks them)
    check_int("--samples", request.samples, optional=True)
    check_int("--n-train", request.n_train, optional=True)
    check_int("--num-classes", request.num_classes, optional=True)
    check_measure_flags(
        seed=request.seed,
        lanczos_steps=request.lanczos_steps,
        trace_probes=request.trace_probes,
        spectrum_samples=request.spectrum_samples,
    )
    if request.dtype not in ("float32", "float64"):
        raise HessauditError(f"--dtype {request.dtype!r}: must be float32 or float64")
    data_config_flags(
        input_size=request.input_size,
        mean=request.mean,
        std=request.std,
        interpolation=request.interpolation,
        crop_pct=request.crop_pct,
    )
