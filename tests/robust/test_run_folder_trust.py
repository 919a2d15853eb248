"""Issue 12 §7 and §11: run folders. A planted ``config.json`` runs no code, one writer per
folder, every interruption (kill at each phase, Ctrl-C, SIGTERM) is completed by ``--resume``,
and ``--radius-growth`` compounds over at most four stages on any architecture.

Through the CLI (``hessaudit.cli.main``) with the tiny factory model of ``conftest.py``; the
SIGTERM and SIGKILL tests start real ``python -m hessaudit`` processes.
"""

from __future__ import annotations

import json
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

ROOT = Path(__file__).resolve().parents[2]


class _Killed(BaseException):
    """Stands in for SIGKILL: nothing catches it, the process state is simply gone."""


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return int(exc.value.code), captured.out, captured.err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def finetune_args(spec: str, pre: Path, out: Path, *extra: str) -> list:
    return [
        "finetune", "--model", spec, "--pretrained", pre, "--data", "digits",
        "--samples", "48", "--epochs", "2", "--batch-size", "16", "--lr", "1e-2",
        "--inject-noise", "symmetric:0.3", "--noise-matrix", "injected", "--out", out,
        "--quiet", *extra,
    ]


def forget_factory(monkeypatch, path: Path) -> None:
    """Drop hessaudit's import cache of the factory file ``path`` (in-process runs), so that
    importing it again would really execute it."""
    stem = f"_hessaudit_factory_{path.resolve().stem}_"
    for name in [n for n in sys.modules if n.startswith(stem)]:
        monkeypatch.delitem(sys.modules, name)


def marker_factory(path: Path, marker: Path) -> str:
    """A factory file that writes ``marker`` when imported: proof that its code ran."""
    path.write_text(textwrap.dedent(f"""
        open({str(marker)!r}, "w").write("ran")
        from torch import nn


        def make(num_classes=10):
            return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))
    """))
    return f"{path}:make"


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- (a) trust


def test_changed_factory_file_refuses_resume_without_running_it(
    tiny_checkpoints, factory_file, tmp_path, monkeypatch, capsys
) -> None:
    out = tmp_path / "run"
    spec = tiny_checkpoints.spec
    assert run_cli(finetune_args(spec, tiny_checkpoints.pretrained, out, "--epochs", "1"),
                   capsys)[0] == 0
    recorded = json.loads((out / "config.json").read_text())["resolved"]["model_factory"]
    assert recorded["sha256"] == _sha(factory_file) and recorded["kind"] == "file"
    before = snapshot(out)

    # without --model on the command line the factory is not imported at all
    code, _, err = run_cli(["finetune", "--resume", out, "--epochs", "2"], capsys)
    line = one_error_line(err)
    assert code == 1 and "--model" in line and "factory" in line

    # the file changed (and would now leave a marker): refused before any import
    marker = tmp_path / "factory-ran"
    factory_file.write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n" + factory_file.read_text()
    )
    forget_factory(monkeypatch, factory_file)
    code, _, err = run_cli(["finetune", "--resume", out, "--model", spec, "--epochs", "2"],
                           capsys)
    line = one_error_line(err)
    assert code == 1 and "--model" in line and "changed" in line and "SHA-256" in line
    assert not marker.exists(), "the changed factory's code ran"
    assert snapshot(out) == before


