"""Tiny text classifiers, tokenizers and text data files for the text tests (no download).

:func:`make_text_case` writes, under a folder:

* ``ft/``: a Hugging Face model folder of a tiny BERT or RoBERTa (2 layers, hidden 16, 2 heads)
  sequence classifier: ``config.json`` (with named labels ``neg``, ``neu``, ``pos``),
  ``model.safetensors`` and a word-level tokenizer built with ``tokenizers``
  (``tokenizer.json`` + ``tokenizer_config.json`` from ``PreTrainedTokenizerFast``);
* ``pre.safetensors``: the "pretrained" weights, the fine-tuned ones minus a seeded
  perturbation, so that every layer has a distance;
* ``factory.py``: ``build()`` makes the model from ``ft/config.json`` with transformers and
  returns it wrapped in :class:`hessaudit.inputs.text_model.TextClassifier` (directory ``ft``).
"""

from __future__ import annotations

import json
import os
import random
import textwrap
from dataclasses import dataclass
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_WORD_LIST = (
    "the a cat dog sat on mat good bad movie is was very not fun dull plot actors great "
    "awful story film music scenes long short funny sad loved hated"
)
WORDS = tuple(_WORD_LIST.split())
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
LABELS = ("neg", "neu", "pos")
QUERY = "encoder.layer.0.attention.self.query.weight"


@dataclass(frozen=True)
class TextCase:
    root: Path
    ft: Path
    pre: Path
    factory: Path
    kind: str  # "bert" | "roberta"
    prefix: str  # "bert." | "roberta."

    @property
    def spec(self) -> str:
        return f"{self.factory}:build"

    @property
    def weights(self) -> Path:
        return self.ft / "model.safetensors"

    @property
    def query(self) -> str:
        return self.prefix + QUERY

    @property
    def head(self) -> str:
        return "classifier.weight" if self.kind == "bert" else "classifier.out_proj.weight"


def _tokenizer(kind: str):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate((*SPECIALS, *WORDS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    second = "$B:1 [SEP]:1" if kind == "bert" else "[SEP] $B [SEP]"  # RoBERTa: no types
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair=f"[CLS] $A [SEP] {second}",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]",
    ), len(vocab)


def _config(kind: str, vocab_size: int):
    from transformers import BertConfig, RobertaConfig

    common = dict(
        vocab_size=vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, num_labels=len(LABELS), pad_token_id=0,
        id2label=dict(enumerate(LABELS)), label2id={name: i for i, name in enumerate(LABELS)},
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, initializer_range=0.3,
    )
    if kind == "bert":
        return BertConfig(max_position_embeddings=64, **common)
    # RoBERTa's positions start after the pad id (0): 64 + 1 slots
    return RobertaConfig(max_position_embeddings=65, type_vocab_size=1, **common)


FACTORY = textwrap.dedent(
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from hessaudit.inputs.text_model import TextClassifier

    FOLDER = {folder!r}


    def build():
        config = AutoConfig.from_pretrained(FOLDER, local_files_only=True)
        model = AutoModelForSequenceClassification.from_config(config)
        return TextClassifier(model, directory=FOLDER)
    """
)


def make_text_case(root: Path, kind: str = "bert", *, seed: int = 0) -> TextCase:
    """Write a tiny model folder, pretrained weights and a factory under ``root``."""
    from safetensors.torch import save_file
    from transformers import AutoModelForSequenceClassification

    root.mkdir(parents=True, exist_ok=True)
    tokenizer, vocab_size = _tokenizer(kind)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_config(_config(kind, vocab_size))
        ft = root / "ft"
        model.save_pretrained(ft)
        tokenizer.save_pretrained(ft)
        generator = torch.Generator().manual_seed(seed + 1)
        pre = {
            name: (t - 0.05 * torch.randn(t.shape, generator=generator)).contiguous()
            if t.is_floating_point() else t.clone()
            for name, t in model.state_dict().items()
        }
    save_file(pre, str(root / "pre.safetensors"))
    factory = root / "factory.py"
    factory.write_text(FACTORY.format(folder=str(ft)))
    prefix = "bert." if kind == "bert" else "roberta."
    return TextCase(root=root, ft=ft, pre=root / "pre.safetensors", factory=factory,
                    kind=kind, prefix=prefix)


def sentences(n: int, *, seed: int = 0, low: int = 2, high: int = 14) -> list[str]:
    """``n`` seeded sentences of ``low`` to ``high`` words (lengths vary: padding varies)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))) for _ in range(n)]


def rows(n: int, *, seed: int = 0, pair: bool = False, names: bool = False) -> list[dict]:
    """Example rows: ``text`` (or ``sentence1``/``sentence2``) and ``label`` (an index, or
    its name when ``names``)."""
    rng = random.Random(seed + 100)
    first = sentences(n, seed=seed)
    second = sentences(n, seed=seed + 1, low=1, high=8)
    out = []
    for i in range(n):
        label = rng.randrange(len(LABELS))
        row = {"sentence1": first[i], "sentence2": second[i]} if pair else {"text": first[i]}
        row["label"] = LABELS[label] if names else label
        out.append(row)
    return out


def write_rows(path: Path, data: list[dict]) -> Path:
    """Write ``data`` as .csv, .tsv, .jsonl or .parquet, by ``path``'s suffix."""
    import pandas as pd

    frame = pd.DataFrame(data)
    suffix = path.suffix
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in data))
    elif suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        raise ValueError(suffix)
    return path


def audit_json(path: Path) -> dict:
    return json.loads(path.read_text())


def layer_rows(document: dict) -> dict[str, dict]:
    return {row["name"]: row for row in document["layers"]}
