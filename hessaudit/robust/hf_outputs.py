"""``final/`` and ``best/``: a Hugging Face run's weights as model folders transformers loads.

When the fine-tuned model is a transformers model (``--model DIR`` with a ``config.json``; the
:class:`~hessaudit.inputs.text_model.TextClassifier` around a sequence classifier, or the model
itself), :func:`write_hf_folders` writes, besides ``final.safetensors`` and ``best.safetensors``,
the folders ``final/`` and ``best/``: ``config.json`` (the model's configuration with the run's
class count: ``num_labels``, and its ``label2id`` names when the count is unchanged),
``model.safetensors`` (the same tensors as ``KIND.safetensors``), the tokenizer the run read
its text with (``--tokenizer``, else the model folder's; ``save_pretrained``) and
:data:`MARKER` (which run and epoch the folder holds). So
``AutoModelForSequenceClassification.from_pretrained("DIR/final")`` and
``AutoTokenizer.from_pretrained("DIR/final")`` load them directly, offline.

Safety, as for the run's files (:mod:`hessaudit.robust.run_folder`):

* each folder is built under a temporary name in the run folder (``.final.XXXX.tmp``) and
  renamed into place when complete; a previous ``final/`` of ours is first renamed aside and
  deleted after, so a crash leaves the old folder, the new one, or none (``--resume`` then writes
  it again), never half of one;
* a ``final`` or ``best`` that is not a folder with our :data:`MARKER` (a user's file or folder)
  is never replaced or deleted: the run refuses to start (:func:`check_hf_folders`), before any
  training; ``--overwrite`` removes only folders that carry the marker
  (:func:`remove_hf_folders`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hessaudit.errors import HessauditError

__all__ = [
    "HF_FOLDERS",
    "MARKER",
    "MARKER_SCHEMA",
    "check_hf_folders",
    "hf_folder_files",
    "hf_model_of",
    "is_temporary",
    "remove_hf_folders",
    "remove_temporary",
    "write_hf_folders",
]

HF_FOLDERS = ("final", "best")
MARKER = "hessaudit_run.json"
MARKER_SCHEMA = "hessaudit.finetune-hf-folder/1"


def hf_model_of(model: nn.Module) -> nn.Module | None:
    """The transformers model to save for ``model``: the one a ``TextClassifier`` wraps, the
    model itself when it is a transformers model, else None (no folders are written)."""
    from hessaudit.inputs.hf_models import is_hf_model

    inner = getattr(model, "hf_model", None)
    if isinstance(inner, nn.Module) and is_hf_model(inner):
        return inner
    return model if is_hf_model(model) else None


def is_temporary(name: str) -> bool:
    """A folder of ours being built or set aside (``.final.XXXX.tmp``) that a kill left."""
    return name.endswith(".tmp") and any(name.startswith(f".{k}.") for k in HF_FOLDERS)


def _is_ours(path: Path) -> bool:
    marker = path / MARKER
    if path.is_symlink() or not path.is_dir() or marker.is_symlink() or not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("schema") == MARKER_SCHEMA
    except (OSError, ValueError, AttributeError):
        return False


def check_hf_folders(out: Path) -> None:
    """Refuse a run folder whose ``final`` or ``best`` is not a folder this tool wrote."""
    for kind in HF_FOLDERS:
        path = out / kind
        if os.path.lexists(path) and not _is_ours(path):
            raise HessauditError(
                f"--out {out}: {path} exists and was not written by hessaudit finetune; a "
                "Hugging Face run writes its final/ and best/ model folders there",
                hint="move it away, or choose another --out",
            )


def remove_hf_folders(out: Path) -> None:
    """Delete ``final/`` and ``best/`` when they carry our marker (``--overwrite``); nothing
    else is touched."""
    for kind in HF_FOLDERS:
        if _is_ours(out / kind):
            shutil.rmtree(out / kind)


def remove_temporary(out: Path) -> None:
    """Delete our temporary folders that a killed run left (:func:`is_temporary`)."""
    if not out.is_dir():
        return
    for entry in out.iterdir():
        if is_temporary(entry.name) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)


def hf_folder_files(out: Path) -> dict[str, str]:
    """The folders of ours that exist, by short name (``final_hf``, ``best_hf``)."""
    return {f"{kind}_hf": str(out / kind) for kind in HF_FOLDERS if _is_ours(out / kind)}


def write_hf_folders(run: Any, out: Path) -> None:
    """Write ``out/final`` from ``run.model`` as it is now and ``out/best`` from
    ``out/best.safetensors`` (the final weights without a validation split; no ``best/`` when
    that file is missing); nothing for a model that is not a transformers model. ``run`` is the
    :class:`~hessaudit.robust.training_run.TrainingRun`, after ``final.safetensors``."""
    from safetensors.torch import load_file

    hf = hf_model_of(run.model)
    if hf is None:
        return
    check_hf_folders(out)
    final = {k: v.detach().cpu().clone() for k, v in run.model.state_dict().items()}
    folders: list[tuple[str, Mapping[str, torch.Tensor], int | None]] = [
        ("final", final, run.epoch)
    ]
    if run.setup.val is None:
        folders.append(("best", final, run.epoch))
    elif (out / "best.safetensors").is_file():
        folders.append(("best", load_file(str(out / "best.safetensors")), run.best_epoch))
    tokenizer = _tokenizer(run)
    with _quiet():
        for kind, tensors, epoch in folders:
            marker = {
                "schema": MARKER_SCHEMA,
                "kind": kind,
                "epoch": epoch,
                "weights": f"{kind}.safetensors",
                "pretrained_sha256": run.setup.pretrained_record.sha256,
                "num_classes": run.setup.num_classes,
            }
            _write_folder(out, kind, hf, tensors, tokenizer, marker)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No progress bars from ``save_pretrained`` (the run has its own display)."""
    from transformers.utils import logging

    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()


def _tokenizer(run: Any) -> Any:
    """The tokenizer the run's text was read with (None for data that is not text)."""
    from hessaudit.inputs.text_options import is_text_file
    from hessaudit.inputs.text_tokens import load_tokenizer

    config = run.config
    if not is_text_file(config.data):
        return None
    if config.tokenizer is not None:
        return load_tokenizer(config.tokenizer, "--tokenizer")
    folder = getattr(run.model, "directory", None) or config.model
    return load_tokenizer(folder, "--model")


def _write_folder(
    out: Path,
    kind: str,
    hf: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    tokenizer: Any,
    marker: Mapping[str, Any],
) -> None:
    """Build ``out/KIND`` under a temporary name, then rename it into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{kind}.", suffix=".tmp", dir=out))
    try:
        hf.save_pretrained(str(tmp), state_dict=dict(tensors), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        (tmp / MARKER).write_text(json.dumps(dict(marker), indent=2) + "\n", encoding="utf-8")
        target = out / kind
        aside = None
        if os.path.lexists(target):
            aside = Path(tempfile.mkdtemp(prefix=f".{kind}.old.", suffix=".tmp", dir=out))
            os.replace(target, aside / kind)
        os.replace(tmp, target)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    finally:
        if tmp.exists():
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp)
