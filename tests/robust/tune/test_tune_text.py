"""``hessaudit tune`` on a Hugging Face text classifier, through the CLI: two trials of the tiny
BERT of ``tests/text_cases.py`` (its own tokenizer, a CSV with a non-default text column), the
best parameters trained to completion as a model folder transformers loads."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("optuna")
pytest.importorskip("transformers")

from hessaudit.cli import main
from tests.text_cases import make_text_case, sentences, write_rows


def _run(args: list) -> int:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return int(exc.value.code)


def test_tune_searches_a_text_model(tmp_path, capsys) -> None:
    from transformers import AutoModelForSequenceClassification

    case = make_text_case(tmp_path / "bert", "bert")
    texts = sentences(40, seed=5)
    data = write_rows(tmp_path / "train.tsv",
                      [{"review": t, "label": i % 2} for i, t in enumerate(texts)])
    out = tmp_path / "search"
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"defaults": False, "params": {
        "lr": {"low": 1e-4, "high": 1e-2, "log": True},
        "radius_attention": {"low": 0.01, "high": 1.0, "log": True},
    }}))
    code = _run([
        "tune", "--model", case.ft, "--pretrained", case.ft, "--data", data,
        "--text-column", "review", "--max-length", "12", "--batch-size", "8",
        "--inject-noise", "symmetric:0.2", "--noise-matrix", "injected", "--epochs", "1",
        "--trial-epochs", "1", "--trials", "2", "--space", space, "--out", out, "--quiet",
    ])
    assert code == 0, capsys.readouterr().err
    best = json.loads((out / "best.json").read_text())
    assert best["trials"] == {"complete": 2}
    assert set(best["params"]) == {"lr", "radius_attention"}
    config = best["config"]
    assert config["text_column"] == "review" and config["max_length"] == 12
    assert config["optimizer"] == "adamw" and config["schedule"] == "linear"  # text defaults
    assert "--text-column review" in best["command"]
    trial = json.loads((out / "trials" / "0000" / "config.json").read_text())
    assert trial["resolved"]["radius_groups"]
    final = out / "best" / "final"
    model = AutoModelForSequenceClassification.from_pretrained(final, local_files_only=True)
    assert model.config.num_labels == 2


def test_bound_objective_is_refused_for_text(tmp_path, capsys) -> None:
    case = make_text_case(tmp_path / "bert", "bert")
    data = write_rows(tmp_path / "train.csv",
                      [{"text": t, "label": i % 2} for i, t in enumerate(sentences(12))])
    out = tmp_path / "search"
    capsys.readouterr()
    code = _run(["tune", "--model", case.ft, "--pretrained", case.ft, "--data", data,
                 "--loss", "ce", "--objective", "bound", "--trials", "2", "--out", out])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --objective bound") and err.count("\n") == 1
