"""Issue 12 §10(a): crafted audit JSON given to ``compare`` and ``report``, through the CLI.

Every bad file ends with exit code 1, one ``error:`` line naming the file and the JSON path of
the bad field, no traceback, no "internal error", and no output written. A hypothesis test
mutates a valid audit at random (any value anywhere, deleted and duplicated keys and items,
raw text edits) and checks that ``compare`` and ``report`` only ever exit 0, 1 or 2, cleanly.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hessaudit.cli import app, main
from hessaudit.commands.common import run_app
from tests.documents import VALID, layer_row


def run_cli(args: list[Any], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return int(exc.value.code), captured.out, captured.err


_COMMAND = None


def run_fast(args: list[Any], capsys) -> tuple[int, str, str]:
    """:func:`run_cli` without rebuilding the click command each time (typer takes ~0.1 s)."""
    global _COMMAND
    if _COMMAND is None:
        import typer

        _COMMAND = typer.main.get_command(app)
    code = run_app(_COMMAND, [str(a) for a in args], prog_name="hessaudit")
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_clean(code: int, err: str) -> None:
    """Exit 0/1/2; exit 1 is exactly one ``error:`` line; never a traceback."""
    assert code in (0, 1, 2), err
    assert "Traceback" not in err
    assert "internal error" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    if code == 1:
        assert len(errors) == 1 and len(err.strip().splitlines()) == 1, err
    else:
        assert not errors, err


def _mutate(document: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    result = copy.deepcopy(document)
    target = result
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return result


def _drop(document: dict[str, Any], path: tuple[Any, ...]) -> dict[str, Any]:
    result = copy.deepcopy(document)
    target = result
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return result


# --------------------------------------------------------------------------- named cases


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "base.json").write_text(json.dumps(VALID))
    (tmp_path / "existing.json").write_text("keep me")
    return tmp_path


def test_valid_audit_passes(files: Path, capsys) -> None:
    code, _, err = run_cli(["compare", files / "base.json", files / "base.json", "-q"], capsys)
    assert code == 0, err
    code, _, err = run_cli(
        ["report", files / "base.json", "--out", files / "r.html", "--no-plots", "-q"], capsys
    )
    assert code == 0, err
    assert (files / "r.html").read_text().startswith("<!DOCTYPE html>")


DEEP = "[" * 100_000 + "]" * 100_000
CASES: dict[str, tuple[str, str]] = {
    # id: (text of new.json, what the error line must contain besides the file name)
    "duplicate-layer": (
        json.dumps({**VALID, "layers": VALID["layers"] + [VALID["layers"][0]]}),
        "layers[3].name 'conv1.weight' repeats layers[0].name",
    ),
    "string-hcal": (
        json.dumps(_mutate(VALID, ("layers", 1, "hcal"), "0.5")),
        "layers[1].hcal is a string, expected a number",
    ),
    "string-bound": (json.dumps({**VALID, "bound": "2.3"}), "bound is a string"),
    "bool-numel": (
        json.dumps(_mutate(VALID, ("layers", 0, "numel"), True)), "layers[0].numel is true/false"
    ),
    "nan-literal": (json.dumps({**VALID, "bound": float("nan")}), "bound is NaN"),
    "infinity-literal": (
        json.dumps(_mutate(VALID, ("layers", 2, "top_eig"), float("-inf"))),
        "layers[2].top_eig is -Infinity",
    ),
    "overflow-number": (
        json.dumps(VALID).replace('"epsilon": 0.0', '"epsilon": 1e999'),
        "epsilon overflows to infinity",
    ),
    "nan-in-unknown-key": (
        json.dumps(_mutate(VALID, ("inputs", "extra"), [1, float("nan")])),
        "inputs.extra[1] is NaN",
    ),
    "deep-nesting-recursion": (json.dumps(VALID)[:-1] + f', "x": {DEEP}}}', "nested too deeply"),
    "deep-nesting-40": (
        json.dumps(VALID)[:-1] + ', "x": ' + "[" * 40 + "]" * 40 + "}",
        "is nested more than 32 levels deep",
    ),
    "gate-without-passed": (
        json.dumps(_drop(VALID, ("gates", 1, "passed"))),
        "incomplete audit: gates[1] missing passed",
    ),
    "gate-observed-string": (
        json.dumps(_mutate(VALID, ("gates", 0, "observed"), "high")),
        "gates[0].observed is a string",
    ),
    "null-bound": (json.dumps({**VALID, "bound": None}), "bound is null, expected a number"),
    "missing-keys": (
        json.dumps({k: v for k, v in VALID.items() if k not in ("bound", "train_loss")}),
        "incomplete audit: missing bound, train_loss",
    ),
    "layer-without-hcal": (
        json.dumps(_drop(VALID, ("layers", 2, "hcal"))), "layers[2] missing hcal"
    ),
    "layers-not-a-list": (json.dumps({**VALID, "layers": {"a": 1}}), "layers is an object"),
    "inputs-a-list": (json.dumps({**VALID, "inputs": [1]}), "inputs is a list"),
    "checkpoint-a-string": (
        json.dumps(_mutate(VALID, ("inputs", "finetuned"), "ft.safetensors")),
        "inputs.finetuned is a string, expected an object",
    ),
    "duplicate-key": (json.dumps(VALID)[:-1] + ', "bound": 0.0}', "the key 'bound' more than"),
    "duplicate-nested-key": (
        json.dumps(VALID).replace('"tol": 0.001', '"tol": 0.001, "tol": 5'),
        "settings has the key 'tol' more than once",
    ),
    "lone-surrogate": (
        json.dumps(_mutate(VALID, ("layers", 0, "name"), "\ud800")),
        "layers[0].name holds an invalid character",
    ),
    "int-beyond-64-bits": (json.dumps({**VALID, "n": 2**64}), "n is an integer too large"),
    "int-too-many-digits": (
        json.dumps(VALID).replace('"n": 1201', '"n": ' + "9" * 5000),
        "not valid JSON (a number has too many digits)",
    ),
    "not-utf8": ('{"schema": "\udcff"}', "is not UTF-8 text"),
    "top-level-list": ("[1, 2]", "no schema field"),
    "compare-document": ('{"schema": "hessaudit.compare/1"}', "that is a compare result"),
    "truncated": (json.dumps(VALID)[:200], "is not valid JSON"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("command", ["compare", "report"])
def test_crafted_audit_is_one_error_line(files: Path, capsys, case: str, command: str) -> None:
    text, expected = CASES[case]
    new = files / "new.json"
    new.write_bytes(text.encode("utf-8", "surrogateescape"))
    before = (files / "existing.json").read_bytes(), (files / "existing.json").stat().st_mtime_ns
    if command == "compare":
        args = ["compare", files / "base.json", new, "--json", files / "existing.json"]
    else:
        args = ["report", new, "--out", files / "existing.json"]
    code, _, err = run_cli(args, capsys)
    assert code == 1, err
    assert_clean(code, err)
    assert str(new) in err and expected in err, err
    after = (files / "existing.json").read_bytes(), (files / "existing.json").stat().st_mtime_ns
    assert after == before


def test_huge_file_is_refused_before_reading(files: Path, capsys) -> None:
    huge = files / "huge.json"
    with open(huge, "wb") as handle:  # sparse: no disk space used
        handle.truncate(2**30)
    code, _, err = run_cli(["compare", files / "base.json", huge], capsys)
    assert code == 1
    assert_clean(code, err)
    assert f"{huge} is 1024 MiB; an audit JSON is at most 16 MiB" in err


def test_directory_and_missing(files: Path, capsys) -> None:
    code, _, err = run_cli(["report", files, "--out", files / "r.html"], capsys)
    assert code == 1 and "is a directory" in err
    code, _, err = run_cli(["compare", files / "base.json", files / "nope.json"], capsys)
    assert code == 1 and "nope.json: no such file" in err
    assert not (files / "r.html").exists()


def test_byte_order_mark_is_accepted(files: Path, capsys) -> None:
    (files / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(VALID).encode())
    code, _, err = run_cli(["compare", files / "base.json", files / "bom.json", "-q"], capsys)
    assert code == 0, err


# --------------------------------------------------------------------------- random mutations

# Any text, markup ("[") and mathtext ("$") included: names are escaped wherever shown.
_TEXT = st.text(max_size=12)
_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # NaN and +-Infinity included
    _TEXT,
)
_VALUE = st.recursive(
    _LEAF,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(_TEXT, children, max_size=3)
    ),
    max_leaves=6,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


PATHS = _paths(VALID)
_TOKENS = ["", ",", "]", "}", '"', "NaN", "[[[[", '{"a":', "\\ud800", '"bound": 1,', "\u0000"]


@st.composite
def mutated_audits(draw) -> bytes:
    """A valid audit with one structural edit and, sometimes, one raw text edit."""
    document = copy.deepcopy(VALID)
    path = draw(st.sampled_from(PATHS))
    action = draw(st.sampled_from(["replace", "replace", "delete", "duplicate", "add"]))
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if action == "replace":
        parent[last] = draw(_VALUE)
    elif action == "delete":
        del parent[last]
    elif action == "duplicate" and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[last]))
    elif isinstance(parent, dict):
        parent[draw(_TEXT)] = draw(_VALUE)
    text = json.dumps(document)
    edit = draw(st.sampled_from(["none", "none", "truncate", "insert"]))
    if edit != "none":
        at = draw(st.integers(min_value=0, max_value=len(text)))
        token = draw(st.sampled_from(_TOKENS)) if edit == "insert" else ""
        text = text[:at] + token + (text[at:] if edit == "insert" else "")
    return text.encode("utf-8", "surrogatepass")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("crafted")
    (folder / "base.json").write_text(json.dumps(VALID))
    return folder


_SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@_SETTINGS
@given(data=mutated_audits())
def test_random_mutations_compare(workdir: Path, capsys, data: bytes) -> None:
    """``compare`` both ways round, with gates and every output format."""
    new = workdir / "new.json"
    new.write_bytes(data)
    for name in ("out.json", "out.md"):
        (workdir / name).unlink(missing_ok=True)
    args = [
        "compare", workdir / "base.json", new, "--max-increase", "10",
        "--max-layer-increase", "5", "--json", workdir / "out.json",
        "--summary-md", workdir / "out.md",
    ]
    code, _, err = run_fast(args, capsys)
    assert_clean(code, err)
    if code != 1:
        json.loads((workdir / "out.json").read_text())  # the output is standard JSON
    code, _, err = run_fast(["compare", new, workdir / "base.json", "-q"], capsys)
    assert_clean(code, err)


@_SETTINGS
@given(data=mutated_audits())
def test_random_mutations_report(workdir: Path, capsys, data: bytes) -> None:
    new = workdir / "new.json"
    new.write_bytes(data)
    out = workdir / "page.html"
    out.unlink(missing_ok=True)
    code, _, err = run_fast(["report", new, "--out", out, "--no-plots"], capsys)
    assert_clean(code, err)
    assert code in (0, 1)
    assert out.exists() == (code == 0)


@settings(max_examples=4, deadline=None)
@given(
    hcal=st.lists(
        st.floats(min_value=-1e300, max_value=1e300, allow_nan=False), min_size=1, max_size=4
    )
)
def test_random_values_with_plots(workdir: Path, hcal: list[float]) -> None:
    """The matplotlib page on extreme but valid values (negative, 0, 1e300, tiny)."""
    document = copy.deepcopy(VALID)
    document["layers"] = [layer_row(f"l{i}.weight", h, head=i == 0) for i, h in enumerate(hcal)]
    (workdir / "plot.json").write_text(json.dumps(document))
    with pytest.raises(SystemExit) as exc:
        main(["report", str(workdir / "plot.json"), "--out", str(workdir / "p.html"), "-q"])
    assert exc.value.code == 0
    assert os.path.getsize(workdir / "p.html") > 0
