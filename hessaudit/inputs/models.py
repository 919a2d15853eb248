"""Turn a model spec into an ``nn.Module`` and load a checkpoint's weights into it.

A model spec (``--model``) is one of:

* a timm model name, e.g. ``resnet18`` or ``vit_tiny_patch16_224``. The model is built with
  ``pretrained=False`` and ``HF_HUB_OFFLINE=1``, so nothing is fetched; weights come from the
  checkpoint files. ``allow_hub=True`` passes ``pretrained=True`` (and allows ``hf-hub:`` names),
  which reads the local timm / Hugging Face cache or the network.
* a factory ``path/to/file.py:function``: the file is imported (its folder is on ``sys.path``
  while it is imported and called) and ``function`` must return an ``nn.Module``;
* a factory ``package.module:function``, imported with the current folder on ``sys.path``.

A factory is called with ``num_classes=`` when its signature accepts it (or ``**kwargs``).
Whatever its code does while imported, called or running the model's forward (``sys.exit``,
``argparse``, an exception) ends as one :class:`HessauditError` naming it
(:mod:`hessaudit.inputs.user_code`), never as an exit code of its own.

timm is imported inside the functions that need it, never at module import.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hessaudit._messages import few, oneline
from hessaudit.errors import HessauditError
from hessaudit.inputs.checkpoints import strip_prefixes
from hessaudit.inputs.data_config import InputConfig, input_config
from hessaudit.inputs.user_code import guard_forward, user_code

__all__ = [
    "InputConfig",
    "build_model",
    "classifier_names",
    "infer_num_classes",
    "input_config",
    "load_model",
    "load_weights",
]

_HUB_PREFIXES = ("hf-hub:", "hf_hub:")
_SHOW = 5


def _is_factory_spec(spec: str) -> bool:
    if spec.startswith(_HUB_PREFIXES) or spec.startswith("local-dir:"):
        return False
    return ":" in spec


# --------------------------------------------------------------------------- building


def build_model(
    spec: str, *, num_classes: int | None = None, allow_hub: bool = False
) -> nn.Module:
    """Build the model named by ``spec`` (a timm name or a ``file.py:fn`` / ``pkg.mod:fn`` factory).

    Args:
        spec: The ``--model`` value.
        num_classes: Number of outputs of the head; None keeps the model's default.
        allow_hub: Let timm load pretrained weights from the cache or the network.

    Raises:
        HessauditError: unknown timm name (with close matches), missing factory file or
            function, a factory that raises or returns something other than an ``nn.Module``.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise HessauditError("--model is empty: give a timm model name or path/to/file.py:function")
    if num_classes is not None and (isinstance(num_classes, bool) or num_classes < 1):
        raise HessauditError(f"--num-classes {num_classes}: must be a positive integer")
    spec = spec.strip()
    from hessaudit.inputs import hf_models  # a Hugging Face model directory (config.json)

    if hf_models.is_hf_model_dir(spec):
        return hf_models.build_hf_model(spec, num_classes=num_classes)
    if _is_factory_spec(spec):
        return _build_factory(spec, num_classes=num_classes, check_classes=True)
    return _build_timm(spec, num_classes=num_classes, allow_hub=allow_hub)


