"""What each field of a ``hessaudit.audit/1`` document must be: the declarative table
:data:`AUDIT` that :func:`hessaudit.audit.schema.read_audit_json` checks every audit file against.

The table lists every field that hessaudit reads; keys it does not list are allowed (newer
versions add keys), subject to the general rules of :mod:`hessaudit.audit.schema`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ANY", "AUDIT", "AUDIT_SCHEMA", "Spec", "boolean", "integer", "list_of", "number", "obj",
    "string",
]

AUDIT_SCHEMA = "hessaudit.audit/1"


@dataclass(frozen=True)
class Spec:
    """What one JSON value must be. ``kind``: number, integer, string, boolean, object, list,
    or any (only the general rules of :mod:`hessaudit.audit.schema` apply)."""

    kind: str
    required: bool = False
    nullable: bool = False
    fields: Mapping[str, Spec] = field(default_factory=dict)  # object: the known keys
    item: Spec | None = None  # list: every element


number = functools.partial(Spec, "number")
integer = functools.partial(Spec, "integer")
string = functools.partial(Spec, "string")
boolean = functools.partial(Spec, "boolean")


def obj(fields: Mapping[str, Spec], **options: Any) -> Spec:
    return Spec("object", fields=fields, **options)


def list_of(item: Spec, **options: Any) -> Spec:
    return Spec("list", item=item, **options)


ANY = Spec("any")
_OPT_NUM = number(nullable=True)
_OPT_STR = string(nullable=True)

_CHECKPOINT = obj(
    {"path": _OPT_STR, "sha256": _OPT_STR, "size": integer(nullable=True)}, nullable=True
)

_LAYER = obj(
    {
        "name": string(required=True),
        "hcal": number(required=True),
        "numel": integer(),
        "is_new_head": boolean(),
        "clamped": boolean(),
        "converged": boolean(nullable=True),
        "engine_path": _OPT_STR,
        "quad_steps": integer(nullable=True),
        **dict.fromkeys(
            ("dist_fro", "rel_dist", "quad_raw", "quad_pos", "cross", "top_eig", "trace",
             "trace_stderr", "quad_last_change"),
            _OPT_NUM,
        ),
    }
)

_GATE = obj(
    {
        "name": string(required=True),
        "op": string(required=True),
        "threshold": number(required=True),
        "observed": number(required=True, nullable=True),
        "passed": boolean(required=True),
        **dict.fromkeys(("source", "pattern", "unit", "quantity", "note", "worst_layer"), _OPT_STR),
        "layers_matched": integer(),
        "failing_layers": list_of(string()),
        "observed_is_estimate": boolean(nullable=True),
    }
)

_INPUTS = obj(
    {
        "pretrained": _CHECKPOINT,
        "finetuned": _CHECKPOINT,
        "model": _OPT_STR,
        "num_classes": integer(nullable=True),
        "data": _OPT_STR,
        "data_sha256": _OPT_STR,
        "eval_data": _OPT_STR,
        "eval_data_sha256": _OPT_STR,
        "samples": integer(nullable=True),
        "audit_examples": integer(nullable=True),
        "seed": integer(nullable=True),
        "device": _OPT_STR,
        "dtype": _OPT_STR,
    }
)

_SETTINGS = obj(
    {
        "reduce": _OPT_STR,
        "form": _OPT_STR,
        "engine": _OPT_STR,
        "lanczos_steps": integer(nullable=True),
        "tol": _OPT_NUM,
        "spectrum": boolean(nullable=True),
        "spectrum_samples": integer(nullable=True),
        "trace_probes": integer(nullable=True),
        "batch_size": integer(nullable=True),
    }
)

#: Every field of an audit document that hessaudit reads, and what it must be.
AUDIT = obj(
    {
        "schema": string(required=True),
        "tool_version": _OPT_STR,
        "torch_version": _OPT_STR,
        "created": _OPT_STR,
        "inputs": _INPUTS,
        "settings": _SETTINGS,
        "layers": list_of(_LAYER, required=True),
        "clamped_layers": list_of(string()),
        "bound": number(required=True),
        "hessian_term": number(required=True),
        "train_loss": number(required=True),
        "eval_loss": _OPT_NUM,
        "gap": _OPT_NUM,
        "ratio_to_gap": _OPT_NUM,
        "n": integer(nullable=True),
        "C": _OPT_NUM,
        "C_source": _OPT_STR,
        "epsilon": _OPT_NUM,
        "bound_note": _OPT_STR,
        "bound_kind": _OPT_STR,
        "estimate_reasons": list_of(string(), nullable=True),
        "hcal_scope": _OPT_STR,
        "median_train_loss": _OPT_NUM,
        "C_over_median_loss": _OPT_NUM,
        "gates": list_of(_GATE),
        "success": boolean(nullable=True),
    },
    required=True,
)
