"""The audit's examples: on the audit's device, a seeded subset, their losses checked, their
files fingerprinted, and the class count they are scored against."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from hessaudit.errors import HessauditError
from hessaudit.inputs.checkpoints import sha256_file
from hessaudit.inputs.data import Dataset
from hessaudit.inputs.models import classifier_names, infer_num_classes

__all__ = [
    "check_losses",
    "data_sha256",
    "median",
    "model_num_classes",
    "on_device",
    "take_samples",
]


def on_device(dataset: Dataset, device: torch.device, dtype: torch.dtype) -> Dataset:
    """``dataset`` with its inputs in ``dtype`` on ``device`` (labels, and the token ids of
    text data, stay integers)."""
    floating = dataset.x.is_floating_point()
    x = dataset.x.to(device=device, dtype=dtype if floating else dataset.x.dtype)
    return dataclasses.replace(dataset, x=x, y=dataset.y.to(device))


def take_samples(dataset: Dataset, samples: int, *, seed: int, source: str) -> Dataset:
    """``--samples``: the first ``samples`` of a permutation drawn from a generator seeded with
    ``seed``, kept in the data's order. ``source`` names the data in the error."""
    if samples > len(dataset):
        raise HessauditError(
            f"--samples {samples} is more than the {len(dataset)} examples in {source}"
        )
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(dataset), generator=generator)[:samples]
    return dataset.subset(torch.sort(chosen).values)


def check_losses(losses: torch.Tensor, source: str) -> None:
    """Refuse a NaN or Inf per-example loss, naming the first example (its index in the data
    as loaded, after any --samples subset)."""
    bad = ~torch.isfinite(losses)
    if not bool(bad.any()):
        return
    index = int(bad.nonzero()[0, 0])
    kind = "NaN" if bool(torch.isnan(losses[index])) else "Inf"
    raise HessauditError(
        f"the fine-tuned model's loss on example {index} of --data {source} is {kind} "
        f"({int(bad.sum())} of {losses.numel()} examples have a non-finite loss)",
        hint="the checkpoint or the data's scale is probably wrong (see inputs.data_scaling); "
        "try --dtype float64 if the logits overflow",
    )


def median(values: torch.Tensor) -> float:
    """The median (mean of the two middle values for an even count), in float64."""
    ordered = torch.sort(values.detach().double().flatten()).values
    count = len(ordered)
    return float((ordered[(count - 1) // 2] + ordered[count // 2]) / 2)


def model_num_classes(model: torch.nn.Module, tensors) -> int:
    """The number of classes of the model's head (from the fine-tuned tensors)."""
    count = infer_num_classes(tensors, head_names=classifier_names(model))
    if count is None:
        raise HessauditError("cannot tell the number of classes; pass --num-classes")
    return count


def data_sha256(source: str | None) -> str | None:
    """SHA-256 of a data file (``.npz``); None for built-in sources and directories."""
    if source is None or source.partition(":")[0] in ("digits", "digits-pretrain"):
        return None
    path = Path(source).expanduser()
    return sha256_file(path) if path.is_file() else None
