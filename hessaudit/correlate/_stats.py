"""Rank and linear correlation with seeded bootstrap intervals (numpy and pandas; no scipy).

For paired samples (x_k, y_k), k = 1..n:

* Pearson r = sum_k (x_k - xbar)(y_k - ybar) / sqrt(sum_k (x_k - xbar)^2 * sum_k (y_k - ybar)^2),
  undefined (None) when either sample is constant or n < 3;
* Spearman rho = Pearson r of the ranks, ties given their average rank (pandas
  ``rank(method="average")``), the usual tie-corrected definition;
* bootstrap (with at least :data:`MIN_BOOTSTRAP_POINTS` pairs): B resamples of the n pairs
  drawn with replacement, index matrix from ``numpy.random.default_rng(seed)``; the interval
  is the percentile interval (numpy's linear percentiles at (1 - level) / 2 and
  (1 + level) / 2) over the resamples on which the correlation is defined. When fewer than
  half of them are (e.g. a variable that is nearly constant), the interval is None rather
  than an interval from a biased remainder.
  The same seed gives the same index matrix for every variable with the same n, so the
  intervals of different measures on the same audits come from the same resamples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

MIN_POINTS = 3
#: Fewest pairs for a bootstrap interval: with fewer, most resamples hold two or three distinct
#: pairs, whose correlation is +-1 or nearly so, and the percentile interval means nothing.
MIN_BOOTSTRAP_POINTS = 6
DEFAULT_LEVEL = 0.95
MAX_BOOTSTRAP = 100_000
# Resampled values held at once (per variable) while bootstrapping.
_BLOCK_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class Correlation:
    """Spearman and Pearson of one pair of samples, with bootstrap intervals."""

    n: int
    spearman: float | None
    spearman_lo: float | None
    spearman_hi: float | None
    pearson: float | None
    pearson_lo: float | None
    pearson_hi: float | None
    bootstrap: int  # resamples drawn
    bootstrap_valid: int  # resamples on which both correlations were defined

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rows_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair of two (B, n) arrays; NaN where a row is constant."""
    dx = x - x.mean(axis=1, keepdims=True)
    dy = y - y.mean(axis=1, keepdims=True)
    sxx = (dx * dx).sum(axis=1)
    syy = (dy * dy).sum(axis=1)
    denom = np.sqrt(sxx * syy)
    # A row is constant when its spread vanishes against its own scale (exact zero after
    # centring can be missed by round-off in the mean).
    scale_x = np.abs(x).max(axis=1) ** 2 * x.shape[1]
    scale_y = np.abs(y).max(axis=1) ** 2 * y.shape[1]
    constant = (sxx <= 1e-24 * scale_x) | (syy <= 1e-24 * scale_y) | ~(denom > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (dx * dy).sum(axis=1) / denom
    r = np.clip(r, -1.0, 1.0)
    r[constant] = np.nan
    return r


def _rows_ranks(x: np.ndarray) -> np.ndarray:
    import pandas as pd

    return pd.DataFrame(x).rank(axis=1, method="average").to_numpy(dtype=np.float64)


def pearson(x: Any, y: Any) -> float | None:
    """Pearson r of two equal-length samples (None when undefined; see the module docstring)."""
    xs, ys = _pair(x, y)
    if len(xs) < MIN_POINTS:
        return None
    return _finite(_rows_pearson(xs[None, :], ys[None, :])[0])


def spearman(x: Any, y: Any) -> float | None:
    """Spearman rho (Pearson of average ranks) of two equal-length samples."""
    xs, ys = _pair(x, y)
    if len(xs) < MIN_POINTS:
        return None
    return _finite(_rows_pearson(_rows_ranks(xs[None, :]), _rows_ranks(ys[None, :]))[0])


def correlate_pair(
    x: Any, y: Any, *, bootstrap: int = 1000, seed: int = 0, level: float = DEFAULT_LEVEL
) -> Correlation:
    """Both correlations of (x, y) with percentile bootstrap intervals at ``level``."""
    xs, ys = _pair(x, y)
    n = len(xs)
    rho, r = spearman(xs, ys), pearson(xs, ys)
    if n < MIN_BOOTSTRAP_POINTS or bootstrap <= 0:
        return Correlation(n, rho, None, None, r, None, None, 0, 0)
    rng = np.random.default_rng(seed)
    boot_r, boot_rho = np.empty(bootstrap), np.empty(bootstrap)
    # In blocks of rows, to bound memory; the index stream is the same as one (B, n) draw.
    block = max(1, _BLOCK_ELEMENTS // n)
    for start in range(0, bootstrap, block):
        rows = min(block, bootstrap - start)
        index = rng.integers(0, n, size=(rows, n))
        bx, by = xs[index], ys[index]
        boot_r[start : start + rows] = _rows_pearson(bx, by)
        boot_rho[start : start + rows] = _rows_pearson(_rows_ranks(bx), _rows_ranks(by))
    valid = np.isfinite(boot_r) & np.isfinite(boot_rho)
    count = int(valid.sum())
    if count < bootstrap / 2:
        return Correlation(n, rho, None, None, r, None, None, bootstrap, count)
    tails = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    rho_lo, rho_hi = np.percentile(boot_rho[valid], tails)
    r_lo, r_hi = np.percentile(boot_r[valid], tails)
    return Correlation(
        n,
        rho,
        float(rho_lo) if rho is not None else None,
        float(rho_hi) if rho is not None else None,
        r,
        float(r_lo) if r is not None else None,
        float(r_hi) if r is not None else None,
        bootstrap,
        count,
    )


def median_ratio(x: Any, y: Any) -> tuple[float | None, int]:
    """(median of x_k / y_k over the pairs with y_k > 0, how many such pairs)."""
    xs, ys = _pair(x, y)
    keep = ys > 0
    if not keep.any():
        return None, 0
    return float(np.median(xs[keep] / ys[keep])), int(keep.sum())


def _pair(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    xs = np.asarray(x, dtype=np.float64).reshape(-1)
    ys = np.asarray(y, dtype=np.float64).reshape(-1)
    if xs.shape != ys.shape:
        raise ValueError(f"samples of different lengths: {xs.size} and {ys.size}")
    return xs, ys


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
