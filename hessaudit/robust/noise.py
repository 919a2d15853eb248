"""Synthetic label noise for experiments: seeded, recorded, and matching a known ``F``.

Specs (the ``--inject-noise`` flag):

* ``symmetric:RATE``: each label flips with probability ``RATE`` to one of the other ``k - 1``
  classes chosen uniformly; the matching noise matrix is exactly ``symmetric:RATE``
  (:func:`~hessaudit.robust.noise_matrix.symmetric_noise_matrix`).
* ``asymmetric:RATE``: each label of class ``c`` flips with probability ``RATE`` to one fixed
  other class, by default ``(c + 1) mod k``. ``asymmetric:RATE:MAP.json`` gives the class map:
  a JSON list of ``k`` target classes, or an object ``{"c": target, ...}``; classes missing from
  the object (or mapped to themselves) never flip. ``F = (1 - RATE) I + RATE * P_map`` (rows of
  never-flipping classes are ``e_c``).
* ``matrix:FILE``: each noisy label is drawn from row ``y`` of the ``F`` in ``FILE`` (any format
  :func:`~hessaudit.robust.noise_matrix.load_matrix_file` reads; ``F`` may be singular here).

All three draw one uniform number per example from ``numpy.random.default_rng(seed)`` and take
the noisy label by inverse-CDF sampling from row ``y`` of ``F``, so the same seed and labels give
the same flips on every platform. The realized flip rate, confusion counts and flipped indices
(positions in the label vector given) are recorded in :class:`NoiseInjection`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hessaudit.errors import HessauditError
from hessaudit.inputs.guard import refuse_special_file
from hessaudit.robust.noise_matrix import (
    load_matrix_file,
    parse_rate,
    symmetric_noise_matrix,
    validate_noise_matrix,
)

__all__ = ["NoiseInjection", "inject_noise", "noise_spec_matrix", "sample_noisy_labels"]

_FLAG = "--inject-noise"


@dataclass(frozen=True)
class NoiseInjection:
    """The record of one synthetic noise injection."""

    spec: str
    kind: str  # "symmetric" | "asymmetric" | "matrix"
    rate: float | None  # nominal rate (None for matrix:FILE)
    seed: int
    num_classes: int
    noise_matrix: np.ndarray  # nominal F, rows = true label, columns = noisy label
    class_map: tuple[int, ...] | None  # asymmetric only: class c flips to class_map[c]
    clean_labels: torch.Tensor
    noisy_labels: torch.Tensor
    flipped_indices: np.ndarray
    confusion: np.ndarray  # counts, [true, noisy]

    @property
    def realized_rate(self) -> float:
        n = int(self.clean_labels.numel())
        return float(len(self.flipped_indices)) / n if n else 0.0

    @property
    def expected_rate(self) -> float:
        """The flip rate ``F`` implies for these clean labels: mean of ``1 - F[y, y]``."""
        y = self.clean_labels.cpu().numpy()
        return float(np.mean(1.0 - np.diag(self.noise_matrix)[y])) if y.size else 0.0

    @property
    def realized_matrix(self) -> np.ndarray:
        """Row-normalized confusion counts (rows with no example are all zero)."""
        rows = self.confusion.sum(axis=1, keepdims=True).astype(np.float64)
        return np.divide(
            self.confusion, rows, out=np.zeros(self.confusion.shape), where=rows > 0
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "kind": self.kind,
            "rate": self.rate,
            "seed": self.seed,
            "num_classes": self.num_classes,
            "class_map": None if self.class_map is None else list(self.class_map),
            "noise_matrix": self.noise_matrix.tolist(),
            "num_examples": int(self.clean_labels.numel()),
            "num_flipped": len(self.flipped_indices),
            "expected_rate": self.expected_rate,
            "realized_rate": self.realized_rate,
            "realized_confusion": self.confusion.astype(int).tolist(),
            "realized_matrix": self.realized_matrix.tolist(),
            "flipped_indices": [int(i) for i in self.flipped_indices],
        }


def _load_class_map(path: str, num_classes: int) -> tuple[int, ...]:
    p = Path(path)
    refuse_special_file(p, f"{_FLAG}: class map")
    if not p.is_file():
        raise HessauditError(f"{_FLAG}: class map file {p} does not exist")
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise HessauditError(f"{_FLAG}: class map {p} is not valid JSON ({exc.msg})") from None
    mapping = list(range(num_classes))
    try:
        if isinstance(obj, list):
            if len(obj) != num_classes:
                raise HessauditError(
                    f"{_FLAG}: class map {p} lists {len(obj)} classes, the task has {num_classes}"
                )
            mapping = [int(v) for v in obj]
        elif isinstance(obj, dict):
            for key, value in obj.items():
                src = int(key)
                if not 0 <= src < num_classes:
                    raise HessauditError(f"{_FLAG}: class map {p}: class {key} is out of range")
                mapping[src] = int(value)
        else:
            raise HessauditError(f"{_FLAG}: class map {p} must be a JSON list or object")
    except (TypeError, ValueError):
        raise HessauditError(f"{_FLAG}: class map {p} has a non-integer class") from None
    for src, dst in enumerate(mapping):
        if not 0 <= dst < num_classes:
            raise HessauditError(f"{_FLAG}: class map {p} sends class {src} to {dst}, out of range")
    return tuple(mapping)


def noise_spec_matrix(
    spec: str, *, num_classes: int
) -> tuple[str, float | None, np.ndarray, tuple[int, ...] | None]:
    """Parse an ``--inject-noise`` spec: ``(kind, rate, F, class_map)``."""
    text = spec.strip()
    kind, _, rest = text.partition(":")
    kind = kind.lower()
    k = int(num_classes)
    if k < 2:
        raise HessauditError(f"{_FLAG}: noise needs at least 2 classes, the task has {k}")
    if kind == "symmetric" and rest:
        rate = parse_rate(rest, flag=_FLAG)
        return kind, rate, symmetric_noise_matrix(k, rate), None
    if kind == "asymmetric" and rest:
        rate_text, _, map_path = rest.partition(":")
        rate = parse_rate(rate_text, flag=_FLAG)
        mapping = (
            _load_class_map(map_path, k) if map_path else tuple((c + 1) % k for c in range(k))
        )
        F = np.zeros((k, k), dtype=np.float64)
        for c, d in enumerate(mapping):
            if d == c:
                F[c, c] = 1.0
            else:
                F[c, c] = 1.0 - rate
                F[c, d] = rate
        return kind, rate, F, mapping
    if kind == "matrix" and rest:
        F = validate_noise_matrix(
            load_matrix_file(rest, flag=_FLAG),
            num_classes=k,
            source=f"{_FLAG} {text}",
            allow_singular=True,
        )
        return kind, None, F, None
    raise HessauditError(
        f"{_FLAG}: unknown noise spec {spec!r}",
        hint="use symmetric:RATE, asymmetric:RATE[:MAP.json] or matrix:FILE",
    )


def sample_noisy_labels(labels: Any, F: np.ndarray, *, seed: int) -> np.ndarray:
    """Draw ``z_i ~ F[y_i, :]`` by inverse-CDF sampling, one uniform per example."""
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    rng = np.random.default_rng(seed)
    u = rng.random(y.shape[0])
    cdf = np.cumsum(F, axis=1)
    # guard against rounding: from each row's last positive entry on, the cdf is above any u
    k = F.shape[1]
    last = k - 1 - np.argmax(F[:, ::-1] > 0, axis=1)
    cdf[np.arange(k)[None, :] >= last[:, None]] = 2.0
    # first class whose cumulative probability exceeds u; zero-probability classes are skipped
    # because their cdf equals the previous one
    return (u[:, None] < cdf[y]).argmax(axis=1).astype(np.int64)


def inject_noise(labels: Any, *, num_classes: int, spec: str, seed: int) -> NoiseInjection:
    """Corrupt ``labels`` with synthetic class-conditional noise (see the module docstring)."""
    clean = torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1).cpu()
    k = int(num_classes)
    if clean.numel() and (int(clean.min()) < 0 or int(clean.max()) >= k):
        raise HessauditError(f"{_FLAG}: a label is outside 0..{k - 1}")
    kind, rate, F, mapping = noise_spec_matrix(spec, num_classes=k)
    y = clean.numpy()
    z = sample_noisy_labels(y, F, seed=seed)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y, z), 1)
    return NoiseInjection(
        spec=spec.strip(),
        kind=kind,
        rate=rate,
        seed=int(seed),
        num_classes=k,
        noise_matrix=F,
        class_map=mapping,
        clean_labels=clean,
        noisy_labels=torch.from_numpy(z),
        flipped_indices=np.flatnonzero(z != y),
        confusion=confusion,
    )
