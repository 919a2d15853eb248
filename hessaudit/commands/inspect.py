"""``hessaudit inspect``: per-layer weight distances, no Hessian work."""

from __future__ import annotations

import json
import os
from typing import Annotated

import typer

from hessaudit.commands.options import (
    AllowHub,
    Debug,
    Exclude,
    ExcludeNewHead,
    Finetuned,
    Include,
    IncludeBias,
    IncludeNorm,
    JsonOutput,
    NumClasses,
    Pretrained,
    Quiet,
)


def inspect_command(
    pretrained: Pretrained,
    finetuned: Finetuned,
    model: Annotated[
        str | None,
        typer.Option(
            help="timm model name or factory; the fine-tuned file must load into it (default: "
            "none, tensors are paired by name).",
        ),
    ] = None,
    num_classes: NumClasses() = None,
    include: Include() = None,
    exclude: Exclude() = None,
    include_bias: IncludeBias("list") = False,
    include_norm: IncludeNorm("list") = False,
    exclude_new_head: ExcludeNewHead() = False,
    allow_hub: AllowHub() = False,
    json_path: JsonOutput("the table as JSON") = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> int:
    """Show how far each layer moved from the pretrained weights (no Hessian work)."""
    from hessaudit import _paths
    from hessaudit.audit.distances import compare_weights

    outputs = _paths.check_outputs(
        {"--json": json_path},
        {
            "the pretrained checkpoint": pretrained,
            "the fine-tuned checkpoint": finetuned,
            "the --model factory file": _paths.factory_file(model),
            "the --model folder": model if model and os.path.isdir(model) else None,
        },
        input_folders=True,
    )
    with _paths.stdout_reserved(outputs.to_stdout):  # the model factory's prints go to stderr
        report = compare_weights(
            str(pretrained),
            str(finetuned),
            model=model,
            num_classes=num_classes,
            include=tuple(include or ()),
            exclude=tuple(exclude or ()),
            include_bias=include_bias,
            include_norm=include_norm,
            exclude_new_head=exclude_new_head,
            allow_hub=allow_hub,
        )
    document = report.to_dict()
    if json_path is not None:
        _paths.write_output("--json", json_path, json.dumps(document, indent=2) + "\n")
    if not quiet and not outputs.to_stdout:
        from hessaudit.report.inspect import print_distances

        print_distances(document)
    return 0
