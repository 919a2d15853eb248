"""Tiny Hugging Face classifiers for the tests: built from configs in temporary folders.

Nothing is downloaded: every model is ``from_config`` of a 2-layer BERT, RoBERTa or DistilBERT
with hidden size 16 and a 40-token vocabulary, seeded. Token inputs follow
:func:`hessaudit.inputs.hf_models.text_model_inputs`: ``(N, 2, L)`` rows of token ids and
attention mask (1 = token, 0 = padding), as floats, the way a ``.npz`` of ``x`` carries them.

transformers takes several seconds to import on a busy 2-core machine: importing this module
imports it once for the whole session (the test modules skip without it).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

VOCAB = 40
KINDS = ("bert", "roberta", "distilbert")


def tiny_config(kind: str = "bert", num_labels: int = 3):
    """A 2-layer, hidden-16 config of ``kind`` with ``num_labels`` classes."""
    if kind == "bert":
        return transformers.BertConfig(
            vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=32, max_position_embeddings=32, num_labels=num_labels,
        )
    if kind == "roberta":
        return transformers.RobertaConfig(
            vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=32, max_position_embeddings=40, num_labels=num_labels,
            pad_token_id=1,
        )
    if kind == "distilbert":
        return transformers.DistilBertConfig(
            vocab_size=VOCAB, dim=16, n_layers=2, n_heads=2, hidden_dim=32,
            max_position_embeddings=32, num_labels=num_labels,
        )
    raise ValueError(kind)


def tiny_model(kind: str = "bert", num_labels: int = 3, seed: int = 0):
    """A seeded, eval-mode transformers classifier (eager attention), float32."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.AutoModelForSequenceClassification.from_config(
            tiny_config(kind, num_labels), attn_implementation="eager"
        )
    return model.eval()


def moved(model, scale: float = 0.05, seed: int = 1):
    """The same model with every parameter moved by seeded Gaussian noise (a "fine-tuned" one)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def save_dir(model, folder: Path, layout: str = "safetensors") -> Path:
    """``model`` as a Hugging Face directory: ``safetensors`` (one file), ``sharded``
    (``save_pretrained`` with 8 KB shards) or ``bin`` (config.json + pytorch_model.bin)."""
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "safetensors":
        model.save_pretrained(folder)
    elif layout == "sharded":
        model.save_pretrained(folder, max_shard_size="8KB")
        assert (folder / "model.safetensors.index.json").exists()
    elif layout == "bin":
        model.config.save_pretrained(folder)
        torch.save({k: v.clone() for k, v in model.state_dict().items()},
                   folder / "pytorch_model.bin")
    else:
        raise ValueError(layout)
    return folder


def token_batch(n: int = 6, length: int = 8, num_labels: int = 3, seed: int = 3,
                pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)``: x ``(n, 2, length)`` float ids + mask with mixed lengths, y labels."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (n, length), generator=g)
    lengths = torch.randint(3, length + 1, (n,), generator=g)
    lengths[0] = length  # one example fills the whole row
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, pad_id))
    y = torch.randint(0, num_labels, (n,), generator=g)
    return torch.stack([ids, mask], 1).float(), y


def save_tokens(path: Path, x: torch.Tensor, y: torch.Tensor) -> Path:
    np.savez(path, x=x.numpy().astype(np.float32), y=y.numpy())
    return path
