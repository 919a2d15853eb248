"""Option types that several commands share: each flag's name, help text and metavar, once.

Each is an ``Annotated`` type for a command's signature; the default stays in the signature,
where typer reads it::

    allow_hub: AllowHub(_DATA) = False

An option sits in a different help panel in each command (``measure``'s "Inputs",
``finetune``'s "Model, data and run folder"), so most types are functions of the panel
(``None``: the plain "Options" panel). Where two commands say one thing differently
(``--samples``: "Audit" / "Train on" a seeded subset), the function takes that word.
Flag names, defaults and help texts are a contract: scripts and CI configurations name them.

The image data-config options are named as in timm's scripts (``--input-size``, ``--mean``,
``--std``, ``--interpolation``, ``--crop-pct``); their values are resolved against the
model's timm data config in :mod:`hessaudit.inputs.data_config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

#: What ``--model`` accepts (``finetune`` adds that a new run needs it).
MODEL_SPEC = "timm model name, or a factory 'file.py:function' / 'pkg.mod:function'"
_FROM_TIMM = "default: the model's timm config"

# Every command. ``--debug`` is read by ``common.run_app`` from the raw arguments, so that a
# failure while parsing the other options can still show its traceback.
Debug = Annotated[bool, typer.Option("--debug", help="Show the full Python traceback on errors.")]
Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="No tables or progress bars; logs and errors only.")
]

# --------------------------------------------------------------------------- checkpoints, model

Pretrained = Annotated[Path, typer.Argument(help="Pretrained checkpoint (.safetensors/.pt).")]
Finetuned = Annotated[Path, typer.Argument(help="Fine-tuned checkpoint (.safetensors/.pt).")]


def Model(panel: str | None = None) -> Any:
    """``--model``, required."""
    return Annotated[str, typer.Option(help=f"{MODEL_SPEC}.", rich_help_panel=panel)]


def NumClasses(panel: str | None = None) -> Any:
    return Annotated[
        int | None,
        typer.Option(help="Classes (default: from the fine-tuned head).", rich_help_panel=panel),
    ]


def AllowHub(panel: str | None = None) -> Any:
    return Annotated[
        bool,
        typer.Option(
            help="Allow timm to download a hub model (off: never use the network).",
            rich_help_panel=panel,
        ),
    ]


def Device(panel: str | None = None) -> Any:
    return Annotated[str, typer.Option(help="cpu | cuda | cuda:N.", rich_help_panel=panel)]


# --------------------------------------------------------------------------- layer selection


def Include(panel: str | None = None) -> Any:
    return Annotated[
        list[str] | None,
        typer.Option(
            help="Only layers matching this glob (repeatable; default: every weight layer).",
            rich_help_panel=panel,
        ),
    ]


def Exclude(panel: str | None = None) -> Any:
    return Annotated[
        list[str] | None,
        typer.Option(
            help="Skip layers matching this glob (repeatable; default: none).",
            rich_help_panel=panel,
        ),
    ]


def IncludeBias(verb: str, panel: str | None = None) -> Any:
    """``--include-bias``; ``verb``: what the command does with a layer ("measure", "list")."""
    return Annotated[bool, typer.Option(help=f"Also {verb} biases.", rich_help_panel=panel)]


def IncludeNorm(verb: str, panel: str | None = None) -> Any:
    return Annotated[
        bool, typer.Option(help=f"Also {verb} normalization scales.", rich_help_panel=panel)
    ]


def ExcludeNewHead(panel: str | None = None) -> Any:
    return Annotated[
        bool,
        typer.Option(
            help="Leave out a new head (no pretrained counterpart).", rich_help_panel=panel
        ),
    ]


# --------------------------------------------------------------------------- data


def BatchSize(panel: str | None = None) -> Any:
    return Annotated[int, typer.Option(help="Mini-batch size, in examples.", rich_help_panel=panel)]


def Samples(verb: str, panel: str | None = None) -> Any:
    """``--samples`` (and ``finetune``'s ``--audit-samples``); ``verb``: "Audit", "Train on"."""
    return Annotated[
        int | None,
        typer.Option(
            help=f"{verb} a seeded subset of N examples (default: all).", rich_help_panel=panel
        ),
    ]


def InputSize(panel: str | None = None) -> Any:
    return Annotated[
        int | None,
        typer.Option(
            help="Resize images to N x N pixels (default: a timm model's input size; other "
            "models: the images as stored).",
            metavar="N",
            rich_help_panel=panel,
        ),
    ]


def Mean(panel: str | None = None) -> Any:
    return Annotated[
        list[str] | None,
        typer.Option(
            help="Normalization mean, one value or one per channel (e.g. 0.485,0.456,0.406; "
            f"{_FROM_TIMM}, else none).",
            rich_help_panel=panel,
        ),
    ]


def Std(panel: str | None = None) -> Any:
    return Annotated[
        list[str] | None,
        typer.Option(
            help=f"Normalization std, like --mean ({_FROM_TIMM}, else none).",
            rich_help_panel=panel,
        ),
    ]


def Interpolation(panel: str | None = None) -> Any:
    return Annotated[
        str | None,
        typer.Option(
            help=f"Resize filter: bilinear | bicubic | nearest ({_FROM_TIMM}, else bilinear).",
            rich_help_panel=panel,
        ),
    ]


def CropPct(panel: str | None = None) -> Any:
    return Annotated[
        float | None,
        typer.Option(
            help=f"Center-crop fraction when resizing, in (0, 1] ({_FROM_TIMM}, else 1: no "
            "crop).",
            rich_help_panel=panel,
        ),
    ]


# --------------------------------------------------------------------------- text data
# Checked in one place: :class:`hessaudit.inputs.text_options.TextOptions`.


def TextColumn(panel: str | None = None) -> Any:
    return Annotated[
        str | None,
        typer.Option(
            help="Text data: the text column, or two columns A,B for a sentence pair (default: "
            "text, or the pair sentence1,sentence2 when there is no text column).",
            metavar="NAME[,NAME]",
            rich_help_panel=panel,
        ),
    ]


def LabelColumn(panel: str | None = None) -> Any:
    return Annotated[
        str,
        typer.Option(
            help="Text data: the label column, integers or names from the model's label2id.",
            metavar="NAME",
            rich_help_panel=panel,
        ),
    ]


def TokenizerDir(panel: str | None = None) -> Any:
    return Annotated[
        str | None,
        typer.Option(
            "--tokenizer",
            help="Text data: a local tokenizer folder (default: the model's folder).",
            metavar="DIR",
            rich_help_panel=panel,
        ),
    ]


def MaxLength(panel: str | None = None) -> Any:
    return Annotated[
        int,
        typer.Option(
            help="Text data: truncate examples to N tokens, special tokens included.",
            metavar="N",
            rich_help_panel=panel,
        ),
    ]


# --------------------------------------------------------------------------- outputs


def JsonOutput(what: str, panel: str | None = None) -> Any:
    """``--json``; ``what``: the document written ("the audit JSON")."""
    return Annotated[
        str | None,
        typer.Option(
            "--json",
            help=f"Write {what} here ('-' for stdout; default: not written).",
            rich_help_panel=panel,
        ),
    ]


def SummaryMd(panel: str | None = None) -> Any:
    return Annotated[
        str | None,
        typer.Option(
            help="Write a markdown report here (e.g. $GITHUB_STEP_SUMMARY; '-' for stdout; "
            "default: not written).",
            rich_help_panel=panel,
        ),
    ]
