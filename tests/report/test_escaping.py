"""Issue 12 §5 and §11 (numbers): no injection into CI summaries, terminals or HTML, and
enough digits everywhere.

Through the CLI on a model whose layers carry hostile names, audited on an ImageFolder whose
root and class folders carry hostile names; then ``compare`` on audits whose JSON fields were
made hostile, ``inspect`` on checkpoints with hostile tensor and file names, and ``report``
with a mathtext layer name. The markdown is rendered with markdown-it (CommonMark + tables,
the engine rich itself depends on) and its HTML is checked element by element: only the
tags hessaudit writes itself, and every hostile string shown as exactly its text.
"""

from __future__ import annotations

import html
import json
import re
from html.parser import HTMLParser

import pytest

from hessaudit.cli import main
from hessaudit.report._format import (
    fmt_coefficient,
    fmt_fraction,
    fmt_metric,
    fmt_number,
    fmt_pair,
    fmt_percent,
)
from hessaudit.report.escape import ZERO_WIDTH_SPACE, console_text, md_text, visible
from tests.documents import audit_doc

#: Layer (module) names: torch forbids only '.' and ''.
HOSTILE_LAYERS = [
    "<img src=x onerror=alert(1)>",
    "<script>alert(1)</script>",
    "a\n\n# b",
    "`` ` ``",
    "[approve](https://evil)",
    "x[/]y",
    "[link=https://e]z[/link]",
    "$x^2$",
    "@everyone #12 https://evil",
    "\x1b[31mred\u202etxt",
]
#: Strings with dots: JSON layer names and fields of an audit given to compare / report.
HOSTILE_DOTTED = [
    "https://evil.example",
    "www.evil.example",
    "[approve](https://evil.example)",
    "mail a@b.example",
    "<img src=x onerror=alert(1)>.weight",
]
#: ImageFolder root and class folders.
HOSTILE_ROOT = "data<img src=x onerror=alert(1)>"
HOSTILE_CLASSES = ["<b>bold", "c\n\n# d"]

#: Tags hessaudit's own markdown renders to (via markdown-it) and its HTML report uses.
MD_TAGS = {
    "h3", "p", "table", "thead", "tbody", "tr", "th", "td", "code", "strong", "sub", "details",
    "summary", "blockquote", "ul", "li", "br",
}

FACTORY = '''
import torch
from torch import nn

NAMES = {names!r}


class Hostile(nn.Module):
    def __init__(self, num_classes=2, in_chans=3):
        super().__init__()
        width = [in_chans] + [3] * len(NAMES)
        for i, name in enumerate(NAMES):
            self.add_module(name, nn.Conv2d(width[i], width[i + 1], 1))
        self.fc = nn.Linear(3, num_classes)

    def forward(self, x):
        for name in NAMES:
            x = torch.tanh(getattr(self, name)(x))
        return self.fc(x.mean((2, 3)))


def make(num_classes=2, in_chans=3, seed=0):
    torch.manual_seed(seed)
    return Hostile(num_classes, in_chans)
'''


# --------------------------------------------------------------------------- helpers


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return int(exc.value.code), captured.out, captured.err


class _Elements(HTMLParser):
    """Tags (with attributes) and the text of an HTML document."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse_html(page: str) -> _Elements:
    parser = _Elements()
    parser.feed(page)
    parser.close()
    return parser


def render_markdown(text: str) -> _Elements:
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": True}).enable("table")
    return parse_html(md.render(text))


def assert_markdown_inert(text: str, hostile: list[str]) -> None:
    """Only hessaudit's own tags; every hostile string shown as its literal (visible) text."""
    rendered = render_markdown(text)
    tags = {tag for tag, _ in rendered.tags}
    assert tags <= MD_TAGS, tags - MD_TAGS
    shown = "".join(rendered.text)
    plain = shown.replace(ZERO_WIDTH_SPACE, "")
    for name in hostile:
        assert visible(name) in plain, name
    # No autolink can start: a scheme, www. or an address is always broken by U+200B.
    for needle in ("https://", "www.", "@everyone", "@b.example", "#12"):
        assert needle not in shown
        assert needle not in text
    # No raw HTML from inputs: every '<' is one of hessaudit's own tags.
    assert re.findall(r"<(?!/?(?:code|details|summary|sub)>)", text) == []
    # Headings come only from hessaudit (the verdict line).
    assert all(line.startswith("### ") for line in text.splitlines() if line.startswith("#"))


