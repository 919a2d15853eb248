"""A PEFT LoRA adapter directory as FINETUNED: the base weights plus the merged update.

An adapter directory holds ``adapter_config.json`` and ``adapter_model.safetensors`` (or
``adapter_model.bin``, read with ``weights_only=True``). Its fine-tuned weights are those of
the base checkpoint (PRETRAINED) with, for every adapted module M,

    W_M  <-  W_M + s_M * B_M @ A_M          (A_M: r_M x in, B_M: out x r_M)
    s_M  =  alpha_M / r_M                    (alpha_M / sqrt(r_M) with ``use_rslora``)

``(B_M @ A_M)^T`` where the base weight is stored (in, out) (``fan_in_fan_out``, GPT-2's
``Conv1D``: decided by the shapes, and by the flag when the weight is square); for an embedding
adapter (``lora_embedding_A`` r x num_embeddings, ``lora_embedding_B`` dim x r) the update is
``s * (B @ A)^T``. r_M is the number of rows of A_M (what ``rank_pattern`` gave the module);
alpha_M is ``lora_alpha`` or the ``alpha_pattern`` entry matching M the way peft matches it (the
key equals the module name or ends it after a ``.``). With ``lora_bias`` the bias gains
``s * lora_B.bias``. Tensors stored whole (``modules_to_save``, e.g. a new classifier; biases
trained with ``bias="all"`` / ``"lora_only"``) replace the base's. The update is computed in
float64 and added once, in the base dtype (at least float32), so the distance of an adapted
weight is the merged update.

Names are mapped from peft's to the base model's: the ``base_model.model.`` prefix,
``.lora_A.weight`` / ``.lora_B.weight``, ``.base_layer.`` and ``.modules_to_save.[default.]`` are
removed; ``.original_module.`` tensors (the base's copy beside a saved module) are not used.
Only ``peft_type: LORA`` is merged. Refused with one line: other adapter types; LoRA variants
that change the formula (DoRA, aLoRA, ...) or that changed the base weights when initialised
(PiSSA, OLoRA, CorDA, LoftQ, LoRA-GA, unless converted); LoRA on convolutions;
``alpha_pattern`` keys that are regular expressions; any tensor that is not one of the above or
has no counterpart in the base; A and B of different ranks.

:func:`load_finetuned` is the entry point: a plain checkpoint is read as before.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hessaudit.errors import HessauditError
from hessaudit.inputs.checkpoints import Checkpoint, FileRecord, load_checkpoint
from hessaudit.inputs.hf_checkpoints import read_safetensors_file, read_torch_file
from hessaudit.inputs.hf_files import (
    ADAPTER_CONFIG,
    dir_member,
    files_record,
    is_adapter_dir,
    read_json,
)

__all__ = ["LoraConfig", "load_finetuned", "merge_lora", "read_lora_config"]

_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_PREFIX = "base_model.model."
#: Config keys that may hold any value: metadata, or initialisation that leaves the base alone.
_HARMLESS = frozenset({
    "peft_type", "task_type", "r", "lora_alpha", "target_modules", "exclude_modules",
    "modules_to_save", "fan_in_fan_out", "bias", "lora_bias", "use_rslora", "rank_pattern",
    "alpha_pattern", "init_lora_weights", "lora_dropout", "inference_mode",
    "base_model_name_or_path", "revision", "auto_mapping", "peft_version", "layers_to_transform",
    "layers_pattern", "eva_config", "megatron_core", "qalora_group_size", "ensure_weight_tying",
})
#: ``init_lora_weights`` values that leave the base weights untouched.
_SAFE_INITS = (True, False, "gaussian", "eva", "orthogonal")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.\-]+")
_PARTS = {  # suffix of a peft name -> (role); checked in this order
    ".lora_A.weight": "A", ".lora_A.default.weight": "A",
    ".lora_B.weight": "B", ".lora_B.default.weight": "B",
    ".lora_B.bias": "B_bias", ".lora_B.default.bias": "B_bias",
    ".lora_embedding_A": "EA", ".lora_embedding_A.default": "EA",
    ".lora_embedding_B": "EB", ".lora_embedding_B.default": "EB",
}


@dataclass(frozen=True)
class LoraConfig:
    """The fields of ``adapter_config.json`` that the merge uses (module docstring)."""

    r: int
    alpha: float
    use_rslora: bool
    fan_in_fan_out: bool
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    rank_pattern: dict[str, int] = field(default_factory=dict)
    target_modules: Any = None
    modules_to_save: tuple[str, ...] = ()

    def scaling(self, module: str, r: int) -> float:
        """s = alpha / r (alpha / sqrt(r) with rsLoRA), alpha from ``alpha_pattern``."""
        alpha = self.alpha
        for key, value in self.alpha_pattern.items():  # peft's get_pattern_key, in order
            if re.match(rf"(.*\.)?({key})$", module):
                alpha = value
                break
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r


def _number(config: dict[str, Any], key: str, where: str, *, integer: bool = False) -> Any:
    value = config.get(key)
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        raise HessauditError(f"{where}: {key!r} must be a {'whole ' if integer else ''}number")
    if integer and value < 1:
        raise HessauditError(f"{where}: {key!r} must be at least 1")
    return value


def _refuse_variants(config: dict[str, Any], where: str) -> None:
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise HessauditError(
            f"{where}: peft_type {peft_type!r} is not supported; hessaudit merges LoRA adapters "
            "only",
            hint="merge the adapter with peft (merge_and_unload + save_pretrained) and give "
            "that directory as FINETUNED",
        )
    for key, value in config.items():
        if key not in _HARMLESS and value not in (None, False, 0, "", [], {}):
            raise HessauditError(
                f"{where} sets {key!r}, a LoRA variant hessaudit does not merge",
                hint="merge the adapter with peft (merge_and_unload + save_pretrained) and give "
                "that directory as FINETUNED",
            )
    init = config.get("init_lora_weights", True)
    if init not in _SAFE_INITS:
        raise HessauditError(
            f"{where}: init_lora_weights {init!r} changed the base weights when the adapter was "
            "created, so base + update is not the fine-tuned model",
            hint="save it with peft's path_initial_model_for_weight_conversion, or merge it "
            "with peft and give that directory as FINETUNED",
        )
    if config.get("bias", "none") not in ("none", "all", "lora_only"):
        raise HessauditError(f"{where}: bias {config.get('bias')!r} is not none, all or lora_only")


def _patterns(config: dict[str, Any], key: str, where: str, *, integer: bool) -> dict[str, Any]:
    pattern = config.get(key) or {}
    if not isinstance(pattern, dict):
        raise HessauditError(f"{where}: {key!r} must be an object of module name -> value")
    out = {}
    for name in pattern:
        if key == "alpha_pattern" and not (isinstance(name, str) and _PLAIN_KEY.fullmatch(name)):
            raise HessauditError(
                f"{where}: alpha_pattern key {name!r} is a regular expression; hessaudit matches "
                "module names only (letters, digits, '_', '-', '.')",
                hint="write one key per module name, or merge the adapter with peft",
            )
        out[str(name)] = _number(pattern, name, f"{where} {key}", integer=integer)
    return out


def read_lora_config(folder: Path) -> LoraConfig:
    """``adapter_config.json``, checked (module docstring)."""
    path = dir_member(folder, ADAPTER_CONFIG, "adapter")
    where = f"adapter config {path}"
    config = read_json(path, "adapter config")
    _refuse_variants(config, where)
    for flag in ("use_rslora", "fan_in_fan_out"):
        if not isinstance(config.get(flag, False), bool):
            raise HessauditError(f"{where}: {flag!r} must be true or false")
    targets = config.get("target_modules")
    if not (targets is None or isinstance(targets, str)
            or (isinstance(targets, list) and all(isinstance(t, str) for t in targets))):
        raise HessauditError(f"{where}: 'target_modules' must be a name, a list of names or null")
    saved = config.get("modules_to_save") or []
    if not isinstance(saved, list) or not all(isinstance(s, str) and s for s in saved):
        raise HessauditError(f"{where}: 'modules_to_save' must be a list of module names")
    return LoraConfig(
        r=_number(config, "r", where, integer=True),
        alpha=float(_number(config, "lora_alpha", where)),
        use_rslora=bool(config.get("use_rslora", False)),
        fan_in_fan_out=bool(config.get("fan_in_fan_out", False)),
        alpha_pattern=_patterns(config, "alpha_pattern", where, integer=False),
        rank_pattern=_patterns(config, "rank_pattern", where, integer=True),
        target_modules=targets,
        modules_to_save=tuple(saved),
    )


def _split(name: str) -> tuple[str, str]:
    """(base model name or module, role) of one adapter tensor name."""
    rest = name[len(_PREFIX):] if name.startswith(_PREFIX) else name
    for suffix, role in _PARTS.items():
        if rest.endswith(suffix):
            return rest[: -len(suffix)], role
    if ".original_module." in rest:  # the base's copy beside a saved module (bias="all")
        return rest, "unused"
    for infix in (".modules_to_save.default.", ".modules_to_save.", ".base_layer."):
        rest = rest.replace(infix, ".")
    return rest, "whole"


def _update(module: str, parts: dict[str, torch.Tensor], base: torch.Tensor, cfg: LoraConfig,
            where: str) -> torch.Tensor:
    """s * B @ A in float64, oriented like ``base`` (module docstring)."""
    embedding = "EA" in parts or "EB" in parts
    a, b = (parts.get("EA"), parts.get("EB")) if embedding else (parts.get("A"), parts.get("B"))
    if a is None or b is None:
        raise HessauditError(f"{where}: module {module!r} has only one of its LoRA matrices A, B")
    if a.ndim != 2 or b.ndim != 2:
        raise HessauditError(
            f"{where}: module {module!r} has LoRA matrices of {a.ndim} and {b.ndim} dimensions; "
            "hessaudit merges LoRA on linear and embedding layers only"
        )
    r = a.shape[0]
    if b.shape[1] != r:
        raise HessauditError(
            f"{where}: module {module!r}: A has rank {r} but B has {b.shape[1]} columns"
        )
    # shapes are checked before B @ A is formed: a hostile pair must not allocate out x in
    straight = (int(b.shape[0]), int(a.shape[1]))
    turned, shape = straight[::-1], tuple(base.shape)
    transpose = embedding or (shape == turned and (shape != straight or cfg.fan_in_fan_out))
    if (turned if transpose else straight) != shape:
        raise HessauditError(
            f"{where}: the update of {module!r} has shape {straight} but the base weight has "
            f"{shape}",
            hint="the adapter was trained on another base model than PRETRAINED",
        )
    delta = (b.double() @ a.double()) * cfg.scaling(module, r)
    return delta.T if transpose else delta


def _merged_dtype(base: torch.Tensor) -> torch.dtype:
    return torch.promote_types(base.dtype, torch.float32)


def _sort(
    adapter: dict[str, torch.Tensor], where: str
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """(LoRA parts by module, whole tensors by base name) of the adapter's tensors."""
    lora: dict[str, dict[str, torch.Tensor]] = {}
    whole: dict[str, torch.Tensor] = {}
    for name, tensor in adapter.items():
        target, role = _split(name)
        if role == "whole":
            # bias="all" also stores a saved module's bias under .modules_to_save.: one value
            if target in whole and not torch.equal(whole[target], tensor):
                raise HessauditError(
                    f"{where}: two different tensors of the adapter map to {target!r}"
                )
            whole[target] = tensor
        elif role != "unused":
            lora.setdefault(target, {})[role] = tensor
    return lora, whole