@pytest.mark.parametrize("kind", ["file", "module"])
def test_planted_config_runs_no_code(tiny_checkpoints, tmp_path, monkeypatch, capsys,
                                     kind) -> None:
    """A run folder someone else wrote names a factory: hessaudit does not import it on the
    folder's word, nor, for a file, without a recorded SHA-256 that matches."""
    marker = tmp_path / "planted-ran"
    if kind == "file":
        spec = marker_factory(tmp_path / "planted.py", marker)
    else:
        marker_factory(tmp_path / "plantedmod.py", marker)
        monkeypatch.chdir(tmp_path)  # module factories are imported from the current folder
        spec = "plantedmod:make"
    planted = tmp_path / "planted-run"
    planted.mkdir()
    config = {
        "model": spec, "pretrained": str(tiny_checkpoints.pretrained), "data": "digits",
        "out": str(planted), "epochs": 2, "loss": "ce",
    }
    (planted / "config.json").write_text(json.dumps({
        "schema": "hessaudit.finetune/1", "config": config,
        "resolved": {"model_factory": None},
    }))
    before = snapshot(planted)

    code, _, err = run_cli(["finetune", "--resume", planted], capsys)
    line = one_error_line(err)
    assert code == 1 and "--model" in line
    assert not marker.exists()
    if kind == "file":  # confirmed, but config.json records no SHA-256 for the file
        code, _, err = run_cli(["finetune", "--resume", planted, "--model", spec], capsys)
        line = one_error_line(err)
        assert code == 1 and "--model" in line and "SHA-256" in line
        assert not marker.exists()
    assert snapshot(planted) == before
    assert sorted(p.name for p in planted.iterdir()) == ["config.json"]


def test_which_models_need_confirmation(tiny_checkpoints, tmp_path, capsys) -> None:
    from hessaudit.robust.trust import needs_confirmation

    assert not needs_confirmation("resnet18")
    assert not needs_confirmation("hessaudit.zoo:digits_cnn")
    for spec in ("net.py:make", "dir/net:make", "pkg.mod:make", "hessaudit.cli:main",
                 "hessaudit.zoo.x:make"):
        assert needs_confirmation(spec), spec
    # a planted hessaudit function with side effects is not called as a "factory"
    planted = tmp_path / "cli-run"
    planted.mkdir()
    config = {"model": "hessaudit.cli:main", "pretrained": str(tiny_checkpoints.pretrained),
              "data": "digits", "out": str(planted), "loss": "ce"}
    (planted / "config.json").write_text(json.dumps({"config": config, "resolved": {}}))
    code, _, err = run_cli(["finetune", "--resume", planted], capsys)
    assert code == 1 and "--model" in one_error_line(err)


def test_planted_allow_hub_needs_confirmation(tiny_checkpoints, tmp_path, capsys) -> None:
    planted = tmp_path / "hub-run"
    planted.mkdir()
    config = {"model": "test_resnet", "pretrained": str(tiny_checkpoints.pretrained),
              "data": "digits", "out": str(planted), "loss": "ce", "allow_hub": True}
    (planted / "config.json").write_text(json.dumps({"config": config, "resolved": {}}))
    code, _, err = run_cli(["finetune", "--resume", planted], capsys)
    assert code == 1 and "--allow-hub" in one_error_line(err)


# --------------------------------------------------------------------------- (b) locks


def test_second_writer_is_refused_naming_the_holder(tiny_checkpoints, tmp_path, capsys) -> None:
    """A lock held by another process (here: this one, through its own lock) stops a second
    finetune at once, for a new run and for --resume alike; nothing in the folder changes."""
    from hessaudit.robust._lock import run_folder_lock

    out = tmp_path / "run"
    spec = tiny_checkpoints.spec
    assert run_cli(finetune_args(spec, tiny_checkpoints.pretrained, out, "--epochs", "1"),
                   capsys)[0] == 0
    before = snapshot(out)
    with run_folder_lock(out):
        for args in (
            ["finetune", "--resume", out, "--model", spec, "--epochs", "2", "--quiet"],
            finetune_args(spec, tiny_checkpoints.pretrained, out, "--overwrite"),
        ):
            code, _, err = run_cli(args, capsys)
            line = one_error_line(err)
            assert code == 1 and f"pid {os.getpid()}" in line and str(out) in line
    assert snapshot(out) == before and not (out / ".lock").exists()

    fresh = tmp_path / "a" / "fresh"
    with run_folder_lock(fresh):
        code, _, err = run_cli(finetune_args(spec, tiny_checkpoints.pretrained, fresh), capsys)
        assert code == 1 and f"pid {os.getpid()}" in one_error_line(err)
        assert sorted(p.name for p in fresh.iterdir()) == [".lock"]
    assert not (tmp_path / "a").exists()  # the lock created the folders and removed them


