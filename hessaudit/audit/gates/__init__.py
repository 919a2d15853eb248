"""CI gates: thresholds on an audit's numbers, from flags and config files.

A gate is one threshold on one quantity. ``hessaudit measure`` evaluates its gates against the
finished ``hessaudit.audit/1`` document, records every one of them in the document's ``gates``
list and exits 2 when one failed; ``hessaudit compare`` does the same with its own gates on the
change between two audits (see :mod:`hessaudit.audit.compare`). docs/gating.md is the user-facing
description; the names below are a contract.

``measure`` gates (flag = config key without the dashes)::

    max-bound         bound                      <= X
    max-hessian-term  Hessian term G             <= X
    max-ratio         G / observed gap           <= X   (needs --eval-data)
    min-ratio         G / observed gap           >= X   (needs --eval-data)
    max-layer-hcal    PATTERN=X: every layer whose name matches the fnmatch glob PATTERN
                      has Hcal <= X (a bare X means every layer, PATTERN "*")
    max-layer-share   PATTERN=F: every matching layer's share of G is <= F (0..1)

``compare`` gates (percent changes from BASE to NEW)::

    max-increase        relative change of the bound, in percent      <= PCT
    max-layer-increase  [PATTERN=]PCT: relative change of the Hcal of every matching layer
                        present in both audits, in percent            <= PCT

Modules: :mod:`.gate` (one gate and its valid thresholds), :mod:`.config` (gates from config
files and flags), :mod:`.evaluate` (the checks before the audit and the evaluation on its
document, with the decisions on ratios, patterns and estimates).
"""

from hessaudit.audit.gates.config import (
    compare_gates,
    load_config,
    measure_gates,
    parse_layer_flag,
    resolve_gates,
)
from hessaudit.audit.gates.evaluate import (
    check_before_audit,
    check_layer_gates,
    evaluate,
    failed,
    layer_shares,
    matching,
    no_match_error,
    worst_of,
)
from hessaudit.audit.gates.gate import (
    COMPARE_KEYS,
    LAYER_KEYS,
    MEASURE_KEYS,
    RATIO_KEYS,
    SECTIONS,
    Gate,
    check_threshold,
)

__all__ = [
    "COMPARE_KEYS",
    "LAYER_KEYS",
    "MEASURE_KEYS",
    "RATIO_KEYS",
    "SECTIONS",
    "Gate",
    "check_before_audit",
    "check_layer_gates",
    "check_threshold",
    "compare_gates",
    "evaluate",
    "failed",
    "layer_shares",
    "load_config",
    "matching",
    "measure_gates",
    "no_match_error",
    "parse_layer_flag",
    "resolve_gates",
    "worst_of",
]
