"""Bound or estimate (issue 12, section 2) and C dominance (section 11), through the CLI.

Theorem 2.1's Hcal is a maximum over *all* n training examples: an audit of ``--samples m`` of
them (or with another reduction or form, or n larger than the data) is an estimate and must say
so in the JSON, the terminal panel, stderr (once), the gate records, the markdown summary, the
HTML report and ``compare``.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hessaudit.audit.bound import classify_bound, estimate_label
from hessaudit.audit.compare import compare_audits
from hessaudit.cli import main
from hessaudit.report.audit import c_dominance_note
from hessaudit.report.html import audit_html
from hessaudit.report.markdown import audit_markdown, compare_markdown

N_DATA = 40


def run(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    """40 seeded 1x8x8 examples with labels in 0..9, as an .npz."""
    rng = np.random.default_rng(0)
    path = tmp_path / "train.npz"
    np.savez(
        path,
        x=rng.standard_normal((N_DATA, 1, 8, 8)).astype(np.float32),
        y=rng.integers(0, 10, N_DATA),
    )
    return path


def measure(pair, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "measure",
        str(pair.pretrained),
        str(pair.finetuned),
        "--model",
        pair.spec,
        "--data",
        str(data),
        "--json",
        str(out),
        *extra,
    ]


def warning_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning:")]


# --------------------------------------------------------------------------- measure


def test_subset_is_an_estimate_everywhere(tiny_checkpoints, data_file, tmp_path, capsys):
    out, md, page = tmp_path / "a.json", tmp_path / "a.md", tmp_path / "a.html"
    code = run(
        measure(tiny_checkpoints, data_file, out, "--samples", "10", "--max-bound", "100",
                "--max-layer-hcal", "1e9", "--summary-md", str(md))
    )
    assert code == 0
    captured = capsys.readouterr()
    document = json.loads(out.read_text())
    assert document["schema"] == "hessaudit.audit/1"
    assert document["hcal_scope"] == "subset"
    assert document["bound_kind"] == "estimate"
    assert document["estimate_reasons"] == ["max over 10 of 40 examples"]
    assert document["inputs"]["audit_examples"] == 10

    # stderr: exactly one warning line, naming the estimate; no traceback.
    warnings = warning_lines(captured.err)
    assert len(warnings) == 1, captured.err
    assert "estimate (max over 10 of 40 examples)" in warnings[0]
    assert "Traceback" not in captured.err
    # The summary panel on stdout.
    assert "estimate (max over 10 of 40 examples)" in captured.out
    assert "(on an estimate)" in captured.out

    # Gates are still evaluated, and each record says its observed value is an estimate.
    assert [gate["passed"] for gate in document["gates"]] == [True, True]
    assert all(gate["observed_is_estimate"] is True for gate in document["gates"])

    text = md.read_text().replace("\\", "")  # md_text backslash-escapes punctuation
    assert "estimate (max over 10 of 40 examples)" in text
    assert "(estimate)" in text  # the gate rows

    assert run(["report", str(out), "--out", str(page), "--no-plots", "--quiet"]) == 0
    html = page.read_text()
    assert "estimate (max over 10 of 40 examples)" in html
    assert '<span class="tag est">estimate</span>' in html  # the gate rows


def test_quiet_and_json_to_stdout_still_warn_once(tiny_checkpoints, data_file, capsys):
    args = measure(tiny_checkpoints, data_file, Path("-"), "--samples", "10", "--quiet")
    args[args.index("--json") + 1] = "-"
    assert run(args) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["bound_kind"] == "estimate"  # stdout is only the JSON
    assert len(warning_lines(captured.err)) == 1


@pytest.mark.parametrize("samples", [None, N_DATA])
def test_all_examples_is_a_bound(tiny_checkpoints, data_file, tmp_path, capsys, samples):
    out, md = tmp_path / "a.json", tmp_path / "a.md"
    extra = ["--max-bound", "100", "--summary-md", str(md)]
    if samples is not None:
        extra += ["--samples", str(samples)]
    assert run(measure(tiny_checkpoints, data_file, out, *extra)) == 0
    captured = capsys.readouterr()
    document = json.loads(out.read_text())
    assert document["hcal_scope"] == "all"
    assert document["bound_kind"] == "bound"
    assert document["estimate_reasons"] == []
    assert [gate["observed_is_estimate"] for gate in document["gates"]] == [False]
    assert warning_lines(captured.err) == []
    assert "estimate" not in captured.out
    assert "estimate" not in md.read_text()
    html, _ = audit_html(document, plots=False)
    body = html.split("</style>", 1)[1]
    assert "estimate" not in body


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (["--reduce", "batch-max"], "reduce=batch-max, not the per-example max"),
        (["--reduce", "mean"], "reduce=mean, not the per-example max"),
        (["--form", "raw"], "form=raw, not the positive part"),
        (["--n-train", "100"], "n=100 but only 40 examples audited"),
    ],
)
def test_other_estimates(tiny_checkpoints, data_file, tmp_path, capsys, extra, reason):
    out = tmp_path / "a.json"
    assert run(measure(tiny_checkpoints, data_file, out, "--quiet", "--no-spectrum", *extra)) == 0
    document = json.loads(out.read_text())
    assert document["hcal_scope"] == "all"
    assert document["bound_kind"] == "estimate"
    assert document["estimate_reasons"] == [reason]
    assert len(warning_lines(capsys.readouterr().err)) == 1


def test_json_fields_are_consistent(tiny_checkpoints, data_file, tmp_path, tiny_net):
    """Recompute G, the bound, C, the median loss and their ratio from the JSON and the data;
    and the subset's Hcal can only be below the theorem's max over all examples."""
    full, part = tmp_path / "full.json", tmp_path / "part.json"
    common = ("--quiet", "--no-spectrum", "--dtype", "float64", "--epsilon", "0.1")
    assert run(measure(tiny_checkpoints, data_file, full, *common)) == 0
    assert run(measure(tiny_checkpoints, data_file, part, *common, "--samples", "10")) == 0
    docs = [json.loads(full.read_text()), json.loads(part.read_text())]

    # Independent per-example losses of the fine-tuned model on every example of the data.
    model = tiny_net(num_classes=10).double()
    model.load_state_dict({k: v.double() for k, v in tiny_checkpoints.finetuned_state.items()})
    arrays = np.load(data_file)
    with torch.no_grad():
        logits = model(torch.from_numpy(arrays["x"]).double())
        losses = torch.nn.functional.cross_entropy(
            logits, torch.from_numpy(arrays["y"]).long(), reduction="none"
        )
    median = float(np.median(losses.numpy()))

    for document in docs:
        g = (
            math.sqrt(document["C"])
            * sum(math.sqrt(max(layer["hcal"], 0.0)) for layer in document["layers"])
            / math.sqrt(document["n"])
        )
        eps = document["epsilon"]
        assert document["hessian_term"] == pytest.approx(g, rel=1e-12)
        assert document["bound"] == pytest.approx((1 + eps) * (document["train_loss"] + g))
        # n and C describe all of --data, whatever --samples is.
        assert document["n"] == N_DATA
        assert document["C_source"] == "empirical_max"
        assert document["C"] == pytest.approx(float(losses.max()), rel=1e-9)
        assert document["train_loss"] == pytest.approx(float(losses.mean()), rel=1e-9)
        assert document["median_train_loss"] == pytest.approx(median, rel=1e-9)
        assert document["C_over_median_loss"] == pytest.approx(
            document["C"] / document["median_train_loss"], rel=1e-12
        )
        assert (document["bound_kind"] == "bound") == (document["hcal_scope"] == "all")
        assert (document["bound_kind"] == "bound") == (document["estimate_reasons"] == [])

    full_doc, part_doc = docs
    assert (full_doc["hcal_scope"], part_doc["hcal_scope"]) == ("all", "subset")
    for whole, subset in zip(full_doc["layers"], part_doc["layers"], strict=True):
        assert subset["hcal"] <= whole["hcal"] * (1 + 1e-9)
    assert part_doc["hessian_term"] <= full_doc["hessian_term"] * (1 + 1e-9)


def test_user_loss_bound_on_all_examples_is_a_bound(tiny_checkpoints, data_file, tmp_path):
    out = tmp_path / "a.json"
    assert run(measure(tiny_checkpoints, data_file, out, "--quiet", "--loss-bound", "5")) == 0
    document = json.loads(out.read_text())
    assert (document["bound_kind"], document["C_source"]) == ("bound", "user")


# --------------------------------------------------------------------------- C dominance


def test_c_dominance_note_in_the_panel(tiny_checkpoints, data_file, tmp_path, capsys):
    out = tmp_path / "a.json"
    # The fixture's per-example losses are around 2.5: C = 100 is about 40x the median.
    assert run(measure(tiny_checkpoints, data_file, out, "--loss-bound", "100")) == 0
    document = json.loads(out.read_text())
    assert document["C_over_median_loss"] > 10
    assert "x the median per-example training loss" in capsys.readouterr().out

    assert run(measure(tiny_checkpoints, data_file, out, "--loss-bound", "5")) == 0
    assert json.loads(out.read_text())["C_over_median_loss"] < 10
    assert "median per-example" not in capsys.readouterr().out


def test_c_dominance_note_threshold_and_odd_values():
    doc = {"C_over_median_loss": 45.0, "median_train_loss": 0.58, "C_source": "empirical_max"}
    note = c_dominance_note(doc)
    assert note is not None and "45x" in note and "worst-fitted examples set C" in note
    assert c_dominance_note({**doc, "C_over_median_loss": 10.0}) is None  # strictly above 10
    assert c_dominance_note({**doc, "C_over_median_loss": None}) is None  # median 0
    assert c_dominance_note({**doc, "C_over_median_loss": "50"}) is None
    assert c_dominance_note({}) is None


# --------------------------------------------------------------------------- classification


def test_classify_bound_reasons():
    kwargs = dict(
        data_examples=40,
        hcal_examples=40,
        loss_bound_source="empirical_max",
        loss_bound_examples=40,
        reduce="example-max",
        form="positive",
        n=40,
    )
    kind = classify_bound(**kwargs)
    assert (kind.hcal_scope, kind.bound_kind, kind.estimate_reasons) == ("all", "bound", ())
    # n smaller than the data: the max runs over more examples than the theorem's, still a bound.
    assert classify_bound(**{**kwargs, "n": 30}).bound_kind == "bound"
    kind = classify_bound(**{**kwargs, "unconverged_layers": 2})
    assert kind.estimate_reasons == ("Hcal of 2 layers not converged",)
    kind = classify_bound(**{**kwargs, "loss_bound_examples": 10})
    assert kind.estimate_reasons == ("C is the max loss over 10 of 40 examples",)
    assert classify_bound(
        **{**kwargs, "loss_bound_examples": 10, "loss_bound_source": "user"}
    ).bound_kind == "bound"
    kind = classify_bound(**{**kwargs, "hcal_examples": 10, "form": "cross"})
    assert kind.hcal_scope == "subset"
    assert kind.estimate_reasons == (
        "max over 10 of 40 examples",
        "form=cross, not the positive part",
    )
    assert kind.to_dict()["estimate_reasons"] == list(kind.estimate_reasons)


def test_estimate_label_reads_files_defensively():
    assert estimate_label({"bound_kind": "bound"}) is None
    assert estimate_label({}) is None  # an audit from before bound_kind
    assert estimate_label({"bound_kind": "estimate", "estimate_reasons": "x"}) == "estimate"
    label = estimate_label({"bound_kind": "estimate", "estimate_reasons": ["a\n\nb", 3]})
    assert label == "estimate (a b; 3)"


def test_hostile_reasons_are_escaped_in_html():
    doc = {
        "bound_kind": "estimate",
        "estimate_reasons": ["<script>alert(1)</script>"],
        "layers": [],
        "bound": 1.0,
        "hessian_term": 0.5,
        "train_loss": 0.5,
    }
    page, _ = audit_html(doc, plots=False)
    assert "<script>" not in page and "&lt;script&gt;" in page


# --------------------------------------------------------------------------- compare


def test_compare_surfaces_bound_kinds(tiny_checkpoints, data_file, tmp_path, capsys):
    bound, estimate = tmp_path / "bound.json", tmp_path / "estimate.json"
    common = ("--quiet", "--no-spectrum")
    assert run(measure(tiny_checkpoints, data_file, bound, *common)) == 0
    assert run(measure(tiny_checkpoints, data_file, estimate, *common, "--samples", "10")) == 0
    capsys.readouterr()
    out, md = tmp_path / "cmp.json", tmp_path / "cmp.md"
    code = run(
        ["compare", str(bound), str(estimate), "--max-increase", "1000", "--json", str(out),
         "--summary-md", str(md)]
    )
    assert code == 0
    captured = capsys.readouterr()
    document = json.loads(out.read_text())
    assert document["base"]["bound_kind"] == "bound"
    assert document["new"]["bound_kind"] == "estimate"
    assert document["new"]["estimate_reasons"] == ["max over 10 of 40 examples"]
    assert any("bound kind differs" in line for line in document["warnings"])
    assert any(
        "new audit's bound is an estimate (max over 10 of 40 examples)" in line
        for line in document["warnings"]
    )
    assert [gate["observed_is_estimate"] for gate in document["gates"]] == [True]
    assert "bound kind" in captured.out  # the summary table row
    assert "estimate (max over 10 of 40 examples)" in md.read_text().replace("\\", "")

    # Two bounds: nothing to say, and the gate is not on an estimate.
    same = compare_audits(
        json.loads(bound.read_text()), json.loads(bound.read_text()),
    )
    assert not any("bound" in line for line in same["warnings"])
    assert "estimate" not in compare_markdown(same)


def test_compare_of_older_audits_without_bound_kind(tiny_checkpoints, data_file, tmp_path):
    out = tmp_path / "a.json"
    assert run(measure(tiny_checkpoints, data_file, out, "--quiet", "--no-spectrum")) == 0
    new = json.loads(out.read_text())
    old = copy.deepcopy(new)
    for key in ("bound_kind", "hcal_scope", "estimate_reasons"):
        del old[key]
    document = compare_audits(old, new)
    assert document["base"]["bound_kind"] is None
    assert any("unknown (older audit)" in line for line in document["warnings"])
    assert "estimate" not in audit_markdown(old)
