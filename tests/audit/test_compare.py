"""``hessaudit compare``: the diff library on synthetic documents, and the CLI on real audits."""

from __future__ import annotations

import copy
import json

import pytest

from hessaudit.audit.compare import change, compare_audits, compare_to_json, load_audit
from hessaudit.audit.gates import Gate
from hessaudit.errors import HessauditError
from hessaudit.report.markdown import compare_markdown
from tests.documents import audit_doc
from tests.invoke import MODEL, make_checkpoints, run_cli, run_main

# --------------------------------------------------------------------------- library


def test_change_rules():
    assert change(2.0, 3.0) == {"base": 2.0, "new": 3.0, "abs_change": 1.0, "rel_change_pct": 50.0}
    assert change(-2.0, -1.0)["rel_change_pct"] == 50.0  # relative to |base|
    assert change(0.0, 0.0)["rel_change_pct"] == 0.0
    assert change(0.0, 1.0)["rel_change_pct"] is None  # infinite
    assert change(None, 1.0) == {
        "base": None,
        "new": 1.0,
        "abs_change": None,
        "rel_change_pct": None,
    }


def _pair():
    base = audit_doc()
    new = copy.deepcopy(base)
    new["bound"] = 0.5  # +25%
    new["layers"][0]["hcal"] = 5.0  # conv1: +25%
    new["layers"][1]["hcal"] = 0.5  # layer4.0: -50%
    del new["layers"][3]  # fc.weight only in base
    new["layers"].append({"name": "head.weight", "hcal": 0.1})
    return base, new


def test_compare_layers_summary_and_only_in():
    base, new = _pair()
    document = compare_audits(base, new, base_path="a.json", new_path="b.json")
    assert document["schema"] == "hessaudit.compare/1"
    assert document["base"]["path"] == "a.json" and document["new"]["path"] == "b.json"
    assert document["summary"]["bound"]["rel_change_pct"] == pytest.approx(25.0)
    assert document["summary"]["hessian_term"]["abs_change"] == 0.0
    layers = {layer["name"]: layer for layer in document["layers"]}
    assert list(layers) == ["conv1.weight", "layer4.0.weight", "layer4.1.weight"]
    assert layers["conv1.weight"]["rel_change_pct"] == pytest.approx(25.0)
    assert layers["layer4.0.weight"]["abs_change"] == -0.5
    assert document["only_in_base"] == [{"name": "fc.weight", "hcal": 0.25}]
    assert document["only_in_new"] == [{"name": "head.weight", "hcal": 0.1}]
    assert document["warnings"] == []
    assert document["gates"] == [] and document["success"] is True
    json.loads(compare_to_json(document))


def test_compare_gates():
    base, new = _pair()
    specs = [
        Gate("max-increase", 30.0),
        Gate("max-layer-increase", 20.0, pattern="conv*"),
        Gate("max-layer-increase", 0.0, pattern="layer4.*"),
    ]
    document = compare_audits(base, new, specs)
    records = document["gates"]
    assert [r["name"] for r in records] == [
        "max-increase",
        "max-layer-increase:conv*",
        "max-layer-increase:layer4.*",
    ]
    assert [r["passed"] for r in records] == [True, False, True]
    assert records[0]["observed"] == pytest.approx(25.0) and records[0]["unit"] == "%"
    assert records[1]["worst_layer"] == "conv1.weight"
    assert records[2]["observed"] == 0.0  # layer4.1 unchanged is the worst of the two
    assert document["success"] is False


def test_increase_from_zero_fails_any_threshold():
    base, new = _pair()
    base["layers"][0]["hcal"] = 0.0
    base["bound"] = 0.0
    document = compare_audits(
        base, new, [Gate("max-increase", 1e9), Gate("max-layer-increase", 1e9, pattern="conv*")]
    )
    assert [r["passed"] for r in document["gates"]] == [False, False]
    assert [r["observed"] for r in document["gates"]] == [None, None]
    assert "0" in document["gates"][0]["note"]


