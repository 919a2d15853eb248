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


# --------------------------------------------------------------------------- dense oracle


def dense_hessians(case: TextCase, data: list[dict], name: str) -> torch.Tensor:
    """(N, size, size): each example's block Hessian of the cross-entropy with respect to
    ``name``, in float64, by ``torch.autograd.functional.hessian`` (reverse over reverse) on
    the plain Hugging Face model (its own LayerNorm and mask code) fed one unpadded example at a
    time: independent of hessaudit's packing, padding, trimming and wrapper."""
    import torch.nn.functional as F
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(
        case.ft, local_files_only=True, attn_implementation="eager"
    ).double().eval()
    tokenizer = AutoTokenizer.from_pretrained(case.ft, local_files_only=True)
    params = {k: v.detach() for k, v in model.named_parameters()}
    weight = params[name]
    out = []
    for row in data:
        args = (row["text"],) if "text" in row else (row["sentence1"], row["sentence2"])
        enc = tokenizer(*args, return_tensors="pt", return_token_type_ids=True)
        label = row["label"] if isinstance(row["label"], int) else LABELS.index(row["label"])
        y = torch.tensor([label])
        inputs = {"input_ids": enc["input_ids"], "token_type_ids": enc["token_type_ids"]}

        def loss(w: torch.Tensor, inputs=inputs, y=y) -> torch.Tensor:
            swapped = {**params, name: w.reshape(weight.shape)}
            logits = torch.func.functional_call(model, swapped, (), inputs).logits
            return F.cross_entropy(logits, y)

        out.append(
            torch.autograd.functional.hessian(loss, weight.reshape(-1), vectorize=True)
        )
    return torch.stack(out)


def distance(case: TextCase, name: str) -> torch.Tensor:
    """v = W_ft - W_pre of layer ``name``, flat, in float64."""
    from safetensors.torch import load_file

    ft = load_file(str(case.weights))[name].double()
    pre = load_file(str(case.pre))[name].double()
    return (ft - pre).reshape(-1)


def forms(H: torch.Tensor, v: torch.Tensor) -> tuple[float, float]:
    """(v^T H v, v^T H^+ v) of one symmetric matrix, the positive part by ``eigh``."""
    lam, U = torch.linalg.eigh(H)
    c = U.T @ v
    return float(v @ H @ v), float((c.square() * lam.clamp(min=0)).sum())


def reduced(H: torch.Tensor, v: torch.Tensor, reduce: str, batch_size: int) -> tuple[float, float]:
    """The oracle's reduced (raw, positive) forms: per example, per batch or of the mean."""
    if reduce == "mean":
        return forms(H.mean(0), v)
    groups = [H[i : i + 1] for i in range(len(H))] if reduce == "example-max" else [
        H[i : i + batch_size] for i in range(0, len(H), batch_size)
    ]
    values = [forms(g.mean(0), v) for g in groups]
    return max(r for r, _ in values), max(p for _, p in values)


# --------------------------------------------------------------------------- the CLI


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    """``hessaudit ARGS`` in-process: (exit code, stdout, stderr)."""
    import pytest

    from hessaudit.cli import main

    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return int(exc.value.code), captured.out, captured.err


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``root``: bytes and mtime (nothing may change on an error)."""
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def assert_one_error(code: int, err: str, *names: str) -> str:
    """Exit 1, one ``error:`` line on stderr naming each of ``names``, no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]
