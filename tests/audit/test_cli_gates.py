"""Gates on ``hessaudit measure`` end to end through the CLI: exit codes, JSON, config files.

Real audits of the built-in digits CNN (``hessaudit.zoo:digits_cnn``) between a made-up
pretrained checkpoint and a perturbed copy; each in-process run takes a fraction of a second.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.invoke import MODEL, make_checkpoints, run_cli

FORMATS = {
    "table": [],
    "json-stdout": ["--json", "-"],
    "quiet": ["--quiet"],
}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    return make_checkpoints(tmp_path_factory.mktemp("ckpts"), {"ft": 0.1})


def measure_args(ckpts, *extra) -> list[str]:
    return [
        "measure",
        ckpts["pre"],
        ckpts["ft"],
        "--model",
        MODEL,
        "--data",
        "digits",
        "--samples",
        "16",
        "--no-spectrum",
        *extra,
    ]


@pytest.fixture(autouse=True)
def _clean_cwd(tmp_path, monkeypatch):
    # Never pick up a pyproject.toml of the directory pytest was started from.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


@pytest.mark.parametrize("fmt", FORMATS)
def test_passing_gates_exit_0_in_every_format(ckpts, capsys, fmt, tmp_path):
    out_json = tmp_path / "audit.json"
    extra = ["--max-bound", "100", "--max-layer-hcal", "layer*=1e6", *FORMATS[fmt]]
    if fmt != "json-stdout":
        extra += ["--json", out_json]
    code, out, err = run_cli(measure_args(ckpts, *extra), capsys)
    assert code == 0, err
    document = json.loads(out if fmt == "json-stdout" else out_json.read_text())
    assert document["success"] is True
    names = [gate["name"] for gate in document["gates"]]
    assert names == ["max-bound", "max-layer-hcal:layer*"]
    for gate in document["gates"]:
        assert gate["passed"] is True
        assert gate["op"] == "<="
        assert {"name", "op", "threshold", "observed", "passed"} <= gate.keys()
    assert document["gates"][0]["observed"] == document["bound"]
    assert document["gates"][1]["layers_matched"] == 2  # layer1.0.weight, layer2.0.weight
    if fmt == "quiet":
        assert out == ""
    if fmt == "table":
        assert "gate max-bound" in out and "pass" in out


@pytest.mark.parametrize("fmt", FORMATS)
def test_failing_gate_exits_2_in_every_format(ckpts, capsys, fmt, tmp_path):
    out_json = tmp_path / "audit.json"
    extra = ["--max-bound", "100", "--max-hessian-term", "1e-9", *FORMATS[fmt]]
    if fmt != "json-stdout":
        extra += ["--json", out_json]
    code, out, err = run_cli(measure_args(ckpts, *extra), capsys)
    assert code == 2, err
    document = json.loads(out if fmt == "json-stdout" else out_json.read_text())
    assert document["success"] is False
    failing = [gate for gate in document["gates"] if not gate["passed"]]
    assert [gate["name"] for gate in failing] == ["max-hessian-term"]
    assert failing[0]["observed"] == document["hessian_term"] > 1e-9
    assert failing[0]["threshold"] == 1e-9
    if fmt == "table":
        assert "FAIL" in out
    if fmt == "quiet":
        assert out == ""


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "bad",
    [
        ["--max-layer-hcal", "nosuchlayer.*=1"],  # matches no layer: found after the audit
        ["--max-ratio", "2"],  # no --eval-data: found before the audit
        ["--max-layer-hcal", "layer1.*=lots"],
        ["--max-bound", "-1"],
        ["--max-bound", "lots"],  # a click usage error: 1, not click's 2
        ["--config", "missing.toml"],
    ],
    ids=["no-match", "ratio-no-eval", "bad-number", "negative", "usage", "no-config"],
)
def test_bad_input_exits_1_in_every_format(ckpts, capsys, fmt, bad):
    code, out, err = run_cli(measure_args(ckpts, *bad, *FORMATS[fmt]), capsys)
    assert code == 1
    assert err.strip().startswith("error: ")
    assert len(err.strip().splitlines()) == 1
    assert out == ""


def test_missing_checkpoint_exits_1(ckpts, capsys, tmp_path):
    args = measure_args(ckpts, "--max-bound", "1")
    args[2] = tmp_path / "nope.safetensors"
    code, _, err = run_cli(args, capsys)
    assert code == 1 and "nope.safetensors" in err


def test_no_match_error_names_the_layers(ckpts, capsys):
    code, _, err = run_cli(measure_args(ckpts, "--max-layer-hcal", "blocks.*=1"), capsys)
    assert code == 1
    assert "'blocks.*' matches no layer" in err and "layer1.0.weight" in err


def test_ratio_gates_with_eval_data(ckpts, capsys):
    args = measure_args(ckpts, "--eval-data", "digits", "--json", "-")
    code, out, _ = run_cli([*args, "--min-ratio", "0", "--max-ratio", "1e9"], capsys)
    document = json.loads(out)
    gap, ratio = document["gap"], document["ratio_to_gap"]
    max_ratio, min_ratio = (
        next(g for g in document["gates"] if g["name"] == key) for key in ("max-ratio", "min-ratio")
    )
    assert min_ratio["op"] == ">=" and max_ratio["op"] == "<="
    assert min_ratio["passed"] is True
    if gap > 0:
        assert code == 0 and max_ratio["passed"] and max_ratio["observed"] == ratio
    else:
        # gap <= 0: the ratio is undefined; tested as G <= X * gap, which fails for G > 0.
        assert ratio is None and max_ratio["observed"] is None and "gap" in max_ratio["note"]
        assert code == 2 and max_ratio["passed"] is False


def test_pyproject_gates_and_flag_override(ckpts, capsys, tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        "[project]\nname = 'x'\n\n"
        "[tool.hessaudit]\nother-team-setting = true\n\n"
        "[tool.hessaudit.gates]\n"
        "max-bound = 1e-6\n"
        'max-layer-hcal = { "layer*" = 1e6, "fc.*" = 1e6 }\n'
    )
    code, out, _ = run_cli(measure_args(ckpts, "--json", "-"), capsys)
    document = json.loads(out)
    assert code == 2
    sources = {gate["name"]: gate["source"] for gate in document["gates"]}
    assert sources == {
        "max-bound": "pyproject.toml",
        "max-layer-hcal:layer*": "pyproject.toml",
        "max-layer-hcal:fc.*": "pyproject.toml",
    }
    # Flags win over the file, key by key and pattern by pattern.
    code, out, _ = run_cli(
        measure_args(ckpts, "--json", "-", "--max-bound", "100", "--max-layer-hcal", "fc.*=0"),
        capsys,
    )
    document = json.loads(out)
    gates = {gate["name"]: gate for gate in document["gates"]}
    assert gates["max-bound"]["source"] == "--max-bound" and gates["max-bound"]["passed"]
    assert gates["max-layer-hcal:layer*"]["source"] == "pyproject.toml"
    assert gates["max-layer-hcal:fc.*"]["threshold"] == 0.0
    assert not gates["max-layer-hcal:fc.*"]["passed"]
    assert code == 2


def test_config_file_replaces_pyproject(ckpts, capsys, tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.hessaudit.gates]\nmax-bound = 1e-6\n")
    config = tmp_path / "hessaudit.toml"
    config.write_text("[gates]\nmax-bound = 100\nmax-layer-share = { 'fc.*' = 1.0 }\n")
    code, out, _ = run_cli(measure_args(ckpts, "--json", "-", "--config", config), capsys)
    assert code == 0
    gates = json.loads(out)["gates"]
    assert [g["name"] for g in gates] == ["max-bound", "max-layer-share:fc.*"]
    assert all(g["source"] == str(config) for g in gates)


def test_unknown_config_key_exits_1_before_the_audit(ckpts, capsys, tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.hessaudit.gates]\nmax_bound = 1\n")
    code, _, err = run_cli(measure_args(ckpts), capsys)
    assert code == 1
    assert "unknown key 'max_bound'" in err and "max-bound" in err


def test_summary_md_verdict_first(ckpts, capsys, tmp_path):
    summary = tmp_path / "summary.md"
    code, _, _ = run_cli(
        measure_args(
            ckpts, "-q", "--max-bound", "1e-6", "--max-layer-hcal", "1e6", "--summary-md", summary
        ),
        capsys,
    )
    assert code == 2
    text = summary.read_text()
    first = text.splitlines()[0]
    assert "FAIL" in first and "<code>max\\-bound</code>" in first
    assert "max\\-layer\\-hcal" not in first
    assert "| <code>fc\\.weight</code> |" in text


def test_summary_md_appends_to_github_step_summary(ckpts, capsys, tmp_path, monkeypatch):
    step = tmp_path / "step_summary"
    step.write_text("earlier output\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    code, _, _ = run_cli(
        measure_args(ckpts, "-q", "--max-bound", "100", "--summary-md", step), capsys
    )
    assert code == 0
    text = step.read_text()
    assert text.startswith("earlier output\n### ✅ hessaudit measure: PASS")


def test_help_documents_exit_codes_and_gates(capsys):
    code, out, _ = run_cli(["measure", "--help"], capsys)
    assert code == 0
    flat = " ".join(out.split())
    for flag in (
        "--max-bound",
        "--max-hessian-term",
        "--max-ratio",
        "--min-ratio",
        "--max-layer-hcal",
        "--max-layer-share",
        "--config",
        "--summary-md",
    ):
        assert flag in flat
    assert "Exit codes: 0" in flat and "2 = a gate failed" in flat


def test_real_process_exit_codes(ckpts, tmp_path):
    """The console entry point's exit status in a real process (the other formats: above)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    env.pop("GITHUB_STEP_SUMMARY", None)
    base = [sys.executable, "-m", "hessaudit", *[str(a) for a in measure_args(ckpts)]]
    fail = subprocess.run(
        [*base, "--max-bound", "1e-6", "--json", "-"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert fail.returncode == 2, fail.stderr
    assert json.loads(fail.stdout)["success"] is False


# --------------------------------------------------------------------------- examples/ci

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "ci"


def test_example_config_is_valid():
    from hessaudit.audit import gates

    config = EXAMPLES / "hessaudit.toml"
    measure = gates.measure_gates(config=config)
    assert [g.name for g in measure] == [
        "max-bound", "max-hessian-term", "min-ratio", "max-layer-hcal:layer*",
        "max-layer-share:fc.*",
    ]  # fmt: skip
    compare = gates.compare_gates(config=config)
    assert [g.name for g in compare] == ["max-increase", "max-layer-increase:*"]


def test_example_workflow_runs_the_script():
    yaml = pytest.importorskip("yaml")
    workflow = yaml.safe_load((EXAMPLES / "github-actions.yml").read_text())
    steps = workflow["jobs"]["audit"]["steps"]
    runs = " ".join(step.get("run", "") for step in steps)
    assert "examples/ci/gate.sh" in runs


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_example_script_syntax():
    subprocess.run(["bash", "-n", str(EXAMPLES / "gate.sh")], check=True)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_example_script_end_to_end(tmp_path):
    """gate.sh trains the digits example, audits and gates it: exit 0, then 2 against a
    baseline whose bound is far lower (about 30 s on two CPU cores)."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
           "PYTHON": sys.executable, "PYTHONWARNINGS": "ignore"}  # fmt: skip
    env.pop("GITHUB_STEP_SUMMARY", None)
    out = tmp_path / "out"
    first = subprocess.run(
        ["bash", str(EXAMPLES / "gate.sh"), str(out)], env=env, cwd=tmp_path,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    for name in ("audit.json", "summary.md", "report.html"):
        assert (out / name).is_file()
    baseline = json.loads((out / "audit.json").read_text())
    baseline["bound"] = baseline["bound"] / 2  # the new model's bound is then +100%
    (out / "baseline.json").write_text(json.dumps(baseline))
    second = subprocess.run(
        ["bash", str(EXAMPLES / "gate.sh"), str(out)], env=env, cwd=tmp_path,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert second.returncode == 2, second.stderr
    assert "FAIL" in (out / "compare.md").read_text().splitlines()[0]
