"""``hessaudit report``: a self-contained HTML page, checked as text, as a plot image, and laid
out by a real headless Chromium: it never scrolls sideways at 1280, 800 or 400 pixels (long
checkpoint paths, digests, layer names and hostile values included), every number of the audit
JSON is on it, and the key ones are visible.

One browser launch per width (a second or two each). Without Chromium the browser tests skip,
except in CI (``CI=true``), where they fail (see tests/_report_page.py; .ci/run installs it).
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import sys

import pytest
from _report_page import (
    layout,
    missing_numbers,
    number_tokens,
    page_text,
    require_browser,
    run_browser,
)
from test_cli_gates import MODEL, make_checkpoints, run_cli, run_main
from test_gates import audit_doc

from hessaudit import gates
from hessaudit.gates import Gate
from hessaudit.report._format import fmt_number
from hessaudit.report.html import audit_html, plot_png

BAR_BLUE = (0x4C, 0x72, 0xB0)
FAIL_RED = (0xC4, 0x4E, 0x52)


def failing_doc():
    document = audit_doc()
    document["gates"] = gates.evaluate(
        [Gate("max-bound", 1.0), Gate("max-layer-hcal", 0.5, pattern="layer4.*")], document
    )
    document["success"] = False
    return document


def assert_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    lowered = page.lower()
    assert "http://" not in lowered and "https://" not in lowered and "//cdn" not in lowered
    assert "<script" not in lowered and "<link" not in lowered and "@import" not in lowered
    assert "<style>" in lowered
    for src in re.findall(r'src="([^"]*)"', page):
        assert src.startswith("data:image/png;base64,")


def has_color(pixels, rgb, tolerance=8) -> bool:
    """Whether an image (H, W, 3|4 floats in 0..1 or uint8) has a pixel close to ``rgb``."""
    import numpy as np

    array = np.asarray(pixels)[..., :3].astype(float)
    if array.max() <= 1.0:
        array = array * 255
    return bool((np.abs(array - np.array(rgb)).max(axis=-1) <= tolerance).any())


def decode_png(data: bytes):
    from matplotlib.image import imread

    return imread(io.BytesIO(data), format="png")


def test_page_is_self_contained_with_plot():
    pytest.importorskip("matplotlib")
    page, plotted = audit_html(failing_doc())
    assert plotted
    assert_self_contained(page)
    assert page.count("data:image/png;base64,") == 1
    assert "<b>FAIL</b> — 1 of 2 gates failed" in page
    # The verdict comes before the tables, and names the failing gate and its worst layer.
    verdict = page.index('class="verdict fail"')
    assert verdict < page.index("<h2>Bound</h2>")
    assert "max-layer-hcal:layer4.*" in page[verdict : page.index("<h2>Bound</h2>")]
    assert page.count("fails a gate</span>") == 1  # layer4.0.weight, the one over 0.5
    assert "new head</span>" in page


def test_plot_image_shows_bars_and_failing_layers():
    pytest.importorskip("matplotlib")
    image = decode_png(plot_png(audit_doc(), highlight={"layer4.0.weight"}))
    height, width = image.shape[:2]
    assert width >= 800 and height >= 200
    assert has_color(image, BAR_BLUE)
    assert has_color(image, FAIL_RED)
    plain = decode_png(plot_png(audit_doc()))
    assert not has_color(plain, FAIL_RED)


def test_plot_height_grows_with_layers():
    pytest.importorskip("matplotlib")
    layers = [{"name": f"blocks.{i}.attn.qkv.weight", "hcal": 1.0 + i} for i in range(60)]
    image = decode_png(plot_png(audit_doc(layers=layers)))
    assert image.shape[0] > 1500


def test_log_scale_for_widely_spread_hcal():
    pytest.importorskip("matplotlib")
    layers = [{"name": f"l{i}", "hcal": 10.0**-i} for i in range(6)]
    assert plot_png(audit_doc(layers=layers)) is not None
    zero = [{"name": "a", "hcal": 0.0}, {"name": "b", "hcal": 0.0}]
    assert plot_png(audit_doc(layers=zero)) is not None


def test_without_matplotlib_falls_back_to_css_bars(monkeypatch):
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    page, plotted = audit_html(failing_doc())
    assert not plotted
    assert_self_contained(page)
    assert "data:image" not in page
    assert "matplotlib is not installed" in page
    # One bar per layer for Hcal and one for the share of G.
    assert page.count('<span class="bar') == 2 * len(audit_doc()["layers"])


def test_plots_off():
    page, plotted = audit_html(audit_doc(), plots=False)
    assert not plotted and "plots were turned off" in page and "data:image" not in page
    assert '<div class="verdict pass"><b>PASS</b> — no gates set</div>' in page


def test_audit_without_layers():
    page, plotted = audit_html(audit_doc(layers=[]))
    assert not plotted and "The audit has no layers." in page
    assert_self_contained(page)


def test_names_are_escaped():
    layers = [{"name": "<script>alert(1)</script>", "hcal": 1.0}]
    page, _ = audit_html(audit_doc(layers=layers), title="a & <b>", plots=False)
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<title>a &amp; &lt;b&gt;</title>" in page


# --------------------------------------------------------------------------- CLI and browser


#: A folder name as long as the demo's cache path, and longer: the page must wrap it.
LONG_FOLDER = "experiments-2026-finetune-digits-cnn-" + "f9379f6a2c5f" * 4


@pytest.fixture(scope="module")
def real_audit(tmp_path_factory):
    """A real audit (digits CNN, held-out data, an estimate, a failing gate) of checkpoints
    under a long folder name."""
    folder = tmp_path_factory.mktemp("report") / LONG_FOLDER / "v0.1.0-nested-run-folder"
    folder.mkdir(parents=True)
    ckpts = make_checkpoints(folder, {"ft": 0.1})
    path = folder / "audit.json"
    code = run_main(
        [
            "measure", ckpts["pre"], ckpts["ft"], "--model", MODEL, "--data", "digits",
            "--eval-data", "digits", "--samples", "16", "-q",
            "--max-layer-hcal", "layer2.*=1e-9", "--max-bound", "100", "--json", path,
        ]
    )  # fmt: skip
    assert code == 2
    return path


def test_cli_report(real_audit, capsys, tmp_path):
    out = tmp_path / "report.html"
    code, _, err = run_cli(["report", real_audit, "--out", out], capsys)
    assert code == 0, err  # the report does not gate, even for a failed audit
    page = out.read_text()
    assert_self_contained(page)
    document = json.loads(real_audit.read_text())
    for layer in document["layers"]:
        assert layer["name"] in page
    assert "max-layer-hcal:layer2.*" in page and "<b>FAIL</b>" in page
    assert "held-out loss" in page


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("invalid", "not valid JSON"),
        ("missing", "no such file"),
        ("bad-out", "does not exist"),
    ],
)
def test_cli_report_bad_input_exits_1(real_audit, capsys, tmp_path, setup, message):
    source, out = real_audit, tmp_path / "r.html"
    if setup == "invalid":
        source = tmp_path / "bad.json"
        source.write_text("{")
    elif setup == "missing":
        source = tmp_path / "nope.json"
    else:
        out = tmp_path / "no" / "r.html"
    code, _, err = run_cli(["report", source, "--out", out], capsys)
    assert code == 1 and message in err
    assert not (tmp_path / "r.html").exists()


def test_page_renders_in_headless_chromium(real_audit, capsys, tmp_path):
    browser = require_browser()
    pytest.importorskip("matplotlib")
    out = tmp_path / "report.html"
    code, _, _ = run_cli(["report", real_audit, "--out", out], capsys)
    assert code == 0
    shot = tmp_path / "shot.png"
    window = "--window-size=1200,1600"
    run_browser(browser, out, tmp_path / "profile", f"--screenshot={shot}", window)
    assert shot.is_file() and shot.stat().st_size > 10_000
    image = decode_png(shot.read_bytes())
    assert image.shape[:2] == (1600, 1200)
    top = image[:400]
    assert has_color(top, (0xFF, 0xEB, 0xE9), tolerance=3)  # the FAIL banner's background
    assert has_color(image, BAR_BLUE)  # the embedded plot was decoded and drawn
    assert has_color(image, FAIL_RED)  # layer2's bar, which fails its gate


def test_screenshot_data_uri_roundtrip():
    """The embedded PNG decodes to the same image plot_png made."""
    pytest.importorskip("matplotlib")
    page, _ = audit_html(audit_doc())
    encoded = re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1)
    assert base64.b64decode(encoded) == plot_png(audit_doc())


# --------------------------------------------------------------------------- what the page shows


def with_measures(document: dict) -> dict:
    """The audit with a ``measures`` object like the one ``measure`` writes (kept if present)."""
    layers = document["layers"]
    dist = [layer["dist_fro"] for layer in layers]
    document.setdefault(
        "measures",
        {
            "hessian_term": document["hessian_term"],
            "sum_sqrt_hcal": sum(math.sqrt(max(layer["hcal"], 0.0)) for layer in layers),
            "distance_fro": sum(dist),
            "distance_fro_sq": sum(d * d for d in dist),
            "trace_distance": 12.345678,
            "trace_distance_stderr": 0.9876,
            "trace_distance_trace": "mean-hessian-hutchinson",
            "trace_examples": 32,
            "trace_probes": 8,
            "layers": len(layers),
            "noise_stability": {"mean": 0.0123, "std": 0.0045, "stderr": 0.001,
                                "draws": 20, "eps": 0.01, "data": "eval_data"},
        },
    )  # fmt: skip
    return document


@pytest.fixture(scope="module")
def real_page(real_audit) -> tuple[dict, str]:
    """The real audit (with measures) and its page, with the matplotlib plot when available."""
    document = with_measures(json.loads(real_audit.read_text()))
    return document, audit_html(document)[0]


def test_every_number_of_the_audit_is_on_the_page(real_page):
    document, page = real_page
    assert missing_numbers(document, page_text(page)) == []
    assert_self_contained(page)


def test_engine_path_column_and_not_converged_tag():
    document = audit_doc()
    for layer, path in zip(document["layers"], ["jvp", "lanczos", "<b>x</b>", "jvp"], strict=True):
        layer.update(engine_path=path, converged=path != "lanczos")
    page, _ = audit_html(document, plots=False)
    assert "<th>engine path</th>" in page
    cell = '<td data-label="engine path"><code>lanczos</code> <span class="tag fail">not converged'
    assert cell in page
    assert "<code>&lt;b&gt;x&lt;/b&gt;</code>" in page and "<b>x</b>" not in page
    # An audit from before engine paths were recorded: no empty column.
    assert "engine path" not in audit_html(audit_doc(), plots=False)[0]


def test_identical_form_columns_collapse():
    same = audit_doc()
    for layer in same["layers"]:
        layer.update(quad_raw=layer["hcal"], quad_pos=layer["hcal"])
    page, _ = audit_html(same, plots=False)
    assert "vᵀHv</th>" not in page and "vᵀH⁺v</th>" not in page
    differ = audit_doc()
    for layer in differ["layers"]:
        layer.update(quad_raw=layer["hcal"] - 0.5, quad_pos=layer["hcal"])
    page, _ = audit_html(differ, plots=False)
    assert "vᵀHv</th>" in page and "vᵀH⁺v</th>" not in page
    assert '<td class="num" data-label="vᵀHv">3.5</td>' in page


@pytest.mark.parametrize(
    ("fields", "shown", "absent"),
    [
        ({"bound_kind": "bound", "estimate_reasons": [], "hcal_scope": "all"},
         ['<span class="tag ok">bound</span>', "every example of the data"], ["estimate"]),
        ({"bound_kind": "estimate", "estimate_reasons": ["max over 10 of 40 examples", "<i>"],
          "hcal_scope": "subset"},
         ['<span class="tag est">estimate</span>', "max over 10 of 40 examples", "&lt;i&gt;",
          "a subset of the data"], ["<i>"]),
        ({}, [], ["bound kind"]),  # an audit from before bound_kind
    ],
)  # fmt: skip
def test_bound_kind_in_the_summary(fields, shown, absent):
    page, _ = audit_html(audit_doc(**fields), plots=False)
    body = page.split("</style>", 1)[1]
    summary = body[body.index("<h2>Bound</h2>") : body.index("<h2>Inputs</h2>")]
    for text in shown:
        assert text in summary, text
    for text in absent:
        assert text not in body, text
    if fields:
        assert '<td class="key">bound kind</td>' in summary


def test_measures_side_by_side():
    document = with_measures(audit_doc())
    document["measures"]["<b>odd</b>"] = {"mean": 0.5, "x<y": "a&b"}
    page, _ = audit_html(document, plots=False)
    body = page.split("</style>", 1)[1]
    section = body[body.index("<h2>Measures</h2>") : body.index("<h2>Per-layer bars</h2>")]
    for key in ("hessian_term", "sum_sqrt_hcal", "distance_fro", "distance_fro_sq",
                "trace_distance", "noise_stability"):  # fmt: skip
        assert f"<code>{key}</code>" in section
    assert "12.3457 <small>± 0.9876</small>" in section  # the stderr on its measure's card
    assert "<code>trace_distance_stderr</code>" not in section
    text = page_text(section)
    for value in ("0.0123", "0.0045", "0.001", "20", "0.01", "eval_data", "32", "8"):
        assert value in number_tokens(text) or value in text, value
    assert "&lt;b&gt;odd&lt;/b&gt;" in section and "<b>odd" not in section
    assert "x&lt;y" in section and "a&amp;b" in section


@pytest.mark.parametrize("measures", [None, {}, [1.5, 2.5], "text"])
def test_no_measures_section_without_a_measures_object(measures):
    document = audit_doc()
    if measures is not None:
        document["measures"] = measures
    page, _ = audit_html(document, plots=False)
    assert "<h2>Measures</h2>" not in page
    if isinstance(measures, list):  # still shown, under "Every field of the audit file"
        assert missing_numbers(document, page_text(page)) == []


def test_digests_shortened_whole_on_hover_and_every_field_shown():
    document = audit_doc(unknown_field={"a<b": [1.25, "x"]})
    document["inputs"]["finetuned"]["sha256"] = "ab" * 32
    document["inputs"]["deep"] = json.loads("[" * 50 + "7" + "]" * 50)
    page, _ = audit_html(document, plots=False)
    assert f'title="sha256 {"ab" * 32}">sha256 {"ab" * 6}…</span>' in page
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    details = page[page.index("<details>") :]
    assert "Every field of the audit file" in details
    assert "unknown_field" in details and "a&lt;b" in details and "1.25" in details
    assert "…" in details  # nesting past MAX_DEPTH is cut, not recursed into
    assert "ab" * 32 in details  # the whole digest, under Every field


# --------------------------------------------------------------------------- layout in Chromium


@pytest.mark.parametrize("width", [1280, 800, 400])
def test_no_sideways_scroll_and_every_number_in_chromium(real_page, tmp_path, width):
    browser = require_browser()
    document, page = real_page
    probe = layout(browser, page, width, tmp_path)
    assert probe["inner"] == width  # the page really was laid out that wide
    assert probe["scroll"] <= probe["client"], probe["outside"]
    assert probe["outside"] == []
    # Nothing to scroll inside the page either, but the plot on a phone (readable, not shrunk)
    # and the table of every per-layer field (one column per JSON key, in the closed details).
    allowed = ("plot", "scroll: fields")
    assert [box for box in probe["scrollers"] if not box.startswith(allowed)] == []
    assert any(box.startswith("plot") for box in probe["scrollers"]) == (width < 640)
    # Every number of the JSON is on the page (some inside the closed "Every field" details).
    assert missing_numbers(document, probe["text"]) == []
    # The ones a reader looks for are visible without opening anything.
    visible = number_tokens(probe["visible"])
    key = [document[k] for k in ("bound", "hessian_term", "train_loss", "eval_loss", "gap")]
    key += [layer[k] for layer in document["layers"] for k in ("hcal", "dist_fro", "top_eig")]
    key += [v for v in document["measures"].values() if isinstance(v, float)]
    assert {fmt_number(value) for value in key} <= visible
    for layer in document["layers"]:
        assert layer["name"] in probe["visible"]
        assert layer["engine_path"] in probe["visible"]
    assert "bound kind" in probe["visible"] and "estimate" in probe["visible"]
    assert LONG_FOLDER in probe["visible"]  # the paths are shown whole, wrapped


def test_hostile_values_do_not_widen_a_phone_page(tmp_path):
    """Values with no place to break, huge numbers and deep nesting: still no sideways scroll."""
    browser = require_browser()
    unbroken = "x" * 300
    document = audit_doc(
        layers=[
            {"name": unbroken, "hcal": 1.0, "numel": 10**12, "dist_fro": 1e-300,
             "engine_path": "y" * 200, "converged": False},
            {"name": "b", "hcal": 2.0, "numel": 5, "dist_fro": -1.5, unbroken: unbroken},
        ],
        inputs={"model": unbroken, "data": "/" + "d" * 400, "seed": 10**40,
                "finetuned": {"path": "/" + "p" * 500, "sha256": "f" * 64},
                "deep": json.loads("[" * 30 + "1" + "]" * 30)},
        n=10**60,
        bound_kind="estimate",
        estimate_reasons=["r" * 400],
        hcal_scope="s" * 200,
        measures={unbroken: 1.5, "z" * 100: {unbroken: 2.5, "n": 10**30}, "s": unbroken},
        extra_field={unbroken: [unbroken, 1e300]},
    )  # fmt: skip
    document["gates"] = [
        {"name": "g" * 300, "op": "<=", "threshold": 1.0, "observed": 2.0, "passed": False,
         "source": unbroken, "worst_layer": unbroken, "failing_layers": [unbroken],
         "note": unbroken, "layers_matched": 2},
    ]  # fmt: skip
    page, _ = audit_html(document, plots=False, title=unbroken)
    probe = layout(browser, page, 400, tmp_path)
    assert probe["inner"] == 400
    assert probe["scroll"] <= probe["client"], probe["outside"]
    assert probe["outside"] == []
