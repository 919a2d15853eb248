"""``hessaudit finetune``: robust fine-tuning under label noise (the paper's Algorithm 1).

Only option parsing lives here; the work is :func:`hessaudit.robust.trainer.run_finetune`.
The option types that ``tune`` shares are in :mod:`hessaudit.commands.finetune_options`; the
defaults below must equal :class:`hessaudit.robust.config.FinetuneConfig`'s (a test checks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from hessaudit.commands import finetune_options as ft
from hessaudit.commands.options import Debug, Quiet
from hessaudit.errors import HessauditError

if TYPE_CHECKING:
    from hessaudit.robust.config import FinetuneConfig

#: Parameters that are not FinetuneConfig fields.
_NOT_CONFIG = ("ctx", "resume", "overwrite", "quiet", "debug")


def _from_command_line(ctx: typer.Context, name: str) -> bool:
    # compared by name: typer may hand back its own copy of click's ParameterSource enum
    source = ctx.get_parameter_source(name)
    return getattr(source, "name", None) in ("COMMANDLINE", "ENVIRONMENT")


def finetune_command(
    ctx: typer.Context,
    model: ft.Model = None,
    pretrained: ft.Pretrained = None,
    data: ft.Data = None,
    out: ft.Out = None,
    num_classes: ft.NumClasses = None,
    eval_data: ft.EvalData = None,
    val_fraction: Annotated[
        float | None,
        typer.Option(
            help="Carve this fraction (0..1) of --data out as a validation split (clean labels "
            "when known); needed by --early-stop (default: none, no validation split).",
            rich_help_panel=ft.DATA,
        ),
    ] = None,
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
    early_stop: Annotated[
        int | None,
        typer.Option(
            metavar="PATIENCE",
            help="Stop after PATIENCE epochs without a better validation accuracy "
            "(best.safetensors keeps the best; default: off, train every epoch).",
            rich_help_panel=ft.OPTIMIZATION,
        ),
    ] = None,
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
    resume: Annotated[
        str | None,
        typer.Option(
            metavar="DIR",
            help="Continue or complete the interrupted run in DIR (only --epochs, --early-stop, "
            "--device, --audit, --audit-samples may change; a factory --model and --allow-hub "
            "must be given again; default: start a new run).",
            rich_help_panel=ft.RUN,
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            help="Replace the outputs of a previous run in --out (other files stay).",
            rich_help_panel=ft.RUN,
        ),
    ] = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> int:
    """Fine-tune a pretrained model robustly under label noise (reweighted loss + layerwise
    projection), or with a baseline loss; write checkpoints, metrics and config to --out."""
    from hessaudit.report.training import training_display
    from hessaudit.robust.config import FinetuneConfig
    from hessaudit.robust.trainer import resume_config, run_finetune

    values = {
        name: value for name, value in ctx.params.items() if name not in _NOT_CONFIG
    }
    for name in ("mean", "std"):  # a repeatable flag not given comes as an empty list
        values[name] = tuple(values[name]) if values.get(name) else None
    if resume is not None:
        if overwrite:
            raise HessauditError("--resume and --overwrite cannot be combined")
        given = {
            name: value
            for name, value in values.items()
            if _from_command_line(ctx, name)
        }
        config = resume_config(resume, given)
    else:
        missing = [f"--{n}" for n in ("model", "pretrained", "data", "out") if not values.get(n)]
        if missing:
            raise HessauditError(
                f"missing {', '.join(missing)}",
                hint="hessaudit finetune --model NAME --pretrained CKPT --data SOURCE --out DIR",
            )
        config = FinetuneConfig(**values)
    from hessaudit import _paths
    from hessaudit.robust.signals import sigterm_as_interrupt

    _paths.check_run_folder(
        "--resume" if resume is not None else "--out", config.out, run_inputs(config)
    )
    try:
        with sigterm_as_interrupt():
            run_finetune(
                config,
                display=training_display(quiet=quiet),
                resume=resume is not None,
                overwrite=overwrite,
            )
    except KeyboardInterrupt as exc:
        _interrupted_hint(config, terminated=type(exc).__name__ == "Terminated")
        raise
    return 0


def _spec_file(spec: str | None) -> str | None:
    """The file an option such as ``--noise-matrix F.csv``, ``--inject-noise matrix:FILE`` or
    ``asymmetric:0.2:MAP.json`` reads: ``spec`` or its first tail after a ':' that exists."""
    import os

    if not spec:
        return None
    candidates = [spec] + [spec.split(":", k)[k] for k in range(1, spec.count(":") + 1)]
    return next((path for path in candidates if os.path.exists(path)), None)


def _folder(spec: str | None) -> str | None:
    """``spec`` when it names an existing folder (a Hugging Face model folder), else None."""
    import os

    return spec if spec and os.path.isdir(os.path.expanduser(spec)) else None


def run_inputs(config: Any) -> dict[str, str | None]:
    """The files and folders a fine-tuning run reads, for the run-folder guard."""
    from hessaudit._paths import factory_file

    return {
        "the --pretrained checkpoint": config.pretrained,
        "the --data input": config.data,
        "the --eval-data input": config.eval_data,
        "the --model factory file": factory_file(config.model),
        "the --model folder": _folder(config.model),
        "the --tokenizer folder": getattr(config, "tokenizer", None),
        "the --radius-table file": config.radius_table,
        "the --noise-matrix file": _spec_file(config.noise_matrix),
        "the --inject-noise file": _spec_file(config.inject_noise),
    }


def _interrupted_hint(config: FinetuneConfig, *, terminated: bool = False) -> None:
    """On Ctrl-C or SIGTERM, say where the partial results are and how to continue (the
    resume command repeats the options that --resume needs confirmed: a factory --model,
    --allow-hub)."""
    import shlex
    import sys
    from pathlib import Path

    from hessaudit.robust.trust import needs_confirmation

    folder = Path(config.out)
    if (folder / "state.pt").is_file():
        where = f"the last per-epoch checkpoint is {folder / 'state.pt'}"
        if (folder / "last.safetensors").is_file():
            where += f" (weights: {folder / 'last.safetensors'})"
    else:
        where = "no epoch finished, so there is no per-epoch checkpoint yet"
    command = f"hessaudit finetune --resume {shlex.quote(str(folder))}"
    if needs_confirmation(config.model):
        command += f" --model {shlex.quote(config.model)}"
    if config.allow_hub:
        command += " --allow-hub"
    hint = f"; continue with: {command}" if (folder / "config.json").is_file() else ""
    what = "interrupted (SIGTERM)" if terminated else "interrupted"
    sys.stderr.write(f"\n{what}: {where}{hint}\n")
    sys.stderr.flush()
