"""Issue 15: ``hessaudit correlate``, which measure tracks the generalization gap.

Oracles: Spearman and Pearson against pandas' ``Series.corr`` and ``numpy.corrcoef``; the
suggested gate against its documented rule; everything else through the CLI on a small sweep
of real audits (tiny networks fine-tuned on digits subsets of different sizes and audited with
``measure --eval-data``) or on crafted audit JSONs.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hessaudit.cli import main
from hessaudit.correlate._stats import correlate_pair, median_ratio, pearson, spearman
from hessaudit.correlate.core import CSV_COLUMNS, _round_up
from tests.documents import crafted_sweep, sweep_audit, write_json

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

CSV_HEADER = ["measure", "n", "spearman", "spearman_lo", "spearman_hi", "pearson", "pearson_lo",
              "pearson_hi", "median_ratio"]
ROW_NAMES = ["hessian_term", "sum_sqrt_hcal", "distance_fro", "distance_fro_sq",
             "trace_distance", "noise_stability", "bound"]


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return int(exc.value.code), captured.out, captured.err


def one_error_line(err: str, *names: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for name in names:
        assert name in lines[0], (name, lines[0])


# --------------------------------------------------------------------------- crafted audits


# --------------------------------------------------------------------------- statistics


def test_spearman_and_pearson_match_pandas_and_numpy():
    rng = np.random.default_rng(1)
    for n in (3, 5, 12, 40):
        x = rng.standard_normal(n)
        y = x + rng.standard_normal(n)
        x[: n // 3] = np.round(x[: n // 3])  # ties
        assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
        assert spearman(x, y) == pytest.approx(
            pd.Series(x).corr(pd.Series(y), method="spearman"), abs=1e-12)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)
    assert pearson([1, 2, 3, 4], [1, 4, 9, 16]) < 1
    assert pearson([1, 1, 1], [1, 2, 3]) is None  # constant: undefined, not 0 or NaN
    assert spearman([1, 2], [1, 2]) is None  # fewer than 3 points
    assert median_ratio([2, 4, 9], [1, 2, -3]) == (2.0, 2)


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(30)
    y = 0.6 * x + rng.standard_normal(30)
    first = correlate_pair(x, y, bootstrap=500, seed=7)
    assert first == correlate_pair(x, y, bootstrap=500, seed=7)
    assert first != correlate_pair(x, y, bootstrap=500, seed=8)
    assert first.spearman_lo < first.spearman < first.spearman_hi
    assert first.pearson_lo < first.pearson < first.pearson_hi
    assert first.bootstrap == first.bootstrap_valid == 500
    # the interval is the percentile interval of the resampled correlations
    index = np.random.default_rng(7).integers(0, 30, size=(500, 30))
    boot = [np.corrcoef(x[i], y[i])[0, 1] for i in index]
    assert first.pearson_lo == pytest.approx(np.percentile(boot, 2.5), abs=1e-9)
    assert first.pearson_hi == pytest.approx(np.percentile(boot, 97.5), abs=1e-9)
    few = correlate_pair(x[:5], y[:5], bootstrap=500, seed=7)
    assert few.spearman is not None and few.spearman_lo is None  # under 6 points: no interval
    assert correlate_pair(x, y, bootstrap=0).pearson_lo is None


def test_round_up_keeps_every_accepted_value_under_the_gate():
    assert _round_up(0.1921) == 0.193
    assert _round_up(0.192) == 0.192
    assert _round_up(1234.5) == 1240.0
    assert _round_up(0.0) == 0.0
    rng = np.random.default_rng(3)
    for value in 10 ** rng.uniform(-6, 6, 500):
        assert value <= _round_up(value) <= value * 1.01


# --------------------------------------------------------------------------- the command


def test_crafted_sweep_through_the_cli(tmp_path, capsys):
    paths = crafted_sweep(tmp_path / "audits")
    out, out_json = tmp_path / "out", tmp_path / "corr.json"
    code, stdout, err = run_cli(
        ["correlate", tmp_path / "audits", "--out", out, "--json", out_json, "--bootstrap",
         "200", "--group-by", "axis"], capsys)
    assert code == 0, err
    assert "Spearman" in stdout and "axis = size" in stdout
    document = json.loads(out_json.read_text())
    docs = [json.loads(p.read_text()) for p in paths]
    gaps = np.array([d["gap"] for d in docs])
    with open(out / "correlations.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == CSV_HEADER == list(CSV_COLUMNS)
    assert [r[0] for r in rows[1:]] == ROW_NAMES
    table = pd.read_csv(out / "correlations.csv").set_index("measure")
    for name in ROW_NAMES:
        values = np.array([
            d["bound"] if name == "bound" else
            d["measures"][name]["mean"] if name == "noise_stability" else d["measures"][name]
            for d in docs])
        assert table.loc[name, "n"] == len(docs)
        assert table.loc[name, "pearson"] == pytest.approx(np.corrcoef(values, gaps)[0, 1])
        assert table.loc[name, "spearman"] == pytest.approx(
            pd.Series(values).corr(pd.Series(gaps), method="spearman"))
        assert table.loc[name, "median_ratio"] == pytest.approx(np.median(values / gaps))
        assert table.loc[name, "spearman_lo"] <= table.loc[name, "spearman_hi"]
    # within groups
    groups = {g["group"]: g for g in document["groups"]}
    assert set(groups) == {"size", "epochs"}
    size = [d for d in docs if d["inputs"]["tags"]["axis"] == "size"]
    row = next(r for r in groups["size"]["rows"] if r["measure"] == "distance_fro")
    assert row["n"] == len(size) == 4
    assert row["pearson"] == pytest.approx(np.corrcoef(
        [d["measures"]["distance_fro"] for d in size], [d["gap"] for d in size])[0, 1])
    grouped = pd.read_csv(out / "correlations_by_group.csv")
    assert list(grouped.columns) == ["group", *CSV_HEADER]
    assert set(grouped["group"]) == {"size", "epochs"}
    # one PNG per measure and a self-contained page embedding them
    for name in ROW_NAMES:
        assert (out / f"scatter_{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "correlations.html").read_text()
    assert page.count("data:image/png;base64,") == len(ROW_NAMES)
    assert "<script" not in page and "http" not in page
    # same inputs and seed: same numbers
    assert run_cli(["correlate", tmp_path / "audits", "--json", tmp_path / "again.json",
                    "--bootstrap", "200", "--group-by", "axis", "--quiet"], capsys)[0] == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["correlations"] == document["correlations"]
    assert again["groups"] == document["groups"]


def test_audits_without_a_gap_are_listed_and_skipped(tmp_path, capsys):
    folder = tmp_path / "audits"
    crafted_sweep(folder, count=3)
    write_json(folder, "nogap.json", sweep_audit(None, 0.3))
    write_json(folder, "compare.json", {"schema": "hessaudit.compare/1"})
    (folder / "notes.txt").write_text("not json")
    code, _, err = run_cli(["correlate", folder, "--json", tmp_path / "c.json", "--quiet"],
                           capsys)
    assert code == 0
    assert "skipped" in err and "nogap.json" in err and "no observed gap" in err
    assert "compare.json" in err
    document = json.loads((tmp_path / "c.json").read_text())
    assert len(document["audits"]) == 3
    # a file named and also inside a named folder counts once
    code, _, _ = run_cli(["correlate", folder / "a0.json", folder, "--json", tmp_path / "c.json",
                          "--quiet"], capsys)
    assert code == 0 and len(json.loads((tmp_path / "c.json").read_text())["audits"]) == 3
    assert {Path(s["path"]).name for s in document["skipped"]} == {"nogap.json", "compare.json"}


def test_fewer_than_three_usable_audits_is_one_error_line(tmp_path, capsys):
    paths = crafted_sweep(tmp_path / "audits", count=2)
    nogap = write_json(tmp_path, "nogap.json", sweep_audit(None, 0.3))
    out = tmp_path / "out"
    code, _, err = run_cli(["correlate", *paths, nogap, "--out", out], capsys)
    assert code == 1
    one_error_line(err.splitlines()[-1], "at least 3", "got 2")
    assert not out.exists()


def test_different_settings_are_warned(tmp_path, capsys):
    paths = crafted_sweep(tmp_path / "audits", count=4)
    doc = json.loads(paths[0].read_text())
    doc["settings"]["reduce"] = "mean"
    doc["C_source"] = "empirical_quantile:0.99"
    doc["layers"].append(dict(doc["layers"][0], name="fc.weight"))
    paths[0].write_text(json.dumps(doc))
    code, _, err = run_cli(["correlate", tmp_path / "audits", "--quiet"], capsys)
    assert code == 0
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert any("reduce" in w and "'mean' (1)" in w for w in warnings), warnings
    assert any("C source" in w for w in warnings)
    assert any("layer set" in w for w in warnings)
    assert not any("repeat" in w for w in warnings)
    # the same checkpoint audited twice (e.g. with two --loss-bound choices) is flagged
    write_json(tmp_path / "audits", "again.json", json.loads(paths[1].read_text()))
    code, _, err = run_cli(["correlate", tmp_path / "audits", "--quiet"], capsys)
    assert code == 0 and "1 audit(s) repeat a fine-tuned checkpoint" in err


def test_group_by_an_inputs_field_and_a_missing_key(tmp_path, capsys):
    folder = tmp_path / "audits"
    crafted_sweep(folder, count=6)
    code, stdout, _ = run_cli(["correlate", folder, "--group-by", "layer_selection.new_heads",
                               "--bootstrap", "0"], capsys)
    assert code == 0 and "layer_selection.new_heads = from-zero (6 audits)" in stdout
    code, stdout, _ = run_cli(["correlate", folder, "--group-by", "tags.axis"], capsys)
    assert code == 0 and "tags.axis = size" in stdout
    code, _, err = run_cli(["correlate", folder, "--group-by", "nosuchkey"], capsys)
    assert code == 1
    one_error_line(err, "--group-by", "nosuchkey")


def test_suggest_gate_prints_toml_from_the_accepted_audits(tmp_path, capsys):
    paths = crafted_sweep(tmp_path / "audits", count=6)
    accepted = tmp_path / "accepted"
    accepted.mkdir()
    for path in paths[:3]:
        (accepted / path.name).write_bytes(path.read_bytes())
    code, stdout, err = run_cli(
        ["correlate", tmp_path / "audits", "--suggest-gate", "--accepted",
         str(accepted / "*.json"), "--margin", "1.2", "--quiet"], capsys)
    assert code == 0, err
    config = tomllib.loads(stdout)
    gates = config["tool"]["hessaudit"]["gates"]
    docs = [json.loads(p.read_text()) for p in paths[:3]]
    largest_g = max(d["hessian_term"] for d in docs)
    largest_bound = max(d["bound"] for d in docs)
    assert gates["max-hessian-term"] == _round_up(largest_g * 1.2)
    assert gates["max-bound"] == _round_up(largest_bound * 1.2)
    assert largest_g * 1.2 <= gates["max-hessian-term"] <= largest_g * 1.2 * 1.01
    # the snippet is accepted by hessaudit's own config reader
    from hessaudit.audit.gates import load_config

    config_file = tmp_path / "pyproject.toml"
    config_file.write_text(stdout)
    loaded, _ = load_config(config_file)
    assert loaded["gates"]["max-hessian-term"] == gates["max-hessian-term"]
    assert loaded["gates"]["max-bound"] == gates["max-bound"]


@pytest.mark.parametrize(
    ("extra", "names"),
    [
        (["--suggest-gate"], ["--suggest-gate", "--accepted"]),
        (["--accepted", "x.json"], ["--accepted"]),
        (["--suggest-gate", "--accepted", "nothing/*.json"], ["--accepted", "matches no file"]),
        (["--suggest-gate", "--accepted", "missing.json"], ["--accepted", "missing.json"]),
        (["--suggest-gate", "--accepted", "{first}", "--margin", "0.5"], ["--margin"]),
        (["--bootstrap", "-1"], ["--bootstrap"]),
        (["--seed", "-1"], ["--seed"]),
        (["--group-by", "a\x1bb"], ["--group-by"]),
        (["--json", "{first}"], ["--json", "would overwrite the input"]),
        (["--out", "{first}"], ["--out", "is a file"]),
        (["--out", "nowhere/out"], ["--out", "does not exist"]),
    ],
)
def test_bad_correlate_options(tmp_path, capsys, monkeypatch, extra, names):
    monkeypatch.chdir(tmp_path)
    paths = crafted_sweep(tmp_path / "audits", count=3)
    before = {p: p.read_bytes() for p in paths}
    extra = [e.replace("{first}", str(paths[0])) for e in extra]
    code, _, err = run_cli(["correlate", *paths, *extra], capsys)
    assert code == 1
    one_error_line(err, *names)
    assert {p: p.read_bytes() for p in paths} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audits"]


def test_bad_audit_files_name_the_file(tmp_path, capsys):
    paths = crafted_sweep(tmp_path / "audits", count=3)
    broken = write_json(tmp_path, "broken.json", {"schema": "hessaudit.audit/1"})
    broken.write_text('{"schema": "hessaudit.audit/1", "gap": NaN}')
    code, _, err = run_cli(["correlate", *paths, broken], capsys)
    assert code == 1
    one_error_line(err, "broken.json")
    code, _, err = run_cli(["correlate", *paths, tmp_path / "missing.json"], capsys)
    assert code == 1
    one_error_line(err, "missing.json")


def test_hostile_strings_are_escaped(tmp_path, capsys):
    folder = tmp_path / "au<b>dits"
    evil = "<script>alert(1)</script>$\\frac{a}{$ \x1b[31mred\u202e=cmd|' /C calc'!A0"
    for k in range(4):
        doc = sweep_audit(0.1 * (k + 1), 0.05 * (k + 1) ** 2,
                          labels={"g": evil if k < 2 else "=1+1"}, model=evil)
        write_json(folder, f"<img src=x onerror=alert({k})>.json", doc)
    out = tmp_path / "out"
    code, stdout, err = run_cli(["correlate", folder, "--out", out, "--group-by", "g",
                                 "--json", tmp_path / "c.json"], capsys)
    assert code == 0, err
    page = (out / "correlations.html").read_text()
    assert "<script" not in page and "<img src=x" not in page and "<b>" not in page
    assert "&lt;script&gt;" in page and "&lt;img src=x" in page
    for text in (stdout, err, page):
        assert "\x1b" not in text and "\u202e" not in text
    grouped = (out / "correlations_by_group.csv").read_text()
    assert "\n'=1+1," in grouped and "\n=1+1" not in grouped
    assert (out / "scatter_hessian_term.png").exists()  # mathtext in a label does not crash


def test_older_audits_without_measures_are_recomputed(tmp_path, capsys):
    paths = crafted_sweep(tmp_path / "audits", count=4)
    for path in paths:
        doc = json.loads(path.read_text())
        del doc["measures"]
        path.write_text(json.dumps(doc))
    code, _, _ = run_cli(["correlate", *paths, "--json", tmp_path / "c.json", "--quiet"], capsys)
    assert code == 0
    rows = {r["measure"]: r for r in json.loads((tmp_path / "c.json").read_text())["correlations"]}
    assert "noise_stability" not in rows
    assert rows["distance_fro"]["n"] == rows["trace_distance"]["n"] == 4


def test_correlate_help_imports_no_torch_numpy_or_pandas():
    code = (
        "import sys\n"
        "from hessaudit.cli import app\n"
        "import hessaudit.commands.correlate\n"
        "heavy = [m for m in ('torch', 'numpy', 'pandas', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --------------------------------------------------------------------------- a real sweep


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """Four tiny CNNs fine-tuned from one initialization on 15-120 digits, each audited with
    ``measure --eval-data digits --noise-stability`` into one folder."""
    from hessaudit.inputs.checkpoints import save_checkpoint
    from hessaudit.inputs.data import load_data
    from tests.files import TINY_FACTORY_SOURCE

    folder = tmp_path_factory.mktemp("sweep")
    factory = folder / "tinynet.py"
    factory.write_text(TINY_FACTORY_SOURCE)
    namespace: dict = {}
    exec(compile(TINY_FACTORY_SOURCE, str(factory), "exec"), namespace)
    pretrained = namespace["make_tiny"](10, seed=0).state_dict()
    save_checkpoint(folder / "pre.safetensors", pretrained)
    train = load_data("digits", role="train")
    audits = folder / "audits"
    audits.mkdir()
    for i, n in enumerate((15, 30, 60, 120)):
        idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(i))[:n]
        x, y = train.x[idx], train.y[idx]
        model = namespace["make_tiny"](10, seed=0)
        model.load_state_dict(pretrained)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
        for _ in range(40):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        save_checkpoint(folder / f"ft{n}.safetensors", model.eval().state_dict())
        np.savez(folder / f"train{n}.npz", x=x.numpy(), y=y.numpy())
        with pytest.raises(SystemExit) as exc:
            main([
                "measure", str(folder / "pre.safetensors"), str(folder / f"ft{n}.safetensors"),
                "--model", f"{factory}:make_tiny", "--data", str(folder / f"train{n}.npz"),
                "--eval-data", "digits", "--noise-stability", "0.01", "--noise-draws", "5",
                "--label", f"size={n}", "--label", f"half={'ab'[i % 2]}",
                "--json", str(audits / f"audit{n}.json"), "--quiet",
            ])
        assert exc.value.code == 0
    return audits


@pytest.mark.slow
def test_correlate_a_real_sweep_end_to_end(sweep, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run_cli(["correlate", sweep, "--out", out, "--json",
                                 tmp_path / "c.json", "--group-by", "half"], capsys)
    assert code == 0, err
    docs = [json.loads(p.read_text()) for p in sorted(sweep.glob("*.json"))]
    gaps = [d["gap"] for d in docs]
    by_size = {int(d["inputs"]["tags"]["size"]): d["gap"] for d in docs}
    assert by_size[15] > by_size[120] > 0  # the smallest training set overfits most
    table = pd.read_csv(out / "correlations.csv")
    assert list(table.columns) == CSV_HEADER
    assert list(table["measure"]) == ROW_NAMES
    g = [d["measures"]["hessian_term"] for d in docs]
    row = table.set_index("measure").loc["hessian_term"]
    assert row["n"] == 4
    assert row["spearman"] == pytest.approx(pd.Series(g).corr(pd.Series(gaps), "spearman"))
    assert row["pearson"] == pytest.approx(np.corrcoef(g, gaps)[0, 1])
    assert math.isnan(row["spearman_lo"])  # 4 audits: too few for a bootstrap interval
    assert len(list(out.glob("scatter_*.png"))) == len(ROW_NAMES)
    assert "half = a (2 audits)" in stdout


@pytest.mark.slow
def test_compare_diffs_the_measures_of_two_sweep_audits(sweep, capsys):
    first, second = sorted(sweep.glob("*.json"))[:2]
    code, stdout, _ = run_cli(["compare", first, second], capsys)
    assert code == 0
    assert "Measures (base → new)" in stdout and "noise stability" in stdout
    base, new = json.loads(first.read_text()), json.loads(second.read_text())
    from hessaudit.audit.compare import compare_audits

    diff = compare_audits(base, new)["measures"]
    assert diff["distance_fro"]["abs_change"] == pytest.approx(
        new["measures"]["distance_fro"] - base["measures"]["distance_fro"])
    assert copy.deepcopy(diff) == diff
