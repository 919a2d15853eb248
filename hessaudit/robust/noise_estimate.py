"""The noise matrix ``F`` a run's loss uses (``--noise-matrix``), estimated by training when
asked (``estimate`` / ``estimate:METHOD``).

:func:`resolve_noise_matrix` reads every source: ``injected`` (the matrix ``--inject-noise``
drew from), ``symmetric:RATE`` or a file (:func:`hessaudit.robust.noise_matrix.load_noise_matrix`),
or ``estimate``, which :func:`estimate_by_cross_fitting` computes:

1. the training split is cut in two halves (permutation from ``derive_seed(seed,
   "estimate-split")``);
2. for each fold ``f``, a first model (initialized from ``derive_seed(seed, f"estimate-init-{f}")``,
   shuffled with ``f"estimate-shuffle-{f}"``) is fitted with plain cross-entropy on one half's
   noisy labels for ``--estimate-epochs`` (default ``--epochs``) epochs, and predicts the
   other half: every example's probabilities are out-of-sample;
3. ``F`` is estimated from those probabilities and the noisy labels
   (:func:`~hessaudit.robust.noise_matrix.estimate_noise_matrix`, ``--estimate-method``) and
   validated (row-stochastic, invertible, condition number bounded).

On resume the estimate is read back from ``state.pt``: the first models are not trained again.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hessaudit.errors import HessauditError
from hessaudit.robust._seeds import _generator, derive_seed
from hessaudit.robust.dual_t import dual_t_estimate
from hessaudit.robust.epoch import batch_bounds, predict_proba, train_epoch
from hessaudit.robust.losses import make_loss
from hessaudit.robust.model_setup import build_run_model, make_optimizer, make_scheduler
from hessaudit.robust.noise_matrix import (
    estimate_noise_matrix,
    estimation_errors,
    load_noise_matrix,
    validate_noise_matrix,
)
from hessaudit.robust.types import DataSetup, NoiseMatrixChoice, Split, TrainingDisplay

__all__ = ["estimate_by_cross_fitting", "resolve_noise_matrix"]


def resolve_noise_matrix(
    setup: DataSetup, display: TrainingDisplay, saved: torch.Tensor | None = None
) -> NoiseMatrixChoice:
    """The noise matrix ``F`` the loss uses, its source label, and (when estimated now) the
    estimation record for ``noise.json``. ``saved`` is the estimate in ``state.pt`` when
    resuming (used as is for ``estimate``)."""
    config = setup.config
    spec = config.noise_matrix
    if spec is None:
        return NoiseMatrixChoice()
    k = setup.num_classes
    if spec == "injected":
        assert setup.injection is not None  # config.resolved() checks
        F = validate_noise_matrix(
            setup.injection.noise_matrix,
            num_classes=k,
            source=f"--noise-matrix injected ({setup.injection.spec})",
        )
        return NoiseMatrixChoice(F, f"injected ({setup.injection.spec})")
    if spec == "estimate":
        source = f"estimate ({config.estimate_method})"
        if saved is not None:  # resuming: the estimate is part of the run's state
            return NoiseMatrixChoice(saved.numpy().astype(np.float64), source)
        F, info = estimate_by_cross_fitting(setup, display)
        return NoiseMatrixChoice(F, source, info)
    return NoiseMatrixChoice(load_noise_matrix(spec, num_classes=k), spec)


def estimate_by_cross_fitting(
    setup: DataSetup, display: TrainingDisplay
) -> tuple[np.ndarray, dict[str, Any]]:
    """Fit first models on the noisy training labels (two-fold cross-fitting: each half is
    predicted by a model trained on the other half, so the probabilities are out-of-sample),
    then estimate ``F`` from their predictions. Returns ``F`` (validated) and the record for
    ``noise.json``'s ``estimated``.

    Raises:
        HessauditError: fewer than 4 training examples, or an estimate that is not a usable
            noise matrix (the hint gives the first models' accuracy).
    """
    config = setup.config
    n = len(setup.train)
    if n < 4:
        raise HessauditError("--noise-matrix estimate needs at least 4 training examples")
    probs = _cross_fitted_probabilities(setup, display)
    noisy = setup.train.y.cpu()
    F_hat = estimate_noise_matrix(
        probs.numpy(), noisy.numpy(), method=config.estimate_method,
        num_classes=setup.num_classes,
    )
    info = _estimation_record(setup, probs, noisy, F_hat)
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


def _epochs(setup: DataSetup) -> int:
    return setup.config.estimate_epochs or setup.config.epochs


def _cross_fitted_probabilities(setup: DataSetup, display: TrainingDisplay) -> torch.Tensor:
    """``(n, k)`` float64: each training example's probabilities from the first model that
    did not train on it."""
    config, data = setup.config, setup.train
    n = len(data)
    perm = torch.randperm(n, generator=_generator(config.seed, "estimate-split"))
    folds = [torch.sort(perm[: n // 2]).values, torch.sort(perm[n // 2 :]).values]
    probs = torch.zeros(n, setup.num_classes, dtype=torch.float64)
    for f, (fit, held) in enumerate(((folds[0], folds[1]), (folds[1], folds[0])), start=1):
        model = _fit_first_model(setup, fit, f, display)
        held_dev = held.to(setup.device)
        probs[held] = predict_proba(model, data.x[held_dev], config.batch_size)
    return probs


def _fit_first_model(
    setup: DataSetup, fit: torch.Tensor, fold: int, display: TrainingDisplay
) -> torch.nn.Module:
    """The first model of fold ``fold``: cross-entropy on the noisy labels of the examples
    ``fit`` (positions in the training split), no constraint, no penalty."""
    config, data = setup.config, setup.train
    epochs = _epochs(setup)
    build = build_run_model(
        config,
        setup.num_classes,
        setup.pretrained_tensors,
        device=setup.device,
        init_seed=derive_seed(config.seed, f"estimate-init-{fold}"),
    )
    model = build.model
    optimizer = make_optimizer(config, model)
    scheduler = make_scheduler(config, optimizer, epochs)
    fit_dev = fit.to(setup.device)
    part = Split(x=data.x[fit_dev], y=data.y[fit_dev], clean=None)
    gen = _generator(config.seed, f"estimate-shuffle-{fold}")
    display.start_phase(
        f"estimate F (fold {fold}/2)",
        epochs=epochs,
        first_epoch=1,
        steps=len(batch_bounds(len(part), config.batch_size)),
    )
    ce = make_loss("ce")
    for epoch in range(1, epochs + 1):
        display.start_epoch(epoch)
        stats = train_epoch(
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
    return model


def _estimation_record(
    setup: DataSetup, probs: torch.Tensor, noisy: torch.Tensor, F_hat: np.ndarray
) -> dict[str, Any]:
    """``noise.json``'s ``estimated``: the method, the estimate, the first models' accuracy on
    the noisy labels, Dual-T's details, and (when the noise was injected) every method's error
    against the injected ``F``."""
    method = setup.config.estimate_method
    info: dict[str, Any] = {
        "method": method,
        "epochs": _epochs(setup),
        "folds": 2,
        "noise_matrix": F_hat.tolist(),
        "first_model_accuracy_on_noisy_labels": float(
            (probs.argmax(dim=1) == noisy).double().mean()
        ),
    }
    if method == "dual-t":
        info["dual_t"] = dual_t_estimate(probs.numpy(), noisy.numpy()).to_dict()
    if setup.injection is not None:
        info["frobenius_error_vs_injected"] = float(
            np.linalg.norm(F_hat - setup.injection.noise_matrix)
        )
        # every method from the same first models, for comparison
        info["errors_vs_injected_by_method"] = estimation_errors(
            probs.numpy(), noisy.numpy(), setup.injection.noise_matrix
        )
    return info
