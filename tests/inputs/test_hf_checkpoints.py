"""Hugging Face model directories: every checkpoint layout, ``--model DIR``, hostile folders.

The models are tiny transformers classifiers built from configs (tests/hf_cases.py); the CLI
runs in-process (``hessaudit.cli.main``). A bad folder ends with exit code 1, one ``error:``
line naming it, no traceback, and every file under the test folder unchanged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hessaudit.cli import main
from hessaudit.errors import HessauditError
from hessaudit.inputs.checkpoints import load_checkpoint, save_checkpoint
from hessaudit.inputs.models import build_model, load_model
from tests.hf_cases import moved, save_dir, save_tokens, tiny_model, token_batch, transformers

REPO = Path(__file__).resolve().parents[2]


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return int(exc.value.code), captured.out, captured.err


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                out[str(p)] = (p.read_bytes(), p.stat().st_mtime_ns)
    return out


def one_error_line(code: int, err: str, *names: object) -> str:
    lines = err.strip().splitlines()
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bert")
    pre = save_dir(tiny_model("bert"), root / "pre")
    ft = save_dir(moved(tiny_model("bert")), root / "ft")
    x, y = token_batch(n=6)
    return {"root": root, "pre": pre, "ft": ft, "data": save_tokens(root / "tok.npz", x, y)}


# --------------------------------------------------------------------------- layouts


def _bin_shards(model, folder: Path) -> None:
    """A sharded pytorch_model.bin directory written by hand: two shards and their index."""
    model.config.save_pretrained(folder)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    names = list(state)
    half = len(names) // 2
    shards = {"pytorch_model-00001-of-00002.bin": names[:half],
              "pytorch_model-00002-of-00002.bin": names[half:]}
    for shard, members in shards.items():
        torch.save({k: state[k] for k in members}, folder / shard)
    weight_map = {k: shard for shard, members in shards.items() for k in members}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))


@pytest.mark.parametrize("kind", ["bert", "roberta", "distilbert"])
def test_every_layout_reads_the_same_tensors(tmp_path: Path, kind: str) -> None:
    model = tiny_model(kind)
    state = model.state_dict()
    folders = {layout: save_dir(model, tmp_path / layout, layout)
               for layout in ("safetensors", "sharded", "bin")}
    _bin_shards(model, tmp_path / "bin-sharded")
    folders["bin-sharded"] = tmp_path / "bin-sharded"
    expected_layout = {"safetensors": "safetensors", "sharded": "safetensors-sharded",
                       "bin": "torch", "bin-sharded": "torch-sharded"}
    for layout, folder in folders.items():
        ckpt = load_checkpoint(folder)
        assert set(ckpt.tensors) == set(state), layout
        for name, tensor in state.items():
            assert torch.equal(ckpt.tensors[name], tensor), (layout, name)
        assert ckpt.metadata["hf_layout"] == expected_layout[layout]
        assert ckpt.record.path == str(folder)
        files = ckpt.metadata["hf_files"]
        assert ckpt.record.size == sum(f["size"] for f in files)
        if layout.endswith("sharded") or layout == "sharded":
            assert len(files) >= 3 and files[0]["name"].endswith(".index.json")
        # the directory loads into the model it describes (strictly)
        load_model(str(folder), ckpt.tensors, source=str(folder))


def test_legacy_layernorm_names_are_renamed(tmp_path: Path) -> None:
    model = tiny_model("bert")
    folder = tmp_path / "old"
    model.config.save_pretrained(folder)
    state = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias",
             "LayerNorm.beta"): v.clone() for k, v in model.state_dict().items()}
    assert any(k.endswith(".gamma") for k in state)
    torch.save(state, folder / "pytorch_model.bin")
    ckpt = load_checkpoint(folder)
    assert set(ckpt.tensors) == set(model.state_dict())
    assert ckpt.metadata["hf_renamed"] == sum(k.endswith(("gamma", "beta"))
                                                           for k in state)


def test_hugging_face_cache_snapshot_links_are_read(tmp_path: Path) -> None:
    """The cache's snapshots/REV/NAME -> ../../blobs/HASH links stay inside the repository."""
    model = tiny_model("bert")
    src = save_dir(model, tmp_path / "src")
    repo = tmp_path / "hub" / "models--tiny--bert"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        blob = repo / "blobs" / f"hash-{name}"
        blob.write_bytes((src / name).read_bytes())
        (snap / name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    assert set(load_checkpoint(snap).tensors) == set(model.state_dict())
    assert type(build_model(str(snap)).hf_model).__name__ == "BertForSequenceClassification"


# --------------------------------------------------------------------------- --model DIR


def test_model_dir_builds_an_eager_classifier_that_returns_logits(bert) -> None:
    model = build_model(str(bert["pre"]))
    assert type(model.hf_model).__name__ == "BertForSequenceClassification" and not model.training
    assert model.config._attn_implementation == "eager"
    x, _ = token_batch(n=4)
    logits = model(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (4, 3)
    assert build_model(str(bert["pre"]), num_classes=5)(x).shape == (4, 5)


@pytest.mark.parametrize("kind", ["bert", "roberta", "distilbert"])
def test_padding_changes_no_logit(tmp_path: Path, kind: str) -> None:
    """A batch of mixed lengths gives each example the logits it has alone, unpadded."""
    pad = 1 if kind == "roberta" else 0
    folder = save_dir(moved(tiny_model(kind), seed=4), tmp_path / kind)
    model = load_model(str(folder), load_checkpoint(folder).tensors)
    x, _ = token_batch(n=5, length=9, pad_id=pad)
    batched = model(x)
    for i in range(len(x)):
        length = int(x[i, 1].sum())
        alone = model(x[i : i + 1, :, :length])
        torch.testing.assert_close(batched[i : i + 1], alone, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(batched[1], batched[2])  # different examples, different logits


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        ({"auto_map": {"AutoModelForSequenceClassification": "evil.Model"}}, "custom model code"),
        ({"model_type": "no-such-model"}, "no-such-model"),
        ({"problem_type": "regression"}, "regression"),
        ({"quantization_config": {"quant_method": "bitsandbytes"}}, "quantized"),
        ({"vocab_size": 10**12}, "more than this machine's"),
    ],
)
def test_model_dir_refusals(bert, tmp_path: Path, capsys, edit, words) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    config = json.loads((bert["pre"] / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **edit}))
    (tmp_path / "evil.py").write_text("open('MARKER', 'w').write('ran')\n")
    before = snapshot(tmp_path)
    code, _, err = run_cli(["inspect", bert["pre"], bert["ft"], "--model", folder], capsys)
    one_error_line(code, err, folder, words)
    assert snapshot(tmp_path) == before and not Path("MARKER").exists()