def merge_lora(
    base: dict[str, torch.Tensor], adapter: dict[str, torch.Tensor], cfg: LoraConfig, where: str
) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """The merged state dict, and the names it changed: ``adapted`` (weights and biases with a
    LoRA update), ``saved`` (tensors of ``modules_to_save``), ``replaced`` (other whole
    tensors, e.g. biases trained with ``bias="all"``). Whole tensors go in first, the LoRA
    updates on top of them (a trained bias plus ``s * lora_B.bias``)."""
    lora, whole = _sort(adapter, where)
    merged = dict(base)
    changed: dict[str, list[str]] = {"adapted": [], "saved": [], "replaced": []}
    for name, tensor in whole.items():
        # peft wraps every module whose name ends with an entry (no dot needed)
        saved = any(name.rpartition(".")[0].endswith(m) for m in cfg.modules_to_save)
        if not saved and (name not in base or base[name].shape != tensor.shape):
            raise HessauditError(
                f"{where}: tensor {name!r} is neither a LoRA matrix nor a module of "
                "modules_to_save, and PRETRAINED has no tensor of that name and shape",
                hint="PRETRAINED must be the adapter's base model",
            )
        merged[name] = tensor
        changed["saved" if saved else "replaced"].append(name)
    for module, parts in lora.items():
        weight, bias = f"{module}.weight", f"{module}.bias"
        if weight not in base:
            raise HessauditError(
                f"{where} adapts {module!r}, which PRETRAINED has no weight for",
                hint="PRETRAINED must be the adapter's base model",
            )
        w = merged[weight]
        merged[weight] = (w.double() + _update(module, parts, w, cfg, where)).to(_merged_dtype(w))
        changed["adapted"].append(weight)
        if "B_bias" in parts:
            if bias not in merged or merged[bias].shape != parts["B_bias"].shape:
                raise HessauditError(f"{where}: lora_bias of {module!r} has no base bias to add to")
            update = parts["B_bias"].double() * cfg.scaling(module, parts["A"].shape[0])
            merged[bias] = (merged[bias].double() + update).to(_merged_dtype(merged[bias]))
            changed["adapted"].append(bias)
    return merged, changed


