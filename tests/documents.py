"""Crafted audit JSON documents shared by the tests (no audit is run to make them).

- :func:`audit_doc`: a minimal ``hessaudit.audit/1`` document with four layers (gates, compare,
  the markdown and HTML reports);
- :data:`VALID` and :func:`layer_row`: a complete, valid audit, shaped like the output of
  ``hessaudit measure --json`` (crafted-JSON, broken-pipe and memory tests);
- :func:`sweep_audit`, :func:`write_json` and :func:`crafted_sweep`: complete audits with a
  given gap and measures, and a folder of them (``hessaudit correlate``).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np


def audit_doc(**overrides):
    """A minimal hessaudit.audit/1 document with three layers."""
    layers = [
        {"name": name, "hcal": hcal, "numel": numel, "dist_fro": dist, "is_new_head": head}
        for name, hcal, numel, dist, head in [
            ("conv1.weight", 4.0, 10, 1.0, False),
            ("layer4.0.weight", 1.0, 20, 2.0, False),
            ("layer4.1.weight", 0.25, 20, 2.0, False),
            ("fc.weight", 0.25, 5, 0.5, True),
        ]
    ]
    document = {
        "schema": "hessaudit.audit/1",
        "layers": layers,
        "train_loss": 0.1,
        "eval_loss": 0.3,
        "gap": 0.2,
        "ratio_to_gap": 1.5,
        "hessian_term": 0.3,
        "bound": 0.4,
        "C": 2.0,
        "C_source": "empirical_max",
        "n": 100,
        "epsilon": 0.0,
        "settings": {"reduce": "example-max", "form": "positive"},
        "inputs": {"model": "m", "data": "digits", "finetuned": {"path": "ft.safetensors"}},
        "bound_note": "xi not included",
        "gates": [],
        "success": True,
    }
    document.update(overrides)
    return document


def layer_row(name: str, hcal: float, *, head: bool = False) -> dict[str, Any]:
    return {
        "name": name, "numel": 36, "is_new_head": head, "dist_fro": 0.25, "rel_dist": 0.2,
        "quad_raw": hcal, "quad_pos": hcal, "cross": None, "hcal": hcal, "clamped": False,
        "top_eig": 0.04, "trace": 0.07, "trace_stderr": 0.01, "converged": True,
        "engine_path": "jvp", "quad_steps": 0, "quad_last_change": 0.0,
    }


#: A valid audit, shaped like the output of ``hessaudit measure --json``.
VALID: dict[str, Any] = {
    "schema": "hessaudit.audit/1",
    "tool_version": "0.1.0",
    "torch_version": "2.4.0",
    "created": "2026-01-01T00:00:00+00:00",
    "inputs": {
        "pretrained": {"path": "pre.safetensors", "sha256": "a" * 64, "size": 1396},
        "finetuned": {"path": "ft.safetensors", "sha256": "b" * 64, "size": 1744},
        "model": "tinynet.py:make_tiny", "num_classes": 10, "data": "digits",
        "data_sha256": None,
        "data_summary": {"source": "digits:train", "n": 1201, "shape": [1, 8, 8]},
        "eval_data": "digits:test", "eval_data_sha256": None, "samples": 20,
        "audit_examples": 20, "seed": 0, "device": "cpu", "dtype": "float32",
        "input_config": {"channels": 1, "size": None, "mean": None, "std": None},
        "layer_selection": {"include": [], "exclude": [], "include_bias": False},
    },
    "settings": {
        "reduce": "example-max", "form": "positive", "engine": "auto", "lanczos_steps": 40,
        "tol": 0.001, "spectrum": True, "spectrum_samples": 32, "trace_probes": 8,
        "batch_size": 32,
    },
    "layers": [
        layer_row("conv1.weight", 3.1e-4),
        layer_row("layer1.conv.weight", 1.2e-3),
        layer_row("fc.weight", 7.1e-3, head=True),
    ],
    "clamped_layers": [],
    "unpaired": {"only_in_pretrained": [], "only_in_finetuned": [], "shape_mismatches": []},
    "train_loss": 2.3166, "eval_loss": 2.3151, "gap": -0.0015, "ratio_to_gap": None,
    "n": 1201, "C": 2.607, "C_source": "empirical_max", "epsilon": 0.0,
    "hessian_term": 0.00474, "bound": 2.3214,
    "bound_note": "the O(n^-3/4) Taylor remainder xi of Theorem 2.1 is not included",
    "gates": [
        {"name": "max-bound", "op": "<=", "threshold": 100.0, "observed": 2.32,
         "passed": True, "source": "--max-bound"},
        {"name": "max-layer-hcal:fc*", "op": "<=", "threshold": 1000.0, "observed": 0.0071,
         "passed": True, "source": "--max-layer-hcal", "pattern": "fc*", "layers_matched": 1,
         "worst_layer": "fc.weight", "failing_layers": []},
    ],
    "success": True,
}


def sweep_audit(gap: float | None, g: float, *, labels: dict | None = None,
                reduce="example-max", dist: float = 1.0, noise: float | None = None,
                bound: float | None = None, kind: str = "bound", model: str = "m.py:f") -> dict:
    """A complete hessaudit.audit/1 document with the given gap and measures."""
    layers = [
        {"name": "conv.weight", "numel": 9, "is_new_head": False, "dist_fro": dist,
         "rel_dist": 0.1, "quad_raw": g, "quad_pos": g, "cross": None, "hcal": g,
         "clamped": False, "top_eig": 1.0, "trace": 2.0, "trace_stderr": 0.1, "converged": True,
         "engine_path": "jvp", "quad_steps": 0, "quad_last_change": 0.0},
    ]
    bound_value = bound if bound is not None else 0.1 + g
    return {
        "schema": "hessaudit.audit/1", "tool_version": "0.1.0", "torch_version": "2",
        "created": "2026-01-01T00:00:00+00:00",
        "inputs": {
            "pretrained": {"path": "pre.safetensors", "sha256": "a" * 64, "size": 1},
            "finetuned": {"path": "ft.safetensors", "size": 1,
                          "sha256": hashlib.sha256(repr((gap, g, dist)).encode()).hexdigest()},
            "model": model, "num_classes": 10, "data": "digits", "data_sha256": None,
            "eval_data": "digits" if gap is not None else None, "eval_data_sha256": None,
            "samples": None, "audit_examples": 10, "audit_examples_from": "data", "seed": 0,
            "device": "cpu", "dtype": "float32",
            "layer_selection": {"include": [], "exclude": [], "include_bias": False,
                                "include_norm": False, "new_heads": "from-zero"},
            "tags": labels or {},
        },
        "settings": {"reduce": reduce, "form": "positive", "engine": "auto",
                     "lanczos_steps": 40, "tol": 1e-3, "spectrum": True, "spectrum_samples": 32,
                     "trace_probes": 8, "batch_size": 32, "recipe": "theorem"},
        "layers": layers, "clamped_layers": [], "unpaired": {},
        "train_loss": 0.1, "eval_loss": None if gap is None else 0.1 + gap, "gap": gap,
        "ratio_to_gap": None if not gap or gap <= 0 else g / gap, "n": 10, "C": 1.0,
        "C_source": "empirical_max", "epsilon": 0.0, "hessian_term": g, "bound": bound_value,
        "bound_note": "", "hcal_scope": "all", "bound_kind": kind, "estimate_reasons": [],
        "median_train_loss": 0.1, "C_over_median_loss": 10.0,
        "measures": {
            "hessian_term": g, "sum_sqrt_hcal": math.sqrt(g), "distance_fro": dist,
            "distance_fro_sq": dist * dist, "trace_distance": 2 * dist * dist,
            "trace_distance_stderr": 0.1, "trace_distance_trace": "mean-hessian-hutchinson",
            "trace_examples": 10, "trace_probes": 8, "layers": 1,
            "noise_stability": None if noise is None else {
                "mean": noise, "std": 0.1, "stderr": 0.02, "draws": 20, "eps": 1e-3,
                "loss_before": 1.0, "data": "eval_data", "examples": 5, "seed": 0},
        },
        "gates": [], "success": True,
    }


def write_json(folder: Path, name: str, document: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def crafted_sweep(folder: Path, count: int = 8) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for k in range(count):
        gap = float(0.1 + 0.1 * k + 0.02 * rng.standard_normal())
        g = float(0.2 * gap + 0.05 * rng.standard_normal() + 0.1)
        labels = {"axis": "size" if k % 2 else "epochs", "value": str(k)}
        doc = sweep_audit(gap, g, labels=labels, dist=float(1 + rng.random()),
                          noise=float(gap / 10))
        paths.append(write_json(folder, f"a{k}.json", doc))
    return paths
