"""One epoch: a pass of training, an evaluation, the predicted probabilities.

Shared by the fine-tuning loop (:mod:`hessaudit.robust.epoch_loop`) and the first models of the
noise-matrix estimation (:mod:`hessaudit.robust.noise_estimate`). Under torchrun
(``hessaudit.audit.distributed``) each rank trains on its slice of every global batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from hessaudit.audit import distributed as _dist
from hessaudit.errors import HessauditError
from hessaudit.robust.types import NAN, Split, TrainingDisplay

__all__ = ["batch_bounds", "evaluate", "predict_proba", "train_epoch"]


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Mini-batch slices; a last batch of one example joins the previous one (BatchNorm in
    train mode cannot normalize a single example)."""
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2] = (bounds[-2][0], n)
        bounds.pop()
    return bounds


def train_epoch(
    model: nn.Module,
    data: Split,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    generator: torch.Generator,
    penalty: Callable[[], torch.Tensor] | None,
    after_step: Callable[[], None] | None,
    display: TrainingDisplay,
    epoch: int,
) -> dict[str, float]:
    """One pass over ``data`` in train mode, in mini-batches of ``batch_size`` shuffled with
    ``generator``: ``loss_fn`` (+ ``penalty()``) is minimized by ``optimizer``, then
    ``after_step`` (the projection) runs. The epoch's mean training loss, penalty, accuracy on
    the trained-on labels and on the clean ones (NaN when unknown); under torchrun these are
    summed over the ranks.

    Raises:
        HessauditError: the loss or the penalty is not finite (training diverged).
    """
    model.train()
    n = len(data)
    perm = torch.randperm(n, generator=generator)
    loss_sum = penalty_sum = 0.0
    correct = correct_clean = seen = 0
    device = data.x.device
    # DistributedDataParallel: this rank's slice of each global batch (see distributed.py).
    ctx = _dist.current() if isinstance(model, _dist.DDP) else _dist.SINGLE
    for step, (start, stop) in enumerate(batch_bounds(n, batch_size), start=1):
        idx, weight = _dist.batch_slice(perm[start:stop].to(device), ctx)
        xb, yb = data.x[idx], data.y[idx]
        optimizer.zero_grad(set_to_none=True)
        logits = model(xb)
        loss = loss_fn(logits, yb)
        total = loss
        pen_value = 0.0
        if penalty is not None:
            pen = penalty()
            total = loss + pen
            pen_value = float(pen.detach())
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value) or not math.isfinite(pen_value):
            raise HessauditError(
                f"training diverged at epoch {epoch}, step {step}: the loss is {loss_value}",
                hint="lower --lr, tighten --radius, or check the noise matrix",
            )
        (total if weight is None else loss * weight + (total - loss)).backward()
        optimizer.step()
        if after_step is not None:
            after_step()
        b = len(idx) if weight is None or weight > 0 else 0
        seen += b
        loss_sum += loss_value * b
        penalty_sum += pen_value * b
        with torch.no_grad():
            pred = logits.argmax(dim=1)
            correct += int((pred == yb).sum())
            if data.clean is not None:
                correct_clean += int((pred == data.clean[idx]).sum())
        display.step(step, loss=loss_sum / max(seen, 1), acc=correct / max(seen, 1))
    if ctx.enabled:
        sums = torch.tensor([loss_sum, penalty_sum, correct, correct_clean, seen],
                            dtype=torch.float64)
        loss_sum, penalty_sum, correct, correct_clean, seen = ctx.sum(sums).tolist()
    return {
        "train_loss": loss_sum / seen,
        "train_penalty": penalty_sum / seen if penalty is not None else NAN,
        "train_acc": correct / seen,
        "train_acc_clean": correct_clean / seen if data.clean is not None else NAN,
    }


@torch.no_grad()
def evaluate(model: nn.Module, data: Split | None, batch_size: int) -> tuple[float, float]:
    """Cross-entropy and accuracy in eval mode, against ``data.y`` (clean labels)."""
    if data is None or len(data) == 0:
        return NAN, NAN
    model.eval()
    loss_sum = 0.0
    correct = 0
    for start in range(0, len(data), batch_size):
        xb = data.x[start : start + batch_size]
        yb = data.y[start : start + batch_size]
        logits = model(xb)
        loss_sum += float(
            torch.nn.functional.cross_entropy(logits.float(), yb, reduction="sum")
        )
        correct += int((logits.argmax(dim=1) == yb).sum())
    return loss_sum / len(data), correct / len(data)


@torch.no_grad()
def predict_proba(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``softmax(model(x))`` in float64 on the CPU, in eval mode."""
    model.eval()
    out = [
        torch.softmax(model(x[s : s + batch_size]).double(), dim=1).cpu()
        for s in range(0, x.shape[0], batch_size)
    ]
    return torch.cat(out)
