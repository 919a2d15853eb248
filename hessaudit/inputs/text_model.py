"""A Hugging Face sequence classifier as a model of packed token tensors, for the audit engine.

The engine calls ``model(x)`` on tensors of shape (N, ...). :class:`TextClassifier` takes the
(N, 3, L) int64 tensors of :mod:`hessaudit.inputs.text_tokens` (token ids, attention mask,
token type ids), calls the wrapped ``AutoModelForSequenceClassification`` and returns its
``.logits``. Its parameters and buffers have the wrapped model's own names
(``bert.encoder.layer.0.attention.self.query.weight``, ``classifier.weight``), so checkpoints
saved by Hugging Face load into it and name its layers unchanged.

Three decisions keep every number exact:

* **Padding.** Padded key positions get an additive attention mask equal to the dtype's most
  negative value, so their softmax weights are exactly 0 and the real tokens' outputs do not
  depend on padding (classification heads read the first token). Outside ``vmap`` the batch is
  also cut to its last real column first (dynamic padding: less work, same numbers). Under
  ``vmap`` (per-example Hessians) the batch cannot be cut and Hugging Face's mask builder cannot
  inspect the mask's values, so the wrapper passes the 4-D additive mask that builder would
  have made (0 for tokens, the dtype's minimum for padding), which ``masking_utils`` passes
  through unchanged. Models that do not build masks with ``masking_utils`` get the 2-D mask.
* **LayerNorm.** torch's fused ``layer_norm`` has a wrong second-order forward-mode derivative;
  the engine computes its raw form under :func:`hessaudit.hessian.exact_norms.exact_norms`,
  for every model, so the wrapper leaves the model's LayerNorms as they are.
* **Attention.** The eager attention implementation: fused scaled-dot-product attention has no
  double backward on CPU.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from hessaudit.errors import HessauditError
from hessaudit.inputs.text_dataset import TextDataset, trim_padding
from hessaudit.inputs.text_options import TextOptions, is_text_file
from hessaudit.inputs.text_tokens import ModelLimits, TextSource, load_tokenizer

__all__ = ["TextClassifier", "text_source"]


def _is_batched(x: Tensor) -> bool:
    """Whether ``x`` is batched by an enclosing ``vmap`` (then no step may depend on its
    values). Inside ``grad`` a batched tensor is wrapped again, so the wrappers are peeled."""
    functorch = getattr(torch._C, "_functorch", None)
    try:
        while functorch.is_functorch_wrapped_tensor(x):
            if functorch.is_batchedtensor(x):
                return True
            x = functorch.get_unwrapped(x)
    except AttributeError:  # another torch: assume batched (no trimming; same numbers)
        return True
    return False


class TextClassifier(nn.Module):
    """Wrap ``hf_model`` (a ``*ForSequenceClassification``) to read packed (N, 3, L) tokens
    (or (N, 2, L) ids and mask, or (N, L) ids).

    ``directory`` is the folder the model came from (its tokenizer is the default one);
    ``trim`` cuts each batch to its longest example outside ``vmap`` (see the module docstring).
    The wrapped model's children become this module's children, so ``state_dict``,
    ``functional_call``, ``.to()`` and ``.eval()`` see the wrapped model's parameters under
    their own names; ``hf_model`` returns the wrapped model (e.g. for ``save_pretrained``).
    """

    def __init__(self, hf_model: nn.Module, *, directory: str | None = None,
                 trim: bool = True) -> None:
        super().__init__()
        if any(True for _ in hf_model.named_parameters(recurse=False)) or any(
            True for _ in hf_model.named_buffers(recurse=False)
        ):
            raise HessauditError(
                f"{type(hf_model).__name__} holds parameters outside its sub-modules; "
                "hessaudit's text wrapper cannot share them"
            )
        for name, child in hf_model.named_children():
            self.add_module(name, child)
        # kept outside _modules: the children above are already registered under their names
        object.__setattr__(self, "_hf", hf_model)
        self.directory = directory
        self.trim = trim
        if hasattr(hf_model, "set_attn_implementation"):
            hf_model.set_attn_implementation("eager")
        elif getattr(hf_model, "config", None) is not None:
            hf_model.config._attn_implementation = "eager"
        forward = inspect.signature(hf_model.forward).parameters
        self.takes_token_types = "token_type_ids" in forward
        module = sys.modules.get(type(hf_model).__module__)
        self.mask_passes_through = hasattr(module, "create_bidirectional_mask")
        hf_model.train(self.training)

    @property
    def hf_model(self) -> nn.Module:
        return self._hf

    @property
    def config(self) -> object:
        """The wrapped model's ``config`` (labels, sizes), for code that reads it."""
        return getattr(self._hf, "config", None)

    @property
    def base_model_prefix(self) -> str:
        """The wrapped model's encoder attribute (``bert``, ``roberta``...): every parameter
        outside it belongs to the classification head."""
        return str(getattr(self._hf, "base_model_prefix", "") or "")

    def train(self, mode: bool = True) -> TextClassifier:
        super().train(mode)
        self._hf.training = mode  # the children are shared; the wrapped root's own flag
        return self

    def forward(self, x: Tensor) -> Tensor:
        """Logits of packed tokens: (N, 3, L) ids, mask, types; also (N, 2, L) ids and mask,
        or (N, L) ids alone (no padding). Ids stored as floats are rounded."""
        batched = _is_batched(x)
        if x.is_floating_point():
            x = x.round().long()
        if x.ndim == 2:  # ids only: nothing is padding
            x = torch.stack([x, torch.ones_like(x)], dim=1)
        if x.ndim != 3 or x.shape[1] not in (2, 3):
            raise HessauditError(
                f"a text classifier takes tokens of shape (N, 3, L) (ids, attention mask, "
                f"token types), (N, 2, L) or (N, L); got shape {tuple(x.shape)}"
            )
        if self.trim and not batched:
            x = trim_padding(x)
        ids, mask = x[:, 0], x[:, 1]
        attention: Tensor = mask
        if batched and self.mask_passes_through:
            dtype = self._hf.get_input_embeddings().weight.dtype
            zero = torch.zeros((), dtype=dtype, device=x.device)
            lowest = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=x.device)
            attention = torch.where(mask[:, None, None, :].ne(0), zero, lowest)
        kwargs: dict[str, Tensor] = {"input_ids": ids, "attention_mask": attention}
        if self.takes_token_types:
            kwargs["token_type_ids"] = x[:, 2] if x.shape[1] == 3 else torch.zeros_like(ids)
        return self._hf(**kwargs).logits

    def limits(self) -> ModelLimits:
        """Token ids, token types and positions the wrapped model accepts."""
        config = getattr(self._hf, "config", None)
        embeddings = getattr(getattr(self._hf, "base_model", None), "embeddings", None)
        types = getattr(embeddings, "token_type_embeddings", None)
        positions = getattr(embeddings, "position_embeddings", None)
        max_positions = None
        if isinstance(positions, nn.Embedding):
            max_positions = positions.num_embeddings
            padding_idx = getattr(embeddings, "padding_idx", None)
            if isinstance(padding_idx, int):  # RoBERTa's positions start after the pad id
                max_positions -= padding_idx + 1
        pad_id = getattr(config, "pad_token_id", None)
        return ModelLimits(
            vocab_size=int(self._hf.get_input_embeddings().num_embeddings),
            takes_token_types=self.takes_token_types,
            type_vocab_size=int(types.num_embeddings) if isinstance(types, nn.Embedding) else None,
            max_positions=max_positions,
            pad_id=int(pad_id) if isinstance(pad_id, int) else 0,
        )


