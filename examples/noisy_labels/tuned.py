"""The "tuned" rows of the noisy-label example: each method's options picked by ``hessaudit tune``.

Same pretrained model and task as ``run.py`` (``digits_cnn`` pretrained on ``digits-pretrain``,
fine-tuned on the 10-class ``digits`` with injected symmetric noise, clean held-out accuracy on
the held-out third). Three methods, each tuned with the same budget:

* ``ce``: cross-entropy, no constraint; searched: ``lr``;
* ``ce+proj``: cross-entropy with the layerwise projection; searched: ``lr``, ``radius``,
  ``radius_growth``, ``head_radius``;
* ``reweight+proj``: the paper's Algorithm 1 with the true F; searched: the same four.

Budget per search: :data:`TRIALS` trials of :data:`TRIAL_EPOCHS` epochs (median pruning), scored
by the accuracy on a 10% validation split with **noisy** labels (``--objective val-acc``, the
default); then the best is trained for :data:`FINAL_EPOCHS` epochs on the other 90%, and its
final-epoch clean held-out accuracy is reported. Noise 40% and 60%, seeds 0, 1, 2 (the seed
draws the noisy labels, the split, the head's init, the shuffling and the sampler).

``--bound`` adds ``reweight+proj`` searched by ``--objective bound`` (the audit's generalization
bound of each trial, on the training split with its noisy labels, ``--audit-samples 128``), to
compare with ``val-acc``; ``--bound-only`` runs just those (into ``tuned_bound.csv/.md``).

    python examples/noisy_labels/tuned.py [--jobs 2] [--bound] [--quick]
    python examples/noisy_labels/tuned.py --final-epochs 3 --name tuned_short  # final = trial
    python examples/noisy_labels/tuned.py --criteria --work WORK[,WORK2]  # rank correlations

Writes ``examples/noisy_labels/tuned_out/tuned.csv`` (one row per search) and ``tuned.md``
(the table); the searches' folders go to ``--work`` (default a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MODEL = "hessaudit.zoo:digits_cnn"
HERE = Path(__file__).resolve().parent
TRIALS = 8
TRIAL_EPOCHS = 3
FINAL_EPOCHS = 10
RATES = (0.4, 0.6)
SEEDS = (0, 1, 2)
METHODS = {
    "ce": ["--loss", "ce", "--constraint", "none"],
    "ce+proj": ["--loss", "ce", "--constraint", "frobenius"],
    "reweight+proj": ["--loss", "reweight", "--constraint", "frobenius"],
}


def _search(pretrained: Path, work: Path, method: str, rate: float, seed: int,
            objective: str, trials: int, trial_epochs: int, final_epochs: int,
            audit_samples: int) -> dict:
    out = work / f"{method}-{objective}-r{rate}-s{seed}-e{trial_epochs}-{final_epochs}"
    cmd = [
        sys.executable, "-m", "hessaudit", "tune", "--model", MODEL,
        "--pretrained", str(pretrained), "--data", "digits", "--eval-data", "digits",
        "--inject-noise", f"symmetric:{rate}", "--noise-matrix", "injected",
        *METHODS[method], "--seed", str(seed), "--trials", str(trials),
        "--trial-epochs", str(trial_epochs), "--epochs", str(final_epochs),
        "--objective", objective, "--out", str(out), "--overwrite", "--quiet",
    ]
    if objective == "bound":
        cmd += ["--audit-samples", str(audit_samples)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    row = {"method": method, "objective": objective, "rate": rate, "seed": seed,
           "seconds": round(seconds, 1)}
    if proc.returncode != 0:
        row["error"] = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "?"
        print(f"FAILED {out.name}: {row['error']}", flush=True)
        return row
    best = json.loads((out / "best.json").read_text())
    row.update(
        heldout_acc=best["final"]["heldout_acc"],
        score=best["score"],
        trials=sum(best["trials"].values()),
        pruned=best["trials"].get("pruned", 0),
        failed=best["trials"].get("fail", 0),
        **{f"best_{k}": v for k, v in best["params"].items()},
    )
    print(f"done {out.name}: held-out {row['heldout_acc']:.4f} ({seconds:.0f}s)", flush=True)
    return row


def _table(rows: list[dict]) -> str:
    import pandas as pd

    frame = pd.DataFrame([r for r in rows if "heldout_acc" in r])
    lines = []
    if frame.empty:
        return "(no finished search)\n"
    frame["key"] = frame["method"] + " (" + frame["objective"] + ")"
    rates = sorted(frame["rate"].unique())
    keys = list(dict.fromkeys(frame["key"]))
    lines.append("| tuned method | " + " | ".join(f"sym {int(r * 100)}%" for r in rates) + " |")
    lines.append("|---|" + "---|" * len(rates))
    for key in keys:
        cells = []
        for rate in rates:
            sub = frame[(frame["key"] == key) & (frame["rate"] == rate)]["heldout_acc"] * 100
            cells.append(
                "-" if sub.empty else f"{sub.mean():.2f} ± {sub.std(ddof=0):.2f} (n={len(sub)})"
            )
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _criteria(works: list[Path]) -> str:
    """How well each score ranks the trials by their clean held-out accuracy: Spearman rank
    correlation over the completed trials of a search, averaged over searches."""
    import pandas as pd

    rows = []
    for path in sorted(p for work in works for p in work.glob("*/trials.csv")):
        frame = pd.read_csv(path)
        frame = frame[(frame["state"] == "complete") & frame["heldout_acc"].notna()]
        if len(frame) < 3:
            continue
        method, objective = path.parent.name.split("-")[0], path.parent.name.split("-")[1]
        objective = "val-acc" if objective == "val" else objective
        rate = float(path.parent.name.split("-r")[1].split("-")[0])
        tail = path.parent.name.split("-e")
        epochs = int(tail[1].split("-")[0]) if len(tail) > 1 else TRIAL_EPOCHS
        seed = int(path.parent.name.split("-s")[-1].split("-")[0])
        row = {"search": path.parent.name, "method": method, "objective": objective,
               "rate": rate, "seed": seed, "epochs": epochs, "trials": len(frame)}
        for col, sign in (("val_acc", 1), ("val_loss_corrected", -1), ("bound", -1)):
            if frame[col].notna().sum() >= 3:
                row[col] = (sign * frame[col]).corr(frame["heldout_acc"], method="spearman")
        rows.append(row)
    table = pd.DataFrame(rows)
    if not table.empty:  # searches that differ only by their final run have the same trials
        table = table.drop_duplicates(["method", "objective", "rate", "seed", "epochs"])
    if table.empty:
        return "(no search)\n"
    cols = [c for c in ("val_acc", "val_loss_corrected", "bound") if c in table]
    summary = table.groupby(["objective", "epochs", "method", "rate"])[cols].mean().round(2)
    counts = table.groupby(["objective", "epochs", "method", "rate"]).size()
    lines = ["| search objective | trial epochs | method | noise | searches | "
             + " | ".join(cols) + " |", "|---|---|---|---|---|" + "---|" * len(cols)]
    for key, values in summary.iterrows():
        objective, epochs, method, rate = key
        cells = ["-" if pd.isna(values[c]) else f"{values[c]:+.2f}" for c in cols]
        lines.append(f"| {objective} | {epochs} | {method} | {rate:g} | {counts[key]} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="searches run at once")
    parser.add_argument("--work", default=None, help="folder for the searches' outputs")
    parser.add_argument("--bound", action="store_true", help="add the --objective bound rows")
    parser.add_argument("--bound-only", action="store_true", help="only the bound rows")
    parser.add_argument("--audit-samples", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="one search of each, 40%%, seed 0")
    parser.add_argument("--trial-epochs", type=int, default=TRIAL_EPOCHS)
    parser.add_argument("--final-epochs", type=int, default=FINAL_EPOCHS)
    parser.add_argument("--name", default=None, help="output file stem (default tuned)")
    parser.add_argument("--out", default=str(HERE / "tuned_out"))
    parser.add_argument("--criteria", action="store_true",
                        help="only summarize how each score ranks the trials of the searches "
                        "in --work (comma-separated folders) by clean held-out accuracy "
                        "(tuned_criteria.md)")
    args = parser.parse_args()
    if args.criteria:
        text = _criteria([Path(w) for w in args.work.split(",")])
        (Path(args.out) / "tuned_criteria.md").write_text(text)
        print(text)
        return

    import torch

    torch.set_num_threads(1)
    from hessaudit.zoo import pretrain_digits_cnn

    work = Path(args.work or tempfile.mkdtemp(prefix="hessaudit-tuned-"))
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pretrained = work / "pretrained.safetensors"
    if not pretrained.is_file():
        pretrain_digits_cnn(pretrained)
    trials, trial_epochs, final_epochs = TRIALS, args.trial_epochs, args.final_epochs
    rates, seeds = RATES, SEEDS
    if args.quick:
        trials, trial_epochs, final_epochs, rates, seeds = 3, 1, 2, (0.4,), (0,)
    jobs = []
    if not args.bound_only:
        jobs += [(m, r, s, "val-acc") for r in rates for s in seeds for m in METHODS]
    if args.bound or args.bound_only:
        jobs += [("reweight+proj", r, s, "bound") for r in rates for s in seeds]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(
            pool.map(
                lambda j: _search(pretrained, work, j[0], j[1], j[2], j[3], trials,
                                  trial_epochs, final_epochs, args.audit_samples),
                jobs,
            )
        )
    wall = time.perf_counter() - started
    import pandas as pd

    name = args.name or ("tuned_bound" if args.bound_only else "tuned")
    pd.DataFrame(rows).to_csv(out / f"{name}.csv", index=False)
    text = (
        f"Clean held-out accuracy (%) of the tuned best model, mean ± std over seeds; "
        f"{trials} trials x {trial_epochs} epochs per search, final {final_epochs} epochs; "
        f"{len(jobs)} searches, {args.jobs} at once, wall time {wall / 60:.1f} min.\n\n"
        + _table(rows)
    )
    (out / f"{name}.md").write_text(text)
    print(text)
    print(f"searches in {work}")


if __name__ == "__main__":
    main()
