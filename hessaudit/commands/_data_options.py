"""The image data-config options that ``measure`` and ``finetune`` (and so ``tune``) share.

Named as in timm's scripts (``--input-size``, ``--mean``, ``--std``, ``--interpolation``,
``--crop-pct``); the values are resolved against the model's timm data config in
:mod:`hessaudit.inputs.data_config`. Each function returns the ``typer.Option`` for a command's help
panel, so the help text is written once.
"""

from __future__ import annotations

from typing import Any

import typer

_FROM_TIMM = "default: the model's timm config"


def input_size_option(panel: str) -> Any:
    return typer.Option(
        help="Resize images to N x N pixels (default: a timm model's input size; other "
        "models: the images as stored).",
        metavar="N",
        rich_help_panel=panel,
    )


def mean_option(panel: str) -> Any:
    return typer.Option(
        help="Normalization mean, one value or one per channel (e.g. 0.485,0.456,0.406; "
        f"{_FROM_TIMM}, else none).",
        rich_help_panel=panel,
    )


def std_option(panel: str) -> Any:
    return typer.Option(
        help=f"Normalization std, like --mean ({_FROM_TIMM}, else none).",
        rich_help_panel=panel,
    )


def interpolation_option(panel: str) -> Any:
    return typer.Option(
        help=f"Resize filter: bilinear | bicubic | nearest ({_FROM_TIMM}, else bilinear).",
        rich_help_panel=panel,
    )


def crop_pct_option(panel: str) -> Any:
    return typer.Option(
        help=f"Center-crop fraction when resizing, in (0, 1] ({_FROM_TIMM}, else 1: no crop).",
        rich_help_panel=panel,
    )
