"""``hessaudit measure`` on text classifiers (issue 14), through the CLI.

* end to end on a tiny BERT: CSV training data, JSONL held-out data with label names;
* the dense float64 oracle: each example's block Hessian of the plain Hugging Face model (its own
  LayerNorm and masks, one unpadded example at a time) by ``torch.autograd.functional.hessian``,
  its positive part by ``eigh``, reduced as the audit reduces, against the per-layer values the
  CLI reports, for an attention query weight (256 entries) and the classifier, BERT and RoBERTa
  (sentence pairs);
* padding changes no number: batches of mixed lengths against one example at a time, and
  dynamic padding (trimming) against none, with extra padding, for every reduction and form.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

pytest.importorskip("transformers")

from tests.text_cases import (
    audit_json,
    dense_hessians,
    distance,
    forms,
    layer_rows,
    make_text_case,
    reduced,
    rows,
    run_cli,
    write_rows,
)

N_EXAMPLES = 6
REDUCTIONS = ("example-max", "batch-max", "mean")


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """BERT on single sentences and RoBERTa on sentence pairs, each with its training data."""
    out = {}
    for kind in ("bert", "roberta"):
        case = make_text_case(tmp_path_factory.mktemp(kind), kind)
        data = rows(N_EXAMPLES, seed=1, pair=kind == "roberta")
        write_rows(case.root / "train.csv", data)
        out[kind] = (case, data)
    return out


def measure(capsys, case, tmp_path, *extra, data="train.csv"):
    out = tmp_path / "audit.json"
    code, _, err = run_cli(
        ["measure", case.pre, case.weights, "--model", case.spec, "--data",
         case.root / data, "--json", out, "--quiet", *extra],
        capsys,
    )
    assert code == 0, err
    return audit_json(out)


def close(a: float, b: float, rel: float, abs_: float = 0.0) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b)) + abs_


# --------------------------------------------------------------------------- end to end


def _plain_losses(case, data) -> torch.Tensor:
    """Per-example cross-entropy of the plain Hugging Face model, one unpadded example at a
    time (label names mapped by hand)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tests.text_cases import LABELS

    model = AutoModelForSequenceClassification.from_pretrained(
        case.ft, local_files_only=True
    ).eval()
    tok = AutoTokenizer.from_pretrained(case.ft, local_files_only=True)
    out = []
    with torch.no_grad():
        for row in data:
            logits = model(**tok(row["text"], return_tensors="pt")).logits
            label = row["label"] if isinstance(row["label"], int) else LABELS.index(row["label"])
            out.append(torch.nn.functional.cross_entropy(logits, torch.tensor([label])))
    return torch.stack(out)


def test_measure_text_end_to_end(cases, capsys, tmp_path):
    case, data = cases["bert"]
    dev = rows(5, seed=7, names=True)
    write_rows(case.root / "dev.jsonl", dev)
    doc = measure(
        capsys, case, tmp_path, "--eval-data", case.root / "dev.jsonl", "--include", case.head,
        "--no-spectrum",
    )
    summary = doc["inputs"]["data_summary"]
    assert summary["scaling"] == "tokens" and summary["n"] == N_EXAMPLES
    assert summary["shape"][0] == 3
    assert any("tokenized with the tokenizer of --model" in s for s in summary["preprocessing"])
    assert doc["inputs"]["eval_data_summary"]["classes"] == ["neg", "neu", "pos"]
    assert [row["name"] for row in doc["layers"]] == [case.head]
    # the losses are the plain model's, example by example, unpadded
    assert close(doc["train_loss"], float(_plain_losses(case, data).mean()), 1e-5)
    assert close(doc["eval_loss"], float(_plain_losses(case, dev).mean()), 1e-5)
    assert close(doc["C"], float(_plain_losses(case, data).max()), 1e-5)


def test_samples_and_batch_size_as_for_images(cases, capsys, tmp_path):
    case, data = cases["bert"]
    args = ("--include", case.head, "--no-spectrum", "--dtype", "float64")
    part = measure(capsys, case, tmp_path, *args, "--samples", "3", "--seed", "5",
                   "--batch-size", "2")
    assert part["inputs"]["audit_examples"] == 3 and part["n"] == N_EXAMPLES
    chosen = torch.sort(torch.randperm(N_EXAMPLES, generator=torch.Generator().manual_seed(5))[:3])
    write_rows(case.root / "chosen.csv", [data[i] for i in chosen.values.tolist()])
    alone = measure(capsys, case, tmp_path, *args, data="chosen.csv")
    a, b = part["layers"][0], alone["layers"][0]
    assert close(a["quad_pos"], b["quad_pos"], 1e-10) and close(a["quad_raw"], b["quad_raw"], 1e-10)


