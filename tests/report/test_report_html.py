"""``hessaudit report``: a self-contained HTML page, checked as text, as a plot image, and laid
out by a real headless Chromium: it never scrolls sideways at 1280, 800 or 400 pixels (long
checkpoint paths, digests, layer names and hostile values included), every number of the audit
JSON is on it, and the key ones are visible.

One browser launch per width (a second or two each). Without Chromium the browser tests skip,
except in CI (``CI=true``), where they fail (see tests/report/page.py; .ci/run installs it).
"""

from __future__ import annotations

import base64
import io
import json
import re
import sys

import pytest

from hessaudit.audit import gates
from hessaudit.audit.gates import Gate
from hessaudit.report._format import fmt_number
from hessaudit.report.html import audit_html, plot_png
from tests.documents import audit_doc
from tests.invoke import MODEL, make_checkpoints, run_cli, run_main
from tests.report.page import (
    layout,
    missing_numbers,
    number_tokens,
    page_text,
    require_browser,
    run_browser,
    with_measures,
)

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


@pytest.fixture(scope="module")
def browser() -> str:
    """The headless Chromium (skips without one; fails under CI=true)."""
    return require_browser()


def test_page_renders_in_headless_chromium(browser, real_audit, capsys, tmp_path):
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


@pytest.fixture(scope="module")
def real_page(real_audit) -> tuple[dict, str]:
    """The real audit (with measures) and its page, with the matplotlib plot when available."""
    document = with_measures(json.loads(real_audit.read_text()))
    return document, audit_html(document)[0]


def test_every_number_of_the_audit_is_on_the_page(real_page):
    document, page = real_page
    assert missing_numbers(document, page_text(page)) == []
    assert_self_contained(page)


# --------------------------------------------------------------------------- layout in Chromium


@pytest.mark.parametrize("width", [1280, 800, 400])
def test_no_sideways_scroll_and_every_number_in_chromium(browser, real_page, tmp_path, width):
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


def test_hostile_values_do_not_widen_a_phone_page(browser, tmp_path):
    """Values with no place to break, huge numbers and deep nesting: still no sideways scroll."""
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
