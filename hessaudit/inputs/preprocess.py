"""What the inputs mean: array scaling, layout, size and normalization, and the first forward.

Decisions (also in docs/measure.md, "Inputs"):

* **Integer arrays are pixels.** An ``.npz`` ``x`` of dtype uint8 is divided by 255 and one of
  uint16 by 65535, as torchvision's ``ToTensor`` / ``ToDtype(scale=True)`` do, *before* the
  model's mean/std; bool becomes 0/1. Other integer dtypes (int8...int64, uint32, uint64) are
  refused: their range is not known (``np.array`` of Python ints gives int64 whatever the
  pixels' depth), so the user says what they mean by storing uint8, uint16 or float32. Float
  arrays are used as they are. The choice is recorded as ``inputs.data_scaling`` of the audit
  JSON (:data:`SCALINGS`). A uint8 ``x`` holding only 0 and 1 is still scaled, with a warning.
* **(N, H, W) arrays are grayscale images** (as MNIST loads in numpy) when the model takes
  images: a channel axis is added, with a warning.
* **Channels-last arrays are transposed, with a warning.** An (N, A, B, C) array whose last
  dimension is 1, 3 or 4 and whose second is not is read as (N, H, W, C) and transposed to
  (N, C, H, W), when the model's channel count is C (or C is 1, repeated to the model's),
  or unknown and the images must be resized or normalized. The step is recorded in the
  dataset's ``preprocessing`` list. Every other channel mismatch is an error with a hint.
* **Resizing is timm's eval transform, on tensors.** Images whose (H, W) differ from the
  model's input size go through ``timm.data.create_transform(..., is_training=False)`` with the
  resolved ``interpolation``, ``crop_pct`` and ``crop_mode`` (no normalization there), and are
  clamped to the range the data had (bicubic overshoots). Images already at the input size
  are used as they are (they were prepared for the model).
* **The first forward pass names the data**: :func:`check_forward`
  (:mod:`hessaudit.inputs.forward_check`, re-exported here).
* **No NaN or Inf reaches the model**: :func:`check_finite_examples` names the first example
  holding one.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from hessaudit.errors import HessauditError
from hessaudit.inputs.dataset import DataWarning
from hessaudit.inputs.forward_check import check_forward

if TYPE_CHECKING:
    import numpy as np

    from hessaudit.inputs.data_config import InputConfig

__all__ = [
    "SCALINGS",
    "adapt_images",
    "array_to_tensor",
    "check_finite_examples",
    "check_forward",
    "prepare_images",
    "resize_images",
]

#: ``inputs.data_scaling`` values: how stored values became the [0, 1] inputs.
SCALINGS = {
    "none": "float array used as it is",
    "uint8/255": "uint8 array divided by 255",
    "uint16/65535": "uint16 array divided by 65535",
    "bool": "bool array as 0 / 1",
    "images/[0,1]": "image files decoded to [0, 1] (8-bit / 255, 16-bit / 65535)",
    "digits/16": "the built-in digits' 0..16 values divided by 16",
    "tokens": "text tokenized to (ids, attention mask, token types) (hessaudit.inputs.text_tokens)",
}

# --------------------------------------------------------------------------- scaling


def array_to_tensor(x: np.ndarray, source: str) -> tuple[Tensor, str]:
    """A stored ``x`` array as float32 inputs and the scaling applied (a :data:`SCALINGS` key).

    Raises:
        HessauditError: an integer dtype of unknown range, or an example holding NaN or Inf.
    """
    import numpy as np

    kind, size = x.dtype.kind, x.dtype.itemsize
    if kind == "b":
        scale, label = 1.0, "bool"
    elif kind == "u" and size == 1:
        scale, label = 255.0, "uint8/255"
        if x.size and int(x.max()) == 1:
            warnings.warn(
                f"data {source}: x is uint8 holding only 0 and 1; it is read as 8-bit pixels "
                "and divided by 255 (store 0/1 features as bool or float32)",
                DataWarning,
                stacklevel=3,
            )
    elif kind == "u" and size == 2:
        scale, label = 65535.0, "uint16/65535"
    elif kind in "iu":
        raise HessauditError(
            f"data {source}: x has dtype {x.dtype}, an integer type whose pixel range is not "
            "known",
            hint="store 8-bit images as uint8 (divided by 255), 16-bit ones as uint16 (divided "
            "by 65535), or already-scaled values as float32, e.g. x.astype('uint8')",
        )
    elif kind == "f":
        scale, label = 1.0, "none"
        _warn_if_unscaled_pixels(x, source)
    else:
        raise HessauditError(f"data {source}: x must be numeric, found dtype {x.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):  # values beyond float32: named below
        arr = np.ascontiguousarray(x).astype(np.float32, copy=False)
    t = torch.from_numpy(arr)
    if scale != 1.0:
        t = t / scale
    check_finite_examples(t, source, what="x")
    return t, label


def _warn_if_unscaled_pixels(x: np.ndarray, source: str) -> None:
    """Image-sized float examples of whole numbers in 0..255 (reaching 32 or more) are
    probably 8-bit pixels saved as float: say so (the array is still used as it is: a float
    array means what it holds)."""
    import numpy as np

    if x.ndim < 2 or x[0].size < 64:  # not image-sized examples
        return
    finite = x[np.isfinite(x)]  # NaN / Inf are refused just after, naming the example
    if not finite.size:
        return
    low, high = float(finite.min()), float(finite.max())
    if low >= 0 and 32 <= high <= 255 and bool(np.all(np.mod(finite, 1) == 0)):
        warnings.warn(
            f"data {source}: x is float with whole values in 0..{high:g}, like unscaled 8-bit "
            "pixels; it is used as it is (store uint8 to have it divided by 255)",
            DataWarning,
            stacklevel=3,
        )


def check_finite_examples(x: Tensor, source: str, *, what: str = "x") -> None:
    """Refuse inputs holding NaN or Inf, naming the first such example (0-based index)."""
    if x.numel() == 0 or bool(torch.isfinite(x).all()):
        return
    flat = x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(-1, 1)
    bad = ~torch.isfinite(flat).all(dim=1)
    index = int(bad.nonzero()[0, 0])
    kind = "NaN" if bool(torch.isnan(flat[index]).any()) else "Inf (or a value beyond float32)"
    count = int(bad.sum())
    more = f"; {count} examples hold NaN or Inf" if count > 1 else ""
    raise HessauditError(
        f"data {source}: example {index} of {what} contains {kind}{more}",
        hint="fix or drop those examples",
    )


# --------------------------------------------------------------------------- images


def prepare_images(x: Tensor, cfg: InputConfig, *, source: str = "data") -> Tensor:
    """Adapt images (N, C, H, W) to ``cfg``; see :func:`adapt_images`."""
    return adapt_images(x, cfg, source=source)[0]


def adapt_images(
    x: Tensor, cfg: InputConfig, *, source: str = "data"
) -> tuple[Tensor, list[str]]:
    """Adapt images to ``cfg``: layout, channels, size (timm's eval resize), mean/std.

    Returns the images and the steps taken (for the record). Non-image tensors pass through
    unchanged when ``cfg`` asks for nothing (no size, no normalization); otherwise they are an
    error.
    """
    steps: list[str] = []
    wants_images = cfg.size is not None or cfg.mean is not None or cfg.std is not None
    if x.ndim == 3 and (
        x.shape[1] != cfg.channels if cfg.channels is not None else wants_images
    ):
        # (N, H, W): grayscale images without a channel axis (MNIST as numpy keeps it); an
        # (N, C, L) array whose C is the model's channel count stays (a Conv1d model's input)
        warnings.warn(
            f"data {source}: x of shape (N, {x.shape[1]}, {x.shape[2]}) has no channel axis; "
            f"read as grayscale images (N, 1, {x.shape[1]}, {x.shape[2]})",
            DataWarning,
            stacklevel=3,
        )
        steps.append("(N, H, W) read as grayscale (N, 1, H, W)")
        x = x.unsqueeze(1)
    if x.ndim != 4:
        if not wants_images:
            return x, steps
        raise HessauditError(
            f"data {source}: inputs of shape {tuple(x.shape[1:])} are not images (C, H, W), so the "
            "model's input size / normalization cannot be applied",
            hint="store images as (N, C, H, W), or drop --input-size / --mean / --std for data "
            "that are not images",
        )
    x = _channels_first(x, cfg, source, steps, wants_images)
    channels = x.shape[1]
    if cfg.channels is not None and channels != cfg.channels:
        if channels != 1:
            raise _channel_error(x, cfg.channels, source)
        x = x.expand(-1, cfg.channels, -1, -1)
        steps.append(f"grayscale repeated to {cfg.channels} channels")
    if cfg.size is not None and tuple(x.shape[2:]) != tuple(cfg.size):
        before = tuple(x.shape[2:])
        x = resize_images(x, cfg)
        steps.append(
            f"resized {before[0]}x{before[1]} -> {cfg.size[0]}x{cfg.size[1]} "
            f"({cfg.interpolation}, crop_pct {cfg.crop_pct:g}, {cfg.crop_mode})"
        )
    if cfg.mean is not None or cfg.std is not None:
        mean = torch.tensor(cfg.mean or (0.0,), dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(cfg.std or (1.0,), dtype=x.dtype).view(1, -1, 1, 1)
        for what, t in (("mean", mean), ("std", std)):
            if t.shape[1] not in (1, x.shape[1]):
                raise HessauditError(
                    f"data {source}: --{what} has {t.shape[1]} values for {x.shape[1]} channels",
                    hint=f"give one --{what} value, or one per channel",
                )
        x = (x - mean) / std
        steps.append("normalized with mean/std")
    x = x.contiguous()
    check_finite_examples(x, source, what="the preprocessed inputs")
    return x, steps


def _channels_first(
    x: Tensor, cfg: InputConfig, source: str, steps: list[str], wants_images: bool
) -> Tensor:
    """Transpose an (N, H, W, C) array to (N, C, H, W) when that is clearly what it is."""
    second, last = int(x.shape[1]), int(x.shape[3])
    if last not in (1, 3, 4) or second in (1, 3, 4):
        return x
    want = cfg.channels
    if want is None and not wants_images:
        return x  # fed to the model as it is: its own layout is the model's business
    if want is not None and (second == want or last not in (want, 1)):
        return x
    warnings.warn(
        f"data {source}: x of shape (N, {x.shape[1]}, {x.shape[2]}, {last}) is channels-last "
        f"(N, H, W, C); transposed to (N, {last}, {x.shape[1]}, {x.shape[2]})",
        DataWarning,
        stacklevel=4,
    )
    steps.append("channels-last (N, H, W, C) transposed to (N, C, H, W)")
    return x.permute(0, 3, 1, 2).contiguous()


def _channel_error(x: Tensor, want: int, source: str) -> HessauditError:
    n, c, h, w = (int(d) for d in x.shape)
    if c == 4 and want == 3:
        hint = "drop the alpha channel (x[:, :3]) or convert the images to RGB"
    elif want == 1 and c in (3, 4):
        hint = "convert the images to grayscale (N, 1, H, W)"
    elif w in (1, 3, 4):
        hint = (
            f"if x is channels-last (N, H, W, C), its {w} channels do not fit either: store "
            f"x as (N, {want}, H, W), or check that --data belongs to --model"
        )
    else:
        hint = f"store x as (N, {want}, H, W), or check that --data belongs to --model"
    return HessauditError(
        f"data {source}: images have {c} channels but the model takes {want} (x read as "
        f"(N, C, H, W) = ({n}, {c}, {h}, {w}))",
        hint=hint,
    )


def resize_images(x: Tensor, cfg: InputConfig) -> Tensor:
    """Resize (N, C, H, W) images to ``cfg.size`` with timm's eval transform (no normalization):
    scale to ``floor(size / crop_pct)`` with ``cfg.interpolation`` (antialiased), crop the
    centre (``crop_mode`` "center" keeps the aspect ratio, "squash" does not), then clamp to
    the range the images had."""
    from timm.data import create_transform

    assert cfg.size is not None
    transform = create_transform(
        input_size=(int(x.shape[1]), *cfg.size),
        is_training=False,
        interpolation=cfg.interpolation,
        crop_pct=cfg.crop_pct,
        crop_mode=cfg.crop_mode,
        normalize=False,
    )
    low, high = (float(x.min()), float(x.max())) if x.numel() else (0.0, 0.0)
    return transform(x).clamp_(low, high)
