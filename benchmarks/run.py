# ruff: noqa: B023  (closures are timed inside the loop iteration that defines them)
"""hessaudit benchmarks: ratios measured in one run, medians over repeats.

    python benchmarks/run.py [--quick] [--only hvp,per_example,...] [--device cpu|cuda]
                             [--out benchmarks/results.json] [--threads N]
                             [--engine-version new|old]

``speed_jvp`` and ``speed_lanczos`` (issue 16) time the engine against the one before it in the
same run (``hessaudit.hessian.version``): old and new interleaved, medians, ratio old/new.
``--engine-version old`` runs every other section with the old engine (for comparisons across
runs); ``--threads`` sets the intra-op threads of the speed sections.

Every micro-benchmark runs with ``torch.set_num_threads(1)`` (the shared CI-like machines this
is written for have two noisy cores; one intra-op thread keeps ratios stable), and so do the
end-to-end CLI runs (``OMP_NUM_THREADS=1``). Absolute seconds depend on the machine's load;
the ratios (to a gradient, to a loop, to power iteration, to a training step, to plain
cross-entropy) are what the targets are stated in. Each section prints a table and everything
goes to one JSON file. Synthetic checkpoints and data (timm with ``pretrained=False``); no
network.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.func import functional_call  # noqa: E402

from benchmarks import _fixtures as fx  # noqa: E402
from benchmarks import _speed  # noqa: E402
from hessaudit.hessian.version import VERSIONS, set_engine_version  # noqa: E402

torch.set_num_threads(1)
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


# --------------------------------------------------------------------------- helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after one warm-up."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def table(title: str, header: list[str], rows: list[list[object]]) -> None:
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.3e}"
        return str(v)

    cells = [header] + [[fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n## {title}\n")
    for k, r in enumerate(cells):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
        if k == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    sys.stdout.flush()


def model_and_batch(name: str, n: int, device: torch.device):
    torch.manual_seed(0)
    model = fx.perturbed(fx.build(name)).to(device)
    x, y = fx.batch(n)
    return model, x.to(device), y.to(device)


def mid_layer(model: torch.nn.Module) -> str:
    names = [n for n, p in model.named_parameters() if p.ndim >= 2]
    return names[len(names) // 2]


# --------------------------------------------------------------------------- HVP cost
def bench_hvp(args, device) -> dict:
    from hessaudit.hessian import BlockGaussNewton, BlockHessian

    rows, out = [], {}
    n = 8 if args.quick else 32
    for name in ["small_cnn", "resnet18", "vit_small"]:
        model, x, y = model_and_batch(name, n, device)
        params = {k: p.detach() for k, p in model.named_parameters()}
        layer = mid_layer(model)
        g = torch.Generator().manual_seed(0)
        full_v = {k: torch.randn(p.shape, generator=g).to(device) for k, p in params.items()}
        u = torch.randn(params[layer].numel(), generator=g).to(device)

        def loss_of(ps):
            return F.cross_entropy(functional_call(model, ps, (x,)), y)

        def gradient():
            ps = {k: p.requires_grad_(True) for k, p in
                  ((k, p.clone()) for k, p in params.items())}
            torch.autograd.grad(loss_of(ps), list(ps.values()))

        def full_autograd():
            ps = {k: p.clone().requires_grad_(True) for k, p in params.items()}
            grads = torch.autograd.grad(loss_of(ps), list(ps.values()), create_graph=True)
            dot = sum((gr * full_v[k]).sum() for k, gr in zip(ps, grads, strict=True))
            torch.autograd.grad(dot, list(ps.values()))

        def full_func():
            torch.func.jvp(torch.func.grad(loss_of), (params,), (full_v,))

        fresh = {
            "layer_autograd": BlockHessian(model, [(x, y)], layer),
            "layer_func": BlockHessian(model, [(x, y)], layer, backend="func"),
            "layer_autograd_cached": BlockHessian(model, [(x, y)], layer, cache_graph=True),
        }
        piecewise = name != "vit_small"
        if piecewise:
            fresh["layer_gauss_newton_cached"] = BlockGaussNewton(
                model, [(x, y)], layer, cache_graph=True
            )
        t = {"gradient": timed(gradient, args.repeats, device),
             "full_autograd": timed(full_autograd, args.repeats, device),
             "full_func": timed(full_func, args.repeats, device)}
        for key, op in fresh.items():
            t[key] = timed(lambda op=op: op.matvec(u), args.repeats, device)
        # What measure uses for iterative estimates: cached Gauss-Newton on piecewise-linear
        # nets (exact there), cached double backward otherwise.
        picked = "layer_gauss_newton_cached" if piecewise else "layer_autograd_cached"
        ratios = {k: v / t["gradient"] for k, v in t.items()}
        out[name] = {"layer": layer, "batch": n, "seconds": t, "ratio_to_gradient": ratios,
                     "picked": picked, "picked_ratio": ratios[picked],
                     "target_met": ratios[picked] <= 2.5}
        for k in t:
            if k != "gradient":
                rows.append([name, k, t[k], ratios[k], "<- picked" if k == picked else ""])
    table(f"HVP cost / gradient cost (batch {n}, layer = middle weight tensor)",
          ["model", "product", "seconds", "x gradient", ""], rows)
    return out


# --------------------------------------------------------------------------- per-example
def bench_per_example(args, device) -> dict:
    from hessaudit.hessian import (
        BlockHessian,
        per_example_directional_second_derivative,
        per_example_gauss_newton_forms,
        per_example_hvp,
    )

    out, rows = {}, []
    n = 32
    for name in ["small_cnn", "resnet18"]:
        model, x, y = model_and_batch(name, n, device)
        layer = mid_layer(model)
        size = dict(model.named_parameters())[layer].numel()
        g = torch.Generator().manual_seed(1)
        v = torch.randn(size, generator=g).to(device) * 1e-2
        U = v.expand(n, -1).contiguous()

        def loop_forms():
            return torch.stack([
                v @ BlockHessian(model, [(x[i:i + 1], y[i:i + 1])], layer).matvec(v)
                for i in range(n)
            ])

        def loop_hvp():
            return torch.stack([
                BlockHessian(model, [(x[i:i + 1], y[i:i + 1])], layer).matvec(U[i])
                for i in range(n)
            ])

        cases = {
            "hvp: vmap": lambda: per_example_hvp(model, x, y, layer, U),
            "hvp: loop": loop_hvp,
            "forms: forward-over-forward": lambda: per_example_directional_second_derivative(
                model, x, y, layer, v),
            "forms: Gauss-Newton JVP": lambda: per_example_gauss_newton_forms(
                model, x, y, layer, v),
            "forms: loop of HVPs": loop_forms,
        }
        reps = max(1, args.repeats // 2)
        t = {k: timed(f, reps, device) for k, f in cases.items()}
        hv_vec, hv_loop = cases["hvp: vmap"](), cases["hvp: loop"]()
        f_vec, f_loop = cases["forms: forward-over-forward"](), cases["forms: loop of HVPs"]()
        agree_h = float((hv_vec - hv_loop).norm() / hv_loop.norm())
        agree_f = float((f_vec - f_loop).abs().max() / f_loop.abs().max())
        agree_max = abs(float(f_vec.max()) - float(f_loop.max())) / abs(float(f_loop.max()))
        res = {
            "layer": layer, "batch": n, "seconds": t,
            "speedup_hvp": t["hvp: loop"] / t["hvp: vmap"],
            "speedup_forms": t["forms: loop of HVPs"] / t["forms: forward-over-forward"],
            "speedup_forms_jvp": t["forms: loop of HVPs"] / t["forms: Gauss-Newton JVP"],
            "rel_diff_hvp": agree_h, "rel_diff_forms": agree_f, "rel_diff_max": agree_max,
        }
        res["target_met"] = res["speedup_forms"] >= 5 and res["speedup_hvp"] >= 5
        out[name] = res
        rows += [[name, k, t[k]] for k in t]
        rows.append([name, "speed-up (hvp / forms / GN forms)",
                     f"{res['speedup_hvp']:.1f}x / {res['speedup_forms']:.1f}x / "
                     f"{res['speedup_forms_jvp']:.1f}x"])
        rows.append([name, "rel. diff (hvp / forms / max)",
                     f"{agree_h:.1e} / {agree_f:.1e} / {agree_max:.1e}"])
    table("Per-example block Hessians at batch 32: vectorized vs Python loop",
          ["model", "case", "seconds"], rows)
    return out


# --------------------------------------------------------------------------- eigenvalue
def _first_within(values: list[float], ref: float, rtol: float) -> int | None:
    """1-based index from which every value is within rtol of ref."""
    hit = None
    for i, val in enumerate(values, start=1):
        within = abs(val - ref) <= rtol * abs(ref)
        hit = (hit or i) if within else None
    return hit


def bench_eig(args, device) -> dict:
    from hessaudit.hessian import (
        BlockGaussNewton,
        BlockHessian,
        lanczos_top_eigenvalue,
        lanczos_tridiagonal,
        power_iteration,
    )
    from hessaudit.hessian._util import random_normal

    out, rows = {}, []
    cases = [("small_cnn", None), ("resnet18", "layer4.1.conv2.weight"),
             ("resnet18", "layer1.0.conv1.weight"), ("vit_small", None)]
    if args.quick:
        cases = cases[:2]
    for name, layer in cases:
        model, x, y = model_and_batch(name, 32, device)
        layers = [n for n, p in model.named_parameters() if p.ndim >= 2]
        for lay in [layer] if layer else [layers[0], layers[len(layers) // 2], layers[-1]]:
            if name == "vit_small":
                op = BlockHessian(model, [(x, y)], lay, cache_graph=True)
            else:
                op = BlockGaussNewton(model, [(x, y)], lay, cache_graph=True)
            size = op.size
            # converged reference: 120 Lanczos steps
            ref_gen = torch.Generator().manual_seed(123)
            v0 = random_normal(size, generator=ref_gen, dtype=op.dtype, device=op.device)
            tri = lanczos_tridiagonal(op.matvec, v0, steps=min(120, size))
            m = int(tri.info.lengths[0])
            a, b = tri.alphas[0, :m], tri.betas[0, : m - 1]
            ritz = []
            for j in range(1, m + 1):
                T = torch.diag(a[:j]) + torch.diag(b[: j - 1], 1) + torch.diag(b[: j - 1], -1)
                ritz.append(float(torch.linalg.eigvalsh(T).max()))
            ref = ritz[-1]
            # Lanczos and power iteration from the same seed, trajectories recorded
            power_vals: list[float] = []

            def recording(q, op=op):
                w = op.matvec(q)
                power_vals.append(float((q * w).sum()))
                return w

            def run_power():
                power_vals.clear()
                return power_iteration(
                    recording, size, generator=torch.Generator().manual_seed(7), max_iters=300,
                    tol=1e-7, dtype=op.dtype, device=op.device)

            lz_gen = torch.Generator().manual_seed(7)
            lz_v0 = random_normal(size, generator=lz_gen, dtype=op.dtype, device=op.device)
            lz = lanczos_tridiagonal(op.matvec, lz_v0, steps=min(60, size))
            mm = int(lz.info.lengths[0])
            la, lb = lz.alphas[0, :mm], lz.betas[0, : mm - 1]
            lz_vals = []
            for j in range(1, mm + 1):
                T = torch.diag(la[:j]) + torch.diag(lb[: j - 1], 1) + torch.diag(lb[: j - 1], -1)
                lz_vals.append(float(torch.linalg.eigvalsh(T).max()))
            run_power()
            k_lz = _first_within(lz_vals, ref, 1e-3)
            k_pw = _first_within(power_vals, ref, 1e-3)
            # wall time to that many products (fixed step count, no early stop)
            t_lz = timed(lambda k=k_lz or mm, op=op: lanczos_top_eigenvalue(
                op.matvec, size, generator=torch.Generator().manual_seed(7), max_steps=k,
                tol=0.0, dtype=op.dtype, device=op.device), 1, device)
            t_pw = timed(lambda k=k_pw or 300, op=op: power_iteration(
                op.matvec, size, generator=torch.Generator().manual_seed(7), max_iters=k,
                tol=0.0, residual_tol=0.0, dtype=op.dtype, device=op.device), 1, device)
            ratio = (k_pw / k_lz) if (k_pw and k_lz) else math.inf
            key = f"{name}:{lay}"
            out[key] = {"reference": ref, "hvps_lanczos": k_lz, "hvps_power": k_pw,
                        "seconds_lanczos": t_lz, "seconds_power": t_pw,
                        "hvp_ratio": ratio, "size": size}
            rows.append([name, lay, size, k_lz, k_pw, f"{ratio:.1f}x", t_lz, t_pw])
    ratios = [r["hvp_ratio"] for r in out.values()]
    med = statistics.median(ratios)
    out["_summary"] = {"median_hvp_ratio": med, "min_hvp_ratio": min(ratios),
                       "target_met": med >= 3}
    table("Top eigenvalue to 1e-3 relative error (batch 32): Lanczos vs power iteration",
          ["model", "layer", "size", "HVPs Lanczos", "HVPs power", "ratio", "s Lanczos",
           "s power"], rows)
    print(f"\nmedian HVP ratio power/Lanczos: {med:.2f}x (min {min(ratios):.2f}x)")
    return out


# --------------------------------------------------------------------------- quadrature
def bench_quadrature(args, device) -> dict:
    from torch import nn

    from hessaudit.hessian import BlockHessian, lanczos_tridiagonal
    from hessaudit.hessian.lanczos import _positive_estimate

    torch.manual_seed(0)
    nets = {
        "tanh_cnn": nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.AvgPool2d(4),
            nn.Conv2d(8, 16, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(64, 10)),
        "gelu_mlp": nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 24), nn.GELU(),
                                  nn.Linear(24, 24), nn.SiLU(), nn.Linear(24, 10)),
    }
    steps_grid = [5, 10, 15, 20, 30, 40, 60, 80]
    out, rows = {}, []
    for name, net in nets.items():
        net = net.double().eval()
        g = torch.Generator().manual_seed(2)
        x = torch.randn(16, 3, 8 if name == "gelu_mlp" else 16, 8 if name == "gelu_mlp" else 16,
                        generator=g, dtype=torch.float64)
        y = torch.randint(0, 10, (16,), generator=g)
        for layer in [n for n, p in net.named_parameters() if p.ndim >= 2]:
            size = dict(net.named_parameters())[layer].numel()
            if size > (800 if args.quick else 2500):
                continue
            for scope, batch in [("example", (x[:1], y[:1])), ("mean", (x, y))]:
                op = BlockHessian(net, [batch], layer)
                dense = op.to_dense()
                dense = (dense + dense.T) / 2
                lam, Q = torch.linalg.eigh(dense)
                v = torch.randn(size, generator=g, dtype=torch.float64)
                exact = float(v @ (Q * lam.clamp_min(0)) @ Q.T @ v)
                tri = lanczos_tridiagonal(op.matvec, v, steps=min(max(steps_grid), size))
                m = int(tri.info.lengths[0])
                errs = {}
                for s in steps_grid:
                    j = min(s, m)
                    a, b = tri.alphas[:, :j], tri.betas[:, : j - 1]
                    T = torch.diag_embed(a) + torch.diag_embed(b, 1) + torch.diag_embed(b, -1)
                    est = float(_positive_estimate(T, v.square().sum()[None])[0])
                    errs[s] = abs(est - exact) / abs(exact)
                key = f"{name}:{layer}:{scope}"
                out[key] = {"size": size, "exact": exact, "rel_error_by_steps": errs,
                            "krylov_steps": m}
                rows.append([name, layer, scope, size] + [errs[s] for s in steps_grid])
    med = {s: statistics.median(r["rel_error_by_steps"][s] for r in out.values())
           for s in steps_grid}
    worst = {s: max(r["rel_error_by_steps"][s] for r in out.values()) for s in steps_grid}
    out["_summary"] = {"median": med, "worst": worst}
    rows.append(["median", "", "", ""] + [med[s] for s in steps_grid])
    rows.append(["worst", "", "", ""] + [worst[s] for s in steps_grid])
    table("Positive-part quadratic form: relative error vs Lanczos steps (float64, dense "
          "reference)", ["net", "layer", "Hessian", "size"] + [f"m={s}" for s in steps_grid],
          rows)
    return out


# --------------------------------------------------------------------------- end to end
_PEAK = (
    "import resource, subprocess, sys, time; t = time.perf_counter(); "
    "rc = subprocess.call(sys.argv[1:]); w = time.perf_counter() - t; "
    "print('BENCH', rc, w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)

_TRAIN_STEP = """
import sys, torch
sys.path.insert(0, {root!r})
torch.set_num_threads(1)
from benchmarks import _fixtures as fx
model = fx.build({name!r}).train()
opt = torch.optim.Adam(model.parameters(), 1e-4)
x, y = fx.batch(32)
for _ in range(2):
    opt.zero_grad(); torch.nn.functional.cross_entropy(model(x), y).backward(); opt.step()
