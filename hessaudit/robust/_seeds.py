"""Per-purpose seeds and generators for a fine-tuning run.

Every random draw of :func:`~hessaudit.robust.trainer.run_finetune` (shuffling, the new head's
initialization, the validation split, the noise estimation, the global torch RNG) uses a seed
derived from the run's ``seed`` and a purpose string, so the draws are independent of each other
and of the order they happen in. Kept below every run module (the data setup, the noise
estimation, the training run), which all draw from it.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, purpose: str) -> int:
    """A seed for one purpose (``"shuffle"``, ``"init"``...), derived from the run's seed."""
    digest = hashlib.sha256(f"hessaudit:{int(seed)}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _generator(seed: int, purpose: str) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(derive_seed(seed, purpose))
