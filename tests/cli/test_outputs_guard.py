"""Issue 12 §4: outputs never destroy anything (hessaudit/_paths.py, hessaudit/_atomic.py).

Through the CLI, in-process, on the tiny factory model of conftest.py: an output that is an
input, or another output, is refused before any work (exit 1, one ``error:`` line naming the
flag and path, inputs byte-identical); a device stays a device and a FIFO is written through;
``-`` means stdout for every output flag; a model factory that prints cannot corrupt a
machine-readable stdout.

Device nodes: as root the tests make their own ``/dev/null`` and ``/dev/full`` clones with
``os.mknod`` in the test folder, so that a regression could only ever replace a clone, never
the machine's ``/dev/null``; without root the real nodes are used (they cannot be replaced).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from hessaudit.cli import main

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

PRINTING_FACTORY = '''
import os
import sys

import torch
from torch import nn

print("factory module imported")


class Loud(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(2, num_classes)

    def forward(self, x):
        print("forward called")
        sys.stdout.write("forward wrote\\n")
        return self.fc(torch.relu(self.conv1(x)).mean((2, 3)))


def make_loud(num_classes=10, seed=0):
    print("building the model")
    os.write(1, b"a C-level write to fd 1\\n")
    torch.manual_seed(seed)
    return Loud(num_classes)
'''


# --------------------------------------------------------------------------- helpers


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return int(exc.value.code), captured.out, captured.err


def digest(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def measure_args(pair, *extra) -> list:
    return [
        "measure", pair.pretrained, pair.finetuned, "--model", pair.spec, "--data", "digits",
        "--samples", "16", "--no-spectrum", *extra,
    ]


def assert_refused(code: int, out: str, err: str, *needles: str) -> None:
    """Exit 1, exactly one ``error:`` line naming every needle, no traceback (a ``warning:``
    line, such as the one for an estimate under ``--samples``, may come before it)."""
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning: ")]
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def char_device(tmp_path: Path, name: str, minor: int) -> Path:
    """A private clone of /dev/null (minor 3) or /dev/full (minor 7) as root, else the real."""
    real = Path(f"/dev/{name}")
    if not IS_ROOT:
        return real
    clone = tmp_path / name
    try:
        os.mknod(clone, stat.S_IFCHR | 0o666, os.makedev(1, minor))
    except (OSError, AttributeError) as exc:  # no CAP_MKNOD: never risk the real node
        pytest.skip(f"cannot make a device node as root here: {exc}")
    return clone


@pytest.fixture
def audit_json(tiny_checkpoints, tmp_path, capsys) -> Path:
    """A real audit JSON of the tiny pair."""
    path = tmp_path / "A.json"
    code, _, err = run_cli(measure_args(tiny_checkpoints, "--json", path, "-q"), capsys)
    assert code == 0, err
    return path


# --------------------------------------------------------------------------- devices, FIFOs


def test_json_to_null_device_keeps_the_device(tiny_checkpoints, tmp_path, capsys):
    null = char_device(tmp_path, "null", 3)
    code, _, err = run_cli(measure_args(tiny_checkpoints, "--json", null, "-q"), capsys)
    assert code == 0, err
    assert stat.S_ISCHR(os.stat(null).st_mode)  # still a character device, not a file
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_full_device_is_one_error_line_and_stays_a_device(tiny_checkpoints, tmp_path, capsys):
    full = char_device(tmp_path, "full", 7)
    code, out, err = run_cli(measure_args(tiny_checkpoints, "--json", full, "-q"), capsys)
    assert_refused(code, out, err, f"--json {full}", "No space left on device")
    assert stat.S_ISCHR(os.stat(full).st_mode)


def test_report_to_dev_stderr_writes_through(audit_json, tmp_path, capsys):
    # /dev/stderr is this process's stderr: the page goes through that stream.
    code, out, err = run_cli(["report", audit_json, "--out", "/dev/stderr", "-q"], capsys)
    assert code == 0, err
    assert err.startswith("<!DOCTYPE html>") and err.rstrip().endswith("</html>")
    assert not out


def test_json_to_dev_stdout_is_stdout(tiny_checkpoints, capsys):
    code, out, err = run_cli(measure_args(tiny_checkpoints, "--json", "/dev/stdout"), capsys)
    assert code == 0, err
    assert json.loads(out)["schema"] == "hessaudit.audit/1"  # no table mixed into it


def test_fifo_output_is_written_through(tiny_checkpoints, tmp_path, capsys):
    fifo = tmp_path / "audit.fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []

    def reader() -> None:
        with open(fifo, "rb") as fh:
            received.append(fh.read())

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    code, _, err = run_cli(measure_args(tiny_checkpoints, "--json", fifo, "-q"), capsys)
    thread.join(timeout=30)
    assert code == 0, err
    assert json.loads(received[0])["schema"] == "hessaudit.audit/1"
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_process_substitution_path_is_written_through(tiny_checkpoints, capsys):
    # `--summary-md >(cat)` hands hessaudit a /dev/fd/N pipe.
    read_fd, write_fd = os.pipe()
    received: list[bytes] = []

    def reader() -> None:
        with os.fdopen(read_fd, "rb") as fh:
            received.append(fh.read())

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        code, _, err = run_cli(
            measure_args(tiny_checkpoints, "--summary-md", f"/dev/fd/{write_fd}", "-q"), capsys
        )
    finally:
        os.close(write_fd)
    thread.join(timeout=30)
    assert code == 0, err
    assert received[0].decode().startswith("### ✅ hessaudit measure: PASS")


@pytest.mark.parametrize("kind", ["directory", "socket"])
def test_directory_or_socket_output_is_refused(tiny_checkpoints, tmp_path, capsys, kind):
    target = tmp_path / kind
    if kind == "directory":
        target.mkdir()
        server = None
    else:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(target))
    try:
        code, out, err = run_cli(measure_args(tiny_checkpoints, "--json", target), capsys)
    finally:
        if server is not None:
            server.close()
    assert_refused(code, out, err, f"--json {target}", f"a {kind}")


# --------------------------------------------------------------------------- inputs as outputs


def test_measure_refuses_to_overwrite_the_audited_checkpoint(tiny_checkpoints, capsys):
    ft = tiny_checkpoints.finetuned
    before = digest(ft)
    code, out, err = run_cli(measure_args(tiny_checkpoints, "--json", ft), capsys)
    assert_refused(code, out, err, f"--json {ft}", "fine-tuned checkpoint")
    assert digest(ft) == before


@pytest.mark.parametrize("alias", ["hardlink", "symlink", "dotted"])
def test_input_under_another_name_is_refused(tiny_checkpoints, tmp_path, capsys, alias):
    ft = tiny_checkpoints.finetuned
    before = digest(ft)
    other = tmp_path / "alias.safetensors"
    if alias == "hardlink":
        os.link(ft, other)
    elif alias == "symlink":
        other.symlink_to(ft)
    else:
        other = tmp_path / "." / ".." / tmp_path.name / ft.name
    code, out, err = run_cli(measure_args(tiny_checkpoints, "--csv", other), capsys)
    assert_refused(code, out, err, f"--csv {other}", "an output never replaces an input")
    assert digest(ft) == before


@pytest.mark.parametrize("flag", ["--json", "--csv", "--summary-md"])
def test_measure_outputs_never_replace_pretrained_or_factory(tiny_checkpoints, capsys, flag):
    factory = Path(tiny_checkpoints.spec.rsplit(":", 1)[0])
    for victim in (tiny_checkpoints.pretrained, factory):
        before = digest(victim)
        code, out, err = run_cli(measure_args(tiny_checkpoints, flag, victim), capsys)
        assert_refused(code, out, err, f"{flag} {victim}")
        assert digest(victim) == before


def test_inspect_refuses_its_inputs(tiny_checkpoints, capsys):
    pre = tiny_checkpoints.pretrained
    before = digest(pre)
    code, out, err = run_cli(
        ["inspect", pre, tiny_checkpoints.finetuned, "--json", pre], capsys
    )
    assert_refused(code, out, err, f"--json {pre}", "pretrained checkpoint")
    assert digest(pre) == before


def test_report_refuses_its_input(audit_json, capsys):
    before = digest(audit_json)
    code, out, err = run_cli(["report", audit_json, "--out", audit_json], capsys)
    assert_refused(code, out, err, f"--out {audit_json}", "the audit")
    assert digest(audit_json) == before


@pytest.mark.parametrize("flag", ["--json", "--summary-md"])
def test_compare_refuses_its_inputs(audit_json, tmp_path, capsys, flag):
    other = tmp_path / "B.json"
    other.write_bytes(audit_json.read_bytes())
    before = digest(other)
    code, out, err = run_cli(["compare", audit_json, other, flag, other], capsys)
    assert_refused(code, out, err, f"{flag} {other}", "the new audit")
    assert digest(other) == before


def test_outputs_never_replace_pyproject(tiny_checkpoints, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text("[tool.hessaudit.gates]\n")
    before = digest(pyproject)
    code, out, err = run_cli(measure_args(tiny_checkpoints, "--json", "pyproject.toml"), capsys)
    assert_refused(code, out, err, "--json pyproject.toml", "gates config")
    assert digest(pyproject) == before


# --------------------------------------------------------------------------- outputs


def test_same_output_twice_is_refused(tiny_checkpoints, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    existing = tmp_path / "out.json"
    existing.write_text("keep me\n")
    before = digest(existing)
    for second in ("out.json", "./out.json", str(existing)):
        code, out, err = run_cli(
            measure_args(tiny_checkpoints, "--json", "out.json", "--csv", second), capsys
        )
        assert_refused(code, out, err, f"--csv {second}", "--json out.json")
        assert digest(existing) == before


def test_only_one_output_on_stdout(tiny_checkpoints, capsys):
    for other in ("-", "/dev/stdout"):
        code, out, err = run_cli(
            measure_args(tiny_checkpoints, "--json", "-", "--csv", other), capsys
        )
        assert_refused(code, out, err, "only one output can go to stdout", "--json", "--csv")


def test_csv_dash_is_stdout(tiny_checkpoints, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(measure_args(tiny_checkpoints, "--csv", "-"), capsys)
    assert code == 0, err
    header = out.splitlines()[0].split(",")
    assert header[:2] == ["name", "numel"]
    assert len(out.splitlines()) == 3  # conv1.weight, fc.weight (new head); no table
    assert not (tmp_path / "-").exists()


def test_symlink_output_is_followed_and_the_link_survives(tiny_checkpoints, tmp_path, capsys):
    real = tmp_path / "real.json"
    real.write_text("old\n")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    dangling = tmp_path / "dangling.csv"
    dangling.symlink_to(tmp_path / "created.csv")
    code, _, err = run_cli(
        measure_args(tiny_checkpoints, "--json", link, "--csv", dangling, "-q"), capsys
    )
    assert code == 0, err
    assert link.is_symlink() and dangling.is_symlink()
    assert json.loads(real.read_text())["schema"] == "hessaudit.audit/1"
    assert (tmp_path / "created.csv").read_text().startswith("name,")


# --------------------------------------------------------------------------- user code


@pytest.fixture
def loud_pair(tmp_path, tiny_checkpoints):
    """Checkpoints of a model whose factory and forward print (Python and fd 1)."""
    import importlib.util

    from hessaudit.inputs.checkpoints import save_checkpoint

    path = tmp_path / "loud.py"
    path.write_text(PRINTING_FACTORY)
    spec = importlib.util.spec_from_file_location("_loud_factory", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pre = tmp_path / "loud_pre.safetensors"
    ft = tmp_path / "loud_ft.safetensors"
    save_checkpoint(pre, module.make_loud(seed=0).state_dict())
    save_checkpoint(ft, module.make_loud(seed=1).state_dict())
    return f"{path}:make_loud", pre, ft


@pytest.mark.parametrize("flag", ["--json", "--csv", "--summary-md"])
def test_printing_factory_does_not_corrupt_stdout(loud_pair, capfd, flag):
    spec, pre, ft = loud_pair
    args = [
        "measure", pre, ft, "--model", spec, "--data", "digits", "--samples", "8",
        "--no-spectrum", flag, "-",
    ]
    capfd.readouterr()  # what the fixture printed while making the checkpoints
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out, err = capfd.readouterr()
    assert exc.value.code == 0, err
    if flag == "--json":
        assert json.loads(out)["schema"] == "hessaudit.audit/1"
    elif flag == "--csv":
        assert out.startswith("name,") and len(out.splitlines()) == 3
    else:
        assert out.startswith("### ✅ hessaudit measure")
    assert "building the model" not in out and "C-level" not in out and "forward" not in out
    assert "building the model" in err and "C-level" in err and "forward called" in err


def test_printing_factory_does_not_corrupt_inspect_json(loud_pair, capfd):
    spec, pre, ft = loud_pair
    capfd.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["inspect", str(pre), str(ft), "--model", spec, "--json", "-"])
    out, err = capfd.readouterr()
    assert exc.value.code == 0, err
    assert "conv1.weight" in [layer["name"] for layer in json.loads(out)["layers"]]
    assert "building the model" in err


# --------------------------------------------------------------------------- run folders


def test_finetune_out_holding_the_pretrained_checkpoint_is_refused(
    digits_pretrained, tmp_path, capsys
):
    run = tmp_path / "run"
    run.mkdir()
    pre = run / "final.safetensors"
    pre.write_bytes(Path(digits_pretrained).read_bytes())
    before = digest(pre)
    code, out, err = run_cli(
        [
            "finetune", "--model", "hessaudit.zoo:digits_cnn", "--pretrained", pre,
            "--data", "digits", "--out", run, "--overwrite", "--epochs", "1", "--quiet",
            "--loss", "ce",
        ],
        capsys,
    )
    assert_refused(code, out, err, f"--out {run}", "--pretrained")
    assert digest(pre) == before


def test_finetune_out_inside_the_data_folder_is_refused(
    digits_pretrained, image_folder, capsys
):
    out_dir = image_folder / "run"
    code, out, err = run_cli(
        [
            "finetune", "--model", "hessaudit.zoo:digits_cnn", "--pretrained", digits_pretrained,
            "--data", image_folder, "--out", out_dir, "--epochs", "1", "--quiet", "--loss", "ce",
        ],
        capsys,
    )
    assert_refused(code, out, err, f"--out {out_dir}", "--data")
    assert not out_dir.exists()


def test_an_output_inside_an_input_folder_is_refused(tmp_path: Path, capsys) -> None:
    """A Hugging Face model directory is an input read as a whole: ``--json`` naming its
    ``model.safetensors`` (or any new file in it) is refused before any work."""
    from tests.text_cases import make_text_case, rows, write_rows

    case = make_text_case(tmp_path / "case")
    data = write_rows(tmp_path / "train.csv", rows(4, seed=1))
    weights = case.ft / "model.safetensors"
    before = weights.read_bytes()
    capsys.readouterr()  # the setup's save_pretrained progress bars
    for target in (weights, case.ft / "audit.json"):
        with pytest.raises(SystemExit) as exit_info:
            main(["measure", str(case.pre), str(case.ft), "--model", str(case.ft),
                  "--data", str(data), "--json", str(target), "-q"])
        err = capsys.readouterr().err
        assert exit_info.value.code == 1, err
        assert "inside the fine-tuned checkpoint" in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert weights.read_bytes() == before and not (case.ft / "audit.json").exists()