def _build_timm(spec: str, *, num_classes: int | None, allow_hub: bool) -> nn.Module:
    if not allow_hub:
        os.environ["HF_HUB_OFFLINE"] = "1"
        if spec.startswith(_HUB_PREFIXES):
            raise HessauditError(
                f"--model {spec}: a Hugging Face hub model needs the hub",
                hint="pass --allow-hub (with the model in the local cache when offline), or give "
                "a timm architecture name and the weights as a checkpoint file",
            )
    import timm

    named = not spec.startswith(_HUB_PREFIXES) and not spec.startswith("local-dir:")
    if named and not timm.is_model(spec):
        base = spec.split(".", 1)[0]
        close = difflib.get_close_matches(base, timm.list_models(), n=5, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models()"
        raise HessauditError(
            f"--model {spec}: not a timm model name, nor a path/to/file.py:function factory",
            hint=hint,
        )
    kwargs: dict[str, Any] = {"pretrained": bool(allow_hub)}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        model = timm.create_model(spec, **kwargs)
    except Exception as exc:
        what = "could not load pretrained weights for" if allow_hub else "could not build"
        raise HessauditError(
            f"--model {spec}: {what} the timm model: {oneline(exc)}",
            hint="check the local cache or the network" if allow_hub else None,
        ) from None
    return model


@contextlib.contextmanager
def _on_sys_path(folder: str) -> Iterator[None]:
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(folder)


def _import_factory_file(path: Path, spec: str) -> Any:
    resolved = path.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
    module_name = f"_hessaudit_factory_{resolved.stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    module_spec = importlib.util.spec_from_file_location(module_name, resolved)
    if module_spec is None or module_spec.loader is None:
        raise HessauditError(f"--model {spec}: cannot import {path} as a Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        with user_code(spec, f"importing {path}"), _on_sys_path(str(resolved.parent)):
            module_spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(module_name, None)
        if not isinstance(exc, Exception) or isinstance(exc, HessauditError):
            raise  # KeyboardInterrupt, or user_code's one line about a SystemExit
        raise HessauditError(f"--model {spec}: importing {path} failed: {oneline(exc)}") from None
    return module


def _import_factory_module(name: str, spec: str) -> Any:
    try:
        with user_code(spec, f"importing {name}"), _on_sys_path(os.getcwd()):
            return importlib.import_module(name)
    except HessauditError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise HessauditError(
                f"--model {spec}: no module named {exc.name!r}",
                hint="give a file as path/to/file.py:function, or install the package",
            ) from None
        raise HessauditError(f"--model {spec}: importing {name} failed: {oneline(exc)}") from None
    except Exception as exc:
        raise HessauditError(f"--model {spec}: importing {name} failed: {oneline(exc)}") from None


def _resolve_factory(spec: str) -> tuple[Any, str]:
    target, _, fn_name = spec.rpartition(":")
    if not target or not fn_name:
        raise HessauditError(
            f"--model {spec}: a factory is written path/to/file.py:function or "
            "package.module:function"
        )
    looks_like_file = target.endswith(".py") or "/" in target or os.sep in target
    if looks_like_file:
        path = Path(target).expanduser()
        if not path.is_file():
            raise HessauditError(
                f"--model {spec}: factory file {path} "
                + ("is not a file" if path.exists() else "does not exist")
            )
        module = _import_factory_file(path, spec)
        folder = str(path.resolve().parent)
    else:
        module = _import_factory_module(target, spec)
        folder = os.getcwd()
    obj: Any = module
    for part in fn_name.split("."):
        with user_code(spec, f"looking up {fn_name!r}"):  # a module __getattr__ is user code
            found = hasattr(obj, part)
        if not found:
            available = sorted(
                n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
            )
            raise HessauditError(
                f"--model {spec}: {target} has no function {fn_name!r}",
                hint=f"callables there: {few(available)}" if available else None,
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise HessauditError(f"--model {spec}: {fn_name!r} in {target} is not callable")
    return obj, folder


def _accepts(fn: Any, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _build_factory(spec: str, *, num_classes: int | None, check_classes: bool) -> nn.Module:
    fn, folder = _resolve_factory(spec)
    kwargs: dict[str, Any] = {}
    if num_classes is not None and _accepts(fn, "num_classes"):
        kwargs["num_classes"] = num_classes
    try:
        with user_code(spec, "building the model"), _on_sys_path(folder):
            model = fn(**kwargs)
    except HessauditError:
        raise
    except Exception as exc:
        raise HessauditError(f"--model {spec}: the factory raised {oneline(exc)}") from None
    if not isinstance(model, nn.Module):
        raise HessauditError(
            f"--model {spec}: the factory returned {_what_it_returned(model)}, "
            "not a torch.nn.Module",
            hint="return the model alone (return model, not return model, config)"
            if isinstance(model, (tuple, list)) else None,
        )
    guard_forward(model, spec)
    if check_classes and num_classes is not None and "num_classes" not in kwargs:
        out = _head_out_features(model)
        if out is not None and out != num_classes:
            raise HessauditError(
                f"--num-classes {num_classes}: the factory {spec} takes no num_classes argument "
                f"and builds a head with {out} outputs"
            )
    return model


def _what_it_returned(value: Any) -> str:
    """``a tuple of 2 (TinyNet, dict)``, ``None``, ``the class TinyNet``, ``a str``."""
    if value is None:
        return "None (a missing return statement?)"
    if isinstance(value, type):
        return f"the class {value.__name__} (call it to make the model)"
    if isinstance(value, (tuple, list)):
        kinds = ", ".join(type(v).__name__ for v in list(value)[:_SHOW])
        more = ", ..." if len(value) > _SHOW else ""
        return f"a {type(value).__name__} of {len(value)} ({kinds}{more})"
    return f"a {type(value).__name__}"


# --------------------------------------------------------------------------- heads


def _head_modules(model: nn.Module) -> list[nn.Module]:
    getter = getattr(model, "get_classifier", None)
    if callable(getter):
        try:
            head = getter()
        except Exception:
            head = None
        heads = list(head) if isinstance(head, (tuple, list)) else [head]
        heads = [h for h in heads if isinstance(h, nn.Module)]
        if heads:  # timm's answer, even a parameter-free Identity (num_classes=0)
            return heads
    last: nn.Module | None = None
    for module in model.modules():
        if isinstance(module, nn.Linear) or (
            isinstance(module, nn.modules.conv._ConvNd)
            and all(k == 1 for k in module.kernel_size)
        ):
            last = module
    return [last] if last is not None else []


def classifier_names(model: nn.Module) -> list[str]:
    """Names of the classifier head's parameters, as in ``model.named_parameters()``.

    The head is timm's ``get_classifier()`` when the model has one, else the last ``nn.Linear``
    or 1x1 convolution in module order. Empty when the model has no such layer.
    """
    heads = _head_modules(model)
    if not heads:
        return []
    names: list[str] = []
    for prefix, module in model.named_modules():
        if any(module is h for h in heads):
            names.extend(
                f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters()
            )
    # parameters shared by several modules are listed once
    return list(dict.fromkeys(names))


def _head_out_features(model: nn.Module) -> int | None:
    heads = _head_modules(model)
    if not heads:
        return None
    weight = getattr(heads[0], "weight", None)
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.ndim >= 2 else None


def infer_num_classes(
    tensors: Mapping[str, torch.Tensor], *, head_names: Sequence[str] | None = None
) -> int | None:
    """Number of classes from a checkpoint's head weight (its first dimension).

    With ``head_names`` (e.g. :func:`classifier_names`), the first of them that ends with
    ``.weight`` and is at least 2-D in ``tensors``; else the last 2-D ``*.weight`` tensor in the
    dict's order. None when there is no such tensor.
    """
    if head_names is not None:
        for name in head_names:
            t = tensors.get(name)
            if name.endswith(".weight") and isinstance(t, torch.Tensor) and t.ndim >= 2:
                return int(t.shape[0])
        return None
    found: int | None = None
    for name, t in tensors.items():
        if name.endswith(".weight") and isinstance(t, torch.Tensor) and t.ndim == 2:
            found = int(t.shape[0])
    return found


# --------------------------------------------------------------------------- weights


def _align_names(
    model_names: list[str], tensors: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename checkpoint tensors to the model's names when they differ only by wrapper prefixes."""
    if set(model_names) == set(tensors):
        return dict(tensors)
    mapping, removed = strip_prefixes(model_names)
    if removed:
        back = {clean: name for name, clean in mapping.items()}
        if len(back) == len(mapping) and set(back) >= set(tensors):
            return {back[k]: v for k, v in tensors.items()}
    return dict(tensors)


def load_weights(model: nn.Module, tensors: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Load ``tensors`` into ``model`` strictly, with a readable error on any mismatch.

    Names that differ only by wrapper prefixes (``module.``, ``model.``...) are matched. A
    missing ``num_batches_tracked`` buffer is tolerated (torch fills it in).

    Raises:
        HessauditError: missing or unexpected names or shape mismatches, listing a few of each.
    """
    model_state = model.state_dict()
    state = _align_names(list(model_state), tensors)
    missing = [
        k for k in model_state if k not in state and not k.endswith("num_batches_tracked")
    ]
    unexpected = [k for k in state if k not in model_state]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in model_state.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    what = source or "checkpoint"
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches (checkpoint vs model): "
                         f"{few(mismatched, 3)}")
        if missing:
            parts.append(f"{len(missing)} missing from the checkpoint: {few(missing, 3)}")
        if unexpected:
            parts.append(f"{len(unexpected)} not in the model: {few(unexpected, 3)}")
        raise HessauditError(
            f"{what} does not fit the model; " + "; ".join(parts),
            hint="the checkpoint is probably for another architecture, or --model or "
            "--num-classes is wrong",
        )
    for k in model_state:
        if k not in state:  # num_batches_tracked
            state[k] = model_state[k]
    try:
        model.load_state_dict(state, strict=True)
    except Exception as exc:
        raise HessauditError(
            f"{what} could not be loaded into the model: {oneline(exc)}"
        ) from None


def load_model(
    spec: str,
    tensors: Mapping[str, torch.Tensor],
    *,
    num_classes: int | None = None,
    allow_hub: bool = False,
    source: str = "",
) -> nn.Module:
    """Build ``spec``, load ``tensors`` into it and return it in eval mode.

    The number of classes defaults to the checkpoint head's (found through the built model's
    :func:`classifier_names`); an explicit ``num_classes`` that disagrees with it is an error.
    """
    model = build_model(spec, num_classes=num_classes, allow_hub=allow_hub)
    heads = classifier_names(model)
    aligned = _align_names(list(model.state_dict()), tensors)
    inferred = infer_num_classes(aligned, head_names=heads) if heads else None
    what = source or "the checkpoint"
    if num_classes is not None and inferred is not None and inferred != num_classes:
        raise HessauditError(
            f"--num-classes {num_classes} disagrees with {what}, whose head has {inferred} "
            "outputs",
            hint=f"drop --num-classes or pass --num-classes {inferred}",
        )
    if num_classes is None and inferred is not None and inferred != _head_out_features(model):
        if _is_factory_spec(spec.strip()):
            # a factory without num_classes keeps its head; load_weights reports the mismatch
            model = _build_factory(spec.strip(), num_classes=inferred, check_classes=False)
        else:
            model = build_model(spec, num_classes=inferred, allow_hub=allow_hub)
    load_weights(model, tensors, source=source)
    return model.eval()


# --------------------------------------------------------------------------- inputs


def disable_fused_attention(model: nn.Module) -> int:
    """Switch timm attention modules to their explicit softmax(QK^T)V path; return how many.

    timm's fused attention calls ``scaled_dot_product_attention``, whose CPU kernels have no
    double backward, so Hessian-vector products through it fail. The explicit path computes
    the same function, so the audit's numbers do not change.
    """
    switched = 0
    for module in model.modules():
        if getattr(module, "fused_attn", False):
            module.fused_attn = False
            switched += 1
    return switched
