"""Claim 1: does the Hessian term G of the audit track the generalization gap?

One pretrained model (the built-in demo's: ``digits_cnn`` pretrained on the 5-class
``digits-pretrain`` task), many fine-tuned checkpoints on the 10-class ``digits`` task that
differ in what drives overfitting. Four sweeps, each varying one knob of a base setting
(300 training examples, 10 epochs, no constraint, clean labels):

* ``size``: the training-set size n (a seeded subset of the digits training part);
* ``epochs``: how long fine-tuning runs;
* ``radius``: the radius of the layerwise Frobenius-ball projection (every layer and the new
  head get the same radius);
* ``noise``: the rate of symmetric label noise injected into the training labels.

For every checkpoint it records the audit's Hessian term G (``hessaudit measure`` defaults:
example-max, positive part, exact JVP engine, C = largest per-example training loss), the
observed gap and the plain distance ``||W_ft - W_pre||`` (over the same layers as G).

Which labels: the gap is held-out loss minus training loss, **both on clean labels**. The audit's
training data is exactly the examples the model was trained on (the seeded subset, written to
``train_<run>.npz``) with their *clean* labels, so under injected noise the training loss is the
clean-label loss of the training examples (the noisy-label training loss is kept in the CSV as
``train_loss_noisy``). The held-out data is the fixed held-out third of ``digits`` (596 images,
seen by neither pretraining nor fine-tuning).

    python examples/measure_vs_gap/run.py            # full: 3 seeds x 23 configs
    python examples/measure_vs_gap/run.py --quick    # seconds: 1 seed, 3 configs, 2 epochs

Outputs in ``--out`` (default ``examples/measure_vs_gap/out``): ``results.csv`` (one row per
checkpoint), ``correlations.csv``, ``summary.md`` (the tables) and ``measure_vs_gap.png``.
Every audit is also copied to ``audits/<run>.json``, labelled ``sweep``, ``value`` and
``seed`` (``measure --label``), so that ``hessaudit correlate`` reads them directly::

    python examples/measure_vs_gap/run.py --measures          # + trace distance, noise stability
    hessaudit correlate examples/measure_vs_gap/out/audits --group-by sweep \
        --out examples/measure_vs_gap/out/correlate

``--measures`` turns on the per-layer traces (``trace_distance``) and ``--noise-stability 1e-3``
for every audit; ``--loss-bound`` passes a choice of C (``max``, ``quantile:Q`` or a number).
``reaudit.py`` re-audits the same checkpoints with another ``--loss-bound``; ``seed_means.py``
gives every measure's correlations over configurations (seeds averaged).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import sys
import time
from pathlib import Path

MODEL = "hessaudit.zoo:digits_cnn"
HERE = Path(__file__).resolve().parent

BASE = {"samples": 300, "epochs": 10, "radius": None, "noise": 0.0}
SWEEPS = {
    "size": ("samples", [50, 100, 200, 300, 600, 1201]),
    "epochs": ("epochs", [1, 2, 5, 10, 20, 40]),
    "radius": ("radius", [0.25, 0.5, 1.0, 2.0, 4.0, 8.0]),
    "noise": ("noise", [0.0, 0.2, 0.4, 0.6, 0.8]),
}
#: Shared optimization settings (stated in docs/results.md).
TRAIN = {"lr": 3e-3, "batch_size": 32, "schedule": "none", "optimizer": "adam", "loss": "ce"}
SEEDS = (0, 1, 2)

QUICK_SWEEPS = {"size": ("samples", [50, 200, 600])}
QUICK_EPOCHS = 2
QUICK_SEEDS = (0,)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--out", type=Path, default=HERE / "out", help="output folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the seeds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--measures", action="store_true",
                        help="also the trace distance and noise stability (slower)")
    parser.add_argument("--loss-bound", default=None, help="max | quantile:Q | a number")
    return parser.parse_args(argv)


def configs(quick: bool) -> list[dict]:
    """Every (sweep, value) point, each a full setting (base with one knob changed)."""
    rows = []
    for sweep, (knob, values) in (QUICK_SWEEPS if quick else SWEEPS).items():
        for value in values:
            cfg = dict(BASE, sweep=sweep, knob=knob, value=value)
            cfg[knob] = value
            if quick:
                cfg["epochs"] = QUICK_EPOCHS
            rows.append(cfg)
    return rows


def run_one(
    cfg: dict, seed: int, pretrained: Path, work: Path, options: argparse.Namespace | None = None
) -> dict:
    import numpy as np
    import torch

    from hessaudit.audit.run import AuditRequest, run_audit
    from hessaudit.inputs.data import load_data
    from hessaudit.robust.config import FinetuneConfig
    from hessaudit.robust.trainer import run_finetune

    name = f"{cfg['sweep']}-{cfg['value']}-s{seed}"
    run_dir = work / name
    radius = cfg["radius"]
    noise = cfg["noise"]
    config = FinetuneConfig(
        model=MODEL,
        pretrained=str(pretrained),
        data="digits",
        eval_data="digits",
        out=str(run_dir),
        samples=cfg["samples"],
        epochs=cfg["epochs"],
        seed=seed,
        constraint="frobenius" if radius is not None else "none",
        radius=radius if radius is not None else 1.0,
        head_radius=radius,
        inject_noise=f"symmetric:{noise}" if noise > 0 else None,
        **TRAIN,
    )
    t0 = time.perf_counter()
    result = run_finetune(config, overwrite=True)
    train_seconds = time.perf_counter() - t0

    # The audit's training data: exactly the examples trained on, with their clean labels.
    train = load_data("digits", role="train", samples=cfg["samples"], seed=seed)
    npz = work / f"train_{name}.npz"
    np.savez(npz, x=train.x.numpy(), y=train.y.numpy())
    t0 = time.perf_counter()
    audit = run_audit(
        AuditRequest(
            pretrained=str(pretrained),
            finetuned=str(run_dir / "final.safetensors"),
            model=MODEL,
            data=str(npz),
            eval_data="digits",
            spectrum=bool(options and options.measures),
            noise_stability=1e-3 if options and options.measures else None,
            loss_bound=options.loss_bound if options else None,
            tags=(("sweep", cfg["sweep"]), ("value", f"{cfg['value']}"), ("seed", f"{seed}")),
            seed=seed,
        )
    ).to_dict()
    audit_seconds = time.perf_counter() - t0
    text = json.dumps(audit, indent=2) + "\n"
    (run_dir / "audit.json").write_text(text, encoding="utf-8")
    (work.parent / "audits").mkdir(exist_ok=True)
    (work.parent / "audits" / f"{name}.json").write_text(text, encoding="utf-8")
    distance = math.sqrt(sum(layer["dist_fro"] ** 2 for layer in audit["layers"]))
    distance_pre = math.sqrt(
        sum(layer["dist_fro"] ** 2 for layer in audit["layers"] if not layer["is_new_head"])
    )
    del torch
    return {
        "sweep": cfg["sweep"],
        "value": cfg["value"],
        "seed": seed,
        "n": audit["n"],
        "epochs": cfg["epochs"],
        "radius": radius,
        "noise": noise,
        "train_loss_clean": audit["train_loss"],
        "train_loss_noisy": result.final.get("train_loss"),
        "heldout_loss": audit["eval_loss"],
        "heldout_acc": result.final.get("heldout_acc"),
        "gap": audit["gap"],
        "G": audit["hessian_term"],
        "ratio_G_gap": audit["ratio_to_gap"],
        "C": audit["C"],
        "bound": audit["bound"],
        "distance": distance,
        "distance_pretrained_layers": distance_pre,
        "train_seconds": round(train_seconds, 2),
        "audit_seconds": round(audit_seconds, 2),
    }


def correlations(frame):
    """Spearman and Pearson of G (and of the plain distance) with the gap: pooled and per
    sweep. Seeds are averaged first, so each point is one configuration."""
    import pandas as pd

    points = frame.groupby(["sweep", "value"], as_index=False)[["G", "gap", "distance"]].mean()
    groups = [("all", points)] + [(s, g) for s, g in points.groupby("sweep", sort=False)]
    rows = []
    for label, g in groups:
        row = {"sweep": label, "points": len(g)}
        for x in ("G", "distance"):
            for method in ("spearman", "pearson"):
                value = g[x].corr(g["gap"], method=method) if len(g) > 2 else float("nan")
                row[f"{method}_{x}_gap"] = value
        rows.append(row)
    return pd.DataFrame(rows)


def plot(frame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = frame.groupby(["sweep", "value"], sort=False)[["G", "gap"]].agg(["mean", "std"])
    sweeps = list(dict.fromkeys(frame["sweep"]))
    panels = len(sweeps) + 1
    cols = min(panels, 3)
    rows = (panels + cols - 1) // cols
    fig, grid = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    axes = list(grid.flat)
    for ax in axes[panels:]:
        ax.set_visible(False)
    axes = axes[:panels]
    labels = {"size": "training-set size n", "epochs": "epochs", "radius": "radius D",
              "noise": "symmetric noise rate"}
    for ax, sweep in zip(axes, sweeps, strict=False):
        m = means.loc[sweep]
        x = [float(v) for v in m.index]
        for col, style in (("G", "o-"), ("gap", "s--")):
            ax.errorbar(x, m[(col, "mean")], yerr=m[(col, "std")].fillna(0), fmt=style,
                        capsize=2, label="G (Hessian term)" if col == "G" else "observed gap")
        if sweep in ("size", "epochs", "radius"):
            ax.set_xscale("log")
            ax.minorticks_off()
            ax.set_xticks(x, [f"{v:g}" for v in x])
        ax.set_xlabel(labels.get(sweep, sweep))
        ax.set_title(f"sweep: {sweep}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    ax = axes[-1]
    for sweep in sweeps:
        sub = frame[frame["sweep"] == sweep]
        ax.scatter(sub["gap"], sub["G"], s=12, label=sweep)
    hi = max(float(frame["gap"].max()), float(frame["G"].max())) * 1.05
    ax.plot([0, hi], [0, hi], "k:", lw=1, label="G = gap")
    ax.set_xlabel("observed gap (held-out - train loss)")
    ax.set_ylabel("G")
    ax.set_title("G against gap (every run)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def markdown(frame, corr) -> str:
    cols = ["sweep", "value", "n", "epochs", "radius", "noise", "train_loss_clean",
            "heldout_loss", "heldout_acc", "gap", "G", "ratio_G_gap", "distance"]
    agg = frame.groupby(["sweep", "value"], sort=False)[cols[2:]].mean(numeric_only=True)
    lines = ["| sweep | value | train loss | held-out loss | held-out acc | gap | G | G / gap "
             "| ‖W_ft − W_pre‖ |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (sweep, value), r in agg.iterrows():
        ratio = f"{r.G / r.gap:.2f}" if r.gap > 0 else "n/a (gap ≤ 0)"
        lines.append(
            f"| {sweep} | {value:g} | {r.train_loss_clean:.4f} | {r.heldout_loss:.4f} | "
            f"{r.heldout_acc:.3f} | {r.gap:.4f} | {r.G:.4f} | {ratio} | "
            f"{r.distance:.2f} |"
        )
    lines += ["", "| points | Spearman(G, gap) | Pearson(G, gap) | Spearman(dist, gap) "
              "| Pearson(dist, gap) |", "|---|---:|---:|---:|---:|"]
    for _, r in corr.iterrows():
        lines.append(
            f"| {r.sweep} ({r.points}) | {r.spearman_G_gap:.3f} | {r.pearson_G_gap:.3f} | "
            f"{r.spearman_distance_gap:.3f} | {r.pearson_distance_gap:.3f} |"
        )
    ratio = frame["ratio_G_gap"]
    pos = frame[frame["gap"] > 0]["ratio_G_gap"]
    lines += ["", f"G / gap over the {len(pos)} runs with a positive gap: median "
              f"{pos.median():.2f}, range {pos.min():.2f} to {pos.max():.2f} "
              f"({int((ratio.isna() | (frame['gap'] <= 0)).sum())} runs with gap <= 0)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    import warnings

    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*")
    import pandas as pd

    from hessaudit.demo.run import PRETRAIN_SETTINGS
    from hessaudit.zoo import pretrain_digits_cnn

    out: Path = args.out
    work = out / "runs"
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(out / "audits", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    pretrained = out / "pretrained.safetensors"
    # the demo's pretrained model (quick mode: one epoch of it)
    pre_settings = {**PRETRAIN_SETTINGS, **({"epochs": 1} if args.quick else {})}
    pre_acc = pretrain_digits_cnn(pretrained, **pre_settings)
    print(f"pretrained on digits-pretrain: held-out accuracy {pre_acc:.3f}", flush=True)
    seeds = tuple(args.seeds) if args.seeds else (QUICK_SEEDS if args.quick else SEEDS)
    rows = []
    todo = configs(args.quick)
    for seed in seeds:
        for i, cfg in enumerate(todo, 1):
            row = run_one(cfg, seed, pretrained, work, args)
            rows.append(row)
            ratio = row["ratio_G_gap"]
            ratio_text = "n/a (gap <= 0)" if ratio is None else f"{ratio:.2f}"
            print(f"[seed {seed} {i}/{len(todo)}] {cfg['sweep']}={cfg['value']}: "
                  f"gap {row['gap']:.4f}  G {row['G']:.4f}  ratio {ratio_text}", flush=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(out / "results.csv", index=False)
    corr = correlations(frame)
    corr.to_csv(out / "correlations.csv", index=False)
    plot(frame, out / "measure_vs_gap.png")
    wall = time.perf_counter() - start
    text = markdown(frame, corr)
    meta = {
        "command": " ".join(["python examples/measure_vs_gap/run.py",
                             *(sys.argv[1:] if argv is None else argv)]),
        "wall_seconds": round(wall, 1),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": args.threads,
        "seeds": list(seeds),
        "train": TRAIN,
        "base": BASE,
        "pretrained_heldout_acc": pre_acc,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    (out / "summary.md").write_text(text, encoding="utf-8")
    print(text)
    print(f"wall time {wall:.0f} s; outputs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
