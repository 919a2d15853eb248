"""Issue 7, determinism and trust: same inputs + seed -> bit-identical results, and the audit
JSON ties itself to exactly what it audited (SHA-256 of every input file, tool and torch
versions)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hessaudit._version import __version__
from hessaudit.cli import main

ZOO = "hessaudit.zoo:digits_cnn"


def run_cli(args: list, capsys) -> int:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    capsys.readouterr()
    return int(exc.value.code)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def npz_data(tmp_path) -> Path:
    """40 digits images (from the built-in set) as a .npz file."""
    from hessaudit.inputs.data import load_data

    ds = load_data("digits", samples=40, seed=1)
    path = tmp_path / "train.npz"
    with open(path, "wb") as fh:
        np.savez(fh, x=ds.x.numpy(), y=ds.y.numpy())
    return path


def test_measure_twice_gives_identical_json(tiny_checkpoints, npz_data, tmp_path, capsys):
    docs = []
    for i in range(2):
        out = tmp_path / f"audit{i}.json"
        args = [
            "measure", tiny_checkpoints.pretrained, tiny_checkpoints.finetuned,
            "--model", tiny_checkpoints.spec, "--data", npz_data, "--eval-data", "digits",
            "--samples", "12", "--spectrum-samples", "4", "--trace-probes", "2",
            "--seed", "7", "--quiet", "--json", out,
        ]
        assert run_cli(args, capsys) == 0
        doc = json.loads(out.read_text())
        doc.pop("created")
        docs.append(doc)
    # identical, numbers included, bit for bit (JSON floats round-trip exactly)
    assert docs[0] == docs[1]
    assert json.dumps(docs[0], sort_keys=True) == json.dumps(docs[1], sort_keys=True)
    assert any(layer["top_eig"] is not None for layer in docs[0]["layers"])


def test_audit_json_records_what_it_audited(tiny_checkpoints, npz_data, tmp_path, capsys):
    out = tmp_path / "audit.json"
    args = [
        "measure", tiny_checkpoints.pretrained, tiny_checkpoints.finetuned,
        "--model", tiny_checkpoints.spec, "--data", npz_data, "--eval-data", npz_data,
        "--samples", "8", "--no-spectrum", "--quiet", "--json", out,
    ]
    assert run_cli(args, capsys) == 0
    doc = json.loads(out.read_text())
    inputs = doc["inputs"]
    assert doc["tool_version"] == __version__
    assert doc["torch_version"] == torch.__version__
    for role, path in (("pretrained", tiny_checkpoints.pretrained),
                       ("finetuned", tiny_checkpoints.finetuned)):
        assert inputs[role]["sha256"] == sha256(path)
        assert inputs[role]["size"] == Path(path).stat().st_size
    assert inputs["data_sha256"] == sha256(npz_data)
    assert inputs["eval_data_sha256"] == sha256(npz_data)
    assert inputs["seed"] == 0 and inputs["samples"] == 8


def test_builtin_and_folder_data_have_no_sha(tiny_checkpoints, tmp_path, capsys):
    out = tmp_path / "audit.json"
    args = [
        "measure", tiny_checkpoints.pretrained, tiny_checkpoints.finetuned,
        "--model", tiny_checkpoints.spec, "--data", "digits", "--samples", "8",
        "--no-spectrum", "--quiet", "--json", out,
    ]
    assert run_cli(args, capsys) == 0
    inputs = json.loads(out.read_text())["inputs"]
    assert inputs["data_sha256"] is None and inputs["eval_data_sha256"] is None


def test_finetune_is_reproducible_under_a_seed(tmp_path, one_thread, capsys):
    from hessaudit.inputs.checkpoints import load_checkpoint, save_checkpoint
    from hessaudit.zoo import digits_cnn

    with torch.random.fork_rng():
        torch.manual_seed(0)
        pre = tmp_path / "pre.safetensors"
        save_checkpoint(pre, digits_cnn(num_classes=5).state_dict())
    finals = []
    for i in range(2):
        out = tmp_path / f"run{i}"
        args = [
            "finetune", "--model", ZOO, "--pretrained", pre, "--data", "digits",
            "--samples", "200", "--epochs", "2", "--lr", "3e-3", "--seed", "11",
            "--inject-noise", "symmetric:0.3", "--noise-matrix", "injected",
            "--val-fraction", "0.2", "--out", out, "--quiet",
        ]
        assert run_cli(args, capsys) == 0
        finals.append(load_checkpoint(out / "final.safetensors").tensors)
        assert (out / "metrics.csv").is_file()
    assert list(finals[0]) == list(finals[1])
    for name, tensor in finals[0].items():
        assert torch.equal(tensor, finals[1][name]), name
    m0 = (tmp_path / "run0" / "metrics.csv").read_text().splitlines()
    m1 = (tmp_path / "run1" / "metrics.csv").read_text().splitlines()
    strip = [[c for j, c in enumerate(line.split(",")) if j != _seconds_column(m0)]
             for line in m0]
    strip1 = [[c for j, c in enumerate(line.split(",")) if j != _seconds_column(m1)]
              for line in m1]
    assert strip == strip1  # every number but the wall-clock time


def _seconds_column(lines: list[str]) -> int:
    header = lines[0].split(",")
    return header.index("seconds") if "seconds" in header else -1
