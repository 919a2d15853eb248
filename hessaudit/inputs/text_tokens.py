"""Tokenize text examples into the packed tensors a :class:`~.text_model.TextClassifier` reads.

Each example becomes a LongTensor of shape (3, L): row 0 the token ids, row 1 the attention
mask (1 for a token, 0 for padding), row 2 the token type ids (0 for the first sentence, 1 for
the second of a pair; zeros for models without token types). All examples are padded on the
right with the tokenizer's pad id to the longest one, so a data set is one (N, 3, L) tensor that
slices into batches like images do. Padding changes no number: the classifier masks it out
(and drops the padding columns of a batch before running the model).

Tokenization follows Hugging Face's conventions: special tokens added, ``truncation=True``
(longest first for a pair) to ``--max-length`` tokens. The tokenizer is read from a local
folder only (``local_files_only=True``, no remote code); ``transformers`` is imported only when
text data is loaded, with ``HF_HUB_OFFLINE=1`` unless the environment says otherwise.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hessaudit._messages import oneline
from hessaudit.errors import HessauditError
from hessaudit.inputs.guard import refuse_special_file
from hessaudit.inputs.text_options import TextOptions

__all__ = ["ModelLimits", "TextSource", "encode", "import_transformers", "load_tokenizer"]

_TEXT_EXTRA = "pip install 'hessaudit[text]' (transformers, tokenizers)"


def import_transformers() -> Any:
    """``import transformers``, offline: the hub is off unless the environment turned it on."""
    if "transformers" not in sys.modules:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise HessauditError("text data needs the transformers package", hint=_TEXT_EXTRA) from None
    return transformers


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' logging (length warnings of the untruncated pass) for a block."""
    logging = import_transformers().utils.logging
    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def load_tokenizer(directory: str | os.PathLike[str], flag: str) -> Any:
    """The tokenizer saved in ``directory`` (``tokenizer.json`` or a tokenizer's vocab files).

    ``flag`` names where the folder came from in errors ("--tokenizer", "--model").
    """
    path = Path(directory).expanduser()
    if not path.is_dir():
        raise HessauditError(
            f"{flag} {directory}: not a folder holding a tokenizer",
            hint="hessaudit reads tokenizers from local folders only (tokenizer.json or vocab "
            "files, as saved by save_pretrained); hub ids are never downloaded",
        )
    for entry in sorted(path.iterdir()):
        refuse_special_file(entry, f"{flag} {directory}:")  # a FIFO would block the read
    transformers = import_transformers()
    try:
        with _quiet_transformers():
            return transformers.AutoTokenizer.from_pretrained(
                str(path), local_files_only=True, trust_remote_code=False
            )
    except Exception as exc:
        if (path / "tokenizer.json").is_file():
            try:  # a bare tokenizer.json without tokenizer_config.json or config.json
                return transformers.PreTrainedTokenizerFast(
                    tokenizer_file=str(path / "tokenizer.json")
                )
            except Exception:
                pass
        raise HessauditError(
            f"{flag} {directory}: cannot load a tokenizer: {oneline(exc)}",
            hint="save it with tokenizer.save_pretrained(folder); hessaudit runs no remote code",
        ) from None


@dataclass(frozen=True)
class ModelLimits:
    """What a text model accepts: ids below ``vocab_size``, token types (when
    ``takes_token_types``) below ``type_vocab_size``, at most ``max_positions`` tokens; None:
    not known, not checked. ``pad_id`` fills the padding."""

    vocab_size: int | None
    takes_token_types: bool
    type_vocab_size: int | None
    max_positions: int | None
    pad_id: int = 0


@dataclass(frozen=True)
class TextSource:
    """Everything needed to turn a text table into tensors for one model; ``dataset`` makes
    the data set from its fields (:class:`hessaudit.inputs.text_dataset.TextDataset`)."""

    options: TextOptions
    tokenizer: Any
    tokenizer_dir: str
    tokenizer_flag: str
    limits: ModelLimits
    label2id: Mapping[str, int] = field(default_factory=dict)
    id2label: Mapping[int, str] = field(default_factory=dict)
    dataset: Callable[..., Any] | None = None