def test_adapter_dir_as_model_is_refused(bert, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 2, "lora_alpha": 4}')
    code, _, err = run_cli(["inspect", bert["pre"], bert["ft"], "--model", folder], capsys)
    one_error_line(code, err, folder, "PEFT adapter")


def test_help_imports_neither_transformers_nor_peft() -> None:
    code = (
        "import sys\n"
        "from hessaudit.cli import main\n"
        "for args in (['--help'], ['measure', '--help'], ['inspect', '--help']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('LOADED', [m for m in ('transformers', 'peft', 'tokenizers') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "LOADED []" in out.stdout, out.stdout[-300:]


# --------------------------------------------------------------------------- layers and audit


def test_inspect_default_layers_leave_out_embeddings(bert, capsys) -> None:
    out = bert["root"] / "inspect.json"
    code, _, err = run_cli(["inspect", bert["pre"], bert["ft"], "--model", bert["pre"],
                            "--json", out], capsys)
    assert code == 0, err
    names = [layer["name"] for layer in json.loads(out.read_text())["layers"]]
    assert "classifier.weight" in names
    assert "bert.encoder.layer.0.attention.self.query.weight" in names
    assert not any("embeddings" in n for n in names) and all("LayerNorm" not in n for n in names)
    code, _, err = run_cli(["inspect", bert["pre"], bert["ft"], "--model", bert["pre"],
                            "--include", "*word_embeddings.weight", "--json", out], capsys)
    assert code == 0, err
    names = [layer["name"] for layer in json.loads(out.read_text())["layers"]]
    assert names == ["bert.embeddings.word_embeddings.weight"]


def test_measure_on_token_ids_gives_the_term_per_group(bert, capsys) -> None:
    """``hessaudit measure`` end to end on a model directory and an .npz of token ids."""
    out = bert["root"] / "audit.json"
    code, stdout, err = run_cli([
        "measure", bert["pre"], bert["ft"], "--model", bert["pre"], "--data", bert["data"],
        "--include", "*layer.1.attention.self.value.weight", "--include", "*pooler.dense.weight",
        "--include", "classifier.weight", "--no-spectrum", "--json", out,
    ], capsys)
    assert code == 0, err
    doc = json.loads(out.read_text())
    assert doc["inputs"]["adapter"] is None
    assert doc["inputs"]["layer_groups"] == {
        "bert.encoder.layer.1.attention.self.value.weight": "attention",
        "bert.pooler.dense.weight": "linear",
        "classifier.weight": "predictor",
    }
    by_group = doc["hessian_term_by_group"]
    assert list(by_group) == ["attention", "linear", "predictor"]
    assert sum(by_group.values()) == pytest.approx(doc["hessian_term"], rel=1e-12)
    assert all(value > 0 for value in by_group.values())
    assert "G by group" in stdout and "attention" in stdout


# --------------------------------------------------------------------------- hostile folders


def _sharded(bert_model, folder: Path) -> dict:
    save_dir(bert_model, folder, "sharded")
    return json.loads((folder / "model.safetensors.index.json").read_text())


def _write_index(folder: Path, index: dict) -> None:
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def _escape_dotdot(folder: Path, model) -> str:
    index = _sharded(model, folder)
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "../../../../etc/passwd"
    _write_index(folder, index)
    return "'../../../../etc/passwd': only plain file names"


def _escape_absolute(folder: Path, model) -> str:
    index = _sharded(model, folder)
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "/etc/passwd"
    _write_index(folder, index)
    return "plain file names"


def _escape_symlink(folder: Path, model) -> str:
    outside = folder.parent / "outside"
    save_dir(model, outside)
    folder.mkdir()
    (folder / "config.json").write_bytes((outside / "config.json").read_bytes())
    (folder / "model.safetensors").symlink_to(outside / "model.safetensors")
    return "outside"


def _missing_shard(folder: Path, model) -> str:
    index = _sharded(model, folder)
    shard = sorted(set(index["weight_map"].values()))[-1]
    (folder / shard).unlink()
    return "does not exist"


def _duplicate_tensor(folder: Path, model) -> str:
    from safetensors.torch import load_file, save_file

    index = _sharded(model, folder)
    shards = sorted(set(index["weight_map"].values()))
    first = load_file(folder / shards[0])
    name = next(iter(first))
    last = load_file(folder / shards[-1])
    save_file({**last, name: first[name]}, folder / shards[-1])
    return "two shards"


def _missing_tensor(folder: Path, model) -> str:
    from safetensors.torch import load_file, save_file

    index = _sharded(model, folder)
    shard = sorted(set(index["weight_map"].values()))[0]
    tensors = load_file(folder / shard)
    tensors.pop(next(iter(tensors)))
    save_file(tensors, folder / shard)
    return "missing from their shards"


def _unlisted_tensor(folder: Path, model) -> str:
    index = _sharded(model, folder)
    index["weight_map"].pop(next(iter(index["weight_map"])))
    _write_index(folder, index)
    return "not in the index"


def _index_not_json(folder: Path, model) -> str:
    _sharded(model, folder)
    (folder / "model.safetensors.index.json").write_text("{not json")
    return "not valid JSON"


def _index_without_map(folder: Path, model) -> str:
    _sharded(model, folder)
    _write_index(folder, {"metadata": {}})
    return "weight_map"


def _fifo_weights(folder: Path, model) -> str:
    folder.mkdir()
    os.mkfifo(folder / "model.safetensors")
    return "FIFO"


def _empty_folder(folder: Path, model) -> str:
    folder.mkdir()
    return "is a directory"


def _adapter_folder(folder: Path, model) -> str:
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 2, "lora_alpha": 4}')
    return "PEFT adapter"


