"""Text data (issue 14): .csv/.tsv/.jsonl/.parquet tables, sentence pairs, label names, packing,
truncation, seeded subsets, and every kind of bad text input through the CLI (exit 1, one
``error:`` line naming the file or flag, no traceback, nothing written).

The model is the tiny BERT of tests/text_cases.py, built once for the module.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from hessaudit.errors import HessauditError
from hessaudit.inputs.data import load_data
from hessaudit.inputs.models import build_model
from hessaudit.inputs.text_model import text_source
from hessaudit.inputs.text_options import TextOptions
from hessaudit.inputs.text_table import parse_label
from hessaudit.inputs.text_tokens import ModelLimits
from tests.text_cases import (
    LABELS,
    assert_one_error,
    make_text_case,
    rows,
    run_cli,
    snapshot,
    write_rows,
)

FORMATS = (".csv", ".tsv", ".jsonl", ".parquet")


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return make_text_case(tmp_path_factory.mktemp("text") / "bert", "bert")


@pytest.fixture(scope="module")
def model(case):
    return build_model(case.spec)


def source(model, options: TextOptions | None = None, data: str = "d.csv"):
    return text_source(options or TextOptions(), model, [data], model_spec="m")


def load(path: Path, model, options: TextOptions | None = None, **kw):
    return load_data(str(path), text_source=source(model, options), **kw)


def tokenizer_of(case):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(case.ft, local_files_only=True)


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize("suffix", FORMATS)
def test_every_format_reads_the_same_tokens(tmp_path, case, model, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    data = rows(7, seed=3)
    ds = load(write_rows(tmp_path / f"d{suffix}", data), model)
    tok = tokenizer_of(case)
    assert ds.x.dtype == torch.int64 and ds.x.shape[:2] == (7, 3)
    assert ds.y.tolist() == [r["label"] for r in data]
    assert ds.scaling == "tokens" and ds.num_classes == 3
    for n, row in enumerate(data):
        ids = tok(row["text"])["input_ids"]
        mask = ds.x[n, 1]
        assert ds.x[n, 0, : len(ids)].tolist() == ids
        assert mask.tolist() == [1] * len(ids) + [0] * (ds.x.shape[2] - len(ids))
        assert bool((ds.x[n, 0, len(ids) :] == 0).all())  # the pad id
        assert not bool(ds.x[n, 2].any())  # one sentence: token type 0
    assert ds.x.shape[2] == max(len(tok(r["text"])["input_ids"]) for r in data)
    assert any("tokenized with the tokenizer of --model" in s for s in ds.preprocessing)


def test_parquet_without_pyarrow_names_the_install(tmp_path, model, monkeypatch):
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1 not really parquet PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(HessauditError, match=r"needs pyarrow.*pip install pyarrow"):
        load(path, model)


def test_sentence_pairs_default_and_named_columns(tmp_path, case, model):
    data = rows(5, seed=4, pair=True)
    path = write_rows(tmp_path / "pairs.csv", data)
    tok = tokenizer_of(case)
    ds = load(path, model)  # no 'text' column: sentence1 and sentence2
    swapped = load(path, model, TextOptions(text_column="sentence2,sentence1"))
    for n, row in enumerate(data):
        enc = tok(row["sentence1"], row["sentence2"], return_token_type_ids=True)
        k = len(enc["input_ids"])
        assert ds.x[n, 0, :k].tolist() == enc["input_ids"]
        assert ds.x[n, 2, :k].tolist() == enc["token_type_ids"]
        assert 1 in enc["token_type_ids"]  # the second sentence is segment 1
        rev = tok(row["sentence2"], row["sentence1"])["input_ids"]
        assert swapped.x[n, 0, : len(rev)].tolist() == rev
    assert "as sentence pairs" in ds.preprocessing[0]


def test_label_names_map_through_label2id(tmp_path, model):
    data = rows(6, seed=5, names=True)
    data[0]["label"] = 2  # integers and names may mix
    ds = load(write_rows(tmp_path / "named.jsonl", data), model)
    assert ds.y.tolist() == [2] + [LABELS.index(r["label"]) for r in data[1:]]
    assert ds.classes == LABELS
    csv = load(write_rows(tmp_path / "named.csv", data), model)
    assert torch.equal(csv.y, ds.y) and torch.equal(csv.x, ds.x)


def test_unknown_label_names_file_row_and_labels(tmp_path, model):
    data = rows(4, seed=6, names=True)
    data[2]["label"] = "positive"
    path = write_rows(tmp_path / "bad.csv", data)
    with pytest.raises(HessauditError) as exc:
        load(path, model)
    text = str(exc.value)
    assert str(path) in text and "row 3" in text and "'positive'" in text
    assert "'neg', 'neu', 'pos'" in text


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, 1), (" pos ", 2), ("1", 1), ("+2", 2), ("1.0", 1), (2.0, 2), ("neg", 0)],
)
def test_label_cells(value, expected):
    label2id = {name: i for i, name in enumerate(LABELS)}
    assert parse_label(value, label2id, where="w")[0] == expected


@pytest.mark.parametrize("value", [1.5, True, -1, "-1", None, float("nan"), "", [1], "1e3"])
def test_bad_label_cells(value):
    with pytest.raises(HessauditError, match=r"^w: "):
        parse_label(value, {"neg": 0}, where="w")


def test_label_outside_the_model_classes(tmp_path, model):
    data = rows(4, seed=7)
    data[1]["label"] = 5
    with pytest.raises(HessauditError, match=r"row 2: label 5 is outside \[0, 3\)"):
        load(write_rows(tmp_path / "d.csv", data), model, num_classes=3)


def test_truncation_to_max_length(tmp_path, case, model):
    data = rows(6, seed=8, pair=True)
    ds = load(write_rows(tmp_path / "p.csv", data), model, TextOptions(max_length=7))
    tok = tokenizer_of(case)
    assert ds.x.shape[2] == 7
    for n, row in enumerate(data):
        enc = tok(row["sentence1"], row["sentence2"], truncation=True, max_length=7)
        assert ds.x[n, 0, : len(enc["input_ids"])].tolist() == enc["input_ids"]
    assert any(s.startswith("truncated 6 of 6 examples to 7 tokens") for s in ds.preprocessing)
    with pytest.raises(HessauditError, match="--max-length 2 is too short"):
        load(tmp_path / "p.csv", model, TextOptions(max_length=2))


def test_seeded_subset_is_the_image_draw(tmp_path, model):
    data = rows(9, seed=9)
    path = write_rows(tmp_path / "d.csv", data)
    full = load(path, model)
    part = load(path, model, samples=4, seed=11)
    chosen = torch.sort(torch.randperm(9, generator=torch.Generator().manual_seed(11))[:4])
    assert part.y.tolist() == full.y[chosen.values].tolist()
    again = load(path, model, samples=4, seed=11)
    assert torch.equal(part.x, again.x)
    with pytest.raises(HessauditError, match="--samples 10"):
        load(path, model, samples=10)


def test_model_limits_are_checked(tmp_path, model):
    import dataclasses

    path = write_rows(tmp_path / "d.csv", [{"text": "good movie " * 4, "label": 1}] * 3)
    base = source(model)
    small = dataclasses.replace(base, limits=ModelLimits(5, True, 2, None))
    with pytest.raises(HessauditError, match=r"token id .* vocabulary has 5 entries"):
        load_data(str(path), text_source=small)
    short = dataclasses.replace(base, limits=ModelLimits(None, True, 2, 8))
    with pytest.raises(HessauditError, match=r"at most 8 positions.*--max-length 8"):
        load_data(str(path), text_source=short)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_length": 0}, "--max-length 0"),
        ({"max_length": 10**6}, "--max-length 1000000"),
        ({"text_column": ""}, "--text-column is empty"),
        ({"text_column": "a,b,c"}, "--text-column 'a,b,c'"),
        ({"text_column": "a\x1b[31m"}, "control characters"),
        ({"label_column": "text", "text_column": "text"}, "--label-column 'text' is also"),
    ],
)
def test_text_options_are_checked(kwargs, match):
    with pytest.raises(HessauditError, match=match):
        TextOptions(**kwargs)


# --------------------------------------------------------------------------- bad input, CLI


@pytest.fixture
def cli_env(tmp_path, case):
    """Arguments of a measure run on ``data``: the error must come before any audit."""

    def args(data, *extra):
        return [
            "measure", case.pre, case.weights, "--model", case.spec, "--data", data,
            "--include", case.head, "--json", tmp_path / "out.json", *extra,
        ]

    return args


def _bad_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, a phrase of the error)."""
    files: dict[str, tuple[bytes | str, str]] = {
        "extra-field.csv": ("text,label\ngood movie,1,3\n", "Expected 2 fields"),
        "open-quote.csv": ('text,label\n"good movie,1\n', "EOF inside string"),
        "not-utf8.csv": (b"text,label\n\xff\xfe bad,1\n", "not UTF-8"),
        "empty.csv": ("", "is empty"),
        "header-only.csv": ("text,label\n", "holds no rows"),
        "twice.csv": ("text,text,label\na,b,1\n", "names column 'text' twice"),
        "empty-text.csv": ("text,label\ngood,1\n   ,0\n",
                           "row 2, column 'text': the text is empty"),
        "no-label.csv": ("text,label\ngood,\n", "row 1: the label is empty"),
        "no-text-column.csv": ("words,label\ngood,1\n", "no column 'text'"),
        "no-label-column.tsv": ("text\tclass\ngood\t1\n", "no column 'label'"),
        "null-text.jsonl": ('{"text": "good", "label": 1}\n{"text": null, "label": 0}\n',
                            "row 2, column 'text': the text is missing"),
        "number-text.jsonl": ('{"text": 3, "label": 1}\n', "must be a string, found int"),
        "array-line.jsonl": ('{"text": "a", "label": 1}\n[1, 2]\n', "line 2: a JSON list"),
        "broken.jsonl": ('{"text": "a", "label": 1}\n{"text": \n', "line 2: not a JSON object"),
        "nan.jsonl": ('{"text": "a", "label": NaN}\n', "line 1: not a JSON object"),
        "deep.jsonl": ("[" * 100_000 + "]" * 100_000 + "\n", "line 1: not a JSON object"),
        "missing-key.jsonl": ('{"text": "a", "label": 1}\n{"text": "b"}\n',
                              "row 2: the label is missing"),
        "float-label.jsonl": ('{"text": "a", "label": 0.5}\n', "not a whole number"),
        "escape.csv": ('text,label\ngood,"\x1b[31mred"\n', "label '\\x1b[31mred'"),
    }
    out = {}
    for name, (content, phrase) in files.items():
        path = tmp / name
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
        out[name] = (path, phrase)
    return out


