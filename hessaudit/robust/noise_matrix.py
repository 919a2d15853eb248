"""Class-conditional label-noise matrices: build, load, validate, estimate.

Convention (used everywhere in hessaudit)
-----------------------------------------
``F`` is a ``k x k`` row-stochastic matrix with **rows = true label, columns = noisy label**::

    F[y, z] = P(noisy label = z | true label = y),   sum_z F[y, z] = 1.

The noise is assumed independent of the input ``x`` given the true label (class-conditional
noise). cleanlab's ``noise_matrix`` is the **transpose** of ``F``: cleanlab stores
``P(given label = i | true label = j)`` at ``[i, j]`` (its columns sum to 1), so
``F = cleanlab_noise_matrix.T``.

Matrices are ``numpy.ndarray`` of dtype float64 here; the losses convert them to tensors.

Sources of ``F`` understood by :func:`load_noise_matrix`:

* ``symmetric:RATE``: ``F[y, y] = 1 - RATE`` and ``F[y, z] = RATE / (k - 1)`` for ``z != y``;
* a file: ``.npy`` (a ``k x k`` array), ``.csv`` (``k`` lines of ``k`` comma-separated numbers,
  one optional header line of class names is skipped), or ``.json`` (a list of ``k`` rows, or an
  object with a ``"noise_matrix"`` key holding one, such as the ``noise.json`` a finetune run
  writes).

``estimate`` / ``estimate:METHOD`` (fit a first model, then :func:`estimate_noise_matrix`) and
``injected`` (the matrix used to inject synthetic noise) need a training run and are resolved by
:func:`hessaudit.robust.trainer.run_finetune`.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from hessaudit.errors import HessauditError
from hessaudit.inputs.guard import refuse_special_file
from hessaudit.robust.predictions import check_predictions

__all__ = [
    "ESTIMATE_METHODS",
    "MAX_CONDITION_NUMBER",
    "ROW_SUM_TOLERANCE",
    "estimate_noise_matrix",
    "estimation_errors",
    "load_matrix_file",
    "load_noise_matrix",
    "parse_rate",
    "symmetric_noise_matrix",
    "validate_noise_matrix",
]

#: The estimators of :func:`estimate_noise_matrix` (``--estimate-method``), in the order
#: :func:`estimation_errors` reports them.
ESTIMATE_METHODS = ("anchor", "confident", "dual-t")

#: Rows may sum to 1 within this tolerance (files are often written with rounded numbers);
#: accepted rows are renormalized to sum to exactly 1.
ROW_SUM_TOLERANCE = 1e-4

#: A matrix whose 2-norm condition number exceeds this is refused as (numerically) singular:
#: its inverse would multiply the loss by numbers this large.
MAX_CONDITION_NUMBER = 1e8


def parse_rate(text: str, *, flag: str) -> float:
    """Parse a noise rate in ``[0, 1)``; raise :class:`HessauditError` naming ``flag``."""
    try:
        rate = float(text)
    except ValueError:
        raise HessauditError(
            f"{flag}: rate {text!r} is not a number", hint="give a rate in [0, 1), e.g. 0.4"
        ) from None
    if not math.isfinite(rate) or not 0.0 <= rate < 1.0:
        raise HessauditError(f"{flag}: rate {text} is outside [0, 1)", hint="e.g. 0.4")
    return rate


def symmetric_noise_matrix(num_classes: int, rate: float) -> np.ndarray:
    """The symmetric (uniform) noise matrix: keep the label with probability ``1 - rate``,
    otherwise flip it to one of the ``k - 1`` other classes uniformly.

    ``F = (1 - rate) I + rate / (k - 1) (J - I)``. Its eigenvalues are 1 (once, eigenvector
    all-ones) and ``1 - rate * k / (k - 1)`` (``k - 1`` times), so it is singular exactly at
    ``rate = (k - 1) / k``, where the noisy label carries no information about the true one.
    """
    k = int(num_classes)
    if k < 2:
        raise HessauditError(f"a noise matrix needs at least 2 classes, got {k}")
    if not 0.0 <= rate < 1.0:
        raise HessauditError(f"noise rate {rate} is outside [0, 1)")
    F = np.full((k, k), rate / (k - 1), dtype=np.float64)
    np.fill_diagonal(F, 1.0 - rate)
    return F


def validate_noise_matrix(
    F: Any,
    *,
    num_classes: int | None = None,
    source: str = "noise matrix",
    allow_singular: bool = False,
    tolerance: float = ROW_SUM_TOLERANCE,
) -> np.ndarray:
    """Check that ``F`` is a usable noise matrix and return it as a float64 array.

    ``F`` must be square, ``k x k`` when ``num_classes`` is given, finite, non-negative, with
    rows summing to 1 (within ``tolerance``; rows are then renormalized to sum to exactly 1).
    Unless ``allow_singular`` (enough for *injecting* noise, not for correcting it), ``F`` must
    be invertible: the backward-corrected loss multiplies by ``F^-1``, and a singular ``F``
    (e.g. symmetric noise at rate ``(k-1)/k``) makes every noisy label equally likely whatever
    the true one, so the corrected loss would not depend on the label at all.

    ``source`` names the flag or file in error messages.
    """
    try:
        arr = np.array(F, dtype=np.float64)
    except (TypeError, ValueError):
        raise HessauditError(f"{source}: not a numeric matrix") from None
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise HessauditError(
            f"{source}: a noise matrix must be square (k x k), got shape "
            f"{'x'.join(str(s) for s in arr.shape) or 'scalar'}"
        )
    k = arr.shape[0]
    if num_classes is not None and k != num_classes:
        raise HessauditError(
            f"{source}: noise matrix is {k} x {k} but the task has {num_classes} classes",
            hint="rows = true label, columns = noisy label, one per class",
        )
    if k < 2:
        raise HessauditError(f"{source}: a noise matrix needs at least 2 classes")
    if not np.all(np.isfinite(arr)):
        raise HessauditError(f"{source}: noise matrix has NaN or infinite entries")
    if np.any(arr < 0):
        i, j = np.argwhere(arr < 0)[0]
        raise HessauditError(
            f"{source}: noise matrix has a negative entry F[{i}, {j}] = {arr[i, j]:g}",
            hint="entries are probabilities",
        )
    sums = arr.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > tolerance)
    if bad.size:
        r = int(bad[0])
        raise HessauditError(
            f"{source}: row {r} of the noise matrix sums to {sums[r]:.6g}, not 1",
            hint="rows = true label, columns = noisy label; each row is a distribution "
            "(cleanlab's noise_matrix is the transpose)",
        )
    arr = arr / sums[:, None]
    if not allow_singular:
        cond = np.linalg.cond(arr)
        if not np.isfinite(cond) or cond > MAX_CONDITION_NUMBER:
            raise HessauditError(
                f"{source}: noise matrix is singular (condition number "
                f"{'inf' if not np.isfinite(cond) else f'{cond:.3g}'}); the corrected loss "
                "would ignore the label",
                hint="symmetric noise at rate (k-1)/k is singular; use a lower rate or "
                "another matrix",
            )
    return arr


def _load_json_matrix(path: Path) -> Any:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise HessauditError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if isinstance(obj, dict):
        if obj.get("noise_matrix") is None:
            raise HessauditError(
                f"{path}: JSON object has no 'noise_matrix' entry",
                hint='give a list of rows, or {"noise_matrix": [[...], ...]}',
            )
        return obj["noise_matrix"]
    return obj


def _load_csv_matrix(path: Path) -> np.ndarray:
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    rows: list[list[float]] = []
    for n, line in enumerate(lines):
        cells = [c.strip() for c in line.split(",")]
        try:
            rows.append([float(c) for c in cells])
        except ValueError:
            if n == 0:  # a header line of class names
                continue
            raise HessauditError(f"{path}: line {n + 1} has a non-numeric entry") from None
    if not rows:
        raise HessauditError(f"{path}: no numbers found")
    if len({len(r) for r in rows}) != 1:
        raise HessauditError(f"{path}: rows have different lengths")
    return np.array(rows, dtype=np.float64)


def load_matrix_file(path: str | os.PathLike[str], *, flag: str = "--noise-matrix") -> np.ndarray:
    """Read a matrix from ``.npy``, ``.csv`` or ``.json`` (no validation)."""
    p = Path(path)
    refuse_special_file(p, f"{flag}:")
    if not p.is_file():
        raise HessauditError(f"{flag}: file {p} does not exist")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        try:
            return np.asarray(np.load(p, allow_pickle=False), dtype=np.float64)
        except (ValueError, OSError, EOFError, TypeError, zipfile.BadZipFile) as exc:
            # EOFError: empty or truncated file; TypeError: an .npz archive, not an array;
            # BadZipFile: "PK" magic (numpy then reads it as an .npz) but not a zip
            raise HessauditError(
                f"{flag}: cannot read {p} as .npy ({type(exc).__name__}: {exc})"
            ) from None
    try:
        if suffix == ".csv":
            return _load_csv_matrix(p)
        if suffix == ".json":
            try:
                return np.array(_load_json_matrix(p), dtype=np.float64)
            except (TypeError, ValueError, RecursionError):
                raise HessauditError(f"{flag}: {p} does not hold a numeric matrix") from None
    except UnicodeDecodeError:
        raise HessauditError(f"{flag}: {p} is not a UTF-8 text file") from None
    except OSError as exc:
        raise HessauditError(f"{flag}: cannot read {p} ({exc.strerror or exc})") from None
    raise HessauditError(
        f"{flag}: unknown matrix file type {p.suffix or '(none)'} for {p}",
        hint="use .csv, .npy or .json",
    )


def load_noise_matrix(
    spec: str,
    *,
    num_classes: int,
    flag: str = "--noise-matrix",
    allow_singular: bool = False,
) -> np.ndarray:
    """Resolve ``symmetric:RATE`` or a ``.csv``/``.npy``/``.json`` file to a validated ``F``.

    See the module docstring for the formats. ``estimate`` and ``injected`` are resolved by the
    trainer, not here.
    """
    text = spec.strip()
    if text.lower().startswith("symmetric:"):
        rate = parse_rate(text.split(":", 1)[1], flag=flag)
        F = symmetric_noise_matrix(num_classes, rate)
        return validate_noise_matrix(
            F, num_classes=num_classes, source=f"{flag} {text}", allow_singular=allow_singular
        )
    if text.lower() in ("estimate", "injected"):
        raise HessauditError(
            f"{flag} {text} is resolved during training, not by load_noise_matrix",
            hint="call run_finetune",
        )
    if not Path(text).suffix:
        raise HessauditError(
            f"{flag}: unknown noise matrix {text!r}",
            hint="use symmetric:RATE, a .csv/.npy/.json file, 'estimate' or 'injected'",
        )
    F = load_matrix_file(text, flag=flag)
    return validate_noise_matrix(
        F, num_classes=num_classes, source=f"{flag} {text}", allow_singular=allow_singular
    )


def estimate_noise_matrix(
    probs: Any,
    noisy_labels: Any,
    *,
    method: str = "confident",
    num_classes: int | None = None,
    quantile: float = 0.97,
) -> np.ndarray:
    """Estimate ``F`` from a first model's predicted probabilities of the **noisy** labels.

    ``probs`` is ``(n, k)``: the model's softmax outputs, ideally out-of-sample (the trainer
    uses two-fold cross-fitting). ``noisy_labels`` is ``(n,)``.

    * ``anchor`` (Patrini et al., CVPR 2017, "forward correction" estimator): a model trained on
      noisy labels estimates ``p(z | x) = sum_y p(y | x) F[y, z]``. For an *anchor point* of
      class ``i`` (``p(y = i | x) = 1``) this is row ``i`` of ``F``. For each class ``i`` the
      anchor is the example with the largest ``probs[:, i]`` below its ``quantile`` (default
      0.97, as in the authors' code; 1.0 takes the arg-max, which is sensitive to outliers), and
      ``F[i, :] = probs[anchor_i, :]``.
    * ``confident`` (Northcutt et al., JAIR 2021, the *confident joint*): per noisy class ``z``
      the threshold ``t_z`` is the mean of ``probs[:, z]`` over examples labelled ``z``. An
      example labelled ``z`` is counted at ``(z, y*)`` where ``y*`` is its most probable class
      among those whose probability reaches their threshold (examples with no such class are not
      counted). The counts are calibrated so that each noisy-label row sums to that label's
      frequency, giving a joint ``Q[z, y] ~ P(noisy = z, true = y)``; then
      ``F[y, z] = Q[z, y] / sum_z' Q[z', y]``. A true class with no count gets an identity row.
    * ``dual-t`` (Yao et al., NeurIPS 2020): ``F = T_club @ T_spade`` through the model's
      predicted class, with ``quantile`` as the anchors' outlier filter; see
      :mod:`hessaudit.robust.dual_t`.

    The result is row-stochastic but *not* checked for invertibility: pass it through
    :func:`validate_noise_matrix` before using it in a loss.
    """
    P, z = check_predictions(probs, noisy_labels, num_classes, who="estimate_noise_matrix")
    k = P.shape[1]

    if method == "anchor":
        if not 0.0 < quantile <= 1.0:
            raise HessauditError(f"estimate_noise_matrix: quantile {quantile} not in (0, 1]")
        F = np.empty((k, k), dtype=np.float64)
        for i in range(k):
            col = P[:, i]
            if quantile >= 1.0:
                idx = int(np.argmax(col))
            else:
                # as in the authors' code: the largest value below the quantile
                thresh = np.quantile(col, quantile, method="higher")
                below = np.where(col < thresh, col, -np.inf)
                idx = int(np.argmax(below)) if np.isfinite(below).any() else int(np.argmax(col))
            F[i] = P[idx]
        return F / F.sum(axis=1, keepdims=True)

    if method == "confident":
        thresholds = np.empty(k, dtype=np.float64)
        for j in range(k):
            mask = z == j
            thresholds[j] = P[mask, j].mean() if mask.any() else 1.0
        above = thresholds[None, :] - 1e-12 <= P
        masked = np.where(above, P, -np.inf)
        has_any = above.any(axis=1)
        y_star = np.argmax(masked, axis=1)
        C = np.zeros((k, k), dtype=np.float64)  # C[noisy, true]
        np.add.at(C, (z[has_any], y_star[has_any]), 1.0)
        counts = np.bincount(z, minlength=k).astype(np.float64)
        row = C.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            C = np.where(row > 0, C / row * counts[:, None], 0.0)
        Q = C / C.sum()
        col_sums = Q.sum(axis=0)  # P(true = y)
        F = np.eye(k, dtype=np.float64)
        for y in range(k):
            if col_sums[y] > 0:
                F[y] = Q[:, y] / col_sums[y]
        return F

    if method == "dual-t":
        from hessaudit.robust.dual_t import dual_t_estimate

        return dual_t_estimate(P, z, num_classes=k, quantile=quantile).F

    raise HessauditError(
        f"unknown noise-matrix estimation method {method!r}",
        hint="use 'confident', 'anchor' or 'dual-t'",
    )


def estimation_errors(probs: Any, noisy_labels: Any, truth: Any) -> dict[str, dict[str, float]]:
    """Every estimation method's error against a known ``truth`` (e.g. the injected ``F``), all
    from the same probabilities: ``{method: {"frobenius": ||F_hat - F||_F, "max_abs":
    max |F_hat - F|}}``."""
    F = np.asarray(truth, dtype=np.float64)
    errors: dict[str, dict[str, float]] = {}
    for method in ESTIMATE_METHODS:
        diff = estimate_noise_matrix(probs, noisy_labels, method=method, num_classes=F.shape[0]) - F
        errors[method] = {
            "frobenius": float(np.linalg.norm(diff)),
            "max_abs": float(np.abs(diff).max()),
        }
    return errors
