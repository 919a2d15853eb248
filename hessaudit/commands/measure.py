"""``hessaudit measure``: per-layer Hessian distances and the generalization bound."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from hessaudit.commands.options import (
    AllowHub,
    BatchSize,
    CropPct,
    Debug,
    Device,
    Exclude,
    ExcludeNewHead,
    Finetuned,
    Include,
    IncludeBias,
    IncludeNorm,
    InputSize,
    Interpolation,
    JsonOutput,
    LabelColumn,
    MaxLength,
    Mean,
    Model,
    NumClasses,
    Pretrained,
    Quiet,
    Samples,
    Std,
    SummaryMd,
    TextColumn,
    TokenizerDir,
)

_DATA = "Inputs"
_MEASURE = "Measure"
_LAYERS = _MEASURE  # which layers are measured
_BOUND = "Bound"
_OUTPUT = "Outputs"
_GATES = "Gates (exit 2 when one fails; see docs/gating.md)"


def measure_command(
    ctx: typer.Context,
    pretrained: Pretrained,
    finetuned: Finetuned,
    model: Model(_DATA),
    data: Annotated[
        str,
        typer.Option(
            help="Fine-tuning data: ImageFolder dir, .npz (x, y), or 'digits'.",
            rich_help_panel=_DATA,
        ),
    ],
    eval_data: Annotated[
        str | None, typer.Option(
            help="Held-out data, for the observed gap (default: none, no gap).",
            rich_help_panel=_DATA,
        )
    ] = None,
    labels: Annotated[
        str | None,
        typer.Option(
            help="Labels trained on: a finetune noise.json, or a .npy/.csv of integer labels, "
            "one per example of --data (default: the labels of --data).",
            rich_help_panel=_DATA,
        ),
    ] = None,
    num_classes: NumClasses(_DATA) = None,
    samples: Samples("Audit", _DATA) = None,
    batch_size: BatchSize(_DATA) = 32,
    input_size: InputSize(_DATA) = None,
    mean: Mean(_DATA) = None,
    std: Std(_DATA) = None,
    interpolation: Interpolation(_DATA) = None,
    crop_pct: CropPct(_DATA) = None,
    text_column: TextColumn(_DATA) = None,
    label_column: LabelColumn(_DATA) = "label",
    tokenizer: TokenizerDir(_DATA) = None,
    max_length: MaxLength(_DATA) = 128,
    n_train: Annotated[
        int | None,
        typer.Option(
            help="Training-set size n, in examples (default: size of --data).",
            rich_help_panel=_BOUND,
        ),
    ] = None,
    loss_bound: Annotated[
        str | None,
        typer.Option(
            help="Loss bound C: max (default: the largest per-example training loss), "
            "quantile:Q (the Q-quantile of those losses; an estimate), or a number.",
            metavar="max|quantile:Q|VALUE",
            rich_help_panel=_BOUND,
        ),
    ] = None,
    epsilon: Annotated[
        float, typer.Option(help="The bound's epsilon.", rich_help_panel=_BOUND)
    ] = 0.0,
    reduce: Annotated[
        str,
        typer.Option(help="example-max | batch-max | mean.", rich_help_panel=_MEASURE),
    ] = "example-max",
    form: Annotated[
        str, typer.Option(help="positive | raw | cross.", rich_help_panel=_MEASURE)
    ] = "positive",
    recipe: Annotated[
        str,
        typer.Option(
            help="theorem | released: 'released' reproduces the paper's released code (sets "
            "--form, --reduce, --batch-size, the layers and the head rule; see docs/measure.md).",
            rich_help_panel=_MEASURE,
        ),
    ] = "theorem",
    engine: Annotated[
        str, typer.Option(help="auto | jvp | lanczos.", rich_help_panel=_MEASURE)
    ] = "auto",
    lanczos_steps: Annotated[
        int,
        typer.Option(
            help="Most Lanczos steps per estimate; a row that has not met --tol by then is "
            "reported as not converged (docs/measure.md, 'Stopping rule').",
            rich_help_panel=_MEASURE,
        ),
    ] = 100,
    tol: Annotated[
        float, typer.Option(help="Relative tolerance of the estimates.", rich_help_panel=_MEASURE)
    ] = 1e-3,
    spectrum: Annotated[
        bool,
        typer.Option(
            help="Also estimate each block's top eigenvalue and trace.", rich_help_panel=_MEASURE
        ),
    ] = True,
    spectrum_samples: Annotated[
        int,
        typer.Option(
            help="Examples (the first N audited) for top eigenvalue and trace.",
            rich_help_panel=_MEASURE,
        ),
    ] = 32,
    trace_probes: Annotated[
        int, typer.Option(help="Hutchinson probes for the trace.", rich_help_panel=_MEASURE)
    ] = 8,
    noise_stability: Annotated[
        float | None,
        typer.Option(
            help="Also measure noise stability: mean loss change under Gaussian noise of std "
            "EPS on every measured weight (over --eval-data if given, else --data; default: "
            "off).",
            metavar="EPS",
            rich_help_panel=_MEASURE,
        ),
    ] = None,
    noise_draws: Annotated[
        int | None,
        typer.Option(
            help="Noise draws for --noise-stability (default: 20).", rich_help_panel=_MEASURE
        ),
    ] = None,
    include: Include(_LAYERS) = None,
    exclude: Exclude(_LAYERS) = None,
    include_bias: IncludeBias("measure", _LAYERS) = False,
    include_norm: IncludeNorm("measure", _LAYERS) = False,
    exclude_new_head: ExcludeNewHead(_LAYERS) = False,
    device: Device(_MEASURE) = "cpu",
    dtype: Annotated[
        str, typer.Option(help="float32 | float64.", rich_help_panel=_MEASURE)
    ] = "float32",
    seed: Annotated[
        int, typer.Option(help="Seed for subsets and random probes.", rich_help_panel=_MEASURE)
    ] = 0,
    allow_hub: AllowHub(_DATA) = False,
    label: Annotated[
        list[str] | None,
        typer.Option(
            help="KEY=VALUE stored in the JSON's inputs.tags, for 'correlate --group-by' "
            "(repeatable; default: none).",
            metavar="KEY=VALUE",
            rich_help_panel=_OUTPUT,
        ),
    ] = None,
    json_path: JsonOutput("the audit JSON", _OUTPUT) = None,
    csv_path: Annotated[
        str | None,
        typer.Option(
            "--csv",
            help="Write per-layer rows as CSV ('-' for stdout; default: not written).",
            rich_help_panel=_OUTPUT,
        ),
    ] = None,
    max_bound: Annotated[
        float | None, typer.Option(
            help="Fail if bound > X (default: no limit).", metavar="X", rich_help_panel=_GATES
        )
    ] = None,
    max_hessian_term: Annotated[
        float | None,
        typer.Option(
            help="Fail if Hessian term G > X (default: no limit).",
            metavar="X",
            rich_help_panel=_GATES,
        ),
    ] = None,
    max_ratio: Annotated[
        float | None,
        typer.Option(
            help="Fail if G / observed gap > X (needs --eval-data; default: no limit).",
            metavar="X",
            rich_help_panel=_GATES,
        ),
    ] = None,
    min_ratio: Annotated[
        float | None,
        typer.Option(
            help="Fail if G / observed gap < X (needs --eval-data; default: no limit).",
            metavar="X",
            rich_help_panel=_GATES,
        ),
    ] = None,
    max_layer_hcal: Annotated[
        list[str] | None,
        typer.Option(
            help="PATTERN=X: fail if a layer matching the glob has Hcal > X (repeatable; "
            "default: no limit).",
            metavar="[PATTERN=]X",
            rich_help_panel=_GATES,
        ),
    ] = None,
    max_layer_share: Annotated[
        list[str] | None,
        typer.Option(
            help="PATTERN=F: fail if a matching layer's share of G is > F, a fraction 0..1 "
            "(repeatable; default: no limit).",
            metavar="[PATTERN=]F",
            rich_help_panel=_GATES,
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="Read \\[gates] from this TOML file (default: ./pyproject.toml's "
            "\\[tool.hessaudit.gates], when there is one).",
            rich_help_panel=_GATES,
        ),
    ] = None,
    summary_md: SummaryMd(_OUTPUT) = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> int:
    """Per-layer Hessian distances between two checkpoints and the generalization bound."""
    from hessaudit import _paths
    from hessaudit.audit import gates
    from hessaudit.audit.request import FIELDS, AuditRequest
    from hessaudit.audit.tags import parse_labels
    from hessaudit.inputs.text_options import TextOptions

    outputs = _paths.check_outputs(
        {"--json": json_path, "--csv": csv_path, "--summary-md": summary_md},
        {
            "the pretrained checkpoint": pretrained,
            "the fine-tuned checkpoint": finetuned,
            "the --data input": data,
            "the --eval-data input": eval_data,
            "the --labels file": labels,
            "the --model factory file": _paths.factory_file(model),
            "the --model folder": model if os.path.isdir(model) else None,
            "the --tokenizer folder": tokenizer,
            "the gates config": config if config is not None else "pyproject.toml",
        },
        input_folders=True,
    )
    gate_specs = gates.measure_gates(
        max_bound=max_bound,
        max_hessian_term=max_hessian_term,
        max_ratio=max_ratio,
        min_ratio=min_ratio,
        max_layer_hcal=max_layer_hcal,
        max_layer_share=max_layer_share,
        config=config,
    )
    gates.check_before_audit(gate_specs, eval_data=eval_data)
    # The other parameters are the request's fields, by name; the request checks them all.
    options = {name: value for name, value in ctx.params.items() if name in FIELDS}
    text = TextOptions(text_column, label_column, tokenizer, max_length)  # checks them
    request = AuditRequest.for_checkpoints(
        **options, tags=parse_labels(label), text=text, given=_given_on_command_line(ctx)
    )
    main_rank = _is_main_rank()
    result = _run(request, gate_specs, progress=not quiet and main_rank,
                  to_stdout=outputs.to_stdout)
    document = result.to_dict()
    if not main_rank:  # torchrun: every rank holds the same result; rank 0 writes and prints
        return 0 if document["success"] else 2
    _write_outputs(result, document, json_path=json_path, csv_path=csv_path,
                   summary_md=summary_md)
    if not quiet and not outputs.to_stdout:
        from hessaudit.report.audit import print_audit

        print_audit(document)
    return 0 if document["success"] else 2


def _is_main_rank() -> bool:
    """True outside torchrun, and on rank 0 of a torchrun job."""
    from hessaudit.audit.distributed import env_world_size

    return env_world_size() <= 1 or int(os.environ.get("RANK", "0")) == 0


def _run(request: Any, gate_specs: list[Any], *, progress: bool, to_stdout: bool) -> Any:
    """The audit with a progress line, its gates evaluated on the result."""
    from hessaudit import _paths
    from hessaudit.audit import gates
    from hessaudit.audit.run import run_audit
    from hessaudit.commands import _interrupt
    from hessaudit.report.progress import step_progress

    try:
        with (
            step_progress("auditing layers", enabled=progress) as advance,
            _paths.stdout_reserved(to_stdout),  # the model's prints go to stderr
        ):
            result = run_audit(request, progress=_interrupt.checked(advance),
                               layer_gates=gate_specs)
            _interrupt.check()  # a Ctrl-C whose exception was swallowed: write nothing
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted: the audit did not finish; nothing was written\n")
        sys.stderr.flush()
        raise
    return result.with_gates(gates.evaluate(gate_specs, result.to_dict()))


def _write_outputs(result: Any, document: dict[str, Any], *, json_path: str | None,
                   csv_path: str | None, summary_md: str | None) -> None:
    """The estimate warning (also under --quiet: a CI log must show it) and the outputs."""
    from hessaudit import _paths
    from hessaudit.audit.run import audit_to_json, layers_frame
    from hessaudit.report.audit import warn_if_estimate

    warn_if_estimate(document)
    if json_path is not None:
        _paths.write_output("--json", json_path, audit_to_json(result))
    if csv_path is not None:
        _paths.write_output("--csv", csv_path, layers_frame(result).to_csv(index=False))
    if summary_md is not None:
        from hessaudit.report.markdown import audit_markdown, write_summary

        write_summary(summary_md, audit_markdown(document))


def _given_on_command_line(ctx: typer.Context) -> set[str]:
    """Names of the options the user gave (not left at their defaults)."""
    given = set()
    for name in ctx.params:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            given.add(name)
    return given