def test_bad_text_files_fail_cleanly(tmp_path, cli_env, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    before = snapshot(tmp_path)
    for name, (path, phrase) in _bad_files(bad).items():
        before = snapshot(tmp_path)
        code, _, err = run_cli(cli_env(path), capsys)
        line = assert_one_error(code, err, str(path))
        assert phrase in line, (name, line)
        assert "\x1b" not in line
        assert snapshot(tmp_path) == before, name


def test_overlong_text_is_refused(tmp_path, cli_env, capsys, monkeypatch):
    from hessaudit.inputs import text_table

    monkeypatch.setattr(text_table, "MAX_TEXT_CHARS", 50)
    path = write_rows(tmp_path / "long.csv", [{"text": "good " * 20, "label": 1}])
    code, _, err = run_cli(cli_env(path), capsys)
    assert "a text of 100 characters is longer than the 50" in assert_one_error(code, err, "row 1")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_data_and_tokenizer_are_refused(tmp_path, case, cli_env, capsys):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    code, _, err = run_cli(cli_env(fifo), capsys)
    assert "not a regular file" in assert_one_error(code, err, str(fifo))
    folder = tmp_path / "tok"
    folder.mkdir()
    os.mkfifo(folder / "tokenizer.json")
    data = write_rows(tmp_path / "d.csv", rows(3))
    code, _, err = run_cli(cli_env(data, "--tokenizer", folder), capsys)
    assert "not a regular file" in assert_one_error(code, err, "--tokenizer", "tokenizer.json")


def test_crafted_parquet_is_refused_before_decoding(tmp_path, cli_env, capsys, monkeypatch):
    pytest.importorskip("pyarrow")
    from hessaudit.inputs import guard

    # 400 copies of one 25 000-character text: a few kB on disk (dictionary and run-length
    # encoded), 10 MB once decoded; with the floor of the budget lowered to nothing, the
    # budget is 100 times the file's size
    path = write_rows(tmp_path / "d.parquet", [{"text": "good " * 5000, "label": 1}] * 400)
    monkeypatch.setattr(guard, "EXPANSION_FLOOR", 16)
    code, _, err = run_cli(cli_env(path), capsys)
    assert "refused before decoding it" in assert_one_error(code, err, str(path))


@pytest.mark.parametrize(
    ("extra", "phrase"),
    [
        (["--max-length", "0"], "--max-length 0"),
        (["--text-column", "a,b,c"], "--text-column 'a,b,c'"),
        (["--tokenizer", "no/such/folder"], "--tokenizer no/such/folder: not a folder"),
        (["--text-column", "body"], "no column 'body' for --text-column"),
    ],
)
def test_bad_text_flags(tmp_path, cli_env, capsys, extra, phrase):
    data = write_rows(tmp_path / "d.csv", rows(3))
    code, _, err = run_cli(cli_env(data, *extra), capsys)
    assert phrase in assert_one_error(code, err)


def test_text_flags_on_image_data_and_text_on_image_models(
    tmp_path, case, capsys, tiny_checkpoints
):
    code, _, err = run_cli(
        ["measure", tiny_checkpoints.pretrained, tiny_checkpoints.finetuned, "--model",
         tiny_checkpoints.spec, "--data", "digits", "--max-length", "64"],
        capsys,
    )
    assert "--max-length applies to text data" in assert_one_error(code, err, "digits")
    data = write_rows(tmp_path / "d.csv", rows(3))
    code, _, err = run_cli(
        ["measure", tiny_checkpoints.pretrained, tiny_checkpoints.finetuned, "--model",
         tiny_checkpoints.spec, "--data", data],
        capsys,
    )
    assert "is not a text classifier" in assert_one_error(code, err, str(data))


# --------------------------------------------------------------------------- tokenizer, model


def test_tokenizer_flag_and_a_bare_tokenizer_json(tmp_path, case, model):
    import shutil

    path = write_rows(tmp_path / "d.csv", rows(4, seed=12))
    default = load(path, model)
    for files in (("tokenizer.json", "tokenizer_config.json"), ("tokenizer.json",)):
        folder = tmp_path / f"tok{len(files)}"
        folder.mkdir()
        for name in files:
            shutil.copy(case.ft / name, folder / name)
        ds = load(path, model, TextOptions(tokenizer=str(folder)))
        assert torch.equal(ds.x, default.x)
        assert any(f"--tokenizer {folder}" in s for s in ds.preprocessing)


def test_text_classifier_wrapper(case):
    import copy

    from transformers import AutoConfig, AutoModelForSequenceClassification

    from hessaudit.inputs.text_model import TextClassifier

    hf = AutoModelForSequenceClassification.from_config(
        AutoConfig.from_pretrained(case.ft, local_files_only=True)
    )
    names = [n for n, _ in hf.named_parameters()]
    wrapped = TextClassifier(hf)
    assert [n for n, _ in wrapped.named_parameters()] == names  # the model's own names
    assert wrapped.hf_model is hf and hf.config._attn_implementation == "eager"
    assert wrapped.config is hf.config and wrapped.base_model_prefix == "bert"
    wrapped.eval()
    assert not hf.training and not any(m.training for m in wrapped.modules())
    twin = copy.deepcopy(wrapped)  # the trainer copies models: the copy shares nothing
    assert twin.hf_model.classifier is twin.classifier and twin.classifier is not hf.classifier
    with pytest.raises(HessauditError, match="names no folder with a tokenizer"):
        text_source(TextOptions(), wrapped, ["d.csv"], model_spec="f.py:build")


def test_wrapper_reads_two_row_and_id_only_tokens(tmp_path, model):
    ds = load(write_rows(tmp_path / "d.csv", rows(5, seed=13)), model)
    model.eval()
    with torch.no_grad():
        full = model(ds.x)
        assert torch.equal(model(ds.x[:, :2]), full)  # no token types: zeros
        assert torch.equal(model(ds.x.double()), full)  # ids stored as floats
        longest = int(ds.x[:, 1].sum(1).argmax())
        one = ds.x[longest : longest + 1]
        assert torch.allclose(model(one[:, 0]), full[longest : longest + 1], atol=1e-6)
    with pytest.raises(HessauditError, match=r"got shape \(5, 4, "):
        model(torch.zeros(5, 4, ds.x.shape[2], dtype=torch.long))
