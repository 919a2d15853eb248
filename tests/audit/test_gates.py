"""Gate specs, flag and config parsing, evaluation, and the markdown verdict (no audits run)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hessaudit.audit import gates
from hessaudit.audit.gates import Gate
from hessaudit.errors import HessauditError
from hessaudit.report.markdown import audit_markdown, write_summary
from tests.documents import audit_doc


def by_name(records):
    return {record["name"]: record for record in records}


# --------------------------------------------------------------------------- flags


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("layer4.*=0.5", ("layer4.*", 0.5)),
        ("0.5", ("*", 0.5)),
        ("a=b=2", ("a=b", 2.0)),
        (" fc.* = 1e-3", ("fc.*", 1e-3)),
    ],
)
def test_parse_layer_flag(text, expected):
    assert gates.parse_layer_flag("max-layer-hcal", text) == expected


@pytest.mark.parametrize("text", ["layer4.*", "=1", "x=nan", "x=inf", "x=-1", "x="])
def test_parse_layer_flag_rejects(text):
    with pytest.raises(HessauditError):
        gates.parse_layer_flag("max-layer-hcal", text)


def test_share_threshold_is_a_fraction():
    with pytest.raises(HessauditError, match="between 0 and 1"):
        gates.parse_layer_flag("max-layer-share", "fc.*=30")


def test_compare_thresholds_may_be_negative():
    # "--max-increase -5": the bound must have dropped by at least 5%.
    assert gates.compare_gates(max_increase=-5.0, max_layer_increase=["-1"])[0].threshold == -5


def test_gate_names_and_ops():
    assert Gate("max-bound", 1.0).name == "max-bound"
    assert Gate("max-layer-hcal", 1.0, pattern="layer4.*").name == "max-layer-hcal:layer4.*"
    assert Gate("min-ratio", 1.0).op == ">="
    assert Gate("max-ratio", 1.0).op == "<="


# --------------------------------------------------------------------------- config


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_no_pyproject_means_no_gates(tmp_path):
    assert gates.measure_gates(cwd=tmp_path) == []


def test_pyproject_without_our_table(tmp_path):
    write(tmp_path / "pyproject.toml", "[project]\nname = 'x'\n[tool.ruff]\nline-length = 1\n")
    assert gates.measure_gates(cwd=tmp_path) == []


def test_pyproject_gates_all_keys(tmp_path):
    write(
        tmp_path / "pyproject.toml",
        "[tool.hessaudit.gates]\n"
        "max-bound = 1.2\nmax-hessian-term = 1\nmax-ratio = 3\nmin-ratio = 0.5\n"
        'max-layer-hcal = { "layer4.*" = 0.5, "fc.*" = 2 }\n'
        "max-layer-share = 0.9\n"
        "[tool.hessaudit.compare]\nmax-increase = 5\n"
        'max-layer-increase = { "layer4.*" = 10 }\n',
    )
    specs = gates.measure_gates(cwd=tmp_path)
    assert [(g.name, g.threshold, g.source) for g in specs] == [
        ("max-bound", 1.2, "pyproject.toml"),
        ("max-hessian-term", 1.0, "pyproject.toml"),
        ("max-ratio", 3.0, "pyproject.toml"),
        ("min-ratio", 0.5, "pyproject.toml"),
        ("max-layer-hcal:layer4.*", 0.5, "pyproject.toml"),
        ("max-layer-hcal:fc.*", 2.0, "pyproject.toml"),
        ("max-layer-share:*", 0.9, "pyproject.toml"),
    ]
    compare = gates.compare_gates(cwd=tmp_path)
    assert [(g.name, g.threshold) for g in compare] == [
        ("max-increase", 5.0),
        ("max-layer-increase:layer4.*", 10.0),
    ]


def test_flags_override_file(tmp_path):
    write(
        tmp_path / "pyproject.toml",
        '[tool.hessaudit.gates]\nmax-bound = 1.2\nmax-layer-hcal = { "a*" = 1, "b*" = 2 }\n',
    )
    specs = gates.measure_gates(max_bound=3.0, max_layer_hcal=["b*=5", "c*=6"], cwd=tmp_path)
    assert [(g.name, g.threshold, g.source) for g in specs] == [
        ("max-bound", 3.0, "--max-bound"),
        ("max-layer-hcal:a*", 1.0, "pyproject.toml"),
        ("max-layer-hcal:b*", 5.0, "--max-layer-hcal"),
        ("max-layer-hcal:c*", 6.0, "--max-layer-hcal"),
    ]


def test_config_file_top_level_tables(tmp_path):
    write(tmp_path / "pyproject.toml", "[tool.hessaudit.gates]\nmax-bound = 1.2\n")
    config = write(tmp_path / "ci.toml", "[gates]\nmax-hessian-term = 0.5\n")
    specs = gates.measure_gates(config=config, cwd=tmp_path)
    assert [(g.name, g.source) for g in specs] == [("max-hessian-term", str(config))]


def test_config_file_named_pyproject_is_read_the_pyproject_way(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    config = write(sub / "pyproject.toml", "[tool.hessaudit.gates]\nmax-bound = 2\n")
    assert gates.measure_gates(config=config)[0].threshold == 2.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[tool.hessaudit.gates]\nmax_bound = 1\n", "did you mean 'max-bound'"),
        ("[tool.hessaudit.gates]\nmax-bund = 1\n", "did you mean 'max-bound'"),
        ("[tool.hessaudit.gates]\nmax-increase = 1\n", "unknown key 'max-increase'"),
        ("[tool.hessaudit.compare]\nmax-bound = 1\n", "unknown key 'max-bound'"),
        ("[tool.hessaudit.gates]\nmax-bound = true\n", "must be a number"),
        ("[tool.hessaudit.gates]\nmax-bound = '1'\n", "must be a number"),
        ("[tool.hessaudit.gates]\nmax-bound = nan\n", "finite"),
        ("[tool.hessaudit.gates]\nmax-bound = -1\n", "negative"),
        ("[tool.hessaudit.gates]\nmax-layer-share = { 'fc' = 2 }\n", "between 0 and 1"),
        ("[tool.hessaudit.gates]\nmax-layer-hcal = { 'fc' = 'x' }\n", "must be a number"),
        ("[tool.hessaudit]\ngates = 3\n", "must be a table"),
        ("[tool.hessaudit.gates.max-layer-hcal]\nlayer4.weight = 1\n", "quote patterns"),
        ("[tool.hessaudit.gates\n", "not valid TOML"),
    ],
)
def test_bad_pyproject(tmp_path, text, message):
    write(tmp_path / "pyproject.toml", text)
    with pytest.raises(HessauditError, match=message):
        gates.measure_gates(cwd=tmp_path)


def test_unknown_table_in_config_file(tmp_path):
    config = write(tmp_path / "hessaudit.toml", "[gate]\nmax-bound = 1\n")
    with pytest.raises(HessauditError, match=r"unknown key 'gate'.*did you mean 'gates'"):
        gates.measure_gates(config=config)


def test_missing_config_file(tmp_path):
    with pytest.raises(HessauditError, match="no such file"):
        gates.measure_gates(config=tmp_path / "nope.toml")
    with pytest.raises(HessauditError, match="not a file"):
        gates.measure_gates(config=tmp_path)


def test_compare_section_typo_is_caught_by_measure_too(tmp_path):
    write(tmp_path / "pyproject.toml", "[tool.hessaudit.compare]\nmax-incr = 1\n")
    with pytest.raises(HessauditError, match="max-increase"):
        gates.measure_gates(cwd=tmp_path)


# --------------------------------------------------------------------------- evaluation


def test_scalar_gates():
    document = audit_doc()
    records = by_name(
        gates.evaluate(
            [Gate("max-bound", 0.4), Gate("max-hessian-term", 0.2), Gate("min-ratio", 1.5)],
            document,
        )
    )
    assert records["max-bound"] | {} == {
        "name": "max-bound",
        "op": "<=",
        "threshold": 0.4,
        "observed": 0.4,
        "passed": True,  # equal to the threshold passes
        "source": "flag",
        "observed_is_estimate": False,  # the document has no bound_kind "estimate"
    }
    assert records["max-hessian-term"]["passed"] is False
    assert records["max-hessian-term"]["observed"] == 0.3
    assert records["min-ratio"]["passed"] is True and records["min-ratio"]["op"] == ">="


def test_ratio_gate_without_eval_data_is_an_error():
    document = audit_doc(eval_loss=None, gap=None, ratio_to_gap=None)
    with pytest.raises(HessauditError, match="--eval-data"):
        gates.evaluate([Gate("max-ratio", 2.0)], document)
    with pytest.raises(HessauditError, match="--eval-data"):
        gates.check_before_audit([Gate("min-ratio", 2.0)], eval_data=None)
    gates.check_before_audit([Gate("min-ratio", 2.0)], eval_data="digits")
    gates.check_before_audit([Gate("max-bound", 2.0)], eval_data=None)


@pytest.mark.parametrize(
    ("gap", "term", "max_passes", "min_passes"),
    [
        (-0.1, 0.3, False, True),  # G > 0 >= X * gap
        (0.0, 0.3, False, True),
        (0.0, 0.0, True, True),  # G = 0 = gap: both hold with equality
        (-0.1, 0.0, False, True),
    ],
)
def test_ratio_gate_with_non_positive_gap(gap, term, max_passes, min_passes):
    document = audit_doc(gap=gap, ratio_to_gap=None, hessian_term=term)
    records = by_name(gates.evaluate([Gate("max-ratio", 2.0), Gate("min-ratio", 1.0)], document))
    assert records["max-ratio"]["passed"] is max_passes
    assert records["min-ratio"]["passed"] is min_passes
    for record in records.values():
        assert record["observed"] is None
        assert "gap" in record["note"]


def test_layer_hcal_gate_worst_and_failing_layers():
    document = audit_doc()
    (record,) = gates.evaluate([Gate("max-layer-hcal", 0.5, pattern="layer4.*")], document)
    assert record["passed"] is False
    assert record["observed"] == 1.0
    assert record["worst_layer"] == "layer4.0.weight"
    assert record["failing_layers"] == ["layer4.0.weight"]
    assert record["layers_matched"] == 2
    assert record["pattern"] == "layer4.*"
    (record,) = gates.evaluate([Gate("max-layer-hcal", 4.0)], document)  # pattern None = "*"
    assert record["passed"] is True and record["layers_matched"] == 4


def test_layer_pattern_matching_nothing_is_an_error():
    with pytest.raises(HessauditError, match=r"'blocks\.\*' matches no layer.*conv1\.weight"):
        gates.evaluate([Gate("max-layer-hcal", 1.0, pattern="blocks.*")], audit_doc())


def test_layer_pattern_is_case_sensitive():
    with pytest.raises(HessauditError):
        gates.evaluate([Gate("max-layer-hcal", 1.0, pattern="FC.*")], audit_doc())


def test_layer_share_gate():
    # sqrt(hcal) = 2, 1, 0.5, 0.5 -> shares 0.5, 0.25, 0.125, 0.125
    assert gates.layer_shares(audit_doc()["layers"]) == [0.5, 0.25, 0.125, 0.125]
    records = gates.evaluate(
        [
            Gate("max-layer-share", 0.4, pattern="conv*"),
            Gate("max-layer-share", 0.25, pattern="layer4.*"),
        ],
        audit_doc(),
    )
    assert [r["passed"] for r in records] == [False, True]
    assert records[0]["observed"] == 0.5


def test_non_finite_observed_fails_and_is_recorded_as_null():
    document = audit_doc(bound=math.nan)
    (record,) = gates.evaluate([Gate("max-bound", 1.0)], document)
    assert record["passed"] is False and record["observed"] is None


@given(
    observed=st.floats(min_value=0, max_value=1e6),
    threshold=st.floats(min_value=0, max_value=1e6),
    key=st.sampled_from(["max-bound", "max-hessian-term", "max-ratio", "min-ratio"]),
)
def test_gate_passes_exactly_when_the_comparison_holds(observed, threshold, key):
    field = {"max-bound": "bound", "max-hessian-term": "hessian_term"}.get(key, "ratio_to_gap")
    (record,) = gates.evaluate([Gate(key, threshold)], audit_doc(**{field: observed}))
    expected = observed >= threshold if key.startswith("min-") else observed <= threshold
    assert record["passed"] is expected
    assert record["observed"] == observed


@given(
    hcal=st.lists(st.floats(min_value=0, max_value=1e3), min_size=1, max_size=6),
    threshold=st.floats(min_value=0, max_value=1e3),
)
def test_layer_gate_passes_iff_every_layer_passes(hcal, threshold):
    layers = [{"name": f"l{i}.weight", "hcal": h} for i, h in enumerate(hcal)]
    (record,) = gates.evaluate(
        [Gate("max-layer-hcal", threshold, pattern="l*")], {"layers": layers}
    )
    assert record["passed"] is all(h <= threshold for h in hcal)
    assert record["observed"] == max(hcal)
    assert len(record["failing_layers"]) == sum(h > threshold for h in hcal)


def test_check_output_paths(tmp_path):
    from hessaudit._paths import check_output_paths

    check_output_paths("-", None, tmp_path / "a.md")
    with pytest.raises(HessauditError, match="only one output"):
        check_output_paths("-", "-")
    with pytest.raises(HessauditError, match="does not exist"):
        check_output_paths(tmp_path / "no" / "a.md")


# --------------------------------------------------------------------------- markdown


def test_markdown_verdict_pass_without_gates():
    text = audit_markdown(audit_doc())
    assert text.splitlines()[0] == "### ✅ hessaudit measure: PASS (no gates set)"
    assert "| <code>fc\\.weight</code> (new head) |" in text
    assert "| bound | **0.4** |" in text


def test_markdown_verdict_fail_names_failing_gates_first():
    document = audit_doc()
    document["gates"] = gates.evaluate(
        [Gate("max-bound", 1.0), Gate("max-layer-hcal", 0.5, pattern="layer4.*", source="x")],
        document,
    )
    document["success"] = False
    lines = audit_markdown(document).splitlines()
    assert lines[0] == (
        "### ❌ hessaudit measure: FAIL — 1 of 2 gates failed: "
        "<code>max\\-layer\\-hcal\\:layer4\\.\\*</code>"
    )
    assert lines[2].startswith(
        "- <code>max\\-layer\\-hcal\\:layer4\\.\\*</code>: 1 (needs &lt;\\= 0.5) at "
        "<code>layer4\\.0\\.weight</code>"
    )
    assert "1 of 2 matching layers fail" in lines[2]


def test_markdown_folds_long_layer_tables():
    layers = [{"name": f"blocks.{i}.weight", "hcal": 1.0} for i in range(40)]
    text = audit_markdown(audit_doc(layers=layers))
    assert "<details>" in text and "(40 layers)" in text
    assert "<details>" not in audit_markdown(audit_doc())


def test_markdown_escapes_pipes():
    layers = [{"name": "a|b", "hcal": 1.0}]
    assert "<code>a\\|b</code>" in audit_markdown(audit_doc(layers=layers))


def test_write_summary_replaces_or_appends(tmp_path, monkeypatch):
    target = tmp_path / "summary.md"
    target.write_text("old\n")
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    write_summary(str(target), "new\n")
    assert target.read_text() == "new\n"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(target))
    write_summary(str(target), "more\n")
    assert target.read_text() == "new\nmore\n\n"
