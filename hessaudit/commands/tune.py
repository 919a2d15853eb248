"""``hessaudit tune``: search the finetuner's radii, learning rate and loss options.

Only option parsing is here; the work is :func:`~hessaudit.robust.tune.run.run_tune`. The finetune
options are the ones of ``hessaudit finetune`` (same names, defaults and help, taken from
:func:`hessaudit.commands.finetune.finetune_command`); a searched option given explicitly on
the command line is fixed to that value instead of searched.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import TYPE_CHECKING, Annotated, Any, get_type_hints

import typer

from hessaudit.commands.common import DebugOption, QuietOption
from hessaudit.commands.finetune import _from_command_line, finetune_command
from hessaudit.errors import HessauditError

if TYPE_CHECKING:
    from hessaudit.robust.config import FinetuneConfig

_TUNE = "Search"

#: finetune parameters that tune does not take (or replaces with its own).
_DROPPED = ("ctx", "resume", "overwrite", "quiet", "debug", "val_fraction", "early_stop")


def _tune_command(
    ctx: typer.Context,
    trials: Annotated[
        int, typer.Option(help="Number of trials (in all, counting a resumed search's).",
                          rich_help_panel=_TUNE)
    ] = 20,
    timeout: Annotated[
        float | None,
        typer.Option(
            help="Start no new trial after this many seconds (default: no limit).",
            rich_help_panel=_TUNE,
        ),
    ] = None,
    objective: Annotated[
        str,
        typer.Option(
            help="val-acc (accuracy on the noisy validation labels, maximized) | val-loss "
            "(noise-corrected validation loss, needs --noise-matrix) | bound (the audit's "
            "generalization bound of each trial, minimized).",
            rich_help_panel=_TUNE,
        ),
    ] = "val-acc",
    space: Annotated[
        str | None,
        typer.Option(
            metavar="FILE",
            help='Search space JSON: {"defaults": true, "params": {"lr": {"low": 1e-4, '
            '"high": 1e-2, "log": true}, "head_radius": null, ...}} (default: the built-in '
            "space for the loss and constraint).",
            rich_help_panel=_TUNE,
        ),
    ] = None,
    trial_epochs: Annotated[
        int | None,
        typer.Option(help="Epochs of each trial (default: a third of --epochs, rounded up); "
                     "--epochs is the final run's.", rich_help_panel=_TUNE),
    ] = None,
    startup_trials: Annotated[
        int | None,
        typer.Option(help="Random trials before TPE takes over (default: trials/3, 2..10).",
                     rich_help_panel=_TUNE),
    ] = None,
    prune: Annotated[
        bool,
        typer.Option(help="Stop trials whose validation score falls below the median of "
                     "earlier trials at the same epoch.", rich_help_panel=_TUNE),
    ] = True,
    final: Annotated[
        bool,
        typer.Option(help="Train the best parameters to completion in DIR/best.",
                     rich_help_panel=_TUNE),
    ] = True,
    val_fraction: Annotated[
        float,
        typer.Option(help="Fraction (0..1) of --data held out to score the trials (its labels "
                     "are as noisy as the training labels).", rich_help_panel=_TUNE),
    ] = 0.1,
    resume: Annotated[
        bool,
        typer.Option(help="Continue the search in --out (same options; --trials, --timeout "
                     "may change).", rich_help_panel=_TUNE),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(help="Start again in an --out that holds a previous search.",
                     rich_help_panel=_TUNE),
    ] = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
    **finetune_options: Any,
) -> int:
    return _tune(
        ctx, trials=trials, timeout=timeout, objective=objective, space=space,
        trial_epochs=trial_epochs, startup_trials=startup_trials, prune=prune, final=final,
        val_fraction=val_fraction, resume=resume, overwrite=overwrite, quiet=quiet,
    )


def _base_config(ctx: typer.Context, val_fraction: float) -> FinetuneConfig:
    """The config every trial starts from: the command's parameters that are finetune options
    (the FinetuneConfig fields), with tune's ``--val-fraction``."""
    from hessaudit.robust.config import FinetuneConfig

    fields = {f.name for f in dataclasses.fields(FinetuneConfig)} - {"val_fraction"}
    values = {name: value for name, value in ctx.params.items() if name in fields}
    for name in ("mean", "std"):  # a repeatable flag not given comes as an empty list
        values[name] = tuple(values[name]) if values.get(name) else None
    missing = [f"--{n}" for n in ("model", "pretrained", "data", "out") if not values.get(n)]
    if missing:
        raise HessauditError(
            f"missing {', '.join(missing)}",
            hint="hessaudit tune --model NAME --pretrained CKPT --data SOURCE --out DIR "
            "--trials N",
        )
    return FinetuneConfig(**values, val_fraction=val_fraction)


def _tune(
    ctx: typer.Context,
    *,
    trials: int,
    timeout: float | None,
    objective: str,
    space: str | None,
    trial_epochs: int | None,
    startup_trials: int | None,
    prune: bool,
    final: bool,
    val_fraction: float,
    resume: bool,
    overwrite: bool,
    quiet: bool,
) -> int:
    """The command's work, whatever declares its options: the finetune options are read from
    ``ctx.params`` (see :func:`_base_config`), tune's own come as arguments."""
    from hessaudit import _paths
    from hessaudit.commands.finetune import run_inputs
    from hessaudit.report.tuning import tune_display
    from hessaudit.robust.tune.run import run_tune
    from hessaudit.robust.tune.settings import TuneSettings
    from hessaudit.robust.tune.space import DEFAULT_SPACE, build_space, load_space_file

    base = _base_config(ctx, val_fraction)
    _paths.check_run_folder("--out", base.out, {**run_inputs(base), "the --space file": space})
    fixed = {name for name in DEFAULT_SPACE if _from_command_line(ctx, name)}
    overrides, use_defaults = ({}, True) if space is None else load_space_file(space)
    settings = TuneSettings(
        base=base,
        space=build_space(base, overrides=overrides, use_defaults=use_defaults, fixed=fixed),
        trials=trials,
        timeout=timeout,
        objective=objective,
        trial_epochs=trial_epochs,
        pruning=prune,
        startup_trials=startup_trials,
        final=final,
    )
    run_tune(settings, display=tune_display(quiet=quiet), resume=resume, overwrite=overwrite)
    return 0


def _signature() -> tuple[inspect.Signature, dict[str, Any]]:
    """tune's own options, then finetune's (minus the dropped ones)."""
    own = inspect.signature(_tune_command, eval_str=True)
    own_hints = get_type_hints(_tune_command, include_extras=True)
    ft = inspect.signature(finetune_command, eval_str=True)
    ft_hints = get_type_hints(finetune_command, include_extras=True)
    params = [p for p in own.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    hints = {name: own_hints[name] for name in own.parameters if name in own_hints}
    for p in ft.parameters.values():
        if p.name in _DROPPED:
            continue
        params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))
        hints[p.name] = ft_hints[p.name]
    # keyword-only after positional-or-keyword is valid; keep the own ones positional
    return own.replace(parameters=params, return_annotation=int), hints


def tune_command(ctx: typer.Context, **kwargs: Any) -> int:
    """Search the finetuner's radii, learning rate and loss options on a noisy validation
    split (Optuna TPE, seeded, with pruning), then train the best to completion in DIR/best."""
    return _tune_command(ctx, **kwargs)


tune_command.__signature__, tune_command.__annotations__ = _signature()  # type: ignore[attr-defined]
