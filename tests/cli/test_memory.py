"""Issue 16, target 4: ``inspect`` (of safetensors files), ``compare``, ``report`` and ``--help``
stay light: no torch, timm or torchvision import (torch alone is about 650 MB of memory), and a
peak resident set under 300 MB. Run in a fresh interpreter, as a user's process would be.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.documents import VALID

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "timm", "torchvision")
PEAK_MB = 300

#: Each command runs in the same interpreter, in turn; after each, no heavy module may be loaded.
SCRIPT = """
import contextlib, io, json, sys
from hessaudit.cli import main

heavy = {heavy!r}
for args in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(args)
        except SystemExit as exc:
            assert exc.code == 0, (args, exc.code)
    loaded = [m for m in heavy if m in sys.modules]
    assert not loaded, (args, loaded)
# VmHWM: this process's own peak (ru_maxrss would report the parent's, inherited at fork);
# -1 where there is no /proc (not Linux)
try:
    with open("/proc/self/status") as status:
        print(next(int(l.split()[1]) // 1024 for l in status if l.startswith("VmHWM:")))
except OSError:
    print(-1)
"""


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    rng = np.random.default_rng(0)
    pre = {"conv.weight": rng.standard_normal((8, 3, 3, 3)).astype("float32"),
           "fc.weight": rng.standard_normal((10, 72)).astype("float32")}
    ft = {k: v + np.float32(0.1) for k, v in pre.items()}
    save_file(pre, str(tmp_path / "pre.safetensors"))
    save_file(ft, str(tmp_path / "ft.safetensors"))
    (tmp_path / "audit.json").write_text(json.dumps(VALID))
    return {name: str(tmp_path / name) for name in
            ("pre.safetensors", "ft.safetensors", "audit.json", "a.html", "d.json", "c.md")}


def _run(commands: list[list[str]]) -> int:
    """Run ``commands`` in one fresh interpreter; return its peak resident set in MB (-1:
    unknown)."""
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(heavy=HEAVY), json.dumps(commands)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split()[-1])


def test_the_light_commands_import_no_torch(files) -> None:
    f = files
    peak = _run([
        ["--help"],
        *[[command, "--help"] for command in ("inspect", "compare", "report")],
        ["inspect", f["pre.safetensors"], f["ft.safetensors"], "--include-bias",
         "--json", f["d.json"]],
        ["compare", f["audit.json"], f["audit.json"], "--summary-md", f["c.md"]],
        ["report", f["audit.json"], "--out", f["a.html"]],
    ])
    assert json.loads(Path(f["d.json"]).read_text())["layers"]
    assert Path(f["a.html"]).stat().st_size > 0
    assert peak < PEAK_MB, f"peak resident set {peak} MB"  # -1 (not Linux) passes


def test_the_check_can_fail(files, tmp_path) -> None:
    """``inspect`` of torch files needs torch: the script notices."""
    import torch
    from safetensors.numpy import load_file

    for name in ("pre", "ft"):
        state = load_file(files[f"{name}.safetensors"])
        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / f"{name}.pt")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(heavy=HEAVY),
         json.dumps([["inspect", str(tmp_path / "pre.pt"), str(tmp_path / "ft.pt")]])],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert proc.returncode != 0 and "['torch'" in proc.stderr, proc.stderr
