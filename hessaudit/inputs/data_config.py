"""What a model expects as input: the data config (channels, size, resizing, mean/std).

:func:`input_config` resolves it for a built model: for timm models with
``timm.data.resolve_model_data_config`` and the flags ``--input-size``, ``--mean``, ``--std``,
``--interpolation``, ``--crop-pct`` as overrides, as timm's own scripts do; for other models
from their first layer and the flags alone; the flags are checked by
:func:`hessaudit.inputs.data_flags.data_config_flags`. :mod:`hessaudit.inputs.preprocess` applies
it to data. Re-exported by :mod:`hessaudit.inputs.models`. timm is imported inside the functions
that need it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from hessaudit.errors import HessauditError
from hessaudit.inputs.data_flags import INTERPOLATIONS, data_config_flags

__all__ = ["InputConfig", "first_layer", "input_config"]


@dataclass(frozen=True)
class InputConfig:
    """What the model expects as input: channels, spatial size (H, W), resizing, normalization.

    ``channels`` None means unknown (a model whose first layer is not a convolution and that has
    no timm config): data is fed with its own channels. ``size`` None means data is fed at its
    native size; ``mean``/``std`` None means no normalization. Images whose (H, W) differ from
    ``size`` are resized as timm's eval transform does: to ``floor(size / crop_pct)`` with
    ``interpolation``, then cropped to ``size`` (``crop_mode`` "center": the shorter side is
    scaled and the centre kept, "squash": both sides are scaled). The defaults (bilinear,
    crop_pct 1, squash) are a plain resize to ``size``.
    """

    channels: int | None
    size: tuple[int, int] | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    crop_mode: str = "squash"

    def to_dict(self) -> dict[str, Any]:
        return {
            "channels": self.channels,
            "size": list(self.size) if self.size is not None else None,
            "mean": list(self.mean) if self.mean is not None else None,
            "std": list(self.std) if self.std is not None else None,
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "crop_mode": self.crop_mode,
        }


def first_layer(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The first convolution, linear or embedding layer in module order (the input layer)."""
    kinds = (nn.modules.conv._ConvNd, nn.Linear, nn.Embedding, nn.EmbeddingBag)
    for name, module in model.named_modules():
        if isinstance(module, kinds):
            return name, module
    return None


def _model_channels(model: nn.Module) -> int | None:
    first = first_layer(model)
    if first is not None and isinstance(first[1], nn.modules.conv._ConvNd):
        return int(first[1].in_channels)
    return None


def _size(value: Any) -> tuple[int, int]:
    size = (value, value) if isinstance(value, int) else tuple(value)
    return (int(size[0]), int(size[1]))


def input_config(
    model: nn.Module,
    *,
    input_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    interpolation: str | None = None,
    crop_pct: float | None = None,
) -> InputConfig:
    """What ``model`` expects as input, with explicit arguments (the flags) taking precedence.

    timm models (those with a ``pretrained_cfg``): size, interpolation, mean, std, crop_pct
    and crop_mode from ``timm.data.resolve_model_data_config`` given the flags, as timm's own
    scripts resolve them; channels from the model's first convolution (timm's config always
    says 3, also for ``in_chans=1``). A 1-channel timm model without ``--mean``/``--std``
    normalizes with the average of the config's per-channel mean and std.
    Other models: channels from the first layer when it is a convolution (else unknown), no
    size unless ``input_size`` (data fed as it is), no normalization unless ``mean``/``std``,
    and a plain resize (bilinear, crop_pct 1) unless ``interpolation``/``crop_pct``; a given
    ``crop_pct`` crops the centre as timm does.
    """
    flags = data_config_flags(
        input_size=input_size, mean=mean, std=std, interpolation=interpolation,
        crop_pct=crop_pct,
    )
    if channels is not None and (
        not isinstance(channels, int) or isinstance(channels, bool) or channels < 1
    ):
        raise HessauditError(f"input channels {channels}: must be a positive integer")
    cfg_channels = channels if channels is not None else _model_channels(model)
    size = None if input_size is None else _size(input_size)
    means, stds = flags["mean"], flags["std"]
    for flag, values in (("--mean", means), ("--std", stds)):
        if values is not None and cfg_channels is not None and len(values) not in (
            1, cfg_channels,
        ):
            raise HessauditError(
                f"{flag} has {len(values)} values but the model takes {cfg_channels} channel(s)",
                hint="give one value, or one per channel",
            )
    pretrained_cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(pretrained_cfg, Mapping) and pretrained_cfg:
        return _timm_input_config(model, cfg_channels, size, means, stds, flags)
    if (means is None) != (stds is None):
        means = means if means is not None else (0.0,)
        stds = stds if stds is not None else (1.0,)
    return InputConfig(
        channels=cfg_channels,
        size=size,
        mean=means,
        std=stds,
        interpolation=flags["interpolation"] or "bilinear",
        crop_pct=flags["crop_pct"] if flags["crop_pct"] is not None else 1.0,
        crop_mode="center" if flags["crop_pct"] is not None else "squash",
    )


def _timm_input_config(
    model: nn.Module,
    channels: int | None,
    size: tuple[int, int] | None,
    means: tuple[float, ...] | None,
    stds: tuple[float, ...] | None,
    flags: Mapping[str, Any],
) -> InputConfig:
    try:
        from timm.data import resolve_model_data_config as resolve
    except ImportError:  # timm < 0.9
        from timm.data import resolve_data_config

        def resolve(model: nn.Module, args: dict[str, Any]) -> dict[str, Any]:
            return resolve_data_config(args, model=model)

    chans = channels or 3
    args: dict[str, Any] = {"in_chans": chans}
    if size is not None:
        args["input_size"] = (chans, *size)
    for key, value in (
        ("mean", means), ("std", stds), ("interpolation", flags["interpolation"]),
        ("crop_pct", flags["crop_pct"]),
    ):
        if value is not None:
            args[key] = value
    data_cfg = resolve(model, args=args)
    _, h, w = data_cfg["input_size"]
    cfg_mean = tuple(float(v) for v in data_cfg["mean"])
    cfg_std = tuple(float(v) for v in data_cfg["std"])
    if len(cfg_mean) != chans and means is None:
        cfg_mean = _per_channel(cfg_mean, chans, "--mean")
    if len(cfg_std) != chans and stds is None:
        cfg_std = _per_channel(cfg_std, chans, "--std")
    interpolation = str(data_cfg.get("interpolation") or "bicubic")
    if interpolation not in INTERPOLATIONS:  # PIL-only filters (lanczos, box, hamming)
        interpolation = "bicubic"
    crop_mode = str(data_cfg.get("crop_mode") or "center")
    if crop_mode not in ("center", "squash"):  # "border" pads PIL images only
        crop_mode = "center"
    return InputConfig(
        channels=chans,
        size=(int(h), int(w)),
        mean=cfg_mean,
        std=cfg_std,
        interpolation=interpolation,
        crop_pct=float(data_cfg.get("crop_pct") or 1.0),
        crop_mode=crop_mode,
    )


def _per_channel(values: tuple[float, ...], channels: int, flag: str) -> tuple[float, ...]:
    """The model config's per-channel values for a model with another channel count."""
    if channels == 1:
        return (sum(values) / len(values),)
    raise HessauditError(
        f"the model takes {channels} channels but its timm config has {len(values)} "
        f"{flag[2:]} values",
        hint=f"pass {flag} with one value or {channels}",
    )