# --------------------------------------------------------------------------- dense oracle


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_head_at_defaults_matches_the_dense_oracle(cases, capsys, tmp_path, kind):
    """Every default (float32, example-max, positive part, spectrum on), the classifier."""
    case, data = cases[kind]
    doc = measure(capsys, case, tmp_path, "--include", case.head)
    row = layer_rows(doc)[case.head]
    H = dense_hessians(case, data, case.head)
    v = distance(case, case.head)
    raw, pos = reduced(H, v, "example-max", 32)
    assert close(row["quad_raw"], raw, 1e-4)
    assert close(row["quad_pos"], pos, 2e-3) and row["hcal"] == row["quad_pos"]
    lam = torch.linalg.eigvalsh(H.mean(0))
    assert close(row["top_eig"], float(lam[-1]), 2e-3)
    exact_trace = float(torch.diagonal(H.mean(0)).sum())
    assert abs(row["trace"] - exact_trace) <= 5 * row["trace_stderr"] + 1e-4 * abs(exact_trace)


@pytest.mark.parametrize("reduce", REDUCTIONS)
@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_every_reduction_matches_the_dense_oracle(cases, capsys, tmp_path, kind, reduce):
    """float64: the raw form of the attention query (exact: a second directional derivative)
    and both forms of the classifier, per example, per batch of 4, and of the mean."""
    case, data = cases[kind]
    common = ("--reduce", reduce, "--batch-size", "4", "--dtype", "float64", "--no-spectrum")
    raw_doc = measure(capsys, case, tmp_path, *common, "--form", "raw", "--include", case.query)
    head_doc = measure(capsys, case, tmp_path, *common, "--include", case.head)
    for name, doc in ((case.query, raw_doc), (case.head, head_doc)):
        row = layer_rows(doc)[name]
        raw, pos = reduced(dense_hessians(case, data, name), distance(case, name), reduce, 4)
        assert close(row["quad_raw"], raw, 1e-9), (name, row["quad_raw"], raw)
        if doc is head_doc:
            assert close(row["quad_pos"], pos, 1e-6), (name, row["quad_pos"], pos)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_query_at_defaults_matches_the_dense_oracle(cases, capsys, tmp_path, kind):
    """Every default on the 256-entry attention query block: the positive part by per-example
    Lanczos quadrature (float32, --tol 1e-3) against eigh of each dense block."""
    case, data = cases[kind]
    doc = measure(capsys, case, tmp_path, "--include", case.query)
    row = layer_rows(doc)[case.query]
    H = dense_hessians(case, data, case.query)
    raw, pos = reduced(H, distance(case, case.query), "example-max", 32)
    assert close(row["quad_raw"], raw, 1e-4)
    assert close(row["quad_pos"], pos, 2e-3)
    assert close(row["top_eig"], float(torch.linalg.eigvalsh(H.mean(0))[-1]), 2e-3)


# --------------------------------------------------------------------------- padding


@pytest.mark.parametrize("reduce", ["example-max", "mean"])
def test_mixed_length_batches_equal_one_example_at_a_time(cases, capsys, tmp_path, reduce):
    """Batches of 3 examples of different lengths (padded) against --batch-size 1 (never
    padded), float64: every layer value and the bound's inputs agree to round-off."""
    case, _ = cases["bert"]
    common = ("--reduce", reduce, "--dtype", "float64", "--no-spectrum")
    docs = {}
    for size in ("3", "1"):
        docs[size] = (
            measure(capsys, case, tmp_path, *common, "--batch-size", size, "--form", "raw",
                    "--include", case.query, "--include", case.head),
            measure(capsys, case, tmp_path, *common, "--batch-size", size,
                    "--include", case.head),
        )
    for batched, single in zip(docs["3"], docs["1"], strict=True):
        for key in ("train_loss", "C", "hessian_term", "bound"):
            assert close(batched[key], single[key], 1e-10), key
        for a, b in zip(batched["layers"], single["layers"], strict=True):
            for key in ("quad_raw", "quad_pos", "hcal"):
                if a[key] is not None:
                    assert close(a[key], b[key], 1e-10), (a["name"], key, a[key], b[key])


