"""Issue 12 §11: ``noise.json`` holds the labels actually trained on, and ``measure --labels``
audits on them (Theorem 2.1's Lhat and C are on the training distribution).

Through the CLI with the tiny factory model of ``conftest.py``; the oracle for Lhat and C is a
plain forward pass of the fine-tuned weights on the examples and labels the run trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from hessaudit.cli import main


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return int(exc.value.code), captured.out, captured.err


@pytest.fixture
def noisy_run(tiny_checkpoints, tmp_path, capsys) -> Path:
    """A one-epoch run on 48 digits with 40% injected noise and a validation quarter."""
    out = tmp_path / "run"
    code, _, err = run_cli(
        ["finetune", "--model", tiny_checkpoints.spec, "--pretrained",
         tiny_checkpoints.pretrained, "--data", "digits", "--samples", "48", "--val-fraction",
         "0.25", "--epochs", "1", "--batch-size", "16", "--lr", "1e-2", "--inject-noise",
         "symmetric:0.4", "--noise-matrix", "injected", "--seed", "3", "--out", out, "--quiet"],
        capsys,
    )
    assert code == 0, err
    return out


def _measure(pair, run: Path, out_json: Path, *extra) -> list:
    return ["measure", pair.pretrained, run / "final.safetensors", "--model", pair.spec,
            "--data", "digits", "--samples", "8", "--no-spectrum", "--quiet",
            "--json", out_json, *extra]


def test_noise_json_holds_the_labels_trained_on(noisy_run) -> None:
    from hessaudit.inputs.data import choose_subset, load_data

    noise = json.loads((noisy_run / "noise.json").read_text())
    record = noise["training_labels"]
    digits = load_data("digits", role="train")
    chosen = [int(i) for i in choose_subset(len(digits), 48, 3, "digits")]  # the --samples subset
    assert record["source_size"] == len(digits) == 1201
    assert len(record["indices"]) == len(record["labels"]) == 36  # 48 minus the validation 12
    assert set(record["indices"]) <= set(chosen)
    val = json.loads((noisy_run / "config.json").read_text())["resolved"]["val_indices"]
    assert set(record["indices"]) == {chosen[p] for p in range(48) if p not in set(val)}
    clean = digits.y[record["indices"]].tolist()
    assert record["clean_labels"] == clean
    # the noisy labels differ from the clean ones exactly at the flipped, trained examples
    flipped = {chosen[p] for p in noise["injected"]["flipped_indices"]}
    differ = {i for i, a, b in zip(record["indices"], record["labels"], clean, strict=True)
              if a != b}
    assert differ == flipped & set(record["indices"]) and differ


def test_measure_audits_on_the_labels_trained_on(tiny_checkpoints, tiny_net, noisy_run,
                                                 tmp_path, capsys) -> None:
    from safetensors.torch import load_file

    from hessaudit.inputs.data import load_data

    out_json = tmp_path / "audit.json"
    labels_file = noisy_run / "noise.json"
    code, _, err = run_cli(_measure(tiny_checkpoints, noisy_run, out_json,
                                    "--labels", labels_file), capsys)
    assert code == 0, err
    audit = json.loads(out_json.read_text())
    record = audit["inputs"]["labels"]
    assert record["sha256"] == hashlib.sha256(labels_file.read_bytes()).hexdigest()
    assert record["kind"] == "finetune noise.json" and record["examples"] == 36
    assert audit["inputs"]["data_summary"]["n"] == 36

    # oracle: the fine-tuned model's cross-entropy on exactly those examples and labels
    training = json.loads(labels_file.read_text())["training_labels"]
    model = tiny_net(num_classes=10)
    model.load_state_dict(load_file(str(noisy_run / "final.safetensors")))
    x = load_data("digits", role="train").x[training["indices"]]
    with torch.no_grad():
        losses = torch.nn.functional.cross_entropy(
            model.eval()(x), torch.tensor(training["labels"]), reduction="none")
    assert audit["n"] == 36
    assert audit["train_loss"] == pytest.approx(float(losses.mean()), rel=1e-5)
    assert audit["C"] == pytest.approx(float(losses.max()), rel=1e-5)

    # without --labels the audit is on all of --data with its own labels: another Lhat
    plain = tmp_path / "plain.json"
    assert run_cli(_measure(tiny_checkpoints, noisy_run, plain), capsys)[0] == 0
    plain_doc = json.loads(plain.read_text())
    assert plain_doc["n"] == 1201 and plain_doc["inputs"]["labels"] is None


def test_npy_and_csv_labels(tiny_checkpoints, noisy_run, tmp_path, capsys) -> None:
    from hessaudit.inputs.data import load_data

    y = load_data("digits", role="train").y.numpy()
    noisy = (y + (np.arange(len(y)) % 3 == 0)) % 10  # every third label shifted by one
    np.save(tmp_path / "labels.npy", noisy)
    (tmp_path / "labels.csv").write_text("label\n" + "\n".join(map(str, noisy)) + "\n")
    results = {}
    for name in ("labels.npy", "labels.csv"):
        out_json = tmp_path / f"{name}.json"
        code, _, err = run_cli(_measure(tiny_checkpoints, noisy_run, out_json, "--labels",
                                        tmp_path / name), capsys)
        assert code == 0, err
        doc = json.loads(out_json.read_text())
        assert doc["inputs"]["labels"]["kind"] == name.split(".")[1]
        assert doc["inputs"]["labels"]["differing_from_data"] == int((noisy != y).sum())
        results[name] = doc["train_loss"]
    assert results["labels.npy"] == results["labels.csv"]


def _bad_cases(tmp_path: Path, run: Path) -> dict[str, tuple[Path, str]]:
    cases: dict[str, tuple[Path, str]] = {}
    np.save(tmp_path / "short.npy", np.zeros(5, dtype=np.int64))
    cases["wrong-length"] = (tmp_path / "short.npy", "5 labels")
    (tmp_path / "range.csv").write_text("\n".join(["12"] * 1201))
    cases["out-of-range"] = (tmp_path / "range.csv", "[0, 10)")
    np.save(tmp_path / "frac.npy", np.full(1201, 0.5))
    cases["not-integer"] = (tmp_path / "frac.npy", "whole numbers")
    cases["missing"] = (tmp_path / "nope.npy", "does not exist")
    (tmp_path / "labels.txt").write_text("1\n")
    cases["extension"] = (tmp_path / "labels.txt", "unknown kind")
    (tmp_path / "other.json").write_text(json.dumps({"schema": "hessaudit.noise/1"}))
    cases["no-training-labels"] = (tmp_path / "other.json", "training_labels")
    other = json.loads((run / "noise.json").read_text())
    other["training_labels"]["source_size"] = 1797  # a run on digits:all
    (tmp_path / "all.json").write_text(json.dumps(other))
    cases["other-data"] = (tmp_path / "all.json", "1797 examples")
    wrong = json.loads((run / "noise.json").read_text())
    wrong["training_labels"]["clean_labels"] = [
        (v + 1) % 10 for v in wrong["training_labels"]["clean_labels"]
    ]
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    cases["clean-mismatch"] = (tmp_path / "wrong.json", "clean labels differ")
    os.mkfifo(tmp_path / "fifo.npy")
    cases["fifo"] = (tmp_path / "fifo.npy", "not a regular file")
    return cases


def test_bad_label_files_are_one_line_errors(tiny_checkpoints, noisy_run, tmp_path,
                                             capsys) -> None:
    for case, (path, needle) in _bad_cases(tmp_path, noisy_run).items():
        out_json = tmp_path / "audit.json"
        code, _, err = run_cli(_measure(tiny_checkpoints, noisy_run, out_json,
                                          "--labels", path), capsys)
        lines = err.strip().splitlines()
        assert code == 1, (case, err)
        assert len(lines) == 1 and lines[0].startswith("error: --labels"), (case, err)
        assert needle in lines[0], (case, lines[0])
        assert "Traceback" not in err
        assert not out_json.exists(), case
