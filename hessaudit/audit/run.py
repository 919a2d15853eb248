"""A whole audit: checkpoints + model + data in, per-layer measure and bound out.

This is the library entry point behind ``hessaudit measure`` (and ``finetune --audit``, ``tune``
and the demo): :func:`run_audit` takes an :class:`~hessaudit.audit.request.AuditRequest` and
returns an :class:`~hessaudit.audit.result.AuditResult`. It runs these steps, in this order:

1. the model: both checkpoints loaded, the model built from the fine-tuned one
   (:func:`_load_model`);
2. the layers: paired between the checkpoints and chosen by the recipe (:func:`_select_layers`);
3. the examples: ``data`` (or the examples ``finetune`` trained on), its per-example losses,
   the held-out data and its loss, and the audit examples (:func:`_load_examples`);
4. the measure over the audit examples (:func:`~hessaudit.audit.measure.measure_layers`) and
   the optional noise stability;
5. the bound and whether it is one (:func:`_bound`), and the document's ``inputs`` record.

Decisions (also in docs/measure.md):

* The training loss Lhat and the empirical loss bound C are computed over *all* of ``data``
  (forward passes only), while the Hessian reductions run over the audit examples (``samples``
  of them, a seeded subset, or all of ``data`` in order).
* n defaults to the size of ``data``.
* ``bound_kind`` is ``"bound"`` only when the audit evaluated Theorem 2.1's quantities themselves
  (every example of ``data``, the per-example max of the positive part, ...), else
  ``"estimate"`` with ``estimate_reasons`` (:func:`hessaudit.audit.bound.classify_bound`).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from hessaudit.audit import distributed
from hessaudit.audit.bound import BoundKind, BoundResult, classify_bound, compute_bound
from hessaudit.audit.examples import (
    check_losses,
    data_sha256,
    median,
    model_num_classes,
    on_device,
    take_samples,
)
from hessaudit.audit.gates import Gate, check_layer_gates
from hessaudit.audit.groups import default_layers, layer_groups
from hessaudit.audit.layers import Layer, Pairing, pair_layers, unpaired_record
from hessaudit.audit.loss_bound import parse_loss_bound, resolve_loss_bound
from hessaudit.audit.measure import LayerMeasure, ProgressCallback, measure_layers
from hessaudit.audit.measures import DEFAULT_NOISE_DRAWS, NoiseStability, noise_stability
from hessaudit.audit.recipes import (
    Recipe,
    audit_examples,
    get_recipe,
    resolve_request,
    select_layers,
)
from hessaudit.audit.request import AuditRequest
from hessaudit.audit.result import (
    SCHEMA,
    AuditResult,
    audit_to_json,
    layers_frame,
    write_audit_json,
)
from hessaudit.audit.validate import check_finite_document
from hessaudit.inputs.checkpoints import Checkpoint, load_checkpoint
from hessaudit.inputs.data import Dataset, load_data
from hessaudit.inputs.data_config import InputConfig
from hessaudit.inputs.devices import resolve_device, resolve_dtype
from hessaudit.inputs.lora import load_finetuned
from hessaudit.inputs.models import (
    classifier_names,
    disable_fused_attention,
    input_config,
    load_model,
)
from hessaudit.inputs.preprocess import check_forward
from hessaudit.inputs.text_model import text_source
from hessaudit.inputs.text_tokens import TextSource

__all__ = [
    "SCHEMA",
    "AuditRequest",
    "AuditResult",
    "audit_to_json",
    "layers_frame",
    "per_example_losses",
    "run_audit",
    "write_audit_json",
]


def run_audit(
    request: AuditRequest,
    *,
    progress: ProgressCallback | None = None,
    train_data: Dataset | None = None,
    layer_gates: Sequence[Gate] = (),
) -> AuditResult:
    """Run one audit end to end. Raises :class:`HessauditError` for anything the user can fix.

    ``train_data`` replaces loading ``request.data``: ``finetune --audit`` passes exactly the
    examples it trained on (after ``--samples`` and the validation split), so that Lhat, C and
    n all describe the same training set. ``layer_gates``: the per-layer gates to be evaluated
    on the result; a pattern matching no measured layer is refused before any Hessian work.
    """
    request = resolve_request(request)  # the recipe's settings (a no-op for "theorem")
    recipe = get_recipe(request.recipe)
    # Under torchrun: join the job (gloo on CPU, NCCL on CUDA); each rank audits its shard.
    dist = distributed.init(request.device)
    device = resolve_device(distributed.local_device(request.device, dist))
    dtype = resolve_dtype(request.dtype)
    # TF32 would silently change float32 results on Ampere+ GPUs.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    loaded = _load_model(request, device, dtype)
    pairing, measured = _select_layers(request, recipe, loaded)
    check_layer_gates(layer_gates, [layer.name for layer in measured])
    examples = _load_examples(request, recipe, loaded, train_data, device, dtype)

    generator = torch.Generator(device="cpu").manual_seed(request.seed)
    layers = measure_layers(
        loaded.model, measured, examples.audit, request.settings(), generator=generator,
        progress=progress, dist=dist,
    )
    noise = _noise_stability(request, loaded.model, measured, examples)
    bound, kind = _bound(request, layers, examples)
    result = AuditResult(
        request=request,
        inputs=_inputs_record(request, loaded, examples, device, measured),
        layers=layers,
        bound=bound,
        unpaired=unpaired_record(pairing),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        torch_version=torch.__version__,
        kind=kind,
        noise=noise,
    )
    check_finite_document(result.to_dict(), what="the audit")
    return result


def per_example_losses(model: torch.nn.Module, dataset, *, batch_size: int) -> torch.Tensor:
    """Cross-entropy of every example of ``dataset`` (forward passes only)."""
    losses = []
    with torch.no_grad():
        for x, y in dataset.batches(batch_size):
            losses.append(torch.nn.functional.cross_entropy(model(x), y, reduction="none"))
    return torch.cat(losses)


@dataclass(frozen=True)
class _Loaded:
    """The two checkpoints and the model holding the fine-tuned weights (eval mode, on the
    audit's device and dtype)."""

    pretrained: Checkpoint
    finetuned: Checkpoint
    model: torch.nn.Module


def _load_model(request: AuditRequest, device: torch.device, dtype: torch.dtype) -> _Loaded:
    pretrained = load_checkpoint(request.pretrained)
    finetuned = load_finetuned(request.finetuned, pretrained)  # a PEFT adapter: merged
    model = load_model(
        request.model,
        finetuned.tensors,
        num_classes=request.num_classes,
        allow_hub=request.allow_hub,
        source=request.finetuned,
    )
    model = model.to(device=device, dtype=dtype).eval()
    disable_fused_attention(model)
    return _Loaded(pretrained, finetuned, model)


def _new_heads(request: AuditRequest) -> str:
    return "exclude" if request.exclude_new_head else "from-zero"


def _select_layers(
    request: AuditRequest, recipe: Recipe, loaded: _Loaded
) -> tuple[Pairing, list[Layer]]:
    """The pairing of the checkpoints' tensors, and the layers the recipe measures."""
    pairing = pair_layers(
        loaded.pretrained.tensors,
        loaded.finetuned.tensors,
        include=tuple(request.include),
        exclude=tuple(request.exclude),
        include_bias=request.include_bias,
        include_norm=request.include_norm,
        new_heads=_new_heads(request),
        parameter_names={name for name, _ in loaded.model.named_parameters()},
        order=list(loaded.model.state_dict()),
    )
    adapter = loaded.finetuned.metadata.get("adapter")  # transformers, adapters: defaults
    pairing = default_layers(pairing, loaded.model, include=request.include, adapter=adapter)
    return pairing, select_layers(recipe, loaded.model, pairing.layers)


@dataclass(frozen=True)
class _Examples:
    """The data of an audit, on the audit's device and dtype."""

    config: InputConfig  # what the model expects as input
    num_classes: int
    train: Dataset  # all of --data (or what finetune trained on), labels applied
    labels_record: dict[str, Any] | None  # what --labels replaced, for inputs.labels
    train_losses: torch.Tensor  # per example of ``train``
    held_out: Dataset | None  # --eval-data
    eval_record: dict[str, Any] | None
    eval_loss: float | None
    audit: Dataset  # the examples the Hessian reductions run over
    audit_from: str  # "data" or "eval_data"


def _load_examples(
    request: AuditRequest,
    recipe: Recipe,
    loaded: _Loaded,
    train_data: Dataset | None,
    device: torch.device,
    dtype: torch.dtype,
) -> _Examples:
    """Load the training and held-out data, check their losses, and choose the audit examples:
    a seeded ``--samples`` subset of ``train`` (or all of it), or the recipe's own."""
    model = loaded.model
    num_classes = model_num_classes(model, loaded.finetuned.tensors)
    config = input_config(
        model, input_size=request.input_size, mean=request.mean, std=request.std,
        interpolation=request.interpolation, crop_pct=request.crop_pct,
    )
    text = text_source(
        request.text, model, (request.data, request.eval_data), model_spec=request.model
    )
    if train_data is None:
        train_data = load_data(
            request.data, role="train", input_config=config, num_classes=num_classes,
            text_source=text,
        )
    labels_record = None
    if request.labels is not None:
        from hessaudit.inputs.labels import apply_label_file

        train_data, labels_record = apply_label_file(train_data, request.labels)
    train = on_device(train_data, device, dtype)
    check_forward(model, train.x, data=request.data, model_spec=request.model, cfg=config)
    own_examples = recipe.examples != "audit-data"  # the recipe picks them, below
    audit = train
    if request.samples is not None and not own_examples:
        audit = take_samples(train, request.samples, seed=request.seed, source=request.data)

    train_losses = per_example_losses(model, train, batch_size=request.batch_size)
    check_losses(train_losses, request.data)
    held_out, eval_record, eval_loss = _held_out(
        request, model, (config, text), num_classes, device, dtype
    )
    audit_from = "data"
    if own_examples:
        audit, audit_from = audit_examples(
            recipe, train=train, held_out=held_out, samples=request.samples,
            batch_size=request.batch_size, seed=request.seed,
        )
    return _Examples(
        config=config, num_classes=num_classes, train=train, labels_record=labels_record,
        train_losses=train_losses, held_out=held_out, eval_record=eval_record,
        eval_loss=eval_loss, audit=audit, audit_from=audit_from,
    )


def _held_out(
    request: AuditRequest,
    model: torch.nn.Module,
    inputs: tuple[InputConfig, TextSource | None],
    num_classes: int,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[Dataset | None, dict[str, Any] | None, float | None]:
    """``--eval-data`` on the device, its summary record and its mean loss (all None without
    it); ``inputs`` is the model's input config and, for a text model, its tokenizer."""
    if request.eval_data is None:
        return None, None, None
    config, text = inputs
    held_out = load_data(
        request.eval_data, role="eval", input_config=config, num_classes=num_classes,
        text_source=text,
    )
    record = held_out.to_dict()
    held_out = on_device(held_out, device, dtype)
    check_forward(model, held_out.x, data=request.eval_data, model_spec=request.model, cfg=config)
    losses = per_example_losses(model, held_out, batch_size=request.batch_size)
    check_losses(losses, request.eval_data)
    return held_out, record, float(losses.mean())


def _noise_stability(
    request: AuditRequest, model: torch.nn.Module, measured: list[Layer], examples: _Examples
) -> NoiseStability | None:
    """The noise-stability measure when asked for: over the held-out data when given, else
    over --data (the released code's choice)."""
    if request.noise_stability is None:
        return None
    data = examples.train if examples.held_out is None else examples.held_out
    return noise_stability(
        model,
        [layer.name for layer in measured],
        list(data.batches(request.batch_size)),
        eps=float(request.noise_stability),
        draws=DEFAULT_NOISE_DRAWS if request.noise_draws is None else request.noise_draws,
        seed=request.seed,
        data="data" if examples.held_out is None else "eval_data",
    )


def _bound(
    request: AuditRequest, layers: list[LayerMeasure], examples: _Examples
) -> tuple[BoundResult, BoundKind]:
    """Theorem 2.1's bound from the layers' Hcal, and whether the audit evaluated the
    theorem's quantities (a bound) or only estimated them."""
    losses = examples.train_losses
    loss_bound, loss_bound_source = resolve_loss_bound(parse_loss_bound(request.loss_bound), losses)
    bound = compute_bound(
        [layer.hcal for layer in layers],
        train_loss=float(losses.mean()),
        n=request.n_train if request.n_train is not None else len(examples.train),
        loss_bound=loss_bound,
        loss_bound_source=loss_bound_source,
        epsilon=request.epsilon,
        eval_loss=examples.eval_loss,
        median_train_loss=median(losses),
    )
    unconverged = [layer.name for layer in layers if _iterated_unconverged(layer, request)]
    kind = classify_bound(
        data_examples=len(examples.train),
        hcal_examples=len(examples.audit),
        loss_bound_source=loss_bound_source,
        loss_bound_examples=len(losses),
        reduce=request.reduce,
        form=request.form,
        n=bound.n,
        unconverged_layers=len(unconverged),
        hcal_from_training_data=examples.audit_from == "data",
    )
    return bound, kind


def _iterated_unconverged(layer: LayerMeasure, request: AuditRequest) -> bool:
    """Whether the layer's Hcal came from a Lanczos quadrature that did not converge.

    Only ``form=positive`` on the Lanczos path iterates; the JVP path and the raw and cross forms
    are exact. ``converged`` also covers the top-eigenvalue estimate, so this errs on the side
    of calling the bound an estimate.
    """
    return request.form == "positive" and layer.engine_path == "lanczos" and not layer.converged


def _inputs_record(
    request: AuditRequest, loaded: _Loaded, examples: _Examples, device: torch.device,
    measured: list[Layer],
) -> dict[str, Any]:
    """The document's ``inputs``: what was audited, exactly (files, data, examples, seed)."""
    eval_record = examples.eval_record
    return {
        "pretrained": loaded.pretrained.record.to_dict(),
        "finetuned": loaded.finetuned.record.to_dict(),
        "model": request.model,
        "num_classes": examples.num_classes,
        "data": request.data,
        "data_sha256": data_sha256(request.data),
        "data_summary": examples.train.to_dict(),
        "labels": examples.labels_record,
        "eval_data": request.eval_data,
        "eval_data_sha256": data_sha256(request.eval_data),
        "eval_data_summary": eval_record,
        "samples": request.samples,
        "audit_examples": len(examples.audit),
        "audit_examples_from": examples.audit_from,
        "seed": request.seed,
        "device": str(device),
        "dtype": request.dtype,
        "input_config": examples.config.to_dict(),
        "data_scaling": examples.train.scaling,
        "eval_data_scaling": None if eval_record is None else eval_record["scaling"],
        "layer_selection": {
            "include": list(request.include),
            "exclude": list(request.exclude),
            "include_bias": request.include_bias,
            "include_norm": request.include_norm,
            "new_heads": _new_heads(request),
        },
        "tags": dict(request.tags),
        "adapter": loaded.finetuned.metadata.get("adapter"),
        "layer_groups": layer_groups(loaded.model, [layer.name for layer in measured],
                                     heads=classifier_names(loaded.model)),
    }

