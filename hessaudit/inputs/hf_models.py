"""``--model DIR``: a Hugging Face classifier built from the directory's ``config.json``.

A directory holding ``config.json`` is a transformers model:

* The architecture comes from the config alone (``from_config``); the weights always come from
  the checkpoint files (PRETRAINED / FINETUNED), never from the directory's own weight files.
  ``AutoModelForImageClassification`` is used when the config's ``architectures`` name an
  ``...ForImageClassification`` (or the ``model_type`` has only an image classifier), else
  ``AutoModelForSequenceClassification``. ``num_classes`` sets ``num_labels``.
* Offline and without foreign code: ``HF_HUB_OFFLINE=1`` is set before transformers is
  imported, nothing is fetched, and ``trust_remote_code`` is never set. A config that asks for
  custom code (``auto_map``), names a ``model_type`` transformers does not know, or describes a
  quantized, regression or multi-label model is refused with one line.
* Eager attention (``attn_implementation="eager"``): the fused scaled-dot-product attention
  has no double backward on CPU, and the audit differentiates twice.
* A sequence classifier is wrapped in :class:`~hessaudit.inputs.text_model.TextClassifier`,
  which takes one tensor ``x`` as every hessaudit model does (packed token rows ``input_ids``,
  ``attention_mask``, ``token_type_ids``; see :mod:`hessaudit.inputs.text_tokens`) and returns
  the logits; an image classifier returns its logits tensor (a forward hook unwraps
  ``output.logits``).

transformers is imported only inside :func:`build_hf_model`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hessaudit._messages import oneline
from hessaudit.errors import HessauditError
from hessaudit.inputs.hf_files import ADAPTER_CONFIG, MODEL_CONFIG, dir_member, read_json

__all__ = [
    "TEXT_ROWS",
    "build_hf_model",
    "is_hf_model",
    "is_hf_model_dir",
    "read_model_config",
    "runtime_names",
]

#: Rows of a text input tensor ``(N, R, L)``, in order (R = 2 or 3).
TEXT_ROWS = ("input_ids", "attention_mask", "token_type_ids")
_REFUSED_PROBLEMS = ("regression", "multi_label_classification")


def is_hf_model_dir(spec: str) -> bool:
    """True when ``spec`` is a directory holding ``config.json`` or ``adapter_config.json``
    (the latter only to refuse it with a clear line)."""
    path = Path(spec).expanduser()
    return path.is_dir() and any(
        os.path.lexists(path / name) for name in (MODEL_CONFIG, ADAPTER_CONFIG)
    )


def is_hf_model(model: nn.Module) -> bool:
    """True for a transformers model (a ``PreTrainedModel`` subclass, or the text wrapper
    around one), without importing transformers."""
    model = getattr(model, "hf_model", model)
    return any(
        cls.__module__.startswith("transformers.") and cls.__name__ == "PreTrainedModel"
        for cls in type(model).__mro__
    )


def read_model_config(spec: str) -> dict[str, Any]:
    """The directory's ``config.json``, checked: a transformers model type, no custom code."""
    folder = Path(spec).expanduser()
    if not os.path.lexists(folder / MODEL_CONFIG):
        raise HessauditError(
            f"--model {spec} is a PEFT adapter directory, not a model",
            hint="give the base model's directory (with config.json) as --model and the "
            "adapter as FINETUNED",
        )
    config = read_json(dir_member(folder, MODEL_CONFIG, f"--model {spec}"), "model config")
    if config.get("auto_map"):
        raise HessauditError(
            f"--model {spec}: config.json asks for custom model code (auto_map); hessaudit "
            "never runs code from a model directory (trust_remote_code is off)",
            hint="use a model whose architecture ships with transformers",
        )
    if config.get("quantization_config"):
        raise HessauditError(
            f"--model {spec}: config.json describes a quantized model; hessaudit audits "
            "floating-point weights only"
        )
    problem = config.get("problem_type")
    if problem in _REFUSED_PROBLEMS:
        raise HessauditError(
            f"--model {spec}: config.json has problem_type {problem!r}; hessaudit audits "
            "single-label classifiers (cross-entropy on the logits)"
        )
    if not isinstance(config.get("model_type"), str):
        raise HessauditError(f"--model {spec}: config.json has no \"model_type\" string")
    return config


def _import_transformers(spec: str) -> Any:
    """transformers, imported offline; 5 or later."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import transformers
    except ImportError:
        raise HessauditError(
            f"--model {spec} is a Hugging Face model directory and transformers is not "
            "installed",
            hint="pip install 'hessaudit[text]'",
        ) from None
    if int(transformers.__version__.split(".")[0]) < 5:
        raise HessauditError(
            f"--model {spec}: transformers {transformers.__version__} is too old; hessaudit "
            "needs transformers 5 or later",
            hint="pip install 'hessaudit[text]'",
        )
    return transformers


def _check_memory(spec: str, size: int) -> None:
    """Refuse a config whose float32 weights alone exceed this machine's memory."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return
    if total > 0 and size > total:
        raise HessauditError(
            f"--model {spec}: config.json describes a model of {size >> 30} GiB (float32), "
            f"more than this machine's {total >> 30} GiB of memory",
            hint="check that --model is the directory you meant",
        )