def _pickled_code(folder: Path, model) -> str:
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {folder.parent / 'PWNED'}",))

    folder.mkdir()
    model.config.save_pretrained(folder)
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"w": Evil()}))
    return "never unpickles"


HOSTILE = {
    "index-dotdot": _escape_dotdot, "index-absolute": _escape_absolute,
    "symlink-escape": _escape_symlink, "missing-shard": _missing_shard,
    "duplicate-tensor": _duplicate_tensor, "missing-tensor": _missing_tensor,
    "unlisted-tensor": _unlisted_tensor, "index-not-json": _index_not_json,
    "index-without-map": _index_without_map, "fifo": _fifo_weights, "empty": _empty_folder,
    "adapter-as-model-checkpoint": _adapter_folder, "pickled-code": _pickled_code,
}


@pytest.mark.parametrize("case", list(HOSTILE))
@pytest.mark.parametrize("role", ["pretrained", "finetuned"])
def test_hostile_model_dirs(bert, tmp_path: Path, capsys, case: str, role: str) -> None:
    folder = tmp_path / "hostile"
    words = HOSTILE[case](folder, tiny_model("bert"))
    before = snapshot(tmp_path)
    pre, ft = (folder, bert["ft"]) if role == "pretrained" else (bert["pre"], folder)
    if case == "adapter-as-model-checkpoint" and role == "finetuned":
        words = "adapter_model"  # as FINETUNED it is an adapter without weights
    code, _, err = run_cli(["inspect", pre, ft, "--model", bert["pre"]], capsys)
    one_error_line(code, err, folder, words)
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "PWNED").exists()


