"""The per-layer bar chart of ``hessaudit report`` (Hcal, and each layer's share of G).

matplotlib (the ``examples`` extra) through its Agg canvas, without pyplot, so no global
backend state is touched; :func:`plot_png` returns None without matplotlib.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from hessaudit.audit.gates import layer_shares
from hessaudit.report._format import fmt_fraction
from hessaudit.report.escape import visible


def plot_png(document: Mapping[str, Any], *, highlight: set[str] | None = None) -> bytes | None:
    """The per-layer bar chart (Hcal, and share of G) as PNG bytes; None without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError:
        return None
    layers = list(document["layers"])
    if not layers:
        return None
    highlight = highlight or set()
    names = [layer["name"] for layer in layers]
    # Tick labels are plain text: no mathtext ('$x^2$' in a name), shown with visible escapes.
    labels = [visible(name) for name in names]
    hcal = [max(float(layer["hcal"]), 0.0) for layer in layers]
    fractions = layer_shares(layers)
    shares = [100 * share for share in fractions]
    colors = [
        "#c44e52" if name in highlight else "#8172b2" if layer.get("is_new_head") else "#4c72b0"
        for name, layer in zip(names, layers, strict=True)
    ]
    height = max(2.4, 0.3 * len(layers) + 1.3)
    figure = Figure(figsize=(11, height), dpi=100)
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2, sharey=True)
    positions = list(range(len(layers)))
    left.barh(positions, hcal, color=colors)
    positive = [h for h in hcal if h > 0]
    if positive and min(hcal) > 0 and max(positive) / min(positive) > 100:
        left.set_xscale("log")
        left.set_xlabel("Hcal (log scale)")
    else:
        left.set_xlabel("Hcal")
    left.set_title("Hessian distance per layer", fontsize=11, loc="left")
    right.barh(positions, shares, color=colors)
    right.set_xlabel("share of the Hessian term G (%)")
    right.set_title("share of G = √Hcal / Σ√Hcal", fontsize=11, loc="left")
    right.set_xlim(0, max(max(shares) * 1.15, 1.0))
    for position, share, fraction in zip(positions, shares, fractions, strict=True):
        right.text(share, position, f" {fmt_fraction(fraction)}", va="center", fontsize=8)
    left.set_yticks(positions, labels, fontsize=8, parse_math=False, usetex=False)
    left.invert_yaxis()
    for axis in (left, right):
        axis.grid(axis="x", alpha=0.3)
        axis.set_axisbelow(True)
        for side in ("top", "right"):
            axis.spines[side].set_visible(False)
    legend = []
    if any(layer.get("is_new_head") for layer in layers):
        legend.append(Patch(color="#8172b2", label="new head (distance from zero)"))
    if highlight:
        legend.append(Patch(color="#c44e52", label="fails a gate"))
    if legend:
        # Below the axes, so that it never covers a bar.
        figure.legend(
            handles=legend, loc="lower center", ncol=len(legend), fontsize=8, frameon=False
        )
        figure.tight_layout(rect=(0, 0.35 / height, 1, 1))
    else:
        figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