def table_rows(text: str, header: str) -> list[str]:
    """The body rows of the markdown table whose header line starts with ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header)) + 2
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def hostile_audit(tmp_path_factory):
    """A real audit of the hostile-named model on the hostile-named ImageFolder."""
    import importlib.util

    from hessaudit.inputs.checkpoints import save_checkpoint
    from tests.files import write_png

    tmp = tmp_path_factory.mktemp("hostile")
    factory = tmp / "hostile.py"
    factory.write_text(FACTORY.format(names=HOSTILE_LAYERS))
    spec = importlib.util.spec_from_file_location("_hostile_factory", factory)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pre, ft = tmp / "pre.safetensors", tmp / "ft[red]v2.safetensors"
    save_checkpoint(pre, module.make(seed=0).state_dict())
    save_checkpoint(ft, module.make(seed=1).state_dict())
    root = tmp / HOSTILE_ROOT
    for c, name in enumerate(HOSTILE_CLASSES):
        for i in range(2):
            write_png(root / name / f"{i}.png", value=40 * c + 7 * i)
    return {"tmp": tmp, "spec": f"{factory}:make", "pre": pre, "ft": ft, "data": root}


@pytest.fixture(scope="module")
def measured(hostile_audit):
    """``measure`` with --json, --summary-md and the terminal tables: (json, md, stdout)."""
    env = hostile_audit
    out_json, out_md = env["tmp"] / "A.json", env["tmp"] / "A.md"
    args = [
        "measure", env["pre"], env["ft"], "--model", env["spec"], "--data", env["data"],
        "--no-spectrum", "--json", out_json, "--summary-md", out_md,
        "--max-layer-hcal", "[[]approve]*=1e9",
    ]
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    assert exc.value.code == 0
    return out_json, out_md


# --------------------------------------------------------------------------- markdown


def test_measure_summary_md_renders_hostile_names_as_text(measured, hostile_audit):
    _, out_md = measured
    text = out_md.read_text()
    assert_markdown_inert(
        text, [f"{name}.weight" for name in HOSTILE_LAYERS] + [str(hostile_audit["data"])]
    )
    # One table row per layer: a name never breaks a row.
    rows = table_rows(text, "| layer | params |")
    assert len(rows) == len(HOSTILE_LAYERS) + 1  # + fc.weight
    assert all(row.count(" | ") == 4 for row in rows)  # five cells: no pipe broke a row


def test_compare_summary_md_renders_hostile_json_as_text(measured, tmp_path, capsys):
    out_json, _ = measured
    document = json.loads(out_json.read_text())
    for layer, name in zip(document["layers"], HOSTILE_DOTTED, strict=False):
        layer["name"] = name
    document["inputs"]["data"] = "<img src=x onerror=alert(1)>\n\n# injected [x](https://e.x)"
    document["inputs"]["model"] = "`` ` `` [approve](https://evil.example)"
    new = tmp_path / "B.json"
    new.write_text(json.dumps(document))
    summary = tmp_path / "c.md"
    code, _, err = run_cli(["compare", out_json, new, "--summary-md", summary], capsys)
    assert code == 0, err
    text = summary.read_text()
    assert_markdown_inert(text, [*HOSTILE_DOTTED, *HOSTILE_LAYERS[:2]])
    assert "data differs" in text and "model differs" in text
    warnings = [line for line in text.splitlines() if line.startswith("> ")]
    assert len(warnings) == 2  # each warning stays on its one line


@pytest.mark.parametrize(
    "value",
    [
        *HOSTILE_LAYERS,
        *HOSTILE_DOTTED,
        "a|b",
        "back\\slash|",
        "<!-- comment",
        "![img](https://e.x/i.png)",
        "**bold** _em_ ~~s~~",
        "1. list",
        "&amp; &#60;",
        "line\r\nbreak\u2028sep",
        "\ud800 lone surrogate",
    ],
)
def test_md_text_is_literal_in_a_table_cell(value):
    text = f"| a | b |\n|---|---|\n| <code>{md_text(value)}</code> | x |\n"
    rendered = render_markdown(text)
    assert {tag for tag, _ in rendered.tags} <= {"table", "thead", "tbody", "tr", "th", "td",
                                                   "code"}
    cells = "".join(rendered.text).replace(ZERO_WIDTH_SPACE, "")
    assert visible(value) in cells
    assert "\n" not in md_text(value)


# --------------------------------------------------------------------------- terminal


def test_measure_terminal_shows_markup_literally(hostile_audit, capsys):
    env = hostile_audit
    code, out, err = run_cli(
        [
            "measure", env["pre"], env["ft"], "--model", env["spec"], "--data", env["data"],
            "--no-spectrum", "--max-layer-hcal", "x[[]/]y*=1e9",
        ],
        capsys,
    )
    assert code == 0, err
    for name in ("x[/]y", "[link=https://e]z[/link]", "$x^2$", r"a\n\n# b"):
        assert name in out, name
    assert "\x1b" not in out and "\u202e" not in out  # shown as \x1b and \u202e
    assert "\\x1b[31mred\\u202etxt" in out


def test_inspect_shows_tensor_and_file_names_literally(tmp_path, capsys, monkeypatch):
    import torch

    from hessaudit.inputs.checkpoints import save_checkpoint

    monkeypatch.chdir(tmp_path)
    names = ["x[/]y", "[link=https://e]z[/link]", "[bold]b[/bold].weight"]
    state = {name: torch.ones(2, 2) for name in names}
    save_checkpoint("pre.safetensors", state)
    save_checkpoint("ft[red]v2.safetensors", {k: v * 2 for k, v in state.items()})
    code, out, err = run_cli(["inspect", "pre.safetensors", "ft[red]v2.safetensors"], capsys)
    assert code == 0, err
    assert "ft[red]v2.safetensors" in out
    for name in names:
        assert name in out, name


def test_compare_terminal_shows_markup_literally(measured, tmp_path, capsys):
    out_json, _ = measured
    document = json.loads(out_json.read_text())
    document["layers"][0]["name"] = "[link=https://e]renamed[/link]"
    document["inputs"]["model"] = "[red]m[/red] x[/]y"
    new = tmp_path / "B.json"
    new.write_text(json.dumps(document))
    code, out, err = run_cli(["compare", out_json, new], capsys)
    assert code == 0, err
    assert "x[/]y" in out and "[link=https://e]z[/link]" in out
    assert "[link=https://e]renamed[/link]" in out  # only in new
    assert "[red]m[/red] x[/]y" in " ".join(err.split())  # the "model differs" warning


# --------------------------------------------------------------------------- HTML report


def test_report_html_escapes_hostile_names_and_plots_mathtext(measured, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out_json, _ = measured
    document = json.loads(out_json.read_text())
    document["layers"][1]["name"] = "</code><script>alert(1)</script>"
    # Names that are broken mathtext: matplotlib raised ValueError on them before.
    document["layers"][2]["name"] = "$x^$"
    document["layers"][3]["name"] = "$\\notacommand$"
    document["inputs"]["model"] = '"><img src=x onerror=alert(1)>'
    audit = tmp_path / "hostile.json"
    audit.write_text(json.dumps(document))
    page_path = tmp_path / "page.html"
    code, _, err = run_cli(["report", audit, "--out", page_path, "-q"], capsys)
    assert code == 0, err  # '$x^2$' no longer crashes matplotlib's mathtext
    page = page_path.read_text()
    parsed = parse_html(page)
    assert "script" not in {tag for tag, _ in parsed.tags}
    images = [attrs for tag, attrs in parsed.tags if tag == "img"]
    assert len(images) == 1 and images[0]["src"].startswith("data:image/png;base64,")
    assert all(not key.startswith("on") for _, attrs in parsed.tags for key in attrs)
    text = "".join(parsed.text)
    for name in ("$x^2$", "$x^$", "$\\notacommand$", "</code><script>alert(1)</script>"):
        assert name in text, name
    assert html.escape("<img src=x onerror=alert(1)>") in page


# --------------------------------------------------------------------------- helpers' units


def test_console_text_escapes_markup():
    from rich.console import Console
    from rich.text import Text

    console = Console(width=200, record=True, emoji=False)
    for name in ("x[/]y", "[link=https://e]z[/link]", "ft[red]v2", "tail\\", "[bold]"):
        console.print(Text.from_markup(f"[green]{console_text(name)}[/green]"))
    shown = console.export_text()
    for name in ("x[/]y", "[link=https://e]z[/link]", "ft[red]v2", "tail\\", "[bold]"):
        assert name in shown


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.0002, "1.0002"),
        (1.0000001, "1.0000001"),
        (0.9999999, "0.9999999"),
        (26.000004, "26.000004"),
        (24.999999999999993, "25"),  # float rounding noise, not a difference
        (0.123456789, "0.123457"),
        (2.0, "2"),
        (0.0, "0"),
        (3, "3"),
        (None, "-"),
        ("not a number", "-"),
        (float("nan"), "nan"),
        (1e-9, "1e-09"),
    ],
)
def test_fmt_number(value, text):
    assert fmt_number(value) == text


def test_fmt_pair_and_percent_tell_values_apart():
    assert fmt_pair(1.2000001, 1.2) == ("1.2000001", "1.2")
    assert fmt_pair(0.1 + 0.2, 0.3) == ("0.30000000000000004", "0.3")
    assert fmt_percent(0.0004) == "+0.0004%" and fmt_percent(-25.0) == "-25%"


def test_the_fixed_formats_of_shares_metrics_and_correlations():
    # shares and accuracies: fixed decimals; log metrics: 4 significant digits, more when 4
    # would show a non-integer as an integer; "-" where there is no finite value
    assert [fmt_fraction(v) for v in (0.05, 1, 0.12345)] == ["5.0%", "100.0%", "12.3%"]
    assert fmt_fraction(0.93456, 2) == "93.46%"
    assert [fmt_fraction(v) for v in (None, float("nan"))] == ["-", "-"]
    assert [fmt_metric(v) for v in (0.123456, 1.00002, 7, "sgd")] == [
        "0.1235", "1.00002", "7", "sgd"]
    assert [fmt_metric(v) for v in (None, float("inf"))] == ["-", "-"]
    assert [fmt_coefficient(v) for v in (0.834, -1.0, 0.0, None)] == [
        "+0.83", "-1.00", "+0.00", "-"]


def test_held_out_loss_digits_in_panel_html_markdown_and_compare(tmp_path, capsys):
    from hessaudit.report.audit import print_audit
    from hessaudit.report.html import audit_html
    from hessaudit.report.markdown import audit_markdown

    document = audit_doc(eval_loss=1.0002, gap=0.9002, ratio_to_gap=0.3333)
    document.update(
        settings={"reduce": "example-max", "form": "positive", "engine": "jvp"},
        clamped_layers=[],
    )
    for layer in document["layers"]:
        layer.update(quad_raw=layer["hcal"], quad_pos=layer["hcal"], top_eig=None, trace=None,
                     converged=True, engine_path="jvp")
    print_audit(document)
    assert "1.0002" in capsys.readouterr().out
    assert "1.0002" in audit_html(document, plots=False)[0]
    assert "| held-out loss | 1.0002 |" in audit_markdown(document)
    base = tmp_path / "base.json"
    new = tmp_path / "new.json"
    base.write_text(json.dumps(audit_doc(eval_loss=1.0)))
    new.write_text(json.dumps(audit_doc(eval_loss=1.0002)))
    code, out, err = run_cli(["compare", base, new, "--summary-md", "-"], capsys)
    assert code == 0, err
    assert "| held-out loss | 1 | 1.0002 | +0.0002 | +0.02% |" in out


def test_visible_is_one_printable_line():
    for value in (*HOSTILE_LAYERS, "line\r\nbreak", "\u2028", "\ud800"):
        shown = visible(value)
        assert shown.isprintable() and "\n" not in shown
        shown.encode("utf-8")  # lone surrogates are escaped, not a UnicodeEncodeError
