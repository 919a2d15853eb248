"""Issue 12 §10(c): stdout (or stderr) closed by its reader (``hessaudit ... | head -1``).

Real subprocesses whose stdout pipe is closed before they write anything:

* a requested machine output on stdout (``--json -``, ``--summary-md -``) is incomplete: exit 1
  and one ``error:`` line naming the flag;
* only the human table was cut: one ``warning:`` line, and the exit code is the gates' (0/2);
* never a traceback, and never Python's "Exception ignored ... BrokenPipeError" at exit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hessaudit.commands._pipes import stdout_outputs

REPO = Path(__file__).resolve().parents[2]


def _run_closed(args: list[object], *, stderr_too: bool = False) -> tuple[int, str]:
    """Run hessaudit with its stdout pipe closed at once (and stderr, with ``stderr_too``)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "120"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hessaudit", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if stderr_too else subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    assert proc.stdout is not None
    proc.stdout.close()  # the reader is gone before the first write
    err = b"" if stderr_too else proc.stderr.read()  # type: ignore[union-attr]
    code = proc.wait(timeout=300)
    return code, err.decode()


def _assert_no_noise(err: str) -> None:
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert "internal error" not in err, err


@pytest.fixture(scope="module")
def audits(tmp_path_factory) -> tuple[Path, Path]:
    """Two valid audits with many layers, so that the tables are long."""
    from tests.documents import VALID, layer_row

    folder = tmp_path_factory.mktemp("pipes")
    base, new = dict(VALID), dict(VALID)
    base["layers"] = [layer_row(f"block{i}.weight", 1e-3 * (i + 1)) for i in range(200)]
    new["layers"] = [layer_row(f"block{i}.weight", 2e-3 * (i + 1)) for i in range(200)]
    (folder / "base.json").write_text(json.dumps(base))
    (folder / "new.json").write_text(json.dumps(new))
    return folder / "base.json", folder / "new.json"


def test_machine_output_on_closed_stdout_is_an_error(audits) -> None:
    base, new = audits
    code, err = _run_closed(["compare", base, new, "--summary-md", "-"])
    assert code == 1, err
    _assert_no_noise(err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --summary-md -: stdout was closed")


def test_json_stdout_closed_with_failed_gate_is_still_an_error(audits) -> None:
    base, new = audits
    code, err = _run_closed(["compare", base, new, "--json=-", "--max-increase", "1"])
    assert code == 1, err
    _assert_no_noise(err)
    assert err.strip().splitlines()[-1].startswith("error: --json -: stdout was closed")


@pytest.mark.parametrize(("gate", "expected"), [("1000", 0), ("1", 2)])
def test_table_on_closed_stdout_keeps_the_gate_exit_code(audits, tmp_path, gate, expected):
    base, new = audits
    out = tmp_path / "compare.json"
    code, err = _run_closed(["compare", base, new, "--max-layer-increase", gate, "--json", out])
    assert code == expected, err
    _assert_no_noise(err)
    assert [line for line in err.splitlines() if line.startswith("warning: stdout was closed")]
    assert not [line for line in err.splitlines() if line.startswith("error:")]
    assert json.loads(out.read_text())["success"] == (expected == 0)  # the file is complete


def test_stdout_and_stderr_closed(audits) -> None:
    base, new = audits
    code, _ = _run_closed(["compare", base, new, "--max-layer-increase", "1"], stderr_too=True)
    assert code == 2


@pytest.mark.slow  # a torch/timm import in a subprocess: 6-30 s on a shared 2-core machine
def test_measure_json_to_closed_stdout(tiny_checkpoints) -> None:
    pair = tiny_checkpoints
    code, err = _run_closed([
        "measure", pair.pretrained, pair.finetuned, "--model", pair.spec, "--data", "digits",
        "--samples", "4", "--no-spectrum", "--json", "-",
    ])
    assert code == 1, err
    _assert_no_noise(err)
    assert err.strip().splitlines()[-1].startswith("error: --json -: stdout was closed"), err


def test_stdout_outputs() -> None:
    assert stdout_outputs(["measure", "--json", "-", "--csv=-", "-o", "-"]) == [
        "--json", "--csv", "-o"
    ]
    assert stdout_outputs(["compare", "a.json", "b.json", "--json", "x.json"]) == []
    assert stdout_outputs(["report", "--", "-"]) == []


@pytest.mark.parametrize(("extra", "expected"), [([], 0), (["--json", "-"], 1)])
def test_stdout_closed_before_the_start(audits, extra, expected) -> None:
    """``hessaudit ... >&-``: Python starts with sys.stdout = None."""
    base, new = audits
    proc = subprocess.run(
        [sys.executable, "-m", "hessaudit", "compare", str(base), str(new), *extra],
        stderr=subprocess.PIPE, text=True, timeout=300, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        preexec_fn=lambda: os.close(1),
    )
    assert proc.returncode == expected, proc.stderr
    _assert_no_noise(proc.stderr)
    assert len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith("error: --json -:" if expected else "warning: stdout was closed")
