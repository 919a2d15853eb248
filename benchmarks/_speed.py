"""Issue 16's speed targets, each as a ratio against the engine before it, measured in one run.

``hessaudit.hessian.version`` keeps the old implementations selectable; every timing here runs
the old and the new engine on the same inputs, interleaved (old, new, old, new, ...), and
reports medians and the ratio old/new, plus how far the numbers moved between them.

* ``speed_jvp`` (target 1): ``hessaudit measure`` on timm ``resnet18`` (the exact JVP path:
  21 layers), whole CLI process; and, in-process, the cost per layer of the forms in units of
  one forward pass of the batch.
* ``speed_lanczos`` (target 2): ``hessaudit measure`` on the small timm ViT (the Lanczos path:
  20 layers) at ``--lanczos-steps 40``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import _fixtures as fx

HERE = Path(__file__).resolve().parent

# Runs the CLI with the engine version given as the first argument (the library reads no
# environment variable for it); prints the exit code and the peak RSS.
CLI = (
    "import resource, sys\n"
    "from hessaudit.hessian.version import set_engine_version\n"
    "set_engine_version(sys.argv[1])\n"
    "from hessaudit.cli import main\n"
    "code = 0\n"
    "try:\n    main(sys.argv[2:])\nexcept SystemExit as e:\n    code = e.code or 0\n"
    "print('CLI', code, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)\n"
    "sys.exit(code)\n"
)


def _run_cli(version: str, args: list[str], threads: int) -> tuple[float, float]:
    """(wall seconds of the whole process, peak RSS MB) of one ``hessaudit`` run."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(HERE.parent)}
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", CLI, version, *args], capture_output=True,
                         text=True, env=env, cwd=str(HERE.parent))
    wall = time.perf_counter() - start
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("CLI")]
    if not line or line[-1].split()[1] != "0":
        raise RuntimeError(f"hessaudit {' '.join(args)} failed:\n{res.stderr[-2000:]}")
    return wall, float(line[-1].split()[2]) / 1024.0


def _max_rel_diff(a: dict, b: dict, keys: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for key in keys:
        worst = 0.0
        for ra, rb in zip(a["layers"], b["layers"], strict=True):
            x, y = ra.get(key), rb.get(key)
            if x is None or y is None:
                continue
            worst = max(worst, abs(x - y) / max(abs(x), 1e-300))
        out[key] = worst
    return out


def _compare_cli(name: str, model_spec: str, examples: int, extra: list[str], repeats: int,
                 threads: int, table) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"hessaudit-speed-{name}-"))
    files = fx.write_audit_inputs(tmp / name, name, examples)
    walls: dict[str, list[float]] = {"old": [], "new": []}
    rss: dict[str, list[float]] = {"old": [], "new": []}
    docs = {}
    for _ in range(repeats):
        for version in ("old", "new"):
            out_json = tmp / f"{version}.json"
            args = ["measure", files["pretrained"], files["finetuned"], "--model", model_spec,
                    "--data", files["data"], "--json", str(out_json), "--input-size", "32",
                    "--quiet", *extra]
            wall, peak = _run_cli(version, args, threads)
            walls[version].append(wall)
            rss[version].append(peak)
            docs[version] = json.loads(out_json.read_text())
    med = {v: statistics.median(w) for v, w in walls.items()}
    diffs = _max_rel_diff(docs["old"], docs["new"],
                          ("hcal", "quad_raw", "quad_pos", "top_eig", "trace"))
    res = {"examples": examples, "options": extra, "threads": threads, "repeats": repeats,
           "wall_s": walls, "median_s": med, "speedup": med["old"] / med["new"],
           "peak_rss_mb": {v: max(r) for v, r in rss.items()},
           "max_rel_diff_old_new": diffs,
           "engine_paths": sorted({row["engine_path"] for row in docs["new"]["layers"]}),
           "converged_layers": {v: sum(r["converged"] for r in d["layers"])
                                for v, d in docs.items()},
           "layers": len(docs["new"]["layers"])}
    table(f"{name}: `hessaudit measure`, old vs new engine ({examples} examples, "
          f"{threads} thread(s), median of {repeats})",
          ["engine", "median s", "runs s", "peak MB", "converged layers"],
          [[v, med[v], " ".join(f"{w:.1f}" for w in walls[v]), res["peak_rss_mb"][v],
            res["converged_layers"][v]] for v in ("old", "new")]
          + [["old / new", f"{res['speedup']:.2f}x", "", "", ""]])
    print("max relative difference old vs new: "
          + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    return res


def _forward_units(threads: int, quick: bool, table) -> dict:
    """Cost of the forms per layer and batch, in forward passes of that batch (in-process)."""
    from benchmarks.run import timed
    from hessaudit.hessian import LayerwiseGaussNewton, per_example_gauss_newton_forms
    from hessaudit.hessian.version import use_engine_version

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    pre = fx.build("resnet18").eval()
    pre_state = {k: v.clone() for k, v in pre.state_dict().items()}
    model = fx.perturbed(pre)
    x, y = fx.batch(32)
    names = [n for n, p in model.named_parameters() if p.ndim >= 2]
    params = dict(model.named_parameters())
    vectors = {n: params[n].detach() - pre_state[n] for n in names}
    repeats = 1 if quick else 3

    def forward():
        with torch.no_grad():
            model(x)

    def old_forms():
        with use_engine_version("old"):
            for n in names:
                per_example_gauss_newton_forms(model, x, y, n, vectors[n])

    def new_forms():
        LayerwiseGaussNewton(model, vectors).forms(x, y, names[0], vectors[names[0]])

    def new_confirm():
        LayerwiseGaussNewton(model, vectors).confirm(x[:8], y[:8], names[0], vectors[names[0]])

    t = {"forward": timed(forward, 3, torch.device("cpu")),
         "old": timed(old_forms, repeats, torch.device("cpu")),
         "new": timed(new_forms, repeats, torch.device("cpu")),
         "new_confirm_all_layers_8_examples": timed(new_confirm, repeats, torch.device("cpu"))}
    per_layer = {k: t[k] / t["forward"] / len(names) for k in ("old", "new")}
    torch.set_num_threads(1)
    table("ResNet-18 forms, 32 examples: cost per layer in forward passes of the batch",
          ["engine", "s (all 21 layers)", "forward passes per layer"],
          [["old (one JVP per layer)", t["old"], per_layer["old"]],
           ["new (shared reverse passes)", t["new"], per_layer["new"]],
           ["old / new", f"{t['old'] / t['new']:.2f}x", ""]])
    return {"seconds": t, "forward_passes_per_layer": per_layer, "layers": len(names)}


def bench_speed_jvp(args, device) -> dict:
    threads = args.threads
    examples = 64 if args.quick else 256
    res = _compare_cli("resnet18", "resnet18", examples, ["--device", args.device],
                       args.repeats, threads, _table())
    res["per_layer"] = _forward_units(threads, args.quick, _table())
    return res


def bench_speed_lanczos(args, device) -> dict:
    examples = 8 if args.quick else 256
    extra = ["--lanczos-steps", "40", "--device", args.device]
    spec = f"{HERE / '_fixtures.py'}:small_vit"
    return _compare_cli("vit_small", spec, examples, extra, args.repeats, args.threads,
                        _table())


def _table():
    from benchmarks.run import table

    return table


__all__ = ["CLI", "bench_speed_jvp", "bench_speed_lanczos"]