def test_tune_folder_is_locked(tiny_checkpoints, tmp_path, capsys) -> None:
    pytest.importorskip("optuna")
    from hessaudit.robust._lock import run_folder_lock

    out = tmp_path / "search"
    with run_folder_lock(out):
        code, _, err = run_cli(
            ["tune", "--model", tiny_checkpoints.spec, "--pretrained",
             tiny_checkpoints.pretrained, "--data", "digits", "--samples", "48", "--trials",
             "1", "--loss", "ce", "--out", out, "--quiet"],
            capsys,
        )
        assert code == 1 and f"pid {os.getpid()}" in one_error_line(err)
        assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_planted_lock_symlink_is_not_written_through(tiny_checkpoints, tmp_path,
                                                     capsys) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("mine")
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").symlink_to(precious)
    code, _, err = run_cli(finetune_args(tiny_checkpoints.spec, tiny_checkpoints.pretrained,
                                         out), capsys)
    assert code == 1 and ".lock" in one_error_line(err)
    assert precious.read_text() == "mine"


# --------------------------------------------------------------------------- (c) kills


def _fault(monkeypatch, phase: str) -> None:
    """Make the run stop at ``phase`` the way a kill would (nothing after it runs)."""
    import hessaudit.robust.trainer as trainer
    from hessaudit.robust.run_folder import RunFolder

    real_metrics, real_save, real_json = (
        RunFolder.write_metrics, RunFolder.save_weights, RunFolder.write_json
    )

    def write_metrics(self, rows):
        if phase == "setup":  # config.json and noise.json are written, no epoch yet
            raise _Killed
        return real_metrics(self, rows)

    def save_weights(self, run, kind, **kwargs):
        if phase == "last-state" and kind == "last" and run.epoch == run.config.epochs:
            raise _Killed  # state.pt says "finished", last.safetensors is one epoch behind
        if phase == kind:  # mid-write: the atomic write's temporary file is left behind
            (self.path / f".{kind}.safetensors.killed.tmp").write_bytes(b"\0" * 64)
            raise _Killed
        return real_save(self, run, kind, **kwargs)

    def write_json(self, name, document):
        if phase == "marker" and name == "finished.json":
            raise _Killed
        return real_json(self, name, document)

    def audit(*args, **kwargs):
        raise _Killed

    monkeypatch.setattr(RunFolder, "write_metrics", write_metrics)
    monkeypatch.setattr(RunFolder, "save_weights", save_weights)
    monkeypatch.setattr(RunFolder, "write_json", write_json)
    if phase == "audit":
        monkeypatch.setattr(trainer, "audit_final_checkpoint", audit)


@pytest.mark.parametrize("phase", ["setup", "last-state", "final", "best", "audit", "marker"])
def test_kill_at_each_phase_then_resume_completes(tiny_checkpoints, tmp_path, monkeypatch,
                                                  capsys, phase) -> None:
    out = tmp_path / "run"
    spec = tiny_checkpoints.spec
    args = finetune_args(spec, tiny_checkpoints.pretrained, out, "--audit",
                         "--audit-samples", "4")
    with monkeypatch.context() as patch:
        _fault(patch, phase)
        with pytest.raises(_Killed):
            main([str(a) for a in args])
    capsys.readouterr()
    assert not (out / "finished.json").exists()
    (out / ".lock").write_text("999999\n")  # what a killed holder leaves: a stale lock

    code, _, err = run_cli(["finetune", "--resume", out, "--model", spec], capsys)
    assert code == 0, err
    for name in ("final.safetensors", "best.safetensors", "last.safetensors", "audit.json",
                 "metrics.csv", "config.json", "noise.json", "finished.json"):
        assert (out / name).is_file(), name
    assert leftovers(out) == [] and not (out / ".lock").exists()
    finished = json.loads((out / "finished.json").read_text())
    assert finished["epochs_run"] == 2 and finished["audit"] == {"samples": 4}

    # the final weights are the last epoch's, as an uninterrupted run leaves them
    from safetensors.torch import load_file

    state = torch.load(out / "state.pt", weights_only=True)
    assert state["epoch"] == 2
    for name in ("final", "best", "last"):
        got = load_file(str(out / f"{name}.safetensors"))
        assert got.keys() == state["model"].keys()
        assert all(torch.equal(got[k], state["model"][k]) for k in got), name
    assert len(json.loads((out / "audit.json").read_text())["layers"]) > 0

    # and now it is finished
    code, _, err = run_cli(["finetune", "--resume", out, "--model", spec], capsys)
    assert code == 1 and "nothing to do" in one_error_line(err)


