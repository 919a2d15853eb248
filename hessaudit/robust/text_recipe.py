"""The optimization recipe of a run: the defaults it gets from its data, and the linear schedule
with warm-up (no torch import).

**Defaults.** ``--optimizer``, ``--lr``, ``--weight-decay`` and ``--schedule`` left unset take
the recipe of the run's data (:func:`recipe_defaults`):

* image data (and every built-in): :data:`IMAGE_RECIPE`, the paper's released code (Adam,
  lr 1e-4, no weight decay, step decay x0.1 every 10 epochs), unchanged;
* text data (``--data`` a ``.csv``, ``.tsv``, ``.jsonl`` or ``.parquet`` table, which only a
  text classifier reads): :data:`TEXT_RECIPE`, the conventions of Hugging Face fine-tuning that
  the seed's text experiments follow: AdamW with weight decay 0.01 (not on biases and
  normalization weights, :mod:`hessaudit.robust.optim`), lr 2e-5 (BERT's paper picks among
  2e-5..5e-5; the lowest is the safe choice for a small data set), and the linear schedule with
  a warm-up over the first 10% of the steps (``--warmup-epochs`` not given).

Anything given explicitly wins; the resolved values are what ``config.json`` records.

**Linear schedule** (``--schedule linear``), stepped after every optimizer step, the rule of
``transformers.get_linear_schedule_with_warmup``: with ``W`` warm-up steps and ``T`` steps in
all, the learning rate of step ``s`` (0-based) is ``lr * f(s)`` with::

    f(s) = s / max(1, W)                     for s < W
    f(s) = max(0, (T - s) / max(1, T - W))   otherwise

so it rises from 0 to ``lr`` over ``W`` steps and falls linearly to 0 at the end of the run.
``T = epochs * steps_per_epoch``; ``W = round(warmup_epochs * steps_per_epoch)`` with
``--warmup-epochs``, else ``ceil(T / 10)`` (Hugging Face's ``warmup_ratio = 0.1``, computed in
integers).
"""

from __future__ import annotations

import math
from typing import Any

from hessaudit.inputs.text_options import TextOptions, is_text_file

__all__ = [
    "GROUP_RADII",
    "IMAGE_RECIPE",
    "PER_STEP_SCHEDULES",
    "RECIPE_FIELDS",
    "TEXT_RECIPE",
    "check_options",
    "fill_defaults",
    "linear_plan",
    "linear_warmup_factor",
    "recipe_defaults",
    "text_options",
    "warmup_steps",
]

#: The options whose default depends on the data.
RECIPE_FIELDS = ("optimizer", "lr", "weight_decay", "schedule")
IMAGE_RECIPE: dict[str, Any] = {
    "optimizer": "adam", "lr": 1e-4, "weight_decay": 0.0, "schedule": "step",
}
TEXT_RECIPE: dict[str, Any] = {
    "optimizer": "adamw", "lr": 2e-5, "weight_decay": 0.01, "schedule": "linear",
}
#: The per-group radius options (:mod:`hessaudit.robust.group_radii`).
GROUP_RADII = ("radius_attention", "radius_linear")
#: Schedules stepped after every optimizer step (the others once per epoch).
PER_STEP_SCHEDULES = ("linear",)
#: The warm-up without ``--warmup-epochs``: the first ceil(T / WARMUP_DIVISOR) steps.
WARMUP_DIVISOR = 10


def recipe_defaults(data: str | None) -> dict[str, Any]:
    """The defaults of :data:`RECIPE_FIELDS` for a run on ``data`` (module docstring)."""
    return dict(TEXT_RECIPE if is_text_file(data) else IMAGE_RECIPE)


def fill_defaults(config: Any) -> None:
    """Set every :data:`RECIPE_FIELDS` option of the (frozen) ``config`` that is None to the
    recipe of its data; called when a ``FinetuneConfig`` is built."""
    data = config.data if isinstance(config.data, str) else None
    for name, value in recipe_defaults(data).items():
        if getattr(config, name) is None:
            object.__setattr__(config, name, value)


def text_options(config: Any) -> TextOptions:
    """The run's text flags as checked :class:`~hessaudit.inputs.text_options.TextOptions`."""
    return TextOptions(config.text_column, config.label_column, config.tokenizer,
                       config.max_length)


def check_options(config: Any) -> None:
    """The options of this module and the text flags: ``--warmup-epochs`` (:func:`check_warmup`),
    ``--radius-attention`` / ``--radius-linear`` (finite and > 0), the text flags.

    Raises :class:`~hessaudit.errors.HessauditError` naming the flag."""
    from hessaudit.errors import HessauditError

    check_warmup(config.warmup_epochs, schedule=str(config.schedule), epochs=config.epochs)
    for name in GROUP_RADII:
        value = getattr(config, name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if value is not None and not (ok and math.isfinite(value) and value > 0):
            raise HessauditError(f"--{name.replace('_', '-')} {value} must be > 0")
    text_options(config)


def warmup_steps(warmup_epochs: float | None, steps_per_epoch: int, total_steps: int) -> int:
    """``W``: ``round(warmup_epochs * steps_per_epoch)``, or ``ceil(T / 10)`` without
    ``warmup_epochs``; never more than ``total_steps``."""
    if warmup_epochs is None:
        steps = -(-total_steps // WARMUP_DIVISOR)
    else:
        steps = round(float(warmup_epochs) * steps_per_epoch)
    return max(0, min(steps, total_steps))


def linear_plan(warmup_epochs: float | None, epochs: int, steps_per_epoch: int) -> tuple[int, int]:
    """``(W, T)``: the warm-up steps and all steps of a linear schedule over ``epochs`` epochs
    of ``steps_per_epoch`` optimizer steps (module docstring)."""
    total = epochs * steps_per_epoch
    return warmup_steps(warmup_epochs, steps_per_epoch, total), total


def linear_warmup_factor(step: int, warmup: int, total: int) -> float:
    """``f(step)`` of the linear schedule (module docstring)."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    return max(0.0, float(total - step) / float(max(1, total - warmup)))


def check_warmup(warmup_epochs: Any, *, schedule: str, epochs: int) -> None:
    """``--warmup-epochs``: a finite number in [0, --epochs], with ``--schedule linear`` only.

    Raises :class:`~hessaudit.errors.HessauditError` naming the flag."""
    from hessaudit.errors import HessauditError

    if warmup_epochs is None:
        return
    ok = isinstance(warmup_epochs, (int, float)) and not isinstance(warmup_epochs, bool)
    if not ok or not math.isfinite(warmup_epochs) or not 0 <= warmup_epochs <= epochs:
        raise HessauditError(
            f"--warmup-epochs {warmup_epochs} must be a number between 0 and --epochs ({epochs})"
        )
    if schedule not in PER_STEP_SCHEDULES:
        raise HessauditError(
            f"--warmup-epochs applies to --schedule linear, not --schedule {schedule}",
            hint="pass --schedule linear, or drop --warmup-epochs",
        )
