"""Issue 7, faults: atomic outputs, SIGKILL + ``--resume``, Ctrl-C, out of memory.

The kill and Ctrl-C tests start real ``python -m hessaudit`` processes (one thread each, so
that the interrupted run and the reference run do the same floating-point work).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from hessaudit.cli import main

ZOO = "hessaudit.zoo:digits_cnn"
ROOT = Path(__file__).resolve().parents[2]


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return int(exc.value.code), captured.out, captured.err


def leftovers(folder: Path) -> list[str]:
    """Temporary files left by an interrupted atomic write."""
    return sorted(p.name for p in folder.rglob("*.tmp"))


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits_pretrained(tmp_path_factory) -> Path:
    from hessaudit.inputs.checkpoints import save_checkpoint
    from hessaudit.zoo import digits_cnn

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = digits_cnn(num_classes=5)
    path = tmp_path_factory.mktemp("faults_pre") / "pre.safetensors"
    save_checkpoint(path, model.state_dict())
    return path


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("HESSAUDIT_DEBUG", None)
    return env


def _interactive_sigint() -> None:
    # Ctrl-C at a terminal: SIGINT is not ignored. A job started in the background of a
    # non-interactive shell (``bash .ci/run &``) inherits SIGINT ignored, and Python then (rightly)
    # leaves it ignored: these tests are about the terminal case.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args: list) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hessaudit", *map(str, args)],
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_interactive_sigint,
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the process ended before {path} appeared:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.005)


def _finetune_args(pre: Path, out: Path) -> list:
    return [
        "finetune", "--model", ZOO, "--pretrained", pre, "--data", "digits",
        "--samples", "1000", "--epochs", "6", "--batch-size", "32", "--lr", "3e-3",
        "--inject-noise", "symmetric:0.2", "--noise-matrix", "injected", "--seed", "5",
        "--out", out, "--quiet",
    ]


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


# --------------------------------------------------------------------------- atomic writes


def test_atomic_write_failure_keeps_the_old_file(tmp_path, monkeypatch) -> None:
    from hessaudit import _atomic

    target = tmp_path / "audit.json"
    target.write_text("old\n")
    real_write = Path.write_text

    def half_then_crash(self, text, *args, **kwargs):
        real_write(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_crash)
    with pytest.raises(OSError):
        _atomic.write_text(target, "new content that is long enough\n")
    monkeypatch.undo()
    assert target.read_text() == "old\n"
    assert leftovers(tmp_path) == []


def test_save_checkpoint_failure_keeps_the_old_file(tmp_path, monkeypatch) -> None:
    import safetensors.torch

    from hessaudit.errors import HessauditError
    from hessaudit.inputs.checkpoints import save_checkpoint

    target = tmp_path / "w.safetensors"
    save_checkpoint(target, {"a": torch.ones(3)})
    before = target.read_bytes()

    def crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 10)  # half-written
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(target, {"a": torch.zeros(3)})
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert leftovers(tmp_path) == []
    with pytest.raises(HessauditError):  # and a failed first write leaves nothing at all
        monkeypatch.setattr(safetensors.torch, "save_file", _raise_value_error)
        save_checkpoint(tmp_path / "new.safetensors", {"a": torch.zeros(3)})
    assert not (tmp_path / "new.safetensors").exists()
    assert leftovers(tmp_path) == []


def _raise_value_error(*args, **kwargs):
    raise ValueError("disk on fire")


def test_measure_crash_while_writing_csv_leaves_no_partial_file(
    tiny_checkpoints, tmp_path, monkeypatch, capsys
) -> None:
    import pandas as pd

    csv = tmp_path / "layers.csv"
    csv.write_text("old,csv\n")
    real_to_csv = pd.DataFrame.to_csv

    def half_then_crash(self, path, *args, **kwargs):
        real_to_csv(self.iloc[:1], path, *args, **kwargs)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_crash)
    code, _, err = run_cli(
        ["measure", tiny_checkpoints.pretrained, tiny_checkpoints.finetuned,
         "--model", tiny_checkpoints.spec, "--data", "digits", "--samples", "16",
         "--no-spectrum", "--quiet", "--csv", csv],
        capsys,
    )
    assert code == 1 and "Traceback" not in err
    assert csv.read_text() == "old,csv\n"
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------- out of memory


@pytest.mark.parametrize(
    "exc",
    [
        MemoryError(),
        RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 8 GiB total)"),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:114] data. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 137438953472 bytes. Error code 12 (Cannot allocate "
            "memory)"
        ),
    ],
    ids=["MemoryError", "cuda-oom", "cpu-allocator"],
)
def test_out_of_memory_in_measure_suggests_batch_size(
    exc, tiny_checkpoints, tmp_path, monkeypatch, capsys
) -> None:
    import hessaudit.audit.run

    def oom(*args, **kwargs):
        raise exc

    monkeypatch.setattr(hessaudit.audit.run, "per_example_losses", oom)
    out = tmp_path / "audit.json"
    code, _, err = run_cli(
        ["measure", tiny_checkpoints.pretrained, tiny_checkpoints.finetuned,
         "--model", tiny_checkpoints.spec, "--data", "digits", "--samples", "16",
         "--no-spectrum", "--quiet", "--json", out],
        capsys,
    )
    assert code == 1
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: out of memory")
    assert "--batch-size" in err
    assert not out.exists()


def test_out_of_memory_in_finetune(digits_pretrained, tmp_path, monkeypatch, capsys) -> None:
    import hessaudit.robust.epoch_loop as epoch_loop

    if hasattr(torch.cuda, "OutOfMemoryError"):
        exc: Exception = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
    else:  # pragma: no cover - old torch
        exc = RuntimeError("CUDA out of memory")

    def oom(*args, **kwargs):
        raise exc

    monkeypatch.setattr(epoch_loop, "train_epoch", oom)
    code, _, err = run_cli(
        ["finetune", "--model", ZOO, "--pretrained", digits_pretrained, "--data", "digits",
         "--samples", "64", "--epochs", "1", "--loss", "ce", "--out", tmp_path / "run",
         "--quiet"],
        capsys,
    )
    assert code == 1 and "Traceback" not in err
    assert "out of memory" in err and "--batch-size" in err


# --------------------------------------------------------------------------- SIGKILL + resume


def test_sigkill_then_resume_matches_an_uninterrupted_run(
    digits_pretrained, tmp_path, one_thread, capsys
) -> None:
    killed = tmp_path / "killed"
    proc = _start(_finetune_args(digits_pretrained, killed))
    _wait_for(killed / "state.pt", proc)  # the first per-epoch checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "final.safetensors").exists(), "the run finished before the kill"
    # whatever the kill interrupted, every file in the run folder is complete
    from hessaudit.inputs.checkpoints import load_checkpoint

    if (killed / "last.safetensors").exists():  # written just after state.pt
        assert load_checkpoint(killed / "last.safetensors").tensors
    state = torch.load(killed / "state.pt", weights_only=True)
    assert state["epoch"] >= 1 and not state["finished"]
    import json

    json.loads((killed / "config.json").read_text())

    assert run_cli(["finetune", "--resume", killed, "--quiet"], capsys)[0] == 0
    reference = tmp_path / "reference"
    assert run_cli(_finetune_args(digits_pretrained, reference), capsys)[0] == 0

    got, want = _tensors(killed / "final.safetensors"), _tensors(reference / "final.safetensors")
    assert list(got) == list(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name
    resumes = json.loads((killed / "config.json").read_text())["resumes"]
    assert len(resumes) == 1 and resumes[0]["after_epoch"] >= 1


# --------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_during_finetune_points_at_the_last_checkpoint(
    digits_pretrained, tmp_path
) -> None:
    out = tmp_path / "run"
    proc = _start(_finetune_args(digits_pretrained, out))
    _wait_for(out / "state.pt", proc)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 10
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "last per-epoch checkpoint" in err and str(out / "state.pt") in err
    assert f"--resume {out}" in err
    assert leftovers(out) == []


SLOW_FACTORY = textwrap.dedent(
    """
    import os
    import time

    import torch
    from torch import nn


    class SlowNet(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
            self.pool = nn.AdaptiveAvgPool2d(2)
            self.fc = nn.Linear(16, num_classes)

        def forward(self, x):
            time.sleep(0.05)
            return self.fc(self.pool(torch.relu(self.conv1(x))).flatten(1))


    def make_slow(num_classes=10):
        ready = os.environ.get("HESSAUDIT_TEST_READY")
        if ready:
            open(ready, "w").close()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return SlowNet(num_classes)
    """
)


def test_ctrl_c_during_measure_writes_nothing(tmp_path, monkeypatch) -> None:
    import importlib.util

    from hessaudit.inputs.checkpoints import save_checkpoint

    factory = tmp_path / "slownet.py"
    factory.write_text(SLOW_FACTORY)
    spec = importlib.util.spec_from_file_location("_slownet_for_sigint", factory)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    state = module.make_slow().state_dict()
    save_checkpoint(tmp_path / "pre.safetensors", state)
    save_checkpoint(tmp_path / "ft.safetensors", {k: v * 1.01 for k, v in state.items()})

    ready = tmp_path / "ready"
    monkeypatch.setenv("HESSAUDIT_TEST_READY", str(ready))
    out_json, out_csv = tmp_path / "audit.json", tmp_path / "layers.csv"
    proc = _start([
        "measure", tmp_path / "pre.safetensors", tmp_path / "ft.safetensors",
        "--model", f"{factory}:make_slow", "--data", "digits", "--quiet",
        "--json", out_json, "--csv", out_csv,
    ])
    _wait_for(ready, proc)
    time.sleep(0.3)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 10
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "nothing was written" in err
    assert not out_json.exists() and not out_csv.exists()
    assert leftovers(tmp_path) == []


INTERRUPTING_FACTORY = textwrap.dedent(
    """
    import os
    import signal
    import time

    import torch
    from torch import nn

    CALLS = [0]


    def ctrl_c():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(30)  # the KeyboardInterrupt is raised here


    class Net(nn.Module):
        def __init__(self, how, num_classes=2):
            super().__init__()
            self.how = how
            self.fc = nn.Linear(16, num_classes)

        def forward(self, x):
            CALLS[0] += 1
            if CALLS[0] == 2:  # the first forward is the input check; this one is the audit's
                if self.how == "exec":
                    exec("ctrl_c()")  # as namedtuple, numpy.f2py, scipy run code at import
                else:
                    try:
                        ctrl_c()
                    except BaseException:  # a library that swallows every exception
                        pass
            return self.fc(x.flatten(1))


    def in_exec(num_classes=2):
        torch.manual_seed(0)
        return Net("exec", num_classes)


    def swallowed(num_classes=2):
        torch.manual_seed(0)
        return Net("swallow", num_classes)
    """
)


def _interrupting_measure(tmp_path: Path, factory_name: str) -> list:
    """Arguments of a measure run whose model sends itself SIGINT in its second forward."""
    import numpy as np

    from hessaudit.inputs.checkpoints import save_checkpoint

    factory = tmp_path / "interrupting.py"
    factory.write_text(INTERRUPTING_FACTORY)
    state = {"fc.weight": torch.zeros(2, 16), "fc.bias": torch.zeros(2)}
    save_checkpoint(tmp_path / "pre.safetensors", state)
    save_checkpoint(tmp_path / "ft.safetensors", {k: v + 0.01 for k, v in state.items()})
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.normal(size=(8, 1, 4, 4)).astype(np.float32),
             y=np.arange(8) % 2)
    return [
        "measure", tmp_path / "pre.safetensors", tmp_path / "ft.safetensors",
        "--model", f"{factory}:{factory_name}", "--data", tmp_path / "data.npz", "--quiet",
        "--no-spectrum", "--json", tmp_path / "audit.json", "--csv", tmp_path / "layers.csv",
    ]


def _assert_interrupted(code: int, err: str, tmp_path: Path) -> None:
    assert code == 130, err
    assert "Traceback" not in err
    assert "nothing was written" in err
    assert not (tmp_path / "audit.json").exists() and not (tmp_path / "layers.csv").exists()
    assert leftovers(tmp_path) == []


def test_ctrl_c_inside_exec_code_exits_130(tmp_path) -> None:
    """A KeyboardInterrupt that leaves code run by exec() (namedtuple, numpy.f2py and scipy
    run such code while being imported) counts as "unhandled" for CPython even when caught:
    ``python -m hessaudit`` then killed itself with SIGINT at exit (return code -2)."""
    proc = _start(_interrupting_measure(tmp_path, "in_exec"))
    _, err = proc.communicate(timeout=60)
    _assert_interrupted(proc.returncode, err, tmp_path)


def test_ctrl_c_swallowed_on_its_way_up_still_exits_130(tmp_path, capsys) -> None:
    """Code that swallows the KeyboardInterrupt (a finalizer, a library's bare except) must
    not turn Ctrl-C into a completed audit, exit 0 and outputs written."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as at a terminal
    try:
        code, _, err = run_cli(_interrupting_measure(tmp_path, "swallowed"), capsys)
    finally:
        restored = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, previous)
    _assert_interrupted(code, err, tmp_path)
    assert restored is signal.default_int_handler  # the command restored the handler