def _labels(model: TextClassifier) -> tuple[dict[str, int], dict[int, str]]:
    config = model.config
    label2id = getattr(config, "label2id", None) or {}
    id2label = getattr(config, "id2label", None) or {}
    return (
        {str(k): int(v) for k, v in dict(label2id).items()},
        {int(k): str(v) for k, v in dict(id2label).items()},
    )


def text_source(
    options: TextOptions, model: nn.Module, sources: Sequence[str | None], *, model_spec: str
) -> TextSource | None:
    """What :func:`~hessaudit.inputs.data.load_data` needs to read text data for ``model``;
    None when no source in ``sources`` is a text file.

    Raises:
        HessauditError: text flags given for data that is not text, text data for a model
            that is not a :class:`TextClassifier`, no tokenizer folder, a tokenizer that fails
            to load.
    """
    text_files = [s for s in sources if is_text_file(s)]
    if not text_files:
        flags = options.given_flags()
        if flags:
            raise HessauditError(
                f"{', '.join(flags)} appl{'ies' if len(flags) == 1 else 'y'} to text data "
                f"(.csv, .tsv, .jsonl, .parquet), and --data {sources[0]} is not text",
                hint="drop the flag, or give text data",
            )
        return None
    if not isinstance(model, TextClassifier):
        raise HessauditError(
            f"--data {text_files[0]} is text data, but --model {model_spec} is not a text "
            "classifier",
            hint="pass --model a Hugging Face sequence-classification folder (config.json), or "
            "a factory returning hessaudit.inputs.text_model.TextClassifier",
        )
    if options.tokenizer is not None:
        folder, flag = str(options.tokenizer), "--tokenizer"
    elif model.directory is not None:
        folder, flag = str(model.directory), "--model"
    else:
        raise HessauditError(
            f"--data {text_files[0]} is text data and --model {model_spec} names no folder "
            "with a tokenizer",
            hint="pass --tokenizer DIR, a folder saved with tokenizer.save_pretrained",
        )
    tokenizer = load_tokenizer(folder, flag)
    label2id, id2label = _labels(model)
    return TextSource(
        options=options,
        tokenizer=tokenizer,
        tokenizer_dir=folder,
        tokenizer_flag=flag,
        limits=model.limits(),
        label2id=label2id,
        id2label=id2label,
        dataset=TextDataset,
    )
