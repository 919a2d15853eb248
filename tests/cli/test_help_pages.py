"""The help pages, as rendered at 80 and 120 columns.

* flags are plain flags (``--spectrum/--no-spectrum``, no ``<bool>`` type beside them);
* every option shows its default (``[default: ...]`` or ``(default: ...)`` in its help), or is
  required; a plain switch (no value, no ``--no-`` form) is off unless given;
* ``measure``'s options are grouped in the panels Inputs, Measure, Bound, Outputs, Gates;
* descriptions are whole paragraphs: no line breaks where the next word would have fitted
  (a line break of the source docstring), in particular none in the middle of a parenthesis;
* ``hessaudit --help`` and every command's ``--help`` import no torch.
"""

from __future__ import annotations

import itertools
import re
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from hessaudit.cli import app

#: Every command of the app, those added later included.
COMMANDS = tuple(typer.main.get_command(app).commands)
WIDTHS = (80, 120)
PANEL = re.compile(r"^╭─ (.+?) ─")
OPTION_ROW = re.compile(r"^│ (?:\*\s+|\s{3})?(--[\w-]+)")


def render(args: list[str], width: int) -> list[str]:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": str(width)})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert all(len(line) <= width for line in lines)
    return lines


def option_rows(lines: list[str]) -> dict[str, str]:
    """``--flag`` -> the text of its row (continuation lines joined), from every panel."""
    rows: dict[str, str] = {}
    current = None
    for line in lines:
        if not line.startswith("│"):
            current = None
            continue
        match = OPTION_ROW.match(line)
        if match and match.group(1) not in rows:
            current = match.group(1)
            rows[current] = line.strip("│ ")
        elif current is not None:
            rows[current] += " " + line.strip("│ ")
    return rows


def switches(args: list[str]) -> set[str]:
    """Options that take no value and have no ``--no-`` form (off unless given)."""
    command = typer.main.get_command(app)
    for name in args:
        command = command.commands[name]
    out = {"--help"}
    for param in command.params:
        if getattr(param, "is_flag", False) and not param.secondary_opts:
            out.update(o for o in param.opts if o.startswith("--"))
    return out


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("command", ("", *COMMANDS))
def test_flags_and_defaults(command: str, width: int) -> None:
    args = [command] if command else []
    lines = render(args, width)
    text = "\n".join(lines)
    assert "<bool>" not in text
    rows = option_rows(lines)
    assert rows, text
    plain = switches(args)
    for flag, row in rows.items():
        flat = " ".join(row.split())
        if flag in plain:
            continue
        assert re.search(r"\[default: |\(default: |[;,] default: |\[required\]|required to ",
                         flat), f"{command} {flag}: no default shown: {flat}"
    for flag, row in rows.items():  # on/off flags: both forms, no value
        if f"--no-{flag[2:]}" in row:
            assert not re.search(rf"--no-{flag[2:]}\s+<", row), row


@pytest.mark.parametrize("width", WIDTHS)
def test_measure_panels(width: int) -> None:
    panels = [m.group(1) for line in render(["measure"], width) if (m := PANEL.match(line))]
    for name in ("Inputs", "Measure", "Bound", "Outputs", "Gates"):
        assert any(p == name or p.startswith(name + " ") for p in panels), panels
    rows = option_rows(render(["measure"], width))
    assert "--spectrum" in rows and "--no-spectrum" in rows["--spectrum"]


def _premature_breaks(block: list[tuple[str, int]]) -> list[str]:
    """Lines of one paragraph, as (text, room), broken before a word that would have fitted:
    a line break of the source, not of the wrapping (such as a line that ends inside a
    parenthesis opened on it, while the rest of the parenthesis would have fitted)."""
    bad = []
    for (line, room), (following, _) in itertools.pairwise(block):
        if line and following and len(line) + 1 + len(following.split()[0]) <= room:
            bad.append(f"{line!r} / {following!r}")
    return bad


def description_blocks(lines: list[str], width: int) -> list[list[tuple[str, int]]]:
    """The command's description paragraphs (above the panels) and, in ``hessaudit --help``,
    each command's description in the Commands panel: lists of (line, room)."""
    blocks: list[list[tuple[str, int]]] = []
    first_panel = next(i for i, line in enumerate(lines) if line.startswith("╭"))
    usage = next(i for i, line in enumerate(lines) if "Usage:" in line)
    block: list[tuple[str, int]] = []
    for line in lines[usage + 1 : first_panel]:
        text = line.strip()
        if text:
            block.append((text, width - 2))
        elif block:
            blocks.append(block)
            block = []
    if block:
        blocks.append(block)
    in_commands, start = False, 0
    for line in lines:
        if line.startswith("╭─ Commands"):
            in_commands, block = True, []
        elif in_commands and line.startswith("╰"):
            blocks.append(block)
            break
        elif in_commands:
            match = re.match(r"^│ (\w+)(\s+)(.*?)\s*│$", line)
            if match:  # a command's first line: its name, then its description
                if block:
                    blocks.append(block)
                start = 2 + len(match.group(1)) + len(match.group(2))
                block = [(match.group(3), len(line) - 2 - start)]
            else:
                block.append((line[2:-1].strip(), len(line) - 2 - start))
    return blocks


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("command", ("", *COMMANDS))
def test_descriptions_are_whole_paragraphs(command: str, width: int) -> None:
    lines = render([command] if command else [], width)
    blocks = description_blocks(lines, width)
    assert blocks
    bad = [b for block in blocks for b in _premature_breaks(block)]
    assert not bad, bad


def test_premature_break_check_can_fail() -> None:
    """The docstring line break the issue saw: ``(reweighted loss + layerwise`` / ``...``."""
    block = [("Fine-tune a pretrained model robustly under label noise", 66),
             ("(reweighted loss + layerwise", 66), ("projection), or with a baseline loss;", 66)]
    assert _premature_breaks(block) == [
        "'(reweighted loss + layerwise' / 'projection), or with a baseline loss;'"
    ]


def test_help_imports_no_torch() -> None:
    code = (
        "import sys, io, contextlib\n"
        "from hessaudit.cli import main\n"
        f"for args in ([], *[[c] for c in {COMMANDS!r}]):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            main([*args, '--help'])\n"
        "        except SystemExit as exc:\n"
        "            assert exc.code == 0, (args, exc.code)\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
