"""``hessaudit tune``: search the finetuner's radii, learning rate and loss options.

Only option parsing is here; the work is :func:`~hessaudit.robust.tune.run.run_tune`. The finetune
options are the ones of ``hessaudit finetune`` (the types of
:mod:`hessaudit.commands.finetune_options`, same defaults; a test checks), less
``--resume``, ``--overwrite``, ``--val-fraction`` and ``--early-stop``, for which tune has its
own; a searched option given explicitly on the command line is fixed to that value instead of
searched.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Annotated

import typer

from hessaudit.commands import finetune_options as ft
from hessaudit.commands.finetune import _from_command_line
from hessaudit.commands.options import Debug, Quiet
from hessaudit.errors import HessauditError

if TYPE_CHECKING:
    from hessaudit.robust.config import FinetuneConfig

_TUNE = "Search"


def tune_command(
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
    model: ft.Model = None,
    pretrained: ft.Pretrained = None,
    data: ft.Data = None,
    out: ft.Out = None,
    num_classes: ft.NumClasses = None,
    eval_data: ft.EvalData = None,
    batch_size: ft.BatchSize = 32,
    samples: ft.Samples = None,
    input_size: ft.InputSize = None,
    mean: ft.Mean = None,
    std: ft.Std = None,
    interpolation: ft.Interpolation = None,
    crop_pct: ft.CropPct = None,
    device: ft.Device = "cpu",
    seed: ft.Seed = 0,
    allow_hub: ft.AllowHub = False,
    text_column: ft.TextColumn = None,
    label_column: ft.LabelColumn = "label",
    tokenizer: ft.TokenizerDir = None,
    max_length: ft.MaxLength = 128,
    epochs: ft.Epochs = 30,
    lr: ft.Lr = None,
    optimizer: ft.Optimizer = None,
    momentum: ft.Momentum = 0.9,
    weight_decay: ft.WeightDecay = None,
    schedule: ft.Schedule = None,
    lr_step: ft.LrStep = 10,
    lr_decay: ft.LrDecay = 0.1,
    warmup_epochs: ft.WarmupEpochs = None,
    loss: ft.Loss = "reweight",
    smoothing: ft.Smoothing = 0.1,
    gce_q: ft.GceQ = 0.7,
    sce_alpha: ft.SceAlpha = 0.1,
    sce_beta: ft.SceBeta = 1.0,
    js_weight: ft.JsWeight = 0.5,
    nonneg_correction: ft.NonnegCorrection = False,
    noise_matrix: ft.NoiseMatrix = None,
    estimate_method: ft.EstimateMethod = "confident",
    estimate_epochs: ft.EstimateEpochs = None,
    constraint: ft.Constraint = None,
    radius: ft.Radius = 1.0,
    radius_growth: ft.RadiusGrowth = 1.0,
    head_radius: ft.HeadRadius = None,
    radius_attention: ft.RadiusAttention = None,
    radius_linear: ft.RadiusLinear = None,
    radius_table: ft.RadiusTable = None,
    penalty: ft.Penalty = None,
    inject_noise: ft.InjectNoise = None,
    noise_seed: ft.NoiseSeed = None,
    audit: ft.Audit = False,
    audit_samples: ft.AuditSamples = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> int:
    """Search the finetuner's radii, learning rate and loss options on a noisy validation
    split (Optuna TPE, seeded, with pruning), then train the best to completion in DIR/best."""
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