def _batch_encode(tokenizer: Any, texts: Sequence[str], pairs: Sequence[str] | None,
                  max_length: int | None) -> dict[str, list[list[int]]]:
    kwargs: dict[str, Any] = {
        "add_special_tokens": True,
        "padding": False,
        "return_attention_mask": True,
        "return_token_type_ids": True,
    }
    if max_length is None:
        kwargs["truncation"] = False
    else:
        kwargs.update(truncation=True, max_length=max_length)
    with _quiet_transformers():
        encoded = tokenizer(list(texts), None if pairs is None else list(pairs), **kwargs)
    return {k: list(encoded[k]) for k in ("input_ids", "token_type_ids") if k in encoded}


def encode(
    source: TextSource, texts: Sequence[str], pairs: Sequence[str] | None, *, what: str
) -> tuple[torch.Tensor, list[str]]:
    """The packed (N, 3, L) LongTensor of ``texts`` (and ``pairs``), and the steps taken, in
    words, for the data summary.

    Raises:
        HessauditError: the tokenizer fails, or produces ids, types or lengths the model cannot
            take (a tokenizer that does not belong to the model, or a too long --max-length).
    """
    limit = source.options.max_length
    try:
        encoded = _batch_encode(source.tokenizer, texts, pairs, limit)
        full = _batch_encode(source.tokenizer, texts, pairs, None)["input_ids"]
    except Exception as exc:
        raise HessauditError(f"{what}: the tokenizer failed: {oneline(exc)}") from None
    ids = encoded["input_ids"]
    types = encoded.get("token_type_ids") or [[0] * len(row) for row in ids]
    lengths = [len(row) for row in ids]
    longest = max(lengths)
    if longest > limit:
        raise HessauditError(
            f"{what}: --max-length {limit} is too short to hold an example with its special "
            f"tokens ({longest} tokens after truncation)",
            hint="raise --max-length",
        )
    _check_limits(source, ids, types, longest, what)
    x = torch.zeros((len(ids), 3, longest), dtype=torch.int64)
    x[:, 0].fill_(source.limits.pad_id)
    for n, (row, kinds) in enumerate(zip(ids, types, strict=True)):
        x[n, 0, : len(row)] = torch.tensor(row, dtype=torch.int64)
        x[n, 1, : len(row)] = 1
        if source.limits.takes_token_types:
            x[n, 2, : len(row)] = torch.tensor(kinds, dtype=torch.int64)
    truncated = sum(len(a) > len(b) for a, b in zip(full, ids, strict=True))
    steps = [
        f"tokenized with the tokenizer of {source.tokenizer_flag} {source.tokenizer_dir} "
        f"(max length {limit}; longest example {longest} tokens, mean "
        f"{sum(lengths) / len(lengths):.1f})"
    ]
    if truncated:
        steps.append(f"truncated {truncated} of {len(ids)} examples to {limit} tokens")
    return x, steps


def _check_limits(source: TextSource, ids: list[list[int]], types: list[list[int]],
                  longest: int, what: str) -> None:
    limits = source.limits
    mismatch = f"the tokenizer of {source.tokenizer_flag} {source.tokenizer_dir}"
    top = max((max(row) for row in ids if row), default=0)
    low = min((min(row) for row in ids if row), default=0)
    if low < 0 or (limits.vocab_size is not None and top >= limits.vocab_size):
        raise HessauditError(
            f"{what}: {mismatch} produces token id {top if low >= 0 else low} but the model's "
            f"vocabulary has {limits.vocab_size} entries",
            hint="the tokenizer does not belong to the model: pass --tokenizer with the "
            "model's own tokenizer folder",
        )
    if limits.takes_token_types and limits.type_vocab_size is not None:
        top_type = max((max(row) for row in types if row), default=0)
        if top_type >= limits.type_vocab_size:
            raise HessauditError(
                f"{what}: {mismatch} produces token type {top_type} but the model has "
                f"{limits.type_vocab_size} token type(s)",
                hint="the tokenizer does not belong to the model",
            )
    if limits.max_positions is not None and longest > limits.max_positions:
        raise HessauditError(
            f"{what}: examples of {longest} tokens, but the model takes at most "
            f"{limits.max_positions} positions",
            hint=f"pass --max-length {limits.max_positions} or less",
        )
