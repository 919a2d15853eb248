"""A whole audit: checkpoints + model + data in, per-layer measure and bound out.

This is the library entry point behind ``hessaudit measure`` (and ``finetune --audit``):
:func:`run_audit` takes an :class:`AuditRequest` and returns an :class:`AuditResult`, whose
:meth:`AuditResult.to_dict` is the one place where the ``hessaudit.audit/1`` JSON schema is built.

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

import dataclasses
import datetime as _dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from hessaudit._atomic import write_text
from hessaudit._version import __version__
from hessaudit.audit.bound import BoundKind, BoundResult, classify_bound, compute_bound
from hessaudit.audit.gates import Gate
from hessaudit.audit.groups import hessian_term_by_group
from hessaudit.audit.loss_bound import parse_loss_bound, resolve_loss_bound
from hessaudit.audit.measure import LayerMeasure, MeasureSettings, ProgressCallback, measure_layers
from hessaudit.audit.measures import (
    NoiseStability,
    build_measures,
    check_noise_options,
    noise_stability,
)
from hessaudit.audit.tags import check_labels
from hessaudit.errors import HessauditError
from hessaudit.inputs.data import Dataset
from hessaudit.inputs.devices import resolve_device, resolve_dtype
from hessaudit.inputs.text_options import TextOptions

SCHEMA = "hessaudit.audit/1"


@dataclass(frozen=True)
class AuditRequest:
    """Everything ``hessaudit measure`` needs; field names follow the CLI flags."""

    pretrained: str
    finetuned: str
    model: str
    data: str
    eval_data: str | None = None
    num_classes: int | None = None
    samples: int | None = None
    batch_size: int = 32
    input_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str | None = None
    crop_pct: float | None = None
    n_train: int | None = None
    # None or "max" | "quantile:Q" | a number (hessaudit.audit.loss_bound); a float is a user C.
    loss_bound: float | str | None = None
    epsilon: float = 0.0
    reduce: str = "example-max"
    form: str = "positive"
    engine: str = "auto"
    lanczos_steps: int = 100
    tol: float = 1e-3
    spectrum: bool = True
    spectrum_samples: int = 32
    trace_probes: int = 8
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    include_bias: bool = False
    include_norm: bool = False
    exclude_new_head: bool = False
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    allow_hub: bool = False
    recipe: str = "theorem"  # hessaudit.audit.recipes: "theorem" | "released"
    labels: str | None = None  # --labels FILE: the labels trained on (hessaudit.inputs.labels)
    noise_stability: float | None = None  # EPS of the noise-stability measure (None: off)
    noise_draws: int | None = None  # None: hessaudit.audit.measures.DEFAULT_NOISE_DRAWS
    tags: tuple[tuple[str, str], ...] = ()  # --label KEY=VALUE, stored in inputs.tags
    # --text-column, --label-column, --tokenizer, --max-length (hessaudit.inputs.text_options)
    text: TextOptions = field(default_factory=TextOptions)

    def __post_init__(self) -> None:
        # Every flag is checked here, before any file is read (hessaudit/audit/validate.py).
        from hessaudit.audit.validate import parse_floats, validate_request

        object.__setattr__(self, "mean", parse_floats(self.mean, "--mean"))
        object.__setattr__(self, "std", parse_floats(self.std, "--std"))
        validate_request(self)

    def settings(self) -> MeasureSettings:
        return MeasureSettings(
            reduce=self.reduce,
            form=self.form,
            engine=self.engine,
            lanczos_steps=self.lanczos_steps,
            tol=self.tol,
            batch_size=self.batch_size,
            spectrum=self.spectrum,
            spectrum_samples=self.spectrum_samples,
            trace_probes=self.trace_probes,
        )


@dataclass(frozen=True)
class AuditResult:
    request: AuditRequest
    inputs: dict[str, Any]
    layers: list[LayerMeasure]
    bound: BoundResult
    unpaired: dict[str, Any]
    created: str
    torch_version: str
    kind: BoundKind
    gates: list[dict[str, Any]] = field(default_factory=list)
    noise: NoiseStability | None = None

    @property
    def success(self) -> bool:
        return all(gate["passed"] for gate in self.gates)

    @property
    def clamped_layers(self) -> list[str]:
        return [layer.name for layer in self.layers if layer.clamped]

    def with_gates(self, gates: list[dict[str, Any]]) -> AuditResult:
        return dataclasses.replace(self, gates=gates)

    def to_dict(self) -> dict[str, Any]:
        """The ``hessaudit.audit/1`` document. Contract keys are listed in docs/json-schema.md."""
        request = self.request
        settings = request.settings().to_dict()
        settings.pop("batch_size")
        bound = self.bound.to_dict()
        layers = [layer.to_dict() for layer in self.layers]
        spectrum_n = min(request.spectrum_samples, int(self.inputs.get("audit_examples") or 0))
        measures = build_measures(
            layers,
            hessian_term=bound["hessian_term"],
            trace_examples=spectrum_n if request.spectrum else None,
            trace_probes=request.trace_probes if request.spectrum else None,
            noise=self.noise,
        )
        return {
            "schema": SCHEMA,
            "tool_version": __version__,
            "torch_version": self.torch_version,
            "created": self.created,
            "inputs": self.inputs,
            "settings": {**settings, "batch_size": request.batch_size, "recipe": request.recipe},
            "layers": layers,
            "clamped_layers": self.clamped_layers,
            "unpaired": self.unpaired,
            "train_loss": bound["train_loss"],
            "eval_loss": bound["eval_loss"],
            "gap": bound["gap"],
            "ratio_to_gap": bound["ratio_to_gap"],
            "n": bound["n"],
            "C": bound["C"],
            "C_source": bound["C_source"],
            "epsilon": bound["epsilon"],
            "hessian_term": bound["hessian_term"],
            "hessian_term_by_group": hessian_term_by_group(
                layers, self.inputs.get("layer_groups"), loss_bound=bound["C"], n=bound["n"]
            ),
            "bound": bound["bound"],
            "bound_note": bound["note"],
            **self.kind.to_dict(),
            "median_train_loss": bound["median_train_loss"],
            "C_over_median_loss": bound["C_over_median_loss"],
            "measures": measures,
            "gates": self.gates,
            "success": self.success,
        }


def per_example_losses(model: torch.nn.Module, dataset, *, batch_size: int) -> torch.Tensor:
    """Cross-entropy of every example of ``dataset`` (forward passes only)."""
    losses = []
    with torch.no_grad():
        for x, y in dataset.batches(batch_size):
            losses.append(torch.nn.functional.cross_entropy(model(x), y, reduction="none"))
    return torch.cat(losses)


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
    from hessaudit.audit import distributed
    from hessaudit.audit.groups import default_layers, layer_groups
    from hessaudit.audit.layers import pair_layers
    from hessaudit.audit.recipes import audit_examples, get_recipe, resolve_request, select_layers
    from hessaudit.audit.validate import check_finite_document, check_layer_gates
    from hessaudit.inputs.checkpoints import load_checkpoint
    from hessaudit.inputs.data import load_data
    from hessaudit.inputs.lora import load_finetuned
    from hessaudit.inputs.models import (
        classifier_names,
        disable_fused_attention,
        input_config,
        load_model,
    )
    from hessaudit.inputs.preprocess import check_forward
    from hessaudit.inputs.text_model import text_source

    request = resolve_request(request)  # the recipe's settings (a no-op for "theorem")
    recipe = get_recipe(request.recipe)
    settings = request.settings()
    # Under torchrun: join the job (gloo on CPU, NCCL on CUDA); each rank audits its shard.
    dist = distributed.init(request.device)
    device = resolve_device(distributed.local_device(request.device, dist))
    dtype = resolve_dtype(request.dtype)
    if request.samples is not None and request.samples < 1:
        raise HessauditError("--samples must be at least 1")
    loss_choice = parse_loss_bound(request.loss_bound)
    noise_draws = check_noise_options(request.noise_stability, request.noise_draws)
    tags = dict(check_labels(request.tags))
    if request.n_train is not None and request.n_train < 1:
        raise HessauditError("--n-train must be at least 1")
    # TF32 would silently change float32 results on Ampere+ GPUs.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

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
    pairing = pair_layers(
        pretrained.tensors,
        finetuned.tensors,
        include=tuple(request.include),
        exclude=tuple(request.exclude),
        include_bias=request.include_bias,
        include_norm=request.include_norm,
        new_heads="exclude" if request.exclude_new_head else "from-zero",
        parameter_names={name for name, _ in model.named_parameters()},
        order=list(model.state_dict()),
    )
    adapter = finetuned.metadata.get("adapter")  # transformers and adapters: default layers
    pairing = default_layers(pairing, model, include=request.include, adapter=adapter)
    measured = select_layers(recipe, model, pairing.layers)
    check_layer_gates(layer_gates, [layer.name for layer in measured])
    num_classes = _model_num_classes(model, finetuned.tensors)
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
    train = _to(train_data, device, dtype)
    check_forward(model, train.x, data=request.data, model_spec=request.model, cfg=config)
    own_examples = recipe.examples != "audit-data"  # the recipe picks them, below
    audit_data = (
        train if request.samples is None or own_examples else _take_samples(train, request)
    )
    audit_from = "data"

    train_losses = per_example_losses(model, train, batch_size=request.batch_size)
    _check_losses(train_losses, request.data)
    eval_loss = None
    eval_record = None
    held_out = None
    if request.eval_data is not None:
        held_out = load_data(
            request.eval_data, role="eval", input_config=config, num_classes=num_classes,
            text_source=text,
        )
        eval_record = held_out.to_dict()
        held_out = _to(held_out, device, dtype)
        check_forward(
            model, held_out.x, data=request.eval_data, model_spec=request.model, cfg=config
        )
        eval_losses = per_example_losses(model, held_out, batch_size=request.batch_size)
        _check_losses(eval_losses, request.eval_data)
        eval_loss = float(eval_losses.mean())
    if own_examples:
        audit_data, audit_from = audit_examples(
            recipe, train=train, held_out=held_out, samples=request.samples,
            batch_size=request.batch_size, seed=request.seed,
        )

    generator = torch.Generator(device="cpu").manual_seed(request.seed)
    layer_measures = measure_layers(
        model, measured, audit_data, settings, generator=generator, progress=progress,
        dist=dist,
    )
    noise = None
    if request.noise_stability is not None:
        # Over the held-out data when given, else over --data (the released code's choice).
        noise = noise_stability(
            model,
            [layer.name for layer in measured],
            list((train if held_out is None else held_out).batches(request.batch_size)),
            eps=float(request.noise_stability),
            draws=noise_draws,
            seed=request.seed,
            data="data" if held_out is None else "eval_data",
        )
    loss_bound, loss_bound_source = resolve_loss_bound(loss_choice, train_losses)
    bound = compute_bound(
        [layer.hcal for layer in layer_measures],
        train_loss=float(train_losses.mean()),
        n=request.n_train if request.n_train is not None else len(train),
        loss_bound=loss_bound,
        loss_bound_source=loss_bound_source,
        epsilon=request.epsilon,
        eval_loss=eval_loss,
        median_train_loss=_median(train_losses),
    )
    unconverged = [layer.name for layer in layer_measures if _iterated_unconverged(layer, request)]
    kind = classify_bound(
        data_examples=len(train),
        hcal_examples=len(audit_data),
        loss_bound_source=loss_bound_source,
        loss_bound_examples=len(train_losses),
        reduce=request.reduce,
        form=request.form,
        n=bound.n,
        unconverged_layers=len(unconverged),
        hcal_from_training_data=audit_from == "data",
    )
    inputs = {
        "pretrained": pretrained.record.to_dict(),
        "finetuned": finetuned.record.to_dict(),
        "model": request.model,
        "num_classes": num_classes,
        "data": request.data,
        "data_sha256": _data_sha256(request.data),
        "data_summary": train.to_dict(),
        "labels": labels_record,
        "eval_data": request.eval_data,
        "eval_data_sha256": _data_sha256(request.eval_data),
        "eval_data_summary": eval_record,
        "samples": request.samples,
        "audit_examples": len(audit_data),
        "audit_examples_from": audit_from,
        "seed": request.seed,
        "device": str(device),
        "dtype": request.dtype,
        "input_config": config.to_dict(),
        "data_scaling": train.scaling,
        "eval_data_scaling": None if eval_record is None else eval_record["scaling"],
        "layer_selection": {
            "include": list(request.include),
            "exclude": list(request.exclude),
            "include_bias": request.include_bias,
            "include_norm": request.include_norm,
            "new_heads": "exclude" if request.exclude_new_head else "from-zero",
        },
        "tags": tags,
        "adapter": adapter,
        "layer_groups": layer_groups(
            model, [layer.name for layer in measured], heads=classifier_names(model)
        ),
    }
    unpaired = {
        "only_in_pretrained": list(pairing.only_in_pretrained),
        "only_in_finetuned": list(pairing.only_in_finetuned),
        "shape_mismatches": [
            {"name": name, "pretrained": list(a), "finetuned": list(b)}
            for name, a, b in pairing.shape_mismatches
        ],
    }
    result = AuditResult(
        request=request,
        inputs=inputs,
        layers=layer_measures,
        bound=bound,
        unpaired=unpaired,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        torch_version=torch.__version__,
        kind=kind,
        noise=noise,
    )
    check_finite_document(result.to_dict(), what="the audit")
    return result


def audit_to_json(result: AuditResult) -> str:
    from hessaudit.audit.validate import check_finite_document

    document = result.to_dict()
    check_finite_document(document, what="the audit")
    return json.dumps(document, indent=2, allow_nan=False) + "\n"


def _check_losses(losses: torch.Tensor, source: str) -> None:
    """Refuse a NaN or Inf per-example loss, naming the first example (its index in the data
    as loaded, after any --samples subset)."""
    bad = ~torch.isfinite(losses)
    if not bool(bad.any()):
        return
    index = int(bad.nonzero()[0, 0])
    kind = "NaN" if bool(torch.isnan(losses[index])) else "Inf"
    raise HessauditError(
        f"the fine-tuned model's loss on example {index} of --data {source} is {kind} "
        f"({int(bad.sum())} of {losses.numel()} examples have a non-finite loss)",
        hint="the checkpoint or the data's scale is probably wrong (see inputs.data_scaling); "
        "try --dtype float64 if the logits overflow",
    )


def write_audit_json(path: str, result: AuditResult) -> None:
    """Write the audit JSON atomically."""
    write_text(path, audit_to_json(result))


def layers_frame(result: AuditResult):
    """The per-layer rows as a pandas DataFrame (the CSV output)."""
    import pandas as pd

    return pd.DataFrame([layer.to_dict() for layer in result.layers])


def _median(values: torch.Tensor) -> float:
    """The median (mean of the two middle values for an even count), in float64."""
    ordered = torch.sort(values.detach().double().flatten()).values
    count = len(ordered)
    return float((ordered[(count - 1) // 2] + ordered[count // 2]) / 2)


def _iterated_unconverged(layer: LayerMeasure, request: AuditRequest) -> bool:
    """Whether the layer's Hcal came from a Lanczos quadrature that did not converge.

    Only ``form=positive`` on the Lanczos path iterates; the JVP path and the raw and cross forms
    are exact. ``converged`` also covers the top-eigenvalue estimate, so this errs on the side
    of calling the bound an estimate.
    """
    return request.form == "positive" and layer.engine_path == "lanczos" and not layer.converged


def _model_num_classes(model: torch.nn.Module, tensors) -> int:
    from hessaudit.inputs.models import classifier_names, infer_num_classes

    count = infer_num_classes(tensors, head_names=classifier_names(model))
    if count is None:
        raise HessauditError("cannot tell the number of classes; pass --num-classes")
    return count


def _data_sha256(source: str | None) -> str | None:
    """SHA-256 of a data file (``.npz``); None for built-in sources and directories."""
    from pathlib import Path

    from hessaudit.inputs.checkpoints import sha256_file

    if source is None or source.partition(":")[0] in ("digits", "digits-pretrain"):
        return None
    path = Path(source).expanduser()
    return sha256_file(path) if path.is_file() else None


def _to(dataset, device: torch.device, dtype: torch.dtype):
    floating = dataset.x.is_floating_point()  # text data: int64 token ids stay integers
    x = dataset.x.to(device=device, dtype=dtype if floating else dataset.x.dtype)
    return dataclasses.replace(dataset, x=x, y=dataset.y.to(device))


def _take_samples(dataset, request: AuditRequest):
    if request.samples > len(dataset):
        raise HessauditError(
            f"--samples {request.samples} is more than the {len(dataset)} examples in "
            f"{request.data}"
        )
    generator = torch.Generator().manual_seed(request.seed)
    chosen = torch.randperm(len(dataset), generator=generator)[: request.samples]
    return dataset.subset(torch.sort(chosen).values)
