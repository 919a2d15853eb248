"""A :class:`~hessaudit.inputs.data.Dataset` of packed text tokens whose batches are cut to
their longest example (dynamic padding).

Text examples are stored padded to the longest example of the whole data set
(:mod:`hessaudit.inputs.text_tokens`); :meth:`TextDataset.batches` drops each batch's trailing
columns that are padding in every example. Nothing changes numerically (padding is masked), but
the per-example engine, which runs under ``vmap`` where the model cannot cut a batch itself,
then works on each batch's own length, and ``--batch-size 1`` never pads at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from hessaudit.inputs.dataset import Dataset

__all__ = ["TextDataset", "trim_padding"]


def trim_padding(x: Tensor) -> Tensor:
    """``x`` (N, 3, L) without the trailing columns where every example is padding (attention
    mask 0); unchanged when nothing can be cut."""
    used = torch.nonzero(x[:, 1].ne(0).any(dim=0))
    if used.numel() == 0 or int(used.max()) + 1 == x.shape[-1]:
        return x
    return x[..., : int(used.max()) + 1]


@dataclass(frozen=True, eq=False)
class TextDataset(Dataset):
    """Packed text tokens (N, 3, L); ``trim``: cut each batch to its longest example."""

    trim: bool = True

    def batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        for x, y in super().batches(batch_size):
            yield (trim_padding(x) if self.trim else x), y