"""


def _run_measured(cmd: list[str]) -> tuple[int, float, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore"}
    res = subprocess.run([sys.executable, "-c", _PEAK, *cmd], capture_output=True, text=True,
                         env=env, cwd=str(HERE.parent))
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("BENCH")]
    if not line:
        raise RuntimeError(f"benchmark command failed: {' '.join(cmd)}\n{res.stderr[-2000:]}")
    _, rc, wall, rss_kb = line[-1].split()
    if int(rc) != 0:
        raise RuntimeError(f"command exited {rc}: {' '.join(cmd)}\n{res.stderr[-2000:]}")
    return int(rc), float(wall), float(rss_kb) / 1024.0


def _measure_cmd(files: dict, model: str, out_json: Path, extra: list[str],
                 version: str = "new") -> list[str]:
    from benchmarks._speed import CLI

    return [sys.executable, "-c", CLI, version, "measure", files["pretrained"],
            files["finetuned"], "--model", model, "--data", files["data"], "--json",
            str(out_json), "--input-size", "32", "--quiet", *extra]


def bench_end_to_end(args, device) -> dict:
    out, rows = {}, []
    tmp = Path(tempfile.mkdtemp(prefix="hessaudit-bench-"))
    examples = 64 if args.quick else 256
    dev = ["--device", args.device]
    for name, model_spec, extra, target in [
        ("resnet18", "resnet18", [], 60.0),
        ("vit_small", f"{HERE / '_fixtures.py'}:small_vit", ["--lanczos-steps", "40"], 600.0),
    ]:
        if args.quick and name == "vit_small":
            extra = ["--lanczos-steps", "10", "--samples", "16"]
        files = fx.write_audit_inputs(tmp / name, name, examples)
        _, wall, rss = _run_measured(_measure_cmd(files, model_spec, tmp / f"{name}.json",
                                                  extra + dev, args.engine_version))
        _, _, rss_train = _run_measured([sys.executable, "-c", _TRAIN_STEP.format(
            root=str(HERE.parent), name=name)])
        doc = json.loads((tmp / f"{name}.json").read_text())
        paths = sorted({row["engine_path"] for row in doc["layers"]})
        res = {"layers": len(doc["layers"]), "examples": doc["inputs"]["audit_examples"],
               "engine_paths": paths, "wall_s": wall, "peak_rss_mb": rss,
               "train_step_peak_rss_mb": rss_train, "memory_ratio": rss / rss_train,
               "target_s": target, "options": extra}
        res["target_met"] = wall <= target and (name != "resnet18" or res["memory_ratio"] <= 2)
        out[name] = res
        rows.append([name, res["layers"], res["examples"], "/".join(paths), wall, rss,
                     rss_train, res["memory_ratio"], "yes" if res["target_met"] else "no"])
    table("End to end: `hessaudit measure` (default settings, one intra-op thread)",
          ["model", "layers", "examples", "path", "wall s", "peak MB", "train-step MB",
           "mem ratio", "target met"], rows)
    return out


# --------------------------------------------------------------------------- JVP vs Lanczos
def bench_jvp_vs_lanczos(args, device) -> dict:
    from hessaudit.audit.layers import pair_layers
    from hessaudit.audit.measure import MeasureSettings, measure_layers
    from hessaudit.inputs.data import Dataset

    torch.manual_seed(0)
    pre_model = fx.build("resnet18").eval()
    pre = {k: v.clone() for k, v in pre_model.state_dict().items()}
    model = fx.perturbed(pre_model).to(device)
    n = 4 if args.quick else 8
    x, y = fx.batch(n)
    data = Dataset(x=x.to(device), y=y.to(device), num_classes=10, source="bench")
    pairing = pair_layers(pre, model.state_dict(),
                          parameter_names={k for k, _ in model.named_parameters()})
    wanted = ["conv1.weight", "layer2.0.conv1.weight", "layer4.1.conv2.weight", "fc.weight"]
    layers = [layer for layer in pairing.layers if layer.name in wanted]
    results, seconds = {}, {}
    for engine in ["jvp", "lanczos"]:
        settings = MeasureSettings(engine=engine, spectrum=False, batch_size=n)
        start = time.perf_counter()
        results[engine] = measure_layers(model, layers, data, settings,
                                         generator=torch.Generator().manual_seed(0))
        seconds[engine] = time.perf_counter() - start
    rows, out = [], {"examples": n, "seconds": seconds,
                     "speedup": seconds["lanczos"] / seconds["jvp"], "layers": {}}
    for a, b in zip(results["jvp"], results["lanczos"], strict=True):
        rel = abs(a.hcal - b.hcal) / max(abs(a.hcal), 1e-30)
        out["layers"][a.name] = {"jvp": a.hcal, "lanczos": b.hcal, "rel_diff": rel,
                                 "lanczos_steps": b.quad_steps}
        rows.append([a.name, a.hcal, b.hcal, rel, b.quad_steps])
    out["max_rel_diff"] = max(r["rel_diff"] for r in out["layers"].values())
    rows.append(["seconds", seconds["jvp"], seconds["lanczos"],
                 f"speed-up {out['speedup']:.0f}x", ""])
    table(f"ResNet-18, {n} examples, example-max: exact JVP path vs Lanczos quadrature",
          ["layer", "hcal jvp", "hcal lanczos", "rel diff", "Lanczos steps"], rows)
    return out


# --------------------------------------------------------------------------- trainer
def bench_trainer(args, device) -> dict:
    import hessaudit.zoo as zoo
    from hessaudit.robust.config import FinetuneConfig
    from hessaudit.robust.trainer import run_finetune

    tmp = Path(tempfile.mkdtemp(prefix="hessaudit-bench-train-"))
    pre = tmp / "pre.safetensors"
    zoo.pretrain_digits_cnn(pre, epochs=1)
    epochs = 2 if args.quick else 4
    configs = {
        "plain CE": dict(loss="ce", constraint="none"),
        "reweight + projection": dict(loss="reweight", constraint="frobenius", radius=1.0,
                                      inject_noise="symmetric:0.4", noise_matrix="injected"),
    }
    configs["plain CE"].update(inject_noise="symmetric:0.4")
    per_epoch: dict[str, list[float]] = {k: [] for k in configs}
    rounds = 1 if args.quick else 3
    for r in range(rounds):  # alternate A/B to spread the machine's noise evenly
        for key, extra in configs.items():
            cfg = FinetuneConfig(model="hessaudit.zoo:digits_cnn", pretrained=str(pre),
                                 data="digits", out=str(tmp / f"{r}-{len(per_epoch[key])}"),
                                 epochs=epochs, batch_size=32, device=args.device, **extra)
            result = run_finetune(cfg, overwrite=True)
            per_epoch[key] += [row["seconds"] for row in result.metrics[1:]]
    med = {k: statistics.median(v) for k, v in per_epoch.items()}
    overhead = med["reweight + projection"] / med["plain CE"] - 1
    out = {"median_epoch_seconds": med, "overhead": overhead, "epochs_timed": per_epoch,
           "target_met": overhead < 0.10}
    table("Trainer: seconds per epoch (digits CNN, digits, batch 32)",
          ["configuration", "median s/epoch"], [[k, v] for k, v in med.items()]
          + [["overhead", f"{100 * overhead:+.1f}%"]])
    return out


SECTIONS = {
    "hvp": bench_hvp,
    "per_example": bench_per_example,
    "eig": bench_eig,
    "quadrature": bench_quadrature,
    "end_to_end": bench_end_to_end,
    "jvp_vs_lanczos": bench_jvp_vs_lanczos,
    "trainer": bench_trainer,
    "speed_jvp": _speed.bench_speed_jvp,
    "speed_lanczos": _speed.bench_speed_lanczos,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out", default=str(HERE / "results.json"))
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads of the speed sections (the issue: 1 and 2)")
    parser.add_argument("--engine-version", choices=VERSIONS, default="new",
                        help="engine for every section but the speed ones, which run both")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 7)
    set_engine_version(args.engine_version)
    device = torch.device(args.device)
    results = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "engine_version": args.engine_version,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "torch": torch.__version__,
                    "device": str(device), "threads": torch.get_num_threads(),
                    "load_average": os.getloadavg()},
        "sections": {},
    }
    for name in [s for s in args.only.split(",") if s]:
        start = time.perf_counter()
        results["sections"][name] = SECTIONS[name](args, device)
        results["sections"][name]["_section_seconds"] = time.perf_counter() - start
        Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