def test_ctrl_c_during_the_audit_is_resumable(tiny_checkpoints, tmp_path, monkeypatch,
                                              capsys) -> None:
    """The issue's case: Ctrl-C in finetune --audit's audit phase said "continue with
    --resume", which then refused. The hint now names every option --resume needs."""
    import hessaudit.robust.trainer as trainer

    out = tmp_path / "run"
    spec = tiny_checkpoints.spec

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(trainer, "audit_final_checkpoint", interrupted)
        code, _, err = run_cli(finetune_args(spec, tiny_checkpoints.pretrained, out, "--audit"),
                               capsys)
    assert code == 130 and "Traceback" not in err
    hint = f"hessaudit finetune --resume {out} --model {spec}"
    assert hint in err
    code, _, err = run_cli(hint.split()[1:], capsys)
    assert code == 0, err
    assert (out / "audit.json").is_file() and (out / "finished.json").is_file()


def test_audit_added_on_resume_of_a_finished_run(tiny_checkpoints, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    spec = tiny_checkpoints.spec
    assert run_cli(finetune_args(spec, tiny_checkpoints.pretrained, out), capsys)[0] == 0
    final = (out / "final.safetensors").read_bytes()
    assert not (out / "audit.json").exists()
    code, _, err = run_cli(["finetune", "--resume", out, "--model", spec, "--audit",
                            "--audit-samples", "4", "--quiet"], capsys)
    assert code == 0, err
    assert (out / "audit.json").is_file()
    assert (out / "final.safetensors").read_bytes() == final
    assert json.loads((out / "finished.json").read_text())["audit"] == {"samples": 4}


# --------------------------------------------------------------------------- real signals

SLOW_TINY = textwrap.dedent(
    """
    import os
    import time

    import torch
    from torch import nn


    class SlowTiny(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
            self.pool = nn.AdaptiveAvgPool2d(2)
            self.fc = nn.Linear(16, num_classes)

        def forward(self, x):
            time.sleep(float(os.environ.get("HESSAUDIT_TEST_SLEEP", "0")))
            return self.fc(self.pool(torch.relu(self.conv1(x))).flatten(1))


    def make(num_classes=10):
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return SlowTiny(num_classes)
    """
)


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("HESSAUDIT_DEBUG", None)
    return env


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the process ended before {path} appeared:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.01)


@pytest.fixture
def slow_tiny(tmp_path) -> tuple[str, Path]:
    from hessaudit.inputs.checkpoints import save_checkpoint

    path = tmp_path / "slowtiny.py"
    path.write_text(SLOW_TINY)
    namespace: dict = {}
    exec(compile(SLOW_TINY, str(path), "exec"), namespace)
    pre = tmp_path / "pre.safetensors"
    save_checkpoint(pre, namespace["make"](num_classes=5).state_dict())
    return f"{path}:make", pre


