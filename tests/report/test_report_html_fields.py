"""What ``hessaudit report``'s page shows, checked on its HTML: the engine path column, the
bound kind in the summary, the measures side by side, identical form columns collapsed,
digests shortened with the whole value on hover, and every other field of the audit file,
escaped (the layout itself is checked in Chromium by tests/report/test_report_html.py)."""

from __future__ import annotations

import json

import pytest

from hessaudit.report.html import audit_html
from tests.documents import audit_doc
from tests.report.page import missing_numbers, number_tokens, page_text, with_measures


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