def test_a_file_checkpoint_still_reads_as_before(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_checkpoint(path, {"a": torch.ones(2, 2)})
    assert load_checkpoint(path).metadata == {}
    with pytest.raises(HessauditError, match="is a directory"):
        load_checkpoint(tmp_path)


def test_a_base_model_without_its_prefix_pairs_with_the_classifier(bert, tmp_path: Path,
                                                                   capsys) -> None:
    """A BertModel saved alone (names without ``bert.``) as PRETRAINED: its names gain the
    classifier's prefix, as from_pretrained gives them; the classifier is a new head."""
    base = transformers.AutoModel.from_config(tiny_model("bert").config)
    folder = save_dir(base, tmp_path / "base")
    assert not any(k.startswith("bert.") for k in base.state_dict())
    ckpt = load_checkpoint(folder)
    assert all(k.startswith("bert.") for k in ckpt.tensors) and ckpt.metadata["hf_renamed"]
    out = tmp_path / "i.json"
    code, _, err = run_cli(["inspect", folder, bert["ft"], "--model", bert["pre"], "--json", out],
                           capsys)
    assert code == 0, err
    layers = {layer["name"]: layer for layer in json.loads(out.read_text())["layers"]}
    assert layers["classifier.weight"]["is_new_head"]
    assert not layers["bert.encoder.layer.0.attention.self.query.weight"]["is_new_head"]


def test_a_weights_only_directory_serves_any_model(tmp_path: Path) -> None:
    """No config.json: the names are used as stored (a factory model's state dict)."""
    folder = tmp_path / "plain"
    folder.mkdir()
    state = {"fc.weight": torch.randn(3, 4), "fc.bias": torch.zeros(3)}
    save_checkpoint(folder / "model.safetensors", state)
    ckpt = load_checkpoint(folder)
    assert set(ckpt.tensors) == set(state) and "hf_renamed" not in ckpt.metadata