def _from_config(
    transformers: Any, auto: Any, config_dict: dict[str, Any], num_classes: int | None
) -> nn.Module:
    config = transformers.CONFIG_MAPPING[config_dict["model_type"]].from_dict(dict(config_dict))
    if num_classes is not None and num_classes != config.num_labels:
        config.num_labels = num_classes
    return auto.from_config(
        config, attn_implementation="eager", dtype=torch.float32, trust_remote_code=False
    )


def _auto_class(spec: str, config: dict[str, Any]) -> Any:
    import transformers
    from transformers.models.auto import modeling_auto

    model_type = config["model_type"]
    if model_type not in transformers.CONFIG_MAPPING:
        raise HessauditError(
            f"--model {spec}: model_type {model_type!r} is not one transformers "
            f"{transformers.__version__} knows (custom code is never run)"
        )
    seq = model_type in modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
    image = model_type in modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
    names = config.get("architectures") or []
    wants_image = any(str(n).endswith("ForImageClassification") for n in names)
    if image and (wants_image or not seq):
        return transformers.AutoModelForImageClassification
    if seq:
        return transformers.AutoModelForSequenceClassification
    raise HessauditError(
        f"--model {spec}: transformers has no sequence or image classifier for model_type "
        f"{model_type!r}"
    )


def build_hf_model(spec: str, *, num_classes: int | None = None, **_: Any) -> nn.Module:
    """Build the classifier of ``spec``'s ``config.json`` (module docstring), in eval mode,
    with random weights that the checkpoint then replaces."""
    config_dict = read_model_config(spec)
    transformers = _import_transformers(spec)
    auto = _auto_class(spec, config_dict)
    try:
        with torch.device("meta"):  # no memory: count before building for real
            size = sum(p.numel() for p in _from_config(
                transformers, auto, config_dict, num_classes).parameters()) * 4
        _check_memory(spec, size)
        model = _from_config(transformers, auto, config_dict, num_classes)
    except HessauditError:
        raise
    except Exception as exc:
        raise HessauditError(
            f"--model {spec}: transformers could not build the model from config.json: "
            f"{oneline(exc)}"
        ) from None
    if auto is transformers.AutoModelForSequenceClassification:
        from hessaudit.inputs.text_model import TextClassifier  # packed tokens in, logits out

        return TextClassifier(model, directory=spec).eval()
    model.register_forward_hook(_logits_only)
    return model.eval()


def _logits_only(module: nn.Module, args: Any, output: Any) -> Any:
    logits = getattr(output, "logits", None)
    return logits if isinstance(logits, Tensor) else output


def _meta_model(folder: Path) -> nn.Module | None:
    """The classifier of ``folder``'s config.json on the meta device (no memory, no weights),
    or None when there is none to build: no usable config, transformers missing or too old."""
    try:
        config_dict = read_model_config(str(folder))
        transformers = _import_transformers(str(folder))
        auto = _auto_class(str(folder), config_dict)
    except HessauditError:
        return None
    try:
        with torch.device("meta"):
            return _from_config(transformers, auto, config_dict, None)
    except Exception:
        return None  # names stay as stored; a mismatch is reported when they are used


def runtime_names(folder: Path, tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], int]:
    """``tensors`` under the names ``from_pretrained`` gives them in memory, for the model
    of ``folder``'s ``config.json`` (transformers' weight renamings, the base-model prefix
    added or removed), and how many names changed. Unchanged when there is no model to build.

    Raises:
        HessauditError: a tensor whose conversion needs tensor operations, or two tensors that
            would get one name.
    """
    model = _meta_model(folder)
    if model is None:
        return tensors, 0
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, rename_source_key

    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if not isinstance(t, WeightConverter)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    meta = model.state_dict()
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    for name, tensor in tensors.items():
        new, pattern = rename_source_key(
            name, renamings, converters, base_model_prefix=model.base_model_prefix,
            meta_state_dict=meta,
        )
        if pattern is not None:
            raise HessauditError(
                f"checkpoint {folder}: tensor {name!r} is stored in a layout that transformers "
                "converts with tensor operations on load; hessaudit does not apply them",
                hint="save the model with save_pretrained(..., save_original_format=False)",
            )
        if new in out:
            raise HessauditError(
                f"checkpoint {folder}: {origin[new]!r} and {name!r} both become {new!r} under "
                "the names transformers uses in memory"
            )
        out[new] = tensor
        origin[new] = name
    return out, sum(new != old for new, old in origin.items())
