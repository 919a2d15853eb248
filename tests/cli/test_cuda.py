"""CPU vs CUDA: every engine path, form and reduction agrees; ``finetune`` runs on CUDA.

Marked ``cuda``: these tests skip cleanly on a machine without a GPU, and run (all of them, in
under a minute) from ``benchmarks/gpu_check.sh`` on the first machine that has one. Each test
runs ``hessaudit measure`` twice through the CLI on the same files, ``--device cpu`` and
``--device cuda:0``, and compares the audit JSONs layer by layer:

* float64: 1e-10 relative on every exact quantity (the JVP path, the raw and cross forms, the
  distances) and on the Lanczos positive part when both runs took the same number of steps
  (same Krylov space up to round-off); when the step counts differ, both values are within
  their certified tolerance of the truth, so they agree to 2 * tol;
* float32: 1e-4 relative (accumulation order differs between the CPU and cuBLAS kernels).

``HESSAUDIT_CUDA_TEST_DEVICE`` (default ``cuda:0``) names the second device; setting it to
``cpu`` dry-runs the comparison logic on a machine without a GPU.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from hessaudit.cli import main
from hessaudit.inputs.checkpoints import save_checkpoint

DEVICE = os.environ.get("HESSAUDIT_CUDA_TEST_DEVICE", "cuda:0")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(),
                       reason="no CUDA device"),
]

#: A ReLU net (exact JVP path) and a smooth one (Lanczos path), with a new head each.
NETS = '''
import torch
from torch import nn


def relu_net(num_classes=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2),
                         nn.ReLU(), nn.Flatten(), nn.Linear(16, num_classes))


def smooth_net(num_classes=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.GELU(), nn.Conv2d(4, 4, 3, stride=2),
                         nn.Tanh(), nn.Flatten(), nn.Linear(16, num_classes))
'''
EXACT_KEYS = ("quad_raw", "dist_fro", "cross")
RTOL = {"float64": 1e-10, "float32": 1e-4}


def _files(tmp_path: Path, net: str) -> list[str]:
    namespace: dict = {}
    exec(NETS, namespace)
    ft = namespace[net]().state_dict()
    g = torch.Generator().manual_seed(1)
    pre = {k: t + 0.1 * torch.randn(t.shape, generator=g) for k, t in ft.items()}
    (tmp_path / "nets.py").write_text(NETS)
    save_checkpoint(tmp_path / "pre.safetensors", pre)
    save_checkpoint(tmp_path / "ft.safetensors", ft)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.normal(size=(40, 1, 6, 6)).astype("float32"),
             y=rng.integers(0, 3, size=40))
    return [str(tmp_path / "pre.safetensors"), str(tmp_path / "ft.safetensors"),
            "--model", f"{tmp_path / 'nets.py'}:{net}", "--data", str(tmp_path / "data.npz")]


def _audit(args: list[str], device: str, capsys) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(["measure", *args, "--device", device, "--json", "-", "--quiet"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0, out
    return json.loads(out)


def _close(a: float | None, b: float | None, rtol: float) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=rtol, abs_tol=rtol * 1e-6)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("form", ["positive", "raw", "cross"])
@pytest.mark.parametrize("reduce", ["example-max", "batch-max", "mean"])
@pytest.mark.parametrize(("net", "engine"), [("relu_net", "jvp"), ("smooth_net", "lanczos")])
def test_cpu_and_cuda_audits_agree(tmp_path, capsys, net, engine, reduce, form, dtype):
    args = [*_files(tmp_path, net), "--engine", engine, "--reduce", reduce, "--form", form,
            "--dtype", dtype, "--batch-size", "16"]
    cpu, other = _audit(args, "cpu", capsys), _audit(args, DEVICE, capsys)
    rtol = RTOL[dtype]
    assert [r["name"] for r in cpu["layers"]] == [r["name"] for r in other["layers"]]
    for a, b in zip(cpu["layers"], other["layers"], strict=True):
        for key in EXACT_KEYS:
            if key in a:
                assert _close(a[key], b[key], rtol), (a["name"], key, a[key], b[key])
        same_steps = a.get("quad_steps") == b.get("quad_steps")
        tol = rtol if engine == "jvp" or same_steps else max(rtol, 2 * cpu["settings"]["tol"])
        for key in ("quad_pos", "hcal"):
            assert _close(a[key], b[key], tol), (a["name"], key, a[key], b[key])
    for key in ("train_loss", "C"):
        assert _close(cpu[key], other[key], rtol), (key, cpu[key], other[key])
    loose = rtol if engine == "jvp" else max(rtol, 2 * cpu["settings"]["tol"])
    for key in ("hessian_term", "bound"):
        assert _close(cpu[key], other[key], loose), (key, cpu[key], other[key])


def test_finetune_runs_on_cuda_and_stays_in_its_ball(tmp_path, capsys):
    args = _files(tmp_path, "relu_net")
    pre, data, factory = args[0], args[5], args[3]
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", "--model", factory, "--pretrained", pre, "--data", data,
              "--out", str(out), "--epochs", "2", "--radius", "0.5", "--head-radius", "1",
              "--inject-noise", "symmetric:0.2", "--noise-matrix", "injected",
              "--device", DEVICE, "--quiet"])
    assert exit_info.value.code == 0, capsys.readouterr().err
    from safetensors.torch import load_file
    final, start = load_file(out / "final.safetensors"), load_file(pre)
    for name, tensor in final.items():
        if tensor.ndim >= 2 and not name.startswith("5."):  # the head has its own radius
            assert float((tensor.double() - start[name].double()).norm()) <= 0.5 * (1 + 1e-5)
