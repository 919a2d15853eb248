"""Correlations of every measure with the gap over the sweep's *configurations* (seeds averaged
first), the way ``run.py`` reports G and the distance; ``hessaudit correlate`` works on the
individual audits instead. Reads the labelled audits of ``run.py --measures`` (or of
``reaudit.py``)::

    python examples/measure_vs_gap/seed_means.py examples/measure_vs_gap/out/audits \
        --out examples/measure_vs_gap/results_measures/seed_means_max

Writes ``DIR.csv`` (one row per population and measure) and ``DIR.md`` (Spearman / Pearson
tables: rows are the populations, columns the measures).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MEASURES = ("hessian_term", "sum_sqrt_hcal", "distance_fro", "distance_fro_sq",
            "trace_distance", "noise_stability", "bound")


def rows_of(folder: Path) -> list[dict]:
    rows = []
    for path in sorted(folder.glob("*.json")):
        audit = json.loads(path.read_text(encoding="utf-8"))
        if audit.get("gap") is None:
            continue
        m = audit["measures"]
        tags = audit["inputs"]["tags"]
        row = {"sweep": tags["sweep"], "value": float(tags["value"]), "seed": tags["seed"],
               "gap": audit["gap"], "bound": audit["bound"]}
        for key in MEASURES[:-2]:
            row[key] = m.get(key)
        ns = m.get("noise_stability")
        row["noise_stability"] = ns["mean"] if ns else None
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("audits", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="output stem (no suffix)")
    args = parser.parse_args(argv)
    import pandas as pd

    frame = pd.DataFrame(rows_of(args.audits))
    points = frame.groupby(["sweep", "value"], as_index=False)[["gap", *MEASURES]].mean()
    groups = [("all", points)] + [(s, g) for s, g in points.groupby("sweep", sort=True)]
    out = []
    for label, g in groups:
        for key in MEASURES:
            sub = g[["gap", key]].dropna()
            out.append({
                "population": label, "points": len(sub), "measure": key,
                "spearman": sub[key].corr(sub["gap"], method="spearman"),
                "pearson": sub[key].corr(sub["gap"], method="pearson"),
            })
    table = pd.DataFrame(out)
    table.to_csv(args.out.with_suffix(".csv"), index=False)
    lines = []
    for method in ("spearman", "pearson"):
        wide = table.pivot(index="population", columns="measure", values=method)
        wide = wide.reindex([label for label, _ in groups])[list(MEASURES)]
        npts = table.groupby("population")["points"].max()
        lines += [f"{method.capitalize()} with the gap, configurations (seeds averaged):", "",
                  "| points | " + " | ".join(MEASURES) + " |",
                  "|---|" + "---:|" * len(MEASURES)]
        for label, r in wide.iterrows():
            lines.append(f"| {label} ({npts[label]}) | "
                         + " | ".join(f"{v:.3f}" for v in r.values) + " |")
        lines.append("")
    args.out.with_suffix(".md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
