"""A fine-tuning run in memory: :class:`TrainingRun`.

It owns what training changes and what a resume restores: the model (pretrained tensors loaded,
new ones seeded, see :mod:`hessaudit.robust.model_setup`), the loss and the L2-SP penalty, the
optimizer and its schedule, the shuffling generator, the anchors (the pretrained tensors) and
the per-layer radii of the projection, the ``metrics.csv`` rows and the best-so-far (best
validation accuracy, its epoch, the epochs since). Its per-epoch state (:meth:`state`) is
``state.pt``; :meth:`restore` puts it back, the global RNG included, so a resumed run reaches
bit-identical weights.

Evaluation (:meth:`row`) is in eval mode, against the clean labels where known; distances are
Frobenius norms ``||W - W_pre||`` per constrainable layer (:mod:`hessaudit.robust.projection`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hessaudit._version import __version__
from hessaudit.robust._seeds import _generator, derive_seed
from hessaudit.robust.config import FinetuneConfig
from hessaudit.robust.epoch import evaluate
from hessaudit.robust.losses import LossFunction, l2sp_penalty, make_loss
from hessaudit.robust.model_setup import (
    ModelBuild,
    build_run_model,
    make_optimizer,
    make_scheduler,
)
from hessaudit.robust.projection import (
    constrainable_names,
    distances,
    layer_radii,
    project_to_balls_,
)
from hessaudit.robust.types import NAN, SCHEMA, STATE_FORMAT, DataSetup, NoiseMatrixChoice

__all__ = ["TrainingRun"]


@dataclass
class TrainingRun:
    """Everything the epoch loop, the per-epoch saves and a resume share. Build it with
    :meth:`create`."""

    config: FinetuneConfig
    setup: DataSetup
    build: ModelBuild
    noise: NoiseMatrixChoice
    loss_fn: LossFunction
    penalty_fn: Callable[[], torch.Tensor] | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    shuffle: torch.Generator
    anchors: dict[str, torch.Tensor]
    radii: dict[str, float]
    layer_names: list[str]
    new_layers: list[str]
    device: torch.device
    metrics: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_acc: float | None = None
    bad_epochs: int = 0
    epoch: int = 0

    # ------------------------------------------------------------------ set-up

    @classmethod
    def create(
        cls,
        setup: DataSetup,
        noise: NoiseMatrixChoice,
        *,
        penalty_spec: tuple[str, float, float] | None,
        radius_table: list[tuple[str, float | None]] | None,
        device: torch.device,
        warn: Callable[[str], None],
    ) -> TrainingRun:
        """The loss, the model (initialized from ``derive_seed(seed, "init")``), its anchors and
        radii, the optimizer, schedule and shuffling generator: everything that training or
        resuming starts from. ``warn`` receives what the user should know (a noise matrix the
        loss does not use, few tensors loaded from the checkpoint)."""
        config = setup.config
        loss_fn = _make_run_loss(config, noise, warn)
        build = build_run_model(
            config,
            setup.num_classes,
            setup.pretrained_tensors,
            device=device,
            init_seed=derive_seed(config.seed, "init"),
        )
        params = dict(build.model.named_parameters())
        new_params = [n for n in build.new if n in params and params[n].requires_grad]
        anchors = _anchors(config, setup, build, params, device, warn)
        layer_names = constrainable_names(build.model)
        new_layers = [n for n in layer_names if n in set(new_params)]
        radii: dict[str, float] = {}
        if config.constraint == "frobenius":
            radii = layer_radii(
                layer_names,
                radius=config.radius,
                growth=config.radius_growth,
                head_radius=config.head_radius,
                head_names=new_layers,
                table=radius_table,
                model_name=config.model,
            )
        penalty_fn = None
        if penalty_spec is not None:
            _, alpha, beta = penalty_spec

            def penalty_fn() -> torch.Tensor:
                return l2sp_penalty(params, anchors, alpha=alpha, beta=beta, new_names=new_params)

        optimizer = make_optimizer(config, build.model)
        return cls(
            config=config, setup=setup, build=build, noise=noise, loss_fn=loss_fn,
            penalty_fn=penalty_fn, optimizer=optimizer,
            scheduler=make_scheduler(config, optimizer, config.epochs),
            shuffle=_generator(config.seed, "shuffle"), anchors=anchors, radii=radii,
            layer_names=layer_names, new_layers=new_layers, device=device,
        )

    # ------------------------------------------------------------------ views

    @property
    def model(self) -> nn.Module:
        return self.build.model

    @property
    def stopped_early(self) -> bool:
        return self.config.early_stop is not None and self.bad_epochs >= self.config.early_stop

    @property
    def finished_training(self) -> bool:
        """No epoch remains: ``--epochs`` reached or early stopping triggered."""
        return self.stopped_early or self.epoch >= self.config.epochs

    # ------------------------------------------------------------------ per epoch

    def project_(self, params: Mapping[str, torch.Tensor]) -> None:
        """Project every constrained layer of ``params`` back onto its Frobenius ball around
        its anchor (after each optimizer step)."""
        project_to_balls_(params, self.anchors, self.radii)

    def row(
        self, stats: Mapping[str, float], *, seconds: float, lr: float | None = None
    ) -> dict[str, Any]:
        """The ``metrics.csv`` row of the current epoch: ``stats`` of training (NaN where
        missing), validation and held-out loss and accuracy, the largest distance to the
        anchors among the pretrained layers (and which), the head's, the largest
        distance / radius, ``seconds``; ``lr`` the rate the epoch ran with (default: now)."""
        batch = self.config.batch_size
        val_loss, val_acc = evaluate(self.model, self.setup.val, batch)
        held_loss, held_acc = evaluate(self.model, self.setup.heldout, batch)
        pre_layers = [n for n in self.layer_names if n in self.anchors]
        dist = distances(self.model, self.anchors, pre_layers + self.new_layers)
        max_name = max(pre_layers, key=lambda n: dist[n]) if pre_layers else ""
        ratio = max((dist[n] / r for n, r in self.radii.items()), default=NAN)
        return {
            "epoch": self.epoch,
            "lr": float(self.optimizer.param_groups[0]["lr"] if lr is None else lr),
            "train_loss": stats.get("train_loss", NAN),
            "train_penalty": stats.get("train_penalty", NAN),
            "train_acc": stats.get("train_acc", NAN),
            "train_acc_clean": stats.get("train_acc_clean", NAN),
            "val_loss": val_loss,
            "val_acc": val_acc,
            "heldout_loss": held_loss,
            "heldout_acc": held_acc,
            "max_distance": dist[max_name] if max_name else NAN,
            "max_distance_layer": max_name,
            "head_distance": max((dist[n] for n in self.new_layers), default=NAN),
            "max_radius_ratio": ratio,
            "seconds": float(seconds),
        }

    def record_epoch(self, row: dict[str, Any]) -> bool:
        """Append ``row`` to the metrics and, with a validation split, update the best-so-far:
        True when this epoch has the best validation accuracy yet (strictly better)."""
        self.metrics.append(row)
        if self.setup.val is None:
            return False
        if self.best_val_acc is None or row["val_acc"] > self.best_val_acc:
            self.best_val_acc = float(row["val_acc"])
            self.best_epoch = self.epoch
            self.bad_epochs = 0
            return True
        self.bad_epochs += 1
        return False

    # ------------------------------------------------------------------ saved forms

    def weights_metadata(self, kind: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The metadata of a ``KIND.safetensors``: config, epoch, pretrained SHA-256, noise
        matrix, new tensors, tool version, and ``extra``."""
        config, setup, noise = self.config, self.setup, self.noise
        meta = {
            "format": SCHEMA,
            "kind": kind,
            "tool_version": __version__,
            "epoch": self.epoch,
            "seed": config.seed,
            "config": config.to_dict(),
            "pretrained_sha256": setup.pretrained_record.sha256,
            "num_classes": setup.num_classes,
            "noise_matrix": None if noise.matrix is None else noise.matrix.tolist(),
            "noise_matrix_source": noise.source,
            "new_tensors": list(self.build.new),
        }
        meta.update(extra or {})
        return meta

    def state(self) -> dict[str, Any]:
        """The per-epoch resume state (``state.pt``)."""
        device = self.device
        F = self.noise.matrix
        return {
            "format": STATE_FORMAT,
            "epoch": self.epoch,
            "finished": self.finished_training,
            "stopped_early": self.stopped_early,
            "model": _model_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "shuffle_rng": self.shuffle.get_state(),
            "global_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "metrics": [dict(r) for r in self.metrics],
            "best_epoch": self.best_epoch,
            "best_val_acc": self.best_val_acc,
            "bad_epochs": self.bad_epochs,
            "noise_matrix": None if F is None else torch.from_numpy(F.copy()),
            "noise_matrix_source": self.noise.source,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state`` (:meth:`state`'s form): weights, optimizer, schedule, the
        shuffling, global and CUDA RNG states, metrics and best-so-far."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        self.shuffle.set_state(state["shuffle_rng"])
        torch.set_rng_state(state["global_rng"])
        if self.device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.metrics = [dict(r) for r in state["metrics"]]
        self.best_epoch = state["best_epoch"]
        self.best_val_acc = state["best_val_acc"]
        self.bad_epochs = int(state["bad_epochs"])
        self.epoch = int(state["epoch"])


def _make_run_loss(
    config: FinetuneConfig, noise: NoiseMatrixChoice, warn: Callable[[str], None]
) -> LossFunction:
    loss_fn = make_loss(
        config.loss,
        noise_matrix=noise.matrix,
        smoothing=config.smoothing,
        gce_q=config.gce_q,
        sce_alpha=config.sce_alpha,
        sce_beta=config.sce_beta,
        js_weight=config.js_weight,
        nonneg_correction=config.nonneg_correction,
    )
    if noise.matrix is not None and config.loss not in ("reweight", "forward"):
        warn(f"--noise-matrix is recorded but not used by --loss {config.loss}")
    return loss_fn


def _anchors(
    config: FinetuneConfig,
    setup: DataSetup,
    build: ModelBuild,
    params: Mapping[str, torch.Tensor],
    device: torch.device,
    warn: Callable[[str], None],
) -> dict[str, torch.Tensor]:
    """The pretrained value of every trainable tensor loaded from the checkpoint (the centres
    of the Frobenius balls and of L2-SP), on ``device``."""
    loaded_params = [n for n in build.loaded if n in params and params[n].requires_grad]
    if len(loaded_params) < len(params) / 2:
        warn(
            f"only {len(loaded_params)} of {len(params)} parameter tensors came from "
            f"{config.pretrained}"
        )
    return {
        n: setup.pretrained_tensors[n].to(device=device, dtype=params[n].dtype).clone()
        for n in loaded_params
    }


def _model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
