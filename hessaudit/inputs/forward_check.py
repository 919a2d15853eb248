"""The first forward pass names the data: :func:`check_forward` runs the model on the first
examples before any other work; a failure (a shape mismatch: ``mat1 and mat2 shapes cannot be
multiplied``...) is reported with the data file, its per-example shape and what the model
expects (:func:`expected_input`), and a hint naming a real flag. An output that is not a
(batch, classes) tensor is refused too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from hessaudit.errors import HessauditError
from hessaudit.inputs.data_config import first_layer

if TYPE_CHECKING:
    from hessaudit.inputs.data_config import InputConfig

__all__ = ["check_forward", "expected_input"]

_OOM = ("out of memory", "can't allocate memory", "cannot allocate memory")


def expected_input(model: nn.Module, cfg: InputConfig | None) -> str:
    """What the model expects, in words: timm's configured input size, else its first layer."""
    pretrained_cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(pretrained_cfg, dict) and pretrained_cfg.get("input_size"):
        return f"timm's config for the model says input_size {tuple(pretrained_cfg['input_size'])}"
    first = first_layer(model)
    if first is None:
        return "the model's input layer is not a convolution or linear layer"
    name, layer = first
    if isinstance(layer, nn.Linear):
        return (
            f"its first layer {name!r} is Linear({layer.in_features}, {layer.out_features}): "
            f"{layer.in_features} values per example"
        )
    if isinstance(layer, nn.modules.conv._ConvNd):
        return (
            f"its first layer {name!r} is a {type(layer).__name__} taking "
            f"{layer.in_channels} channels"
        )
    return f"its first layer {name!r} is a {type(layer).__name__}"


def _hint(model: nn.Module, shape: tuple[int, ...], cfg: InputConfig | None) -> str:
    first = first_layer(model)
    if first is not None and isinstance(first[1], nn.Linear) and len(shape) == 3:
        features, channels = first[1].in_features, shape[0]
        side = round((features / channels) ** 0.5) if features % channels == 0 else 0
        if side >= 1 and channels * side * side == features and (side, side) != shape[1:]:
            return (
                f"--input-size {side} resizes the images to {channels}x{side}x{side} = "
                f"{features} values; or check that --data belongs to --model"
            )
    if cfg is not None and cfg.size is not None:
        return (
            "--input-size sets the size images are resized to; check that --data belongs "
            "to --model"
        )
    return "check that --data belongs to --model (channels, size, layout)"


#: Phrases of torch's and Python's errors for inputs of the wrong shape, size or channels.
_SHAPE_PHRASES = (
    "shape", "size", "dimension", "channel", "mat1 and mat2", "expected input", "expected 4d",
    "expected 3d", "expected 2d", "must match", "out of range", "cannot be multiplied",
)


def _looks_like_shape_error(exc: BaseException) -> bool:
    if isinstance(exc, SystemExit):
        return True  # still a failure of the first forward: name the data and the model
    if not isinstance(exc, RuntimeError | ValueError | IndexError | TypeError):
        return False
    text = str(exc).lower()
    return any(phrase in text for phrase in _SHAPE_PHRASES)


def check_forward(
    model: nn.Module,
    x: Tensor,
    *,
    data: str,
    model_spec: str,
    cfg: InputConfig | None = None,
) -> None:
    """Run ``model`` on the first two examples of ``x`` (eval mode, no gradients).

    Any failure becomes one :class:`HessauditError` naming ``data``, its per-example shape and
    what the model expects; an output that is not a (batch, classes) tensor is refused too.
    Out-of-memory errors propagate unchanged (the CLI reports them).
    """
    if x.shape[0] == 0:
        return
    shape = tuple(int(d) for d in x.shape[1:])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x[:2])
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit from model code is a failure too
        if any(p in str(exc).lower() for p in _OOM) or isinstance(exc, MemoryError):
            raise
        if isinstance(exc, HessauditError) or not _looks_like_shape_error(exc):
            # Model code that fails for its own reasons (a KeyError in its forward, say) is
            # reported as the model's error (hessaudit.inputs.user_code), not as a data mismatch.
            raise
        text = " ".join(str(exc).split())
        text = text[:197] + "..." if len(text) > 200 else text
        raise HessauditError(
            f"--model {model_spec} cannot run on --data {data}: {type(exc).__name__}: {text} "
            f"(an example has shape {shape}; {expected_input(model, cfg)})",
            hint=_hint(model, shape, cfg),
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != min(2, x.shape[0]):
        got = (
            f"a tensor of shape {tuple(out.shape)}" if isinstance(out, Tensor)
            else f"a {type(out).__name__}"
        )
        raise HessauditError(
            f"--model {model_spec} returns {got} on --data {data} (examples of shape {shape}); "
            "hessaudit needs logits of shape (batch, classes)",
            hint="make the model's forward return the logits tensor",
        )
