"""The audit's measures side by side: the ``measures`` object of every audit JSON.

Whether the Hessian term tracks the generalization gap is an empirical question, so an audit
also reports the alternatives, all computed over the **same layers** i = 1..L (the measured
layers of ``layers``), with v_i = vec(W_ft,i - W_pre,i) (vec(W_ft,i) for a new head):

``hessian_term``
    G = sqrt(C) * sum_i sqrt(max(Hcal_i, 0)) / sqrt(n), the audit's top-level ``hessian_term``
    (Theorem 2.1 of Ju, Li & Zhang, ICML 2022).
``sum_sqrt_hcal``
    sum_i sqrt(max(Hcal_i, 0)): G without its sqrt(C / n) factor, so that audits with
    different C or n compare on the Hessian part alone.
``distance_fro`` and ``distance_fro_sq``
    sum_i ||v_i||_F and sum_i ||v_i||_F^2: the plain distance from the pretrained weights
    (the second is the squared Euclidean distance over all measured weights together).
``trace_distance``
    sum_i ||v_i||_F^2 * Tr[H_i], the form of the paper's corollary for distance-constrained
    fine-tuning (Hcal_i <= alpha_i^2 * max over examples of Tr[H_i^+] when
    ||v_i||_F <= alpha_i). Which trace: the layer's ``trace``, the **Hutchinson estimate of the
    trace of the block Hessian of the mean loss** over the first ``--spectrum-samples`` audit
    examples (``--trace-probes`` Rademacher probes), not the per-example maximum of
    Tr[H_i^+] the corollary names. On the exact JVP path (piecewise-linear networks) that block
    equals its Gauss-Newton block, which is positive semidefinite, so there Tr[H_i] =
    Tr[H_i^+]; elsewhere it is the raw trace. ``trace_distance_stderr`` =
    sqrt(sum_i ||v_i||_F^4 * se_i^2) (independent probes per layer). Both are null when a layer
    has no trace (``--no-spectrum``).
``noise_stability`` (with ``--noise-stability EPS``; null otherwise)
    The released code's ``compute_noise_stability.py``: add independent Gaussian noise
    z ~ N(0, EPS^2 I) to every measured weight tensor at once, recompute the mean loss
    Lbar(W + z) over the held-out data (``--eval-data``, else ``--data``), and report over
    ``draws`` independent draws (``--noise-draws``, default 20, seeded by ``--seed``) the
    ``mean`` and ``std`` (sample standard deviation) of Lbar(W + z) - Lbar(W), with
    ``stderr`` = std / sqrt(draws). By Taylor's theorem, with Gaussian odd moments zero,
    E[Lbar(W + z) - Lbar(W)] = (EPS^2 / 2) * Tr[H] + O(EPS^4), where Tr[H] = sum_i Tr[H_i] is
    the trace of the mean-loss Hessian restricted to the measured weights (the diagonal
    blocks' traces add up to it). The first-order term g^T z has mean 0 but standard deviation
    EPS * ||g||, so at a point with a non-zero gradient the draws' spread is usually larger
    than their mean; ``stderr`` says how well the mean is known.

Everything here except :func:`noise_stability` is pure Python (no torch), so ``correlate`` can
recompute the layer-based measures of an audit written before ``measures`` existed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

#: The scalar measures ``correlate`` relates to the gap, in the order it shows them.
#: ``noise_stability`` contributes its ``mean``.
MEASURE_NAMES = (
    "hessian_term",
    "sum_sqrt_hcal",
    "distance_fro",
    "distance_fro_sq",
    "trace_distance",
    "noise_stability",
)
#: Short labels for tables and plots.
MEASURE_LABELS = {
    "hessian_term": "G (Hessian term)",
    "sum_sqrt_hcal": "Σ√Hcal",
    "distance_fro": "Σ‖v‖_F",
    "distance_fro_sq": "Σ‖v‖_F²",
    "trace_distance": "Σ‖v‖²·Tr H",
    "noise_stability": "noise stability",
    "bound": "bound",
}
#: Which trace ``trace_distance`` uses (recorded as ``trace_distance_trace``).
TRACE_KIND = "mean-hessian-hutchinson"
DEFAULT_NOISE_DRAWS = 20
#: Most draws accepted: each is a full pass over the data.
MAX_NOISE_DRAWS = 100_000


@dataclass(frozen=True)
class NoiseStability:
    """The result of :func:`noise_stability` (see the module docstring)."""

    mean: float
    std: float
    stderr: float
    draws: int
    eps: float
    loss_before: float
    data: str  # "eval_data" or "data": where the mean loss was taken
    examples: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _number(value: Any) -> float | None:
    """A finite float from a JSON value, else None (bools are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def layer_measures(
    layers: Sequence[Mapping[str, Any]], *, hessian_term: float | None
) -> dict[str, Any]:
    """The layer-based measures of the module docstring from per-layer rows
    (``hcal``, ``dist_fro``, ``trace``, ``trace_stderr``; dicts as in the audit JSON).

    A row whose ``hcal`` or ``dist_fro`` is not a finite number makes the sums that need it
    null, so a damaged document never yields a partial sum that looks complete.
    """
    hcal = [_number(layer.get("hcal")) for layer in layers]
    dist = [_number(layer.get("dist_fro")) for layer in layers]
    trace = [_number(layer.get("trace")) for layer in layers]
    stderr = [_number(layer.get("trace_stderr")) for layer in layers]
    hcal_ok = all(h is not None for h in hcal)
    dist_ok = all(d is not None for d in dist)
    trace_ok = dist_ok and all(t is not None for t in trace)
    stderr_ok = trace_ok and all(s is not None for s in stderr)
    return {
        "hessian_term": _number(hessian_term),
        "sum_sqrt_hcal": sum(math.sqrt(max(h, 0.0)) for h in hcal) if hcal_ok else None,
        "distance_fro": sum(dist) if dist_ok else None,
        "distance_fro_sq": sum(d * d for d in dist) if dist_ok else None,
        "trace_distance": (
            sum(d * d * t for d, t in zip(dist, trace, strict=True)) if trace_ok else None
        ),
        "trace_distance_stderr": (
            math.sqrt(sum(d**4 * s**2 for d, s in zip(dist, stderr, strict=True)))
            if stderr_ok
            else None
        ),
    }


def build_measures(
    layers: Sequence[Mapping[str, Any]],
    *,
    hessian_term: float,
    trace_examples: int | None,
    trace_probes: int | None,
    noise: NoiseStability | None = None,
) -> dict[str, Any]:
    """The audit JSON's ``measures`` object.

    ``trace_examples`` / ``trace_probes``: the examples and probes of each layer's trace
    (None without ``--spectrum``). Keys: those of :func:`layer_measures`, plus
    ``trace_distance_trace`` (:data:`TRACE_KIND`, or null without traces), ``trace_examples``,
    ``trace_probes``, ``layers`` (how many layers every sum runs over) and ``noise_stability``
    (:meth:`NoiseStability.to_dict`, or null).
    """
    measures = layer_measures(layers, hessian_term=hessian_term)
    has_trace = measures["trace_distance"] is not None
    measures.update(
        {
            "trace_distance_trace": TRACE_KIND if has_trace else None,
            "trace_examples": trace_examples if has_trace else None,
            "trace_probes": trace_probes if has_trace else None,
            "layers": len(layers),
            "noise_stability": None if noise is None else noise.to_dict(),
        }
    )
    return measures


def measure_value(measures: Mapping[str, Any], name: str) -> float | None:
    """The scalar of measure ``name`` in a ``measures`` object read from a file: a finite
    number or None (``noise_stability`` gives its ``mean``)."""
    value = measures.get(name)
    if name == "noise_stability":
        value = value.get("mean") if isinstance(value, Mapping) else None
    return _number(value)


def document_measures(document: Mapping[str, Any]) -> dict[str, float | None]:
    """Each measure of :data:`MEASURE_NAMES` for an audit document read from a file: a finite
    number or None. An audit written before ``measures`` existed gets its layer-based measures
    recomputed from its ``layers`` (all rows must be objects, else none is computed)."""
    measures = document.get("measures")
    if not isinstance(measures, Mapping):
        layers = document.get("layers")
        rows = [row for row in layers if isinstance(row, Mapping)] if isinstance(
            layers, list
        ) else []
        complete = isinstance(layers, list) and len(rows) == len(layers) and bool(rows)
        measures = (
            layer_measures(rows, hessian_term=document.get("hessian_term")) if complete else {}
        )
    values = {name: measure_value(measures, name) for name in MEASURE_NAMES}
    if values["hessian_term"] is None:
        values["hessian_term"] = _number(document.get("hessian_term"))
    return values


def check_noise_options(eps: float | None, draws: int | None) -> int:
    """Validate ``--noise-stability`` / ``--noise-draws``; return the number of draws."""
    from hessaudit.errors import HessauditError

    if eps is None:
        if draws is not None:
            raise HessauditError("--noise-draws needs --noise-stability EPS")
        return DEFAULT_NOISE_DRAWS
    if not (math.isfinite(eps) and eps > 0):
        raise HessauditError(
            f"--noise-stability must be a positive finite noise standard deviation, not {eps!r}",
            hint="the released code uses 1e-3",
        )
    draws = DEFAULT_NOISE_DRAWS if draws is None else draws
    if not 2 <= draws <= MAX_NOISE_DRAWS:
        raise HessauditError(
            f"--noise-draws must be between 2 and {MAX_NOISE_DRAWS} (a std needs 2), "
            f"not {draws}"
        )
    return draws


def noise_stability(
    model: Any,
    names: Sequence[str],
    batches: Sequence[tuple[Any, Any]],
    *,
    eps: float,
    draws: int = DEFAULT_NOISE_DRAWS,
    seed: int = 0,
    data: str = "data",
) -> NoiseStability:
    """Noise stability of ``model`` (eval mode) on ``batches`` of (x, y), perturbing the
    parameters ``names`` (see the module docstring).

    The noise is drawn on the CPU from ``torch.Generator().manual_seed(seed)``, parameter by
    parameter in the order of ``names``, then moved to the parameter's device and dtype, so
    the same seed gives the same noise on every device. Losses are summed in float64. The
    parameters are restored bit for bit afterwards, also when an exception interrupts.
    """
    import torch

    check_noise_options(eps, draws)
    params = dict(model.named_parameters())
    targets = [params[name] for name in names]
    generator = torch.Generator().manual_seed(seed)
    saved = [p.detach().clone() for p in targets]
    examples = sum(int(y.shape[0]) for _, y in batches)

    def mean_loss() -> float:
        total = torch.zeros((), dtype=torch.float64)
        for x, y in batches:
            loss = torch.nn.functional.cross_entropy(model(x), y, reduction="sum")
            total += loss.detach().double().cpu()
        return float(total) / examples

    diffs = []
    with torch.no_grad():
        before = mean_loss()
        try:
            for _ in range(draws):
                for param, original in zip(targets, saved, strict=True):
                    noise = torch.randn(param.shape, generator=generator, dtype=torch.float64)
                    param.copy_(original + eps * noise.to(device=param.device, dtype=param.dtype))
                diffs.append(mean_loss() - before)
        finally:
            for param, original in zip(targets, saved, strict=True):
                param.copy_(original)
    values = torch.tensor(diffs, dtype=torch.float64)
    std = float(values.std(unbiased=True))
    return NoiseStability(
        mean=float(values.mean()),
        std=std,
        stderr=std / math.sqrt(draws),
        draws=draws,
        eps=float(eps),
        loss_before=before,
        data=data,
        examples=examples,
        seed=seed,
    )