def _read_adapter_weights(folder: Path) -> tuple[str, dict[str, torch.Tensor]]:
    for name in _WEIGHTS:
        if os.path.lexists(folder / name):
            path = dir_member(folder, name, "adapter")
            if name.endswith(".safetensors"):
                return name, read_safetensors_file(path, "adapter weights")
            return name, read_torch_file(path, "adapter weights")
    raise HessauditError(
        f"adapter {folder} has {ADAPTER_CONFIG} but no {' or '.join(_WEIGHTS)}"
    )


def load_finetuned(path: str | os.PathLike[str], pretrained: Checkpoint) -> Checkpoint:
    """FINETUNED as a :class:`Checkpoint`: a PEFT LoRA adapter directory merged onto
    ``pretrained`` (module docstring), anything else as :func:`load_checkpoint` reads it.

    The adapter's checkpoint ``metadata["adapter"]`` records what was merged (the audit's
    ``inputs.adapter``).
    """
    if not is_adapter_dir(path):
        return load_checkpoint(path)
    folder = Path(path).expanduser()
    cfg = read_lora_config(folder)
    weights_name, adapter = _read_adapter_weights(folder)
    if not adapter:
        raise HessauditError(f"adapter {folder}: no tensors in {weights_name}")
    where = f"adapter {folder}"
    merged, changed = merge_lora(pretrained.tensors, adapter, cfg, where)
    if not changed["adapted"]:
        raise HessauditError(f"{where} holds no LoRA matrices (lora_A / lora_B)")
    _check_finite(merged, [n for names in changed.values() for n in names], where)
    digest, size, files = files_record(folder, [ADAPTER_CONFIG, weights_name])
    record = {
        "type": "lora", "path": str(folder), "base": pretrained.record.path,
        "r": cfg.r, "alpha": cfg.alpha, "use_rslora": cfg.use_rslora,
        "fan_in_fan_out": cfg.fan_in_fan_out, "rank_pattern": cfg.rank_pattern,
        "alpha_pattern": cfg.alpha_pattern, "target_modules": cfg.target_modules,
        "modules_to_save": list(cfg.modules_to_save), **changed, "files": files,
    }
    return Checkpoint(
        merged, FileRecord(str(folder), digest, size), None, {"adapter": record}, ()
    )


def _check_finite(tensors: dict[str, torch.Tensor], names: list[str], where: str) -> None:
    """Refuse non-finite merged or saved tensors (a broken adapter), naming the first."""
    for name in names:
        tensor = tensors[name]
        if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor).all()):
            raise HessauditError(
                f"{where}: the merged tensor {name!r} has NaN or Inf values",
                hint="the adapter is broken (its training diverged?)",
            )
