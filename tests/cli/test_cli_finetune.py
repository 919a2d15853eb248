"""``hessaudit finetune`` through the real entry point (``hessaudit.cli.main``)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hessaudit.cli import main

MODEL = "hessaudit.zoo:digits_cnn"



@pytest.fixture
def pretrained(digits_pretrained: str) -> str:
    return digits_pretrained


def _run(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(args)
    return int(exc.value.code)


def _base(pretrained: str, out: Path) -> list[str]:
    return [
        "finetune", "--model", MODEL, "--pretrained", pretrained, "--data", "digits",
        "--out", str(out), "--epochs", "2", "--lr", "3e-3", "--batch-size", "64",
        "--samples", "300", "--inject-noise", "symmetric:0.3", "--noise-matrix", "injected",
        "--radius", "2", "--head-radius", "3",
    ]


def test_cli_writes_every_output(pretrained, tmp_path, capsys) -> None:
    pytest.importorskip("hessaudit.audit.run")
    out = tmp_path / "run"
    args = [
        *_base(pretrained, out),
        "--eval-data", "digits", "--val-fraction", "0.2", "--audit", "--audit-samples", "16",
    ]
    assert _run(args) == 0
    captured = capsys.readouterr()
    for name in ("final.safetensors", "best.safetensors", "config.json", "metrics.csv",
                 "noise.json", "audit.json", "last.safetensors", "state.pt"):
        assert (out / name).is_file(), name
    assert "hessaudit finetune" in captured.out  # the summary table
    assert "held-out accuracy" in captured.out
    audit = json.loads((out / "audit.json").read_text())
    assert audit["schema"] == "hessaudit.audit/1"
    assert audit["inputs"]["finetuned"]["path"].endswith("final.safetensors")
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["epochs"] == 2 and config["inject_noise"] == "symmetric:0.3"
    assert config["constraint"] == "frobenius" and config["noise_seed"] == 0

    # resume to a longer run; only the changed option is given
    assert _run(["finetune", "--resume", str(out), "--epochs", "3", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""  # --quiet: logs only, on stderr
    assert "epoch 3/3" in captured.err and "resuming" in captured.err
    assert json.loads((out / "config.json").read_text())["config"]["epochs"] == 3


def test_cli_quiet_logs_plain_lines(pretrained, tmp_path, capsys) -> None:
    assert _run([*_base(pretrained, tmp_path / "run"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert any(line.startswith("epoch 1/2: train loss") for line in lines)
    assert lines[-1].startswith("done: 2 epochs")


def test_cli_refuses_existing_out(pretrained, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "final.safetensors").write_bytes(b"precious")
    (out / "notes.txt").write_text("mine")
    assert _run(_base(pretrained, out)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --out")
    assert "--resume" in err and "--overwrite" in err
    assert (out / "final.safetensors").read_bytes() == b"precious"
    assert sorted(p.name for p in out.iterdir()) == ["final.safetensors", "notes.txt"]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--epochs", "0"], "--epochs"),
        (["--lr", "-1"], "--lr"),
        (["--lr", "0"], "--lr"),
        (["--val-fraction", "1.5"], "--val-fraction"),
        (["--radius", "0"], "--radius"),
        (["--head-radius", "-1"], "--head-radius"),
        (["--inject-noise", "symmetric:1.2"], "--inject-noise"),
        (["--noise-matrix", "symmetric:0.9"], "singular"),
        (["--optimizer", "rmsprop"], "--optimizer"),
        (["--early-stop", "2"], "--val-fraction"),
        (["--epochs", "abc"], "--epochs"),
        (["--no-such-flag"], "no-such-flag"),
        (["--resume", "nowhere", "--overwrite"], "--resume"),
    ],
)
def test_cli_bad_flags_exit_1_without_traceback(pretrained, tmp_path, capsys, extra,
                                                needle) -> None:
    assert _run([*_base(pretrained, tmp_path / "run"), *extra]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error:")
    assert needle in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_cli_requires_the_four_main_options(capsys) -> None:
    assert _run(["finetune", "--model", MODEL]) == 1
    err = capsys.readouterr().err
    assert "--pretrained" in err and "--data" in err and "--out" in err


def test_cli_resume_refuses_changed_options(pretrained, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert _run([*_base(pretrained, out), "--quiet"]) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert _run(["finetune", "--resume", str(out), "--epochs", "3", "--lr", "0.1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --lr") and err.count("\n") == 1
    assert _run(["finetune", "--resume", str(out)]) == 1
    assert "already finished" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_cli_defaults_match_the_library() -> None:
    from hessaudit.commands.finetune import finetune_command
    from hessaudit.robust.config import FinetuneConfig

    library = {f.name: f.default for f in dataclasses.fields(FinetuneConfig)
               if f.default is not dataclasses.MISSING}
    cli = {name: p.default for name, p in inspect.signature(finetune_command).parameters.items()
           if name in library}
    assert set(cli) == set(library)
    assert cli == library


def test_tune_declares_the_finetune_options_alike() -> None:
    """tune lists finetune's options in its own signature: the same flags, defaults, help,
    panels and metavars, less ``--early-stop`` and the three tune replaces with its own."""
    import typer

    from hessaudit.cli import app

    commands = typer.main.get_command(app).commands

    def described(name: str) -> dict[str, tuple]:
        return {
            p.name: (p.opts, p.secondary_opts, p.default, p.help, p.metavar, p.multiple,
                     getattr(p, "rich_help_panel", None))
            for p in commands[name].params
        }

    finetune, tune = described("finetune"), described("tune")
    shared = set(finetune) - {"early_stop", "val_fraction", "resume", "overwrite"}
    assert shared <= set(tune)
    # tune's own options (the search's, and its own --val-fraction, --resume, --overwrite)
    own = set(tune) - shared
    assert own & set(finetune) == {"val_fraction", "resume", "overwrite"}
    assert {"trials", "objective", "space"} <= own
    assert {name: tune[name] for name in shared} == {name: finetune[name] for name in shared}
    assert tune["val_fraction"] != finetune["val_fraction"]  # tune's own: default 0.1


def test_help_is_fast_and_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "from hessaudit.cli import app\n"
        "import hessaudit.commands.finetune\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'hessaudit.robust' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    result = subprocess.run(
        [sys.executable, "-m", "hessaudit", "finetune", "--help"],
        capture_output=True, text=True, timeout=60, env={"COLUMNS": "200", "PATH": ""},
    )
    assert result.returncode == 0
    for flag in ("--noise-matrix", "--inject-noise", "--radius-table", "--resume",
                 "--early-stop", "--penalty", "--audit"):
        assert flag in result.stdout
