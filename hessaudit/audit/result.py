"""The result of an audit and its ``hessaudit.audit/1`` JSON document.

:meth:`AuditResult.to_dict` is the one place where the document is built (its contract keys
are listed in docs/json-schema.md; :mod:`hessaudit.audit.schema` is the one place where it is
read back). No document holding a NaN or Inf is ever written (:func:`audit_to_json`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from hessaudit._atomic import write_text
from hessaudit._version import __version__
from hessaudit.audit.bound import BoundKind, BoundResult
from hessaudit.audit.groups import hessian_term_by_group
from hessaudit.audit.measure import LayerMeasure
from hessaudit.audit.measures import NoiseStability, build_measures
from hessaudit.audit.request import AuditRequest
from hessaudit.audit.schema import AUDIT_SCHEMA
from hessaudit.audit.validate import check_finite_document

__all__ = ["SCHEMA", "AuditResult", "audit_to_json", "layers_frame", "write_audit_json"]

SCHEMA = AUDIT_SCHEMA


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


def audit_to_json(result: AuditResult) -> str:
    """The document as JSON text; :class:`HessauditError` when it holds a NaN or Inf."""
    document = result.to_dict()
    check_finite_document(document, what="the audit")
    return json.dumps(document, indent=2, allow_nan=False) + "\n"


def write_audit_json(path: str, result: AuditResult) -> None:
    """Write the audit JSON atomically."""
    write_text(path, audit_to_json(result))


def layers_frame(result: AuditResult):
    """The per-layer rows as a pandas DataFrame (the CSV output)."""
    import pandas as pd

    return pd.DataFrame([layer.to_dict() for layer in result.layers])