def test_sigterm_is_an_interruption_and_the_folder_is_locked_meanwhile(
    slow_tiny, tmp_path, capsys
) -> None:
    """SIGTERM mid-run: a message naming --resume, exit 130, no temporary file, no lock, and
    --resume finishes the run. While it ran, a second finetune into the folder was refused
    with the running one's pid."""
    spec, pre = slow_tiny
    out = tmp_path / "run"
    args = finetune_args(spec, pre, out, "--epochs", "40")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hessaudit", *map(str, args)], cwd=ROOT,
        env=_env(HESSAUDIT_TEST_SLEEP="0.02"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(out / "state.pt", proc)
        code, _, err = run_cli(["finetune", "--resume", out, "--model", spec], capsys)
        assert code == 1 and f"pid {proc.pid}" in one_error_line(err)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted (SIGTERM)" in err
    assert f"hessaudit finetune --resume {out} --model {spec}" in err
    assert leftovers(out) == [] and not (out / ".lock").exists()
    epoch = torch.load(out / "state.pt", weights_only=True)["epoch"]
    assert 1 <= epoch < 40

    code, _, err = run_cli(["finetune", "--resume", out, "--model", spec, "--epochs",
                            str(epoch + 1)], capsys)
    assert code == 0, err
    assert (out / "final.safetensors").is_file() and (out / "finished.json").is_file()


DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    from hessaudit.robust.run_folder import RunFolder
    from hessaudit.cli import main

    real = RunFolder.save_weights

    def save_weights(self, run, kind, **kwargs):
        if kind == "final":  # killed in the middle of the final checkpoint's atomic write
            (self.path / ".final.safetensors.abcd.tmp").write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, run, kind, **kwargs)

    RunFolder.save_weights = save_weights
    main(sys.argv[1:])
    """
)


@pytest.mark.slow
def test_sigkill_during_final_writes_then_resume(tiny_checkpoints, tmp_path, capsys) -> None:
    """The issue's case, with a real SIGKILL: killed while writing final.safetensors, the
    run was reported "already finished; nothing to do". Now --resume completes it."""
    out = tmp_path / "run"
    spec = tiny_checkpoints.spec
    args = finetune_args(spec, tiny_checkpoints.pretrained, out)
    proc = subprocess.run([sys.executable, "-c", DRIVER, *map(str, args)], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (out / "final.safetensors").exists() and (out / ".lock").exists()
    assert leftovers(out) == [".final.safetensors.abcd.tmp"]
    code, _, err = run_cli(["finetune", "--resume", out, "--model", spec], capsys)
    assert code == 0, err
    assert (out / "final.safetensors").is_file() and (out / "best.safetensors").is_file()
    assert leftovers(out) == [] and not (out / ".lock").exists()


# --------------------------------------------------------------------------- (f) radii


def test_radius_growth_has_four_stages_on_mobilenet() -> None:
    timm = pytest.importorskip("timm")
    from hessaudit.robust.projection import constrainable_names, layer_radii

    model = timm.create_model("mobilenetv2_050", pretrained=False, num_classes=3)
    names = constrainable_names(model)
    assert len(names) > 50
    radius, growth = 2.0, 1.5
    radii = layer_radii(names, radius=radius, growth=growth)
    assert max(radii.values()) <= radius * growth**3 * (1 + 1e-12)
    assert sorted(set(radii.values())) == [radius * growth**s for s in range(4)]
    # contiguous, in model order, nondecreasing
    values = [radii[n] for n in names]
    assert values == sorted(values)


def test_radius_growth_through_finetune_on_mobilenet(tmp_path, capsys) -> None:
    timm = pytest.importorskip("timm")
    import numpy as np

    from hessaudit.inputs.checkpoints import save_checkpoint

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = timm.create_model("mobilenetv2_050", pretrained=False, num_classes=3)
    save_checkpoint(tmp_path / "pre.safetensors", model.state_dict())
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.random((6, 3, 32, 32), dtype=np.float32),
             y=np.array([0, 1, 2, 0, 1, 2]))
    out = tmp_path / "run"
    code, _, err = run_cli(
        ["finetune", "--model", "mobilenetv2_050", "--pretrained", tmp_path / "pre.safetensors",
         "--data", tmp_path / "data.npz", "--input-size", "32", "--epochs", "1",
         "--batch-size", "6", "--loss", "ce", "--constraint", "frobenius", "--radius", "0.5",
         "--radius-growth", "1.5", "--out", out, "--quiet"],
        capsys,
    )
    assert code == 0, err
    radii = json.loads((out / "config.json").read_text())["resolved"]["radii"]
    assert len(radii) > 50
    assert max(radii.values()) <= 0.5 * 1.5**3 * (1 + 1e-12)