def test_per_example_forms_ignore_padding(cases):
    """Under vmap (per-example Hessians) a batch is not cut: each example of a padded batch has
    the Hessian-vector products and raw forms it has alone and unpadded (float64)."""
    from hessaudit.hessian.per_example import (
        per_example_directional_second_derivative,
        per_example_hvp,
    )
    from hessaudit.inputs.data import load_data
    from hessaudit.inputs.models import build_model
    from hessaudit.inputs.text_dataset import trim_padding
    from hessaudit.inputs.text_model import text_source
    from hessaudit.inputs.text_options import TextOptions

    for kind in ("bert", "roberta"):
        case, _ = cases[kind]
        model = build_model(case.spec).double().eval()
        path = str(case.root / "train.csv")
        data = load_data(path, text_source=text_source(TextOptions(), model, [path],
                                                       model_spec="m"))
        x = torch.nn.functional.pad(data.x, (0, 3))  # every example padded, some a lot
        for name in (case.query, case.head):
            size = dict(model.named_parameters())[name].numel()
            U = torch.randn(len(x), size, generator=torch.Generator().manual_seed(0),
                            dtype=torch.float64)
            batched = per_example_hvp(model, x, data.y, name, U)
            raw = per_example_directional_second_derivative(model, x, data.y, name, U[0])
            for n in range(len(x)):
                alone = trim_padding(x[n : n + 1])
                assert alone.shape[-1] < x.shape[-1]
                one = per_example_hvp(model, alone, data.y[n : n + 1], name, U[n : n + 1])
                assert torch.allclose(batched[n], one[0], rtol=1e-10, atol=1e-14), (kind, name)
                one_raw = per_example_directional_second_derivative(
                    model, alone, data.y[n : n + 1], name, U[0]
                )
                assert close(float(raw[n]), float(one_raw[0]), 1e-10, 1e-15), (kind, name)


def _measure_library(model, dataset, layer_names, settings):
    from hessaudit.audit.layers import pair_layers
    from hessaudit.audit.measure import measure_layers

    pre = {k: v.clone() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    for name in layer_names:  # a fixed, seeded distance
        pre[name] = pre[name] - 0.05 * torch.randn(pre[name].shape, generator=generator,
                                                   dtype=pre[name].dtype)
    pairing = pair_layers(pre, model.state_dict(), include=tuple(layer_names))
    return measure_layers(model, pairing.layers, dataset, settings,
                          generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("reduce", REDUCTIONS)
def test_trimming_and_extra_padding_change_nothing(cases, reduce):
    """The same batches with dynamic padding (each batch cut to its longest example), without
    it (padded to the longest example of the data), and padded with 5 more columns: every form,
    every reduction, the spectrum, float64."""
    from hessaudit.audit.measure import MeasureSettings
    from hessaudit.inputs.data import load_data
    from hessaudit.inputs.models import build_model
    from hessaudit.inputs.text_model import text_source
    from hessaudit.inputs.text_options import TextOptions

    case, _ = cases["bert"]
    model = build_model(case.spec).double().eval()
    path = str(case.root / "train.csv")
    data = load_data(path, text_source=text_source(TextOptions(), model, [path], model_spec="m"))
    padded_x = torch.nn.functional.pad(data.x, (0, 5))  # zeros: pad id 0, mask 0, type 0
    padded = dataclasses.replace(data, x=padded_x)
    results = []
    for trim, dataset in ((True, data), (False, data), (False, padded)):
        model.trim = trim  # the wrapper's cut (outside vmap) and the data set's (every batch)
        dataset = dataclasses.replace(dataset, trim=trim)
        for form, names in (("raw", [case.query, case.head]), ("positive", [case.head]),
                            ("cross", [case.query, case.head])):
            settings = MeasureSettings(reduce=reduce, form=form, batch_size=4,
                                       spectrum=form == "positive", spectrum_samples=6)
            results.append([r.to_dict() for r in _measure_library(model, dataset, names,
                                                                  settings)])
    model.trim = True
    runs = len(results) // 3
    for k in range(runs):
        for other in (results[runs + k], results[2 * runs + k]):
            for a, b in zip(results[k], other, strict=True):
                for key in ("quad_raw", "quad_pos", "cross", "hcal", "top_eig", "trace"):
                    if a[key] is not None:
                        assert close(a[key], b[key], 1e-9, 1e-15), (a["name"], key, a[key],
                                                                    b[key])


def test_layer_norm_second_derivatives_are_exact():
    """A Hugging Face LayerNorm's second-order forward-mode derivative is right under the
    engine's exact_norms (torch's fused kernel alone is not), checked against reverse mode."""
    from hessaudit.hessian.exact_norms import exact_norms

    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(4).double()
    with torch.no_grad():
        norm.weight.copy_(torch.randn(4))
        norm.bias.copy_(torch.randn(4))
    x, v = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)

    def f(a):
        return (norm(a) ** 3).sum()

    H = torch.autograd.functional.hessian(lambda a: f(a.reshape(5, 4)), x.reshape(-1))
    dense = float(v.reshape(-1) @ H @ v.reshape(-1))
    with exact_norms():
        second = torch.func.jvp(lambda a: torch.func.jvp(f, (a,), (v,))[1], (x,), (v,))[1]
        composed = norm(x)
    assert math.isclose(float(second.detach()), dense, rel_tol=1e-10)
    assert torch.allclose(composed, norm(x), rtol=0, atol=1e-14)
    assert forms(H.reshape(20, 20), v.reshape(-1))[0] == pytest.approx(dense)