def test_layer_increase_pattern_must_match_a_common_layer():
    base, new = _pair()
    with pytest.raises(HessauditError, match="present in both"):
        compare_audits(base, new, [Gate("max-layer-increase", 1.0, pattern="fc.*")])


def test_settings_warnings():
    base, new = _pair()
    new["settings"] = {"reduce": "mean", "form": "positive"}
    new["inputs"] = {**new["inputs"], "data": "other", "samples": 64, "seed": 3}
    warnings = compare_audits(base, new)["warnings"]
    assert any(w.startswith("reduce differs: 'example-max' (base) vs 'mean'") for w in warnings)
    assert any(w.startswith("data differs") for w in warnings)
    assert any(w.startswith("samples differs") for w in warnings)
    assert any(w.startswith("seed differs") for w in warnings)
    assert not any(w.startswith("form") for w in warnings)


def test_compare_markdown():
    base, new = _pair()
    document = compare_audits(base, new, [Gate("max-increase", 10.0)])
    text = compare_markdown(document)
    assert text.splitlines()[0] == (
        "### ❌ hessaudit compare: FAIL — 1 of 1 gates failed: <code>max\\-increase</code>"
    )
    assert "| bound | 0.4 | 0.5 | +0.1 | +25% |" in text
    assert "**Only in base:** <code>fc\\.weight</code>" in text
    assert "**Only in new:** <code>head\\.weight</code>" in text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "no schema field"),
        ('{"schema": "other/1"}', "schema 'other/1'"),
        ('{"schema": "hessaudit.compare/1"}', "compare result"),
        ('{"schema": "hessaudit.audit/1", "layers": []}', "missing bound"),
        (
            '{"schema": "hessaudit.audit/1", "layers": [{"name": 1}], "bound": 1, '
            '"hessian_term": 1, "train_loss": 1}',
            r"layers\[0\] missing hcal",
        ),
    ],
)
def test_load_audit_rejects(tmp_path, content, message):
    path = tmp_path / "x.json"
    path.write_text(content)
    with pytest.raises(HessauditError, match=message):
        load_audit(path)


def test_load_audit_missing_file(tmp_path):
    with pytest.raises(HessauditError, match="no such file"):
        load_audit(tmp_path / "nope.json")


# --------------------------------------------------------------------------- CLI, real audits


@pytest.fixture(scope="module")
def audits(tmp_path_factory):
    """Real audits of two different fine-tuned checkpoints: a small and a large change."""
    folder = tmp_path_factory.mktemp("compare")
    ckpts = make_checkpoints(folder, {"small": 0.03, "large": 0.15})
    paths = {}
    for name in ("small", "large"):
        paths[name] = folder / f"{name}.json"
        code = run_main(
            [
                "measure", ckpts["pre"], ckpts[name], "--model", MODEL, "--data", "digits",
                "--samples", "16", "--no-spectrum", "-q", "--json", paths[name],
            ]
        )  # fmt: skip
        assert code == 0
    return paths


@pytest.fixture(autouse=True)
def _clean_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


def test_real_audits_differ(audits):
    small, large = (json.loads(audits[k].read_text()) for k in ("small", "large"))
    assert small["inputs"]["finetuned"]["sha256"] != large["inputs"]["finetuned"]["sha256"]
    assert large["hessian_term"] > small["hessian_term"]


def test_cli_compare_table(audits, capsys):
    code, out, err = run_cli(["compare", audits["small"], audits["large"]], capsys)
    assert code == 0, err
    for text in ("bound", "Hessian term G", "training loss", "conv1.weight", "fc.weight"):
        assert text in out
    assert "differs" not in err  # same data and settings
    assert err.count("audit's bound is an estimate (max over 16 of 1201 examples)") == 2


FORMATS = {"table": [], "json-stdout": ["--json", "-"], "quiet": ["--quiet"]}


