"""Layerwise distance constraints: per-tensor radii and the projection onto Frobenius balls.

After every optimizer step each constrained tensor ``W_i`` is projected back onto the ball of
radius ``D_i`` around its pretrained value ``W_i^(s)``::

    W_i <- W_i^(s) + (W_i - W_i^(s)) * min(1, D_i / ||W_i - W_i^(s)||_F)

(the Euclidean projection onto the ball; the identity inside it). The new head, which has no
pretrained value, is kept in a ball of radius ``D_head`` around zero.

Which tensors are constrained: by default every trainable weight tensor with 2 or more
dimensions (conv and linear kernels: the same "layers" the Hessian measure uses); biases and
normalization parameters are free. The radii (:func:`layer_radii`):

* **timm / torchvision ResNets** (any model with ``layerN.`` stages): by stage. The stem
  (``conv1``, ``bn1``, everything before ``layer1``) is stage 0 and shares ``layer1``'s radius
  ``D``; ``layerN`` gets ``D * gamma^(N-1)``, i.e. ``D, D, D*gamma, D*gamma^2, D*gamma^3`` for
  stem, layer1..layer4, as in the released code. A pretrained head kept after the last stage
  shares the last stage's radius.
* **other models** (and ResNet-like names with a ``layerN`` outside 1..4): the constrained
  tensors, in ``model.named_parameters()`` order, are cut into :data:`STAGES` = 4 contiguous
  groups of (nearly) equal count, like a ResNet's four stages: the ``i``-th of ``m`` tensors
  (0-based) is in stage ``s = floor(4 i / m)`` and gets ``D * gamma^s``. So the largest radius
  is ``D * gamma^3`` whatever the depth (a per-tensor ``gamma^i`` would reach ``gamma^51`` on
  MobileNetV2's 52 tensors); a model with fewer than 4 constrained tensors has one per stage.
* **the new head** (tensors not in the pretrained checkpoint): ``D_head`` around zero, or
  unconstrained when no head radius is given.
* **module groups** (``--radius-attention``, ``--radius-linear``): the pretrained tensors of
  those groups get that radius instead (:mod:`hessaudit.robust.group_radii`).
* **a radius table** (``--radius-table FILE``) overrides all of the above by name pattern;
  see :func:`load_radius_table`.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hessaudit.errors import HessauditError
from hessaudit.inputs.guard import refuse_special_file

__all__ = [
    "constrainable_names",
    "distances",
    "layer_radii",
    "load_radius_table",
    "project_to_balls_",
]

_STAGE = re.compile(r"(?:^|\.)layer(\d+)\.")
#: Depth groups of ``--radius-growth``: a ResNet's layer1..layer4, or as many equal groups.
STAGES = 4


def _params(model: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if isinstance(model, nn.Module):
        return dict(model.named_parameters())
    return dict(model)


def constrainable_names(model: nn.Module) -> list[str]:
    """Trainable weight tensors with 2 or more dimensions, in ``named_parameters`` order."""
    return [n for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]


def load_radius_table(path: str | os.PathLike[str]) -> list[tuple[str, float | None]]:
    """Read a per-layer radius table: an ordered list of ``(pattern, radius)``.

    Formats:

    * **JSON**: an object ``{"layer1.*": 2.0, "fc.weight": 5.0, "conv1.weight": null}`` (in file
      order) or a list ``[{"pattern": "layer1.*", "radius": 2.0}, ...]``;
    * **CSV**: a header ``pattern,radius`` and one row per pattern.

    Patterns are shell-style globs (``fnmatch``) on parameter names (``layer1.0.conv1.weight``);
    the first matching pattern wins. A radius of ``null`` / empty / ``none`` leaves the tensor
    unconstrained. Only constrained tensors (weight tensors with 2+ dimensions) are matched.
    """
    p = Path(path)
    flag = "--radius-table"
    refuse_special_file(p, f"{flag}:")
    if not p.is_file():
        raise HessauditError(f"{flag}: file {p} does not exist")
    raw: list[tuple[str, Any]] = []
    suffix = p.suffix.lower()
    if suffix == ".json":
        try:
            obj = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise HessauditError(f"{flag}: {p} is not valid JSON ({exc.msg})") from None
        if isinstance(obj, dict):
            raw = list(obj.items())
        elif isinstance(obj, list) and all(isinstance(e, dict) for e in obj):
            try:
                raw = [(e["pattern"], e.get("radius")) for e in obj]
            except KeyError:
                raise HessauditError(f"{flag}: {p}: every entry needs a 'pattern'") from None
        else:
            raise HessauditError(f"{flag}: {p} must hold a JSON object or a list of objects")
    elif suffix == ".csv":
        with p.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or {"pattern", "radius"} - set(reader.fieldnames):
                raise HessauditError(f"{flag}: {p} needs a header line 'pattern,radius'")
            raw = [(row["pattern"], row["radius"]) for row in reader]
    else:
        raise HessauditError(f"{flag}: unknown table type {p.suffix or '(none)'} for {p}",
                             hint="use .json or .csv")
    table: list[tuple[str, float | None]] = []
    for pattern, value in raw:
        if not isinstance(pattern, str) or not pattern.strip():
            raise HessauditError(f"{flag}: {p} has an empty pattern")
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
            table.append((pattern.strip(), None))
            continue
        try:
            r = float(value)
        except (TypeError, ValueError):
            raise HessauditError(f"{flag}: {p}: radius {value!r} for {pattern} is not a number") \
                from None
        if not (math.isfinite(r) and r > 0):
            raise HessauditError(f"{flag}: {p}: radius {value} for {pattern} must be > 0")
        table.append((pattern.strip(), r))
    return table


def _check_positive(value: float, flag: str) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise HessauditError(f"{flag} {value} must be a positive number")
    return float(value)


def layer_radii(
    names: Sequence[str],
    *,
    radius: float,
    growth: float = 1.0,
    head_radius: float | None = None,
    head_names: Iterable[str] = (),
    table: Sequence[tuple[str, float | None]] | None = None,
    model_name: str | None = None,
    overrides: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """The radius of every constrained tensor; tensors left unconstrained are absent.

    ``names`` are the candidate tensors in model order (usually :func:`constrainable_names`);
    ``head_names`` those without a pretrained value (the new head). See the module docstring for
    the rules: ``growth`` compounds over at most 4 stages, so no radius exceeds
    ``radius * growth**3`` (without a table). ``overrides`` (the group radii) replace the
    radius of the tensors they name; a ``table`` pattern still wins over them. ``model_name``
    is informational (ResNet staging is detected from ``layerN.`` names, which covers timm
    and torchvision ResNets).
    """
    del model_name  # staging is decided from the names themselves
    radius = _check_positive(radius, "--radius")
    growth = _check_positive(growth, "--radius-growth")
    if head_radius is not None:
        head_radius = _check_positive(head_radius, "--head-radius")
    heads = set(head_names)
    body = [n for n in names if n not in heads]

    radii: dict[str, float | None] = {
        name: radius * growth**stage for name, stage in zip(body, _stages(body), strict=True)
    }
    for name in names:
        if name in heads:
            radii[name] = head_radius
    radii.update(overrides or {})

    if table:
        used = [False] * len(table)
        for name in names:
            for t, (pattern, value) in enumerate(table):
                if fnmatch.fnmatchcase(name, pattern):
                    radii[name] = value
                    used[t] = True
                    break
        unused = [pattern for (pattern, _), u in zip(table, used, strict=True) if not u]
        if unused:
            raise HessauditError(
                f"--radius-table: pattern {unused[0]!r} matches no constrained tensor",
                hint="patterns are globs on weight tensors with 2+ dimensions, e.g. 'layer1.*'",
            )
    return {n: float(r) for n, r in radii.items() if r is not None}


def _stages(body: Sequence[str]) -> list[int]:
    """The growth exponent (0..STAGES-1) of each tensor; see the module docstring."""
    found = [_STAGE.search(n) for n in body]
    numbers = {int(m.group(1)) for m in found if m is not None}
    if numbers and numbers <= set(range(1, STAGES + 1)):
        # ResNet: the stem (before layer1) is stage 0 like layer1; a head after layer4 stays
        # in the last stage seen
        out, last = [], 1
        for m in found:
            if m is not None:
                last = int(m.group(1))
            out.append(last - 1)
        return out
    m = len(body)
    return [STAGES * i // m for i in range(m)]


@torch.no_grad()
def distances(
    model: nn.Module | Mapping[str, torch.Tensor],
    anchors: Mapping[str, torch.Tensor],
    names: Iterable[str],
) -> dict[str, float]:
    """``||W - W_pre||_F`` for each name (distance from zero where there is no anchor)."""
    params = _params(model)
    out: dict[str, float] = {}
    for name in names:
        w = params[name]
        a = anchors.get(name)
        d = w if a is None else w - a
        out[name] = float(torch.linalg.vector_norm(d.double()))
    return out


@torch.no_grad()
def project_to_balls_(
    model: nn.Module | Mapping[str, torch.Tensor],
    anchors: Mapping[str, torch.Tensor],
    radii: Mapping[str, float],
) -> dict[str, float]:
    """Project each tensor named in ``radii`` onto its ball, in place.

    ``W <- W_pre + (W - W_pre) * min(1, D / ||W - W_pre||_F)`` with ``W_pre = anchors[name]``
    (zero when ``name`` is not in ``anchors``). Tensors inside their ball are not touched (not
    even rewritten). Returns the distance of every projected tensor after the step (at most
    ``D``, up to float rounding).
    """
    params = _params(model)
    out: dict[str, float] = {}
    for name, r in radii.items():
        w = params[name]
        a = anchors.get(name)
        d = w if a is None else w - a
        norm = float(torch.linalg.vector_norm(d, dtype=torch.float64))
        if norm > r:
            scaled = d * (r / norm)
            if a is None:
                w.copy_(scaled)
            else:
                w.copy_(a + scaled)
            out[name] = r
        else:
            out[name] = norm
    return out
