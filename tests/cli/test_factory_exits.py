"""Issue 12, section 8: the exit-code contract holds whatever the model code does.

A ``--model file.py:fn`` factory is the user's code. Whether it calls ``sys.exit(0)``, parses
the command line with argparse (exit 2, the "gate failed" code) or raises, at import, while
building the model or in the model's forward, ``measure`` and ``finetune`` end with exit code
1 and exactly one ``error:`` line on stderr naming the factory, no traceback, no output
written. A ``SystemExit`` from anywhere else in model code (defence in depth in the CLI
wrapper) ends the same way, and typer's own ``--help`` / ``--version`` exits still work.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from hessaudit.cli import main
from tests.files import TINY_FACTORY_SOURCE

EXTRA_FACTORIES = textwrap.dedent(
    '''
    import argparse
    import sys


    def make_exit0(num_classes=10):
        sys.exit(0)


    def make_exit_bare(num_classes=10):
        sys.exit()


    def make_exit_text(num_classes=10):
        sys.exit("config missing")


    def make_argparse(num_classes=10):
        parser = argparse.ArgumentParser()
        parser.add_argument("--depth", type=int, default=2)
        # An argument it does not know: exit 2, whatever argv the test process has.
        parser.parse_args(["--from-the-command-line"])
        return make_tiny(num_classes)


    def make_tuple(num_classes=10):
        return make_tiny(num_classes), {"depth": 2}


    def make_none(num_classes=10):
        make_tiny(num_classes)


    def make_class(num_classes=10):
        return TinyNet


    class ExitingNet(TinyNet):
        def forward(self, x):
            sys.exit(0)


    class ArgparseNet(TinyNet):
        def forward(self, x):
            argparse.ArgumentParser().parse_args(["--bogus"])


    class RaisingNet(TinyNet):
        def forward(self, x):
            raise KeyError("no such feature map")


    class ExitOnEval(TinyNet):
        def train(self, mode=True):
            if not mode:
                sys.exit(0)
            return super().train(mode)


    def _seeded(cls, num_classes):
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return cls(num_classes)


    def make_exiting_forward(num_classes=10):
        return _seeded(ExitingNet, num_classes)


    def make_argparse_forward(num_classes=10):
        return _seeded(ArgparseNet, num_classes)


    def make_raising_forward(num_classes=10):
        return _seeded(RaisingNet, num_classes)


    def make_exit_on_eval(num_classes=10):
        return _seeded(ExitOnEval, num_classes)
    '''
)


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return int(exc.value.code), captured.out, captured.err


def one_error_line(code: int, err: str, *needles: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1, (code, err)
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "internal error" not in lines[0], lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def factories(tiny_checkpoints) -> Path:
    """The tiny factory file of conftest.py plus the misbehaving factories above."""
    path = Path(tiny_checkpoints.spec.rpartition(":")[0]).with_name("models_x.py")
    path.write_text(TINY_FACTORY_SOURCE + EXTRA_FACTORIES)
    return path


def _measure(pair, spec: str, out: Path) -> list:
    return [
        "measure", pair.pretrained, pair.finetuned, "--model", spec, "--data", "digits",
        "--samples", "4", "--no-spectrum", "--quiet", "--json", out,
    ]


@pytest.mark.parametrize(
    ("fn", "needles"),
    [
        ("make_exit0", ["SystemExit(0) while building the model"]),
        ("make_exit_bare", ["SystemExit(None) while building the model"]),
        ("make_exit_text", ["SystemExit('config missing') while building the model"]),
        ("make_argparse", ["SystemExit(2) while building the model", "unrecognized arguments"]),
        ("make_exiting_forward", ["the model's forward raised SystemExit(0)"]),
        ("make_raising_forward", ["the model's forward raised KeyError: 'no such feature map'"]),
        ("make_tuple", ["returned a tuple of 2 (TinyNet, dict), not a torch.nn.Module",
                        "return model, not return model, config"]),
        ("make_none", ["returned None (a missing return statement?)"]),
        ("make_class", ["returned the class TinyNet (call it to make the model)"]),
    ],
)
def test_measure_exits_1_naming_the_factory(
    fn, needles, factories, tiny_checkpoints, tmp_path, capsys
) -> None:
    spec = f"{factories}:{fn}"
    out = tmp_path / "audit.json"
    code, _, err = run_cli(_measure(tiny_checkpoints, spec, out), capsys)
    one_error_line(code, err, f"--model {spec}", *needles)
    assert not out.exists()


def test_argparse_in_the_forward_is_exit_1_not_2(
    factories, tiny_checkpoints, tmp_path, capsys
) -> None:
    """What the forward itself prints (here argparse's usage) is not held back: the model's
    own output. The exit code is 1 and the last line names the factory."""
    spec = f"{factories}:make_argparse_forward"
    out = tmp_path / "audit.json"
    code, _, err = run_cli(_measure(tiny_checkpoints, spec, out), capsys)
    assert code == 1 and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert f"--model {spec}: the model's forward raised SystemExit(2)" in errors[0]
    assert err.rstrip().splitlines()[-1] == errors[0]
    assert not out.exists()


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("import sys\nsys.exit(0)\n", "SystemExit(0) while importing"),
        ("import argparse\nargparse.ArgumentParser().parse_args(['--unknown'])\n",
         "SystemExit(2) while importing"),
    ],
)
def test_a_factory_module_that_exits_while_imported(
    body, needle, tiny_checkpoints, tmp_path, capsys, monkeypatch
) -> None:
    """As a file (path/to/file.py:fn) and as a module on the current folder (pkg.mod:fn)."""
    (tmp_path / "exits_on_import.py").write_text(body + "def make(num_classes=10):\n    pass\n")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "audit.json"
    for spec in (f"{tmp_path / 'exits_on_import.py'}:make", "exits_on_import:make"):
        code, _, err = run_cli(_measure(tiny_checkpoints, spec, out), capsys)
        one_error_line(code, err, f"--model {spec}", needle)
        assert not out.exists()


def test_a_stray_system_exit_elsewhere_in_model_code_is_exit_1(
    factories, tiny_checkpoints, tmp_path, capsys
) -> None:
    """Defence in depth: a SystemExit(0) from model code that no guard wraps (here the
    model's train(False), called by .eval()) is exit 1 with a line pointing at it."""
    spec = f"{factories}:make_exit_on_eval"
    out = tmp_path / "audit.json"
    code, _, err = run_cli(_measure(tiny_checkpoints, spec, out), capsys)
    line = one_error_line(code, err, "SystemExit(0)", f"at {factories}:")
    assert "ended the command before it finished" in line
    assert not out.exists()


def test_finetune_with_a_forward_that_exits(
    factories, tiny_checkpoints, tmp_path, capsys
) -> None:
    spec = f"{factories}:make_exiting_forward"
    out = tmp_path / "run"
    args = [
        "finetune", "--model", spec, "--pretrained", tiny_checkpoints.pretrained,
        "--data", "digits", "--out", out, "--epochs", "1", "--samples", "32", "--quiet",
        "--inject-noise", "symmetric:0.2", "--noise-matrix", "injected",
    ]
    code, _, err = run_cli(args, capsys)
    assert code == 1 and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err  # after finetune's own log lines about the run's setup
    assert f"--model {spec}: the model's forward raised SystemExit(0)" in errors[0]
    assert not (out / "final.safetensors").exists()


def test_what_a_factory_prints_to_stderr_still_reaches_stderr(
    factories, tiny_checkpoints, tmp_path, capsys
) -> None:
    """The held-back stderr of a factory that succeeds is replayed."""
    factories.write_text(
        factories.read_text()
        + "\n\ndef make_chatty(num_classes=10):\n"
        + "    print('building TinyNet', file=sys.stderr)\n"
        + "    return make_tiny(num_classes)\n"
    )
    out = tmp_path / "audit.json"
    code, _, err = run_cli(_measure(tiny_checkpoints, f"{factories}:make_chatty", out), capsys)
    assert code == 0, err
    assert "building TinyNet" in err
    assert out.exists()


@pytest.mark.parametrize("args", [["--help"], ["--version"], [], ["measure", "--help"]])
def test_typer_help_and_version_still_exit_0(args, capsys) -> None:
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert out.strip()
