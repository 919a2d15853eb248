"""``hessaudit finetune``: robust fine-tuning under label noise (the paper's Algorithm 1).

Only option parsing lives here; the work is :func:`hessaudit.robust.trainer.run_finetune`.
The defaults below must equal :class:`hessaudit.robust.config.FinetuneConfig`'s (a test checks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from hessaudit.commands._data_options import (
    crop_pct_option,
    input_size_option,
    interpolation_option,
    mean_option,
    std_option,
)
from hessaudit.commands.common import DebugOption, QuietOption
from hessaudit.errors import HessauditError

if TYPE_CHECKING:
    from hessaudit.robust.config import FinetuneConfig

_DATA = "Model, data and run folder"
_OPT = "Optimization"
_LOSS = "Loss and noise matrix"
_CONS = "Constraint and penalty"
_NOISE = "Synthetic noise"
_RUN = "Audit, resume and overwrite"

#: Parameters that are not FinetuneConfig fields.
_NOT_CONFIG = ("ctx", "resume", "overwrite", "quiet", "debug")


def _from_command_line(ctx: typer.Context, name: str) -> bool:
    # compared by name: typer may hand back its own copy of click's ParameterSource enum
    source = ctx.get_parameter_source(name)
    return getattr(source, "name", None) in ("COMMANDLINE", "ENVIRONMENT")


def finetune_command(
    ctx: typer.Context,
    model: Annotated[
        str | None,
        typer.Option(
            help="timm model name, or a factory 'file.py:function' / 'pkg.mod:function' "
            "(required to start a run).",
            rich_help_panel=_DATA,
        ),
    ] = None,
    pretrained: Annotated[
        str | None,
        typer.Option(
            help="Pretrained checkpoint, .safetensors/.pt (required to start a run).",
            rich_help_panel=_DATA,
        ),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="Training data: ImageFolder dir, .npz (x, y[, clean_y]), or 'digits' (required "
            "to start a run).",
            rich_help_panel=_DATA,
        ),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(help="Run folder for every output, new or empty (required to start a "
                     "run).", rich_help_panel=_DATA),
    ] = None,
    num_classes: Annotated[
        int | None,
        typer.Option(help="Classes k of the new task (default: from the data).",
                     rich_help_panel=_DATA),
    ] = None,
    eval_data: Annotated[
        str | None,
        typer.Option(help="Held-out data, evaluated every epoch, clean labels (default: none).",
                     rich_help_panel=_DATA),
    ] = None,
    val_fraction: Annotated[
        float | None,
        typer.Option(
            help="Carve this fraction (0..1) of --data out as a validation split (clean labels "
            "when known); needed by --early-stop (default: none, no validation split).",
            rich_help_panel=_DATA,
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(help="Mini-batch size, in examples.", rich_help_panel=_DATA)
    ] = 32,
    samples: Annotated[
        int | None,
        typer.Option(help="Train on a seeded subset of N examples (default: all).",
                     rich_help_panel=_DATA),
    ] = None,
    input_size: Annotated[int | None, input_size_option(_DATA)] = None,
    mean: Annotated[list[str] | None, mean_option(_DATA)] = None,
    std: Annotated[list[str] | None, std_option(_DATA)] = None,
    interpolation: Annotated[str | None, interpolation_option(_DATA)] = None,
    crop_pct: Annotated[float | None, crop_pct_option(_DATA)] = None,
    device: Annotated[
        str, typer.Option(help="cpu | cuda | cuda:N.", rich_help_panel=_DATA)
    ] = "cpu",
    seed: Annotated[
        int,
        typer.Option(help="Seed for shuffling, the new head's init and the validation split.",
                     rich_help_panel=_DATA),
    ] = 0,
    allow_hub: Annotated[
        bool,
        typer.Option(help="Allow timm to download a hub model (off: never use the network).",
                     rich_help_panel=_DATA),
    ] = False,
    epochs: Annotated[int, typer.Option(help="Training epochs.", rich_help_panel=_OPT)] = 30,
    lr: Annotated[float, typer.Option(help="Learning rate.", rich_help_panel=_OPT)] = 1e-4,
    optimizer: Annotated[
        str, typer.Option(help="adam | adamw | sgd.", rich_help_panel=_OPT)
    ] = "adam",
    momentum: Annotated[
        float, typer.Option(help="SGD momentum.", rich_help_panel=_OPT)
    ] = 0.9,
    weight_decay: Annotated[
        float, typer.Option(help="Weight decay of the optimizer.", rich_help_panel=_OPT)
    ] = 0.0,
    schedule: Annotated[
        str,
        typer.Option(
            help="step (x --lr-decay every --lr-step epochs) | cosine | none.",
            rich_help_panel=_OPT,
        ),
    ] = "step",
    lr_step: Annotated[
        int, typer.Option(help="Epochs between step decays.", rich_help_panel=_OPT)
    ] = 10,
    lr_decay: Annotated[
        float, typer.Option(help="Factor of each step decay.", rich_help_panel=_OPT)
    ] = 0.1,
    early_stop: Annotated[
        int | None,
        typer.Option(
            metavar="PATIENCE",
            help="Stop after PATIENCE epochs without a better validation accuracy "
            "(best.safetensors keeps the best; default: off, train every epoch).",
            rich_help_panel=_OPT,
        ),
    ] = None,
    loss: Annotated[
        str,
        typer.Option(
            help="reweight (backward correction with F^-1, the paper's) | ce | "
            "label-smoothing | forward | gce | sce | js.",
            rich_help_panel=_LOSS,
        ),
    ] = "reweight",
    smoothing: Annotated[
        float, typer.Option(help="Label smoothing epsilon.", rich_help_panel=_LOSS)
    ] = 0.1,
    gce_q: Annotated[float, typer.Option(help="GCE exponent q.", rich_help_panel=_LOSS)] = 0.7,
    sce_alpha: Annotated[
        float, typer.Option(help="SCE weight of the cross-entropy.", rich_help_panel=_LOSS)
    ] = 0.1,
    sce_beta: Annotated[
        float, typer.Option(help="SCE weight of the reverse cross-entropy.",
                            rich_help_panel=_LOSS)
    ] = 1.0,
    js_weight: Annotated[
        float,
        typer.Option(
            metavar="PI1",
            help="JS loss: weight of the label in the mixture, in (0, 1) (0.5, the JS authors' "
            "default; near 0 acts like CE, near 1 like MAE).",
            rich_help_panel=_LOSS,
        ),
    ] = 0.5,
    nonneg_correction: Annotated[
        bool,
        typer.Option(
            help="reweight: clamp each class's corrected partial risk in the batch at zero, "
            "so the loss cannot run below zero (non-negative risk estimator).",
            rich_help_panel=_LOSS,
        ),
    ] = False,
    noise_matrix: Annotated[
        str | None,
        typer.Option(
            help="F (rows = true, columns = noisy label): symmetric:RATE, a .csv/.npy/.json "
            "file, 'estimate' (from first models; estimate:confident-joint | estimate:anchor | "
            "estimate:dual-t picks the method), or 'injected' (the --inject-noise matrix). "
            "Needed by reweight and forward (default: none).",
            rich_help_panel=_LOSS,
        ),
    ] = None,
    estimate_method: Annotated[
        str,
        typer.Option(help="How --noise-matrix estimate works: confident (alias "
                     "confident-joint) | anchor | dual-t.",
                     rich_help_panel=_LOSS),
    ] = "confident",
    estimate_epochs: Annotated[
        int | None,
        typer.Option(help="Epochs of the first models for 'estimate' (default: --epochs).",
                     rich_help_panel=_LOSS),
    ] = None,
    constraint: Annotated[
        str | None,
        typer.Option(
            help="frobenius | none (default: frobenius for reweight, none otherwise).",
            rich_help_panel=_CONS,
        ),
    ] = None,
    radius: Annotated[
        float,
        typer.Option(
            help="Radius D of the first stage's balls, in Frobenius norm of the weight change.",
            rich_help_panel=_CONS,
        ),
    ] = 1.0,
    radius_growth: Annotated[
        float,
        typer.Option(help="Radius factor gamma per stage: ResNet layer1..4, else 4 equal "
                     "groups of layers in model order.", rich_help_panel=_CONS),
    ] = 1.0,
    head_radius: Annotated[
        float | None,
        typer.Option(help="Keep the new head in a ball of this radius (Frobenius norm) around zero "
                     "(default: unconstrained).", rich_help_panel=_CONS),
    ] = None,
    radius_table: Annotated[
        str | None,
        typer.Option(help="Per-layer radii by name pattern, .json or .csv (default: none).",
                     rich_help_panel=_CONS),
    ] = None,
    penalty: Annotated[
        str | None,
        typer.Option(help="l2sp:LAMBDA[:HEAD] (L2-SP; HEAD default 0.01; default: none).",
                     rich_help_panel=_CONS),
    ] = None,
    inject_noise: Annotated[
        str | None,
        typer.Option(
            help="Flip training labels: symmetric:RATE | asymmetric:RATE[:MAP.json] | "
            "matrix:FILE, RATE a fraction 0..1 (default: none, the labels as given).",
            rich_help_panel=_NOISE,
        ),
    ] = None,
    noise_seed: Annotated[
        int | None,
        typer.Option(help="Seed of --inject-noise (default: --seed).", rich_help_panel=_NOISE),
    ] = None,
    audit: Annotated[
        bool,
        typer.Option(help="Audit the final checkpoint (Hessian measure) into DIR/audit.json.",
                     rich_help_panel=_RUN),
    ] = False,
    audit_samples: Annotated[
        int | None,
        typer.Option(help="Audit a seeded subset of N examples (default: all).",
                     rich_help_panel=_RUN),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            metavar="DIR",
            help="Continue or complete the interrupted run in DIR (only --epochs, --early-stop, "
            "--device, --audit, --audit-samples may change; a factory --model and --allow-hub "
            "must be given again; default: start a new run).",
            rich_help_panel=_RUN,
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(help="Replace the outputs of a previous run in --out (other files stay).",
                     rich_help_panel=_RUN),
    ] = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
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


def run_inputs(config: Any) -> dict[str, str | None]:
    """The files and folders a fine-tuning run reads, for the run-folder guard."""
    from hessaudit._paths import factory_file

    return {
        "the --pretrained checkpoint": config.pretrained,
        "the --data input": config.data,
        "the --eval-data input": config.eval_data,
        "the --model factory file": factory_file(config.model),
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
