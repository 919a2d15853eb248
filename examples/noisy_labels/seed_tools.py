"""The seed's noisy-label tools on the digits task: Dual-T vs the confident joint, and the
non-negative backward correction (with the JS loss beside it).

Same pretrained model and task as ``run.py`` (``digits_cnn`` pretrained on ``digits-pretrain``,
fine-tuned on the 10-class ``digits``, 1201 training images with injected noise, clean held-out
accuracy on the fixed held-out third, 596 images). Adam, lr 3e-3, batch 32 throughout.

``--part estimate``: how well ``--noise-matrix estimate`` recovers the injected ``F``. First models
(two-fold cross-fitting, ``ESTIMATE_EPOCHS`` epochs each, plain cross-entropy) predict each half
of the training set out of sample; the anchor, confident-joint and Dual-T estimates are computed
from the *same* probabilities (``noise.json``'s ``errors_vs_injected_by_method``) and compared to
the injected ``F``: max |F_hat - F| and the Frobenius norm. Noise: symmetric 40% and
asymmetric 40% (``c -> c+1 mod 10``); seeds 0, 1, 2.

``--part nonneg``: the backward-corrected loss (``reweight``, true ``F``) with and without
``--nonneg-correction``, without and with the layerwise projection (D = D_head = 2, the radii
``run.py`` selected), beside ``ce`` and ``js`` (``--js-weight`` 0.5); ``NONNEG_EPOCHS`` epochs,
no learning-rate decay; symmetric 40% and 60%; seeds 0, 1, 2. Reported per run: final and best
held-out accuracy, the largest drop of held-out accuracy between consecutive epochs, and the
lowest training loss.

    python examples/noisy_labels/seed_tools.py --part estimate
    python examples/noisy_labels/seed_tools.py --part nonneg
    python examples/noisy_labels/seed_tools.py --quick      # seconds: one setting of each

Writes ``estimate.csv`` / ``nonneg.csv`` and ``seed_tools.md`` to ``--out`` (default
``examples/noisy_labels/seed_tools_out``); the run folders go to ``--work`` (default a temporary
folder).
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

MODEL = "hessaudit.zoo:digits_cnn"
HERE = Path(__file__).resolve().parent
SEEDS = (0, 1, 2)
TRAIN = {"optimizer": "adam", "lr": 3e-3, "batch_size": 32, "schedule": "none"}
ESTIMATE_NOISES = ("symmetric:0.4", "asymmetric:0.4")
ESTIMATE_EPOCHS = (3, 10, 30)
NONNEG_NOISES = ("symmetric:0.4", "symmetric:0.6")
NONNEG_EPOCHS = 8
RADII = {"radius": 2.0, "head_radius": 2.0}
METHODS = {
    "reweight": {"loss": "reweight", "noise_matrix": "injected", "constraint": "none"},
    "reweight+nonneg": {"loss": "reweight", "noise_matrix": "injected", "constraint": "none",
                        "nonneg_correction": True},
    "reweight+proj": {"loss": "reweight", "noise_matrix": "injected", "constraint": "frobenius",
                      **RADII},
    "reweight+proj+nonneg": {"loss": "reweight", "noise_matrix": "injected",
                             "constraint": "frobenius", "nonneg_correction": True, **RADII},
    "ce": {"loss": "ce", "constraint": "none"},
    "js": {"loss": "js", "js_weight": 0.5, "constraint": "none"},
}
QUICK = {"seeds": (0,), "samples": 200, "estimate_epochs": (2,), "nonneg_epochs": 2,
         "estimate_noises": ("symmetric:0.4",), "nonneg_noises": ("symmetric:0.6",),
         "methods": ("reweight", "reweight+nonneg")}


def _config(pretrained: Path, out: Path, noise: str, seed: int, samples: int | None, **options):
    from hessaudit.robust.config import FinetuneConfig

    return FinetuneConfig(model=MODEL, pretrained=str(pretrained), data="digits",
                          eval_data="digits", out=str(out), seed=seed, inject_noise=noise,
                          samples=samples, **{**TRAIN, **options})


def estimate_rows(pretrained: Path, work: Path, quick: bool) -> list[dict]:
    """One row per (noise, seed, first-model epochs, method)."""
    from hessaudit.errors import HessauditError
    from hessaudit.robust.trainer import run_finetune

    rows = []
    noises = QUICK["estimate_noises"] if quick else ESTIMATE_NOISES
    for noise in noises:
        for seed in QUICK["seeds"] if quick else SEEDS:
            for epochs in QUICK["estimate_epochs"] if quick else ESTIMATE_EPOCHS:
                out = work / f"est-{noise.replace(':', '')}-s{seed}-e{epochs}"
                # the loss is ce, so the run needs no invertible F; every method's error comes
                # from the same first models (noise.json); dual-t is the one validated
                config = _config(pretrained, out, noise, seed, QUICK["samples"] if quick else None,
                                 loss="ce", constraint="none", epochs=1, estimate_epochs=epochs,
                                 noise_matrix="estimate:dual-t")
                try:
                    run_finetune(config, overwrite=True)
                except HessauditError as exc:  # a singular Dual-T estimate: say so, try another
                    print(f"  {out.name}: {exc}", flush=True)
                    run_finetune(config.replace(noise_matrix="estimate:confident"),
                                 overwrite=True)
                estimated = json.loads((out / "noise.json").read_text())["estimated"]
                for method, err in estimated["errors_vs_injected_by_method"].items():
                    rows.append({"noise": noise, "seed": seed, "estimate_epochs": epochs,
                                 "method": method, "max_abs": err["max_abs"],
                                 "frobenius": err["frobenius"],
                                 "first_model_acc_noisy":
                                     estimated["first_model_accuracy_on_noisy_labels"]})
                print(f"[{noise} seed {seed} epochs {epochs}] " + ", ".join(
                    f"{r['method']} {r['max_abs']:.3f}" for r in rows[-3:]), flush=True)
    return rows


def nonneg_rows(pretrained: Path, work: Path, quick: bool) -> list[dict]:
    """One row per (noise, seed, method)."""
    from hessaudit.robust.trainer import run_finetune

    rows = []
    epochs = QUICK["nonneg_epochs"] if quick else NONNEG_EPOCHS
    for noise in QUICK["nonneg_noises"] if quick else NONNEG_NOISES:
        for seed in QUICK["seeds"] if quick else SEEDS:
            for method in QUICK["methods"] if quick else METHODS:
                out = work / f"nn-{noise.replace(':', '')}-s{seed}-{method}"
                config = _config(pretrained, out, noise, seed, QUICK["samples"] if quick else None,
                                 epochs=epochs, **METHODS[method])
                result = run_finetune(config, overwrite=True)
                acc = [m["heldout_acc"] for m in result.metrics[1:]]
                losses = [m["train_loss"] for m in result.metrics[1:]]
                rows.append({
                    "noise": noise, "seed": seed, "method": method,
                    "final_acc": acc[-1], "best_acc": max(acc),
                    "largest_drop": max([0.0] + [a - b for a, b in itertools.pairwise(acc)]),
                    "min_train_loss": min(losses),
                    "negative_epochs": sum(v < 0 for v in losses), "epochs": len(losses),
                })
                print(f"[{noise} seed {seed}] {method:22s} final {acc[-1]:.3f} "
                      f"drop {rows[-1]['largest_drop']:.3f} min loss {min(losses):.3f}",
                      flush=True)
    return rows


def _mean_std(values) -> str:
    import numpy as np

    v = np.asarray(list(values), dtype=float)
    return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}"


def estimate_markdown(frame) -> list[str]:
    lines = ["Noise-matrix estimation error, max |F_hat - F| (mean ± std over seeds; Frobenius "
             "norm in brackets), all methods from the same cross-fitted first models:", "",
             "| noise | first-model epochs | first-model acc (noisy labels) | confident | "
             "dual-t | anchor |", "|---|---:|---:|---:|---:|---:|"]
    for (noise, epochs), sub in frame.groupby(["noise", "estimate_epochs"], sort=False):
        cells = []
        for method in ("confident", "dual-t", "anchor"):
            m = sub[sub["method"] == method]
            cells.append(f"{_mean_std(m['max_abs'])} [{m['frobenius'].mean():.2f}]")
        acc = _mean_std(sub[sub["method"] == "confident"]["first_model_acc_noisy"])
        lines.append(f"| {noise} | {epochs} | {acc} | " + " | ".join(cells) + " |")
    return lines


def nonneg_markdown(frame) -> list[str]:
    lines = ["Clean held-out accuracy and stability (mean ± std over seeds):", "",
             "| noise | method | final acc | best acc | largest epoch-to-epoch drop | "
             "lowest train loss | epochs with negative train loss |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for (noise, method), sub in frame.groupby(["noise", "method"], sort=False):
        lines.append(
            f"| {noise} | {method} | {_mean_std(sub['final_acc'])} | {_mean_std(sub['best_acc'])}"
            f" | {_mean_std(sub['largest_drop'])} | {_mean_std(sub['min_train_loss'])} | "
            f"{sub['negative_epochs'].sum()} of {sub['epochs'].sum()} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("estimate", "nonneg", "all"), default="all")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--out", type=Path, default=HERE / "seed_tools_out")
    parser.add_argument("--work", type=Path, default=None, help="run folders (default: temp)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import pandas as pd
    import torch

    from hessaudit.demo.run import PRETRAIN_SETTINGS
    from hessaudit.zoo import pretrain_digits_cnn

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        pretrained = work / "pretrained.safetensors"
        pre_settings = {**PRETRAIN_SETTINGS, **({"epochs": 1} if args.quick else {})}
        pretrain_digits_cnn(pretrained, **pre_settings)
        text: list[str] = []
        if args.part in ("estimate", "all"):
            frame = pd.DataFrame(estimate_rows(pretrained, work, args.quick))
            frame.to_csv(args.out / "estimate.csv", index=False)
            text += [*estimate_markdown(frame), ""]
        if args.part in ("nonneg", "all"):
            frame = pd.DataFrame(nonneg_rows(pretrained, work, args.quick))
            frame.to_csv(args.out / "nonneg.csv", index=False)
            text += [*nonneg_markdown(frame), ""]
    wall = time.perf_counter() - start
    command = "python examples/noisy_labels/seed_tools.py --part " + args.part + (
        " --quick" if args.quick else "")
    text += [f"Command: `{command}`; {wall:.0f} s wall time, torch {torch.__version__}, "
             f"Python {platform.python_version()}, {args.threads} thread(s).", ""]
    name = f"seed_tools_{args.part}.md"
    (args.out / name).write_text("\n".join(text), encoding="utf-8")
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
