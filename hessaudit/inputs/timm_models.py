"""timm models: ``--model resnet18``, ``--model vit_tiny_patch16_224``...

A timm name is built with ``pretrained=False`` and ``HF_HUB_OFFLINE=1``, so nothing is fetched;
weights come from the checkpoint files. ``allow_hub=True`` passes ``pretrained=True`` (and
allows ``hf-hub:`` names), which reads the local timm / Hugging Face cache or the network. An
unknown name is refused with timm's close matches.

timm is imported inside the functions that need it, never at module import.
"""

from __future__ import annotations

import difflib
import os
from typing import Any

from torch import nn

from hessaudit._messages import oneline
from hessaudit.errors import HessauditError

__all__ = ["HUB_PREFIXES", "LOCAL_PREFIX", "build_timm", "disable_fused_attention"]

#: timm's prefixes for a model on the Hugging Face hub.
HUB_PREFIXES = ("hf-hub:", "hf_hub:")
#: timm's prefix for a model in a local folder.
LOCAL_PREFIX = "local-dir:"


def build_timm(
    spec: str,
    *,
    num_classes: int | None = None,
    allow_hub: bool = False,
    check_classes: bool = True,
) -> nn.Module:
    """``timm.create_model(spec, pretrained=allow_hub, num_classes=num_classes)``.

    ``check_classes`` is not used: timm builds the head it is asked for. ``num_classes`` must be
    positive (timm would read 0 as "no head").

    Raises:
        HessauditError: a hub name without ``allow_hub``, an unknown name (with close matches),
            a bad ``num_classes``, or timm failing to build or to load pretrained weights.
    """
    if num_classes is not None and (isinstance(num_classes, bool) or num_classes < 1):
        raise HessauditError(f"--num-classes {num_classes}: must be a positive integer")
    if not allow_hub:
        os.environ["HF_HUB_OFFLINE"] = "1"
        if spec.startswith(HUB_PREFIXES):
            raise HessauditError(
                f"--model {spec}: a Hugging Face hub model needs the hub",
                hint="pass --allow-hub (with the model in the local cache when offline), or give "
                "a timm architecture name and the weights as a checkpoint file",
            )
    import timm

    named = not spec.startswith(HUB_PREFIXES) and not spec.startswith(LOCAL_PREFIX)
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
