"""The search space of ``hessaudit tune``: which finetune options are searched, over what range.

* :class:`ParamSpec`: one searched option (a float or int range, log-uniform or not, or a
  categorical list) and how Optuna draws it;
* :data:`DEFAULT_SPACE`: the built-in ranges, log-uniform where the option is a scale;
* :func:`load_space_file`: the ``--space`` JSON file, checked (only finetune options, never one
  of :data:`NOT_TUNABLE`);
* :func:`build_space`: the parameters searched for a given base config (the defaults that apply
  to its loss and constraint, the file's changes, minus the options fixed on the command line).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hessaudit.errors import HessauditError
from hessaudit.inputs.guard import refuse_special_file
from hessaudit.robust.config import FinetuneConfig

__all__ = ["DEFAULT_SPACE", "NOT_TUNABLE", "ParamSpec", "build_space", "load_space_file"]

#: Finetune options a search never varies: they fix the model, the data, the labels and the
#: validation split (every trial must see the same ones), or the run's length and outputs.
NOT_TUNABLE = frozenset({
    "model", "pretrained", "data", "out", "eval_data", "val_fraction", "device", "seed",
    "allow_hub", "inject_noise", "noise_seed", "noise_matrix", "audit", "audit_samples",
    "epochs", "samples", "num_classes", "input_size", "radius_table", "early_stop",
    "mean", "std", "interpolation", "crop_pct",
    "text_column", "label_column", "tokenizer", "max_length",
})


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
#: Searched only with the Frobenius constraint and no radius table.
_RADII = ("radius", "radius_growth", "head_radius")
#: Searched only for these losses.
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
        if key in NOT_TUNABLE:
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