@pytest.mark.parametrize("fmt", FORMATS)
def test_cli_compare_exit_codes_in_every_format(audits, capsys, fmt):
    small, large = audits["small"], audits["large"]
    args = ["compare", small, large, *FORMATS[fmt]]
    code, out, _ = run_cli([*args, "--max-increase", "1"], capsys)  # the bound grew more
    assert code == 2
    if fmt == "json-stdout":
        document = json.loads(out)
        assert document["schema"] == "hessaudit.compare/1"
        assert document["success"] is False
        assert [g["name"] for g in document["gates"] if not g["passed"]] == ["max-increase"]
    if fmt == "quiet":
        assert out == ""
    code, out, _ = run_cli([*args, "--max-increase", "1e9"], capsys)
    assert code == 0
    # Swapped: the bound went down, so even a "must improve" threshold passes.
    code, _, _ = run_cli(["compare", large, small, *FORMATS[fmt], "--max-increase", "-1"], capsys)
    assert code == 0
    code, _, err = run_cli([*args, "--max-layer-increase", "nosuch*=1"], capsys)
    assert code == 1 and "matches no layer" in err


def test_cli_compare_json_file_and_layer_gate(audits, capsys, tmp_path):
    out_json = tmp_path / "diff.json"
    code, _, _ = run_cli(
        ["compare", audits["small"], audits["large"], "-q", "--json", out_json,
         "--max-layer-increase", "fc.*=10", "--max-layer-increase", "1e12"],
        capsys,
    )  # fmt: skip
    assert code == 2
    document = json.loads(out_json.read_text())
    assert [layer["name"] for layer in document["layers"]] == [
        "conv1.weight", "layer1.0.weight", "layer2.0.weight", "fc.weight",
    ]  # fmt: skip
    gates = {g["name"]: g for g in document["gates"]}
    assert gates["max-layer-increase:fc.*"]["passed"] is False
    assert gates["max-layer-increase:fc.*"]["worst_layer"] == "fc.weight"
    assert gates["max-layer-increase:*"]["passed"] is True
    assert gates["max-layer-increase:*"]["layers_matched"] == 4
    for key in ("bound", "hessian_term", "train_loss", "gap"):
        assert key in document["summary"]


def test_cli_compare_warns_and_lists_unpaired_layers(audits, capsys, tmp_path):
    changed = json.loads(audits["large"].read_text())
    changed["settings"]["reduce"] = "mean"
    changed["inputs"]["samples"] = 64
    dropped = changed["layers"].pop(0)
    path = tmp_path / "changed.json"
    path.write_text(json.dumps(changed))
    code, out, err = run_cli(["compare", audits["small"], path], capsys)
    assert code == 0
    flat_err = " ".join(err.split())
    assert "warning: reduce differs" in flat_err and "samples differs" in flat_err
    assert "only in base" in out and dropped["name"] in out
    code, out, err = run_cli(["compare", audits["small"], path, "--json", "-"], capsys)
    assert json.loads(out)["only_in_base"][0]["name"] == dropped["name"]
    assert "reduce differs" in err  # warnings go to stderr whatever the format


def test_cli_compare_summary_md_and_config(audits, capsys, tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.hessaudit.compare]\nmax-increase = 1\n")
    summary = tmp_path / "summary.md"
    code, _, _ = run_cli(
        ["compare", audits["small"], audits["large"], "-q", "--summary-md", summary], capsys
    )
    assert code == 2
    first = summary.read_text().splitlines()[0]
    assert first.startswith("### ❌ hessaudit compare: FAIL")
    assert "<code>max\\-increase</code>" in first
    code, out, _ = run_cli(
        ["compare", audits["small"], audits["large"], "--summary-md", "-", "--max-increase", "1e9"],
        capsys,
    )
    assert code == 0 and out.startswith("### ✅ hessaudit compare: PASS")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{oops", "not valid JSON"),
        ('{"schema": "hessaudit.inspect/1"}', "is not a hessaudit.audit/1 document"),
    ],
)
def test_cli_compare_bad_input_exits_1(audits, capsys, tmp_path, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    for fmt in FORMATS.values():
        code, out, err = run_cli(["compare", audits["small"], bad, *fmt], capsys)
        assert code == 1 and message in err and out == ""
    code, _, err = run_cli(["compare", audits["small"], tmp_path / "nope.json"], capsys)
    assert code == 1 and "no such file" in err
