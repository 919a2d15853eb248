"""``hessaudit inspect``: per-layer weight distances, no Hessian work."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from hessaudit.commands.common import DebugOption, QuietOption


def inspect_command(
    pretrained: Annotated[Path, typer.Argument(help="Pretrained checkpoint.")],
    finetuned: Annotated[Path, typer.Argument(help="Fine-tuned checkpoint.")],
    model: Annotated[
        str | None,
        typer.Option(
            help="timm model name or factory; the fine-tuned file must load into it (default: "
            "none, tensors are paired by name).",
        ),
    ] = None,
    num_classes: Annotated[
        int | None, typer.Option(help="Classes (default: from the head).")
    ] = None,
    include: Annotated[
        list[str] | None,
        typer.Option(help="Only layers matching this glob (repeatable; default: every layer)."),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option(help="Skip layers matching this glob (repeatable; default: none)."),
    ] = None,
    include_bias: Annotated[bool, typer.Option(help="Also list biases.")] = False,
    include_norm: Annotated[bool, typer.Option(help="Also list normalization scales.")] = False,
    exclude_new_head: Annotated[bool, typer.Option(help="Leave out a new head.")] = False,
    allow_hub: Annotated[bool, typer.Option(help="Allow timm hub downloads.")] = False,
    json_path: Annotated[
        str | None,
        typer.Option(
            "--json", help="Write the table as JSON ('-' for stdout; default: not written)."
        ),
    ] = None,
    quiet: QuietOption = False,
    debug: DebugOption = False,
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
        },
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
