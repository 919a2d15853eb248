"""PEFT LoRA adapters as FINETUNED, against peft's own merge as the oracle.

peft is used here only to make adapters (``get_peft_model`` + ``save_pretrained``) and to
merge them (``merge_and_unload`` + ``save_pretrained``); hessaudit merges from the formula
(:mod:`hessaudit.inputs.lora`). The LoRA matrices are set to seeded random values (peft starts
B at zero) and the saved modules are moved, so every update is non-zero.
"""

from __future__ import annotations

import json
import math
import os
import pickle
from pathlib import Path

import pytest
import torch

from hessaudit.cli import main
from hessaudit.inputs.checkpoints import load_checkpoint
from hessaudit.inputs.lora import load_finetuned
from tests.hf_cases import VOCAB, save_dir, save_tokens, tiny_model, token_batch, transformers

peft = pytest.importorskip("peft")


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return int(exc.value.code), captured.out, captured.err


def one_error_line(code: int, err: str, *names: object) -> str:
    lines = err.strip().splitlines()
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


def _randomize(peft_model, seed: int) -> None:
    """Seeded values for every trainable tensor (LoRA A/B, saved modules, trained biases)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if p.requires_grad:
                scale = 0.3 if "lora_" in name else 0.05
                p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def make_adapter(folder: Path, base_model, *, seed: int = 11, merged: Path | None = None,
                 **config) -> Path:
    """Wrap ``base_model`` with a LoRA of ``config``, randomize it, save the adapter to
    ``folder`` and (with ``merged``) peft's merged model as a full model directory."""
    config = {"task_type": peft.TaskType.SEQ_CLS, "r": 4, "lora_alpha": 8,
              "target_modules": ["query", "value"], **config}
    model = peft.get_peft_model(base_model, peft.LoraConfig(**config))
    _randomize(model, seed)
    model.save_pretrained(folder)
    if merged is not None:
        model.merge_and_unload().save_pretrained(merged)
    return folder


def _max_rel(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> float:
    assert set(ours) == set(theirs), set(ours) ^ set(theirs)
    worst = 0.0
    for name, t in theirs.items():
        scale = float(t.double().abs().max()) or 1.0
        worst = max(worst, float((ours[name].double() - t.double()).abs().max()) / scale)
    return worst


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lora")
    x, y = token_batch(n=4)
    return {"root": root, "pre": save_dir(tiny_model("bert", seed=0), root / "pre"),
            "data": save_tokens(root / "tok.npz", x, y)}


VARIANTS = {
    "plain": {},
    "patterns-and-biases": {
        "target_modules": ["query", "value", "dense"], "bias": "lora_only",
        "rank_pattern": {"layer.1.attention.self.query": 2, "output.dense": 3},
        "alpha_pattern": {"value": 3, "layer.0.intermediate.dense": 5.5},
    },
    "rslora": {"use_rslora": True, "r": 3, "lora_alpha": 5},
    "lora-bias": {"lora_bias": True, "bias": "all"},
    "embedding": {"target_modules": ["word_embeddings", "key"]},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_merge_equals_peft_merge(base, tmp_path: Path, variant: str) -> None:
    adapter = make_adapter(tmp_path / "adapter", tiny_model("bert", seed=0),
                           merged=tmp_path / "merged", **VARIANTS[variant])
    pre = load_checkpoint(base["pre"])
    ours = load_finetuned(adapter, pre)
    theirs = load_checkpoint(tmp_path / "merged").tensors
    assert _max_rel(ours.tensors, theirs) <= 1e-6
    record = ours.metadata["adapter"]
    assert record["type"] == "lora" and record["adapted"]
    for name in record["adapted"]:  # every adapted weight moved
        assert not torch.equal(ours.tensors[name], pre.tensors[name]), name
    unchanged = set(pre.tensors) - {*record["adapted"], *record["saved"], *record["replaced"]}
    for name in unchanged:
        assert torch.equal(ours.tensors[name], pre.tensors[name]), name
    assert "classifier.weight" in record["saved"]


def test_fan_in_fan_out_gpt2(tmp_path: Path) -> None:
    """GPT-2 keeps Conv1D weights as (in, out): the update is transposed (c_proj is square,
    c_attn is not)."""
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2,
                                     n_positions=32, num_labels=3, pad_token_id=0)

    def fresh():
        torch.manual_seed(0)
        return transformers.GPT2ForSequenceClassification(config).eval()

    save_dir(fresh(), tmp_path / "pre")
    adapter = make_adapter(tmp_path / "adapter", fresh(), merged=tmp_path / "merged",
                           target_modules=["c_attn", "c_proj"], fan_in_fan_out=True)
    ours = load_finetuned(adapter, load_checkpoint(tmp_path / "pre"))
    assert _max_rel(ours.tensors, load_checkpoint(tmp_path / "merged").tensors) <= 1e-6


# --------------------------------------------------------------------------- audits


def _audit(args: list, out: Path, capsys) -> dict:
    code, _, err = run_cli([*args, "--json", out], capsys)
    assert code == 0, err
    return json.loads(out.read_text())


def _compare(a: dict, b: dict) -> float:
    """Largest relative difference between two audits' per-layer numbers and G."""
    worst = 0.0
    rows_b = {layer["name"]: layer for layer in b["layers"]}
    assert [la["name"] for la in a["layers"]] == list(rows_b)
    pairs = [(a["hessian_term"], b["hessian_term"])]
    for la in a["layers"]:
        lb = rows_b[la["name"]]
        assert la["is_new_head"] == lb["is_new_head"]
        pairs += [(la[k], lb[k]) for k in ("dist_fro", "quad_raw", "quad_pos", "hcal")]
    for x, y in pairs:
        worst = max(worst, abs(x - y) / max(abs(y), 1e-300))
    return worst


@pytest.mark.parametrize("new_head", [False, True], ids=["same-head", "new-head"])
def test_adapter_audit_equals_merged_audit(base, tmp_path: Path, capsys, new_head) -> None:
    """measure(PRE, adapter) == measure(PRE, peft-merged model) on the adapter's layers.

    new-head: PRE has a 2-class head, the adapter trains a 3-class one (modules_to_save), which
    both audits measure from zero."""
    pre = base["pre"]
    model = tiny_model("bert", seed=0)
    if new_head:
        pre = save_dir(tiny_model("bert", num_labels=2, seed=0), tmp_path / "pre2")
    adapter = make_adapter(tmp_path / "adapter", model, merged=tmp_path / "merged",
                           target_modules=["value"], layers_to_transform=[1])
    common = ["--model", pre, "--data", base["data"], "--no-spectrum"]
    a = _audit(["measure", pre, adapter, *common], tmp_path / "a.json", capsys)
    names = [layer["name"] for layer in a["layers"]]
    assert names == ["bert.encoder.layer.1.attention.self.value.weight", "classifier.weight"]
    include = [arg for name in names for arg in ("--include", name)]
    b = _audit(["measure", pre, tmp_path / "merged", *common, *include], tmp_path / "b.json",
               capsys)
    assert a["layers"][-1]["is_new_head"] is new_head
    worst = _compare(a, b)
    print(f"LoRA vs peft-merged audit, max relative difference: {worst:.2e}")
    assert worst <= 1e-5
    adapter_record = a["inputs"]["adapter"]
    assert adapter_record["type"] == "lora" and adapter_record["r"] == 4
    assert adapter_record["alpha"] == 8 and adapter_record["target_modules"] == ["value"]
    assert adapter_record["adapted"] == ["bert.encoder.layer.1.attention.self.value.weight"]
    assert "classifier.weight" in adapter_record["saved"]
    assert b["inputs"]["adapter"] is None
    assert a["inputs"]["finetuned"]["path"] == str(adapter)
    assert a["inputs"]["num_classes"] == 3


def test_inspect_defaults_to_the_adapted_and_saved_modules(base, tmp_path: Path, capsys):
    adapter = make_adapter(tmp_path / "adapter", tiny_model("bert", seed=0))
    doc = _audit(["inspect", base["pre"], adapter, "--model", base["pre"]], tmp_path / "i.json",
                 capsys)
    names = [layer["name"] for layer in doc["layers"]]
    assert names == [f"bert.encoder.layer.{i}.attention.self.{m}.weight"
                     for i in (0, 1) for m in ("query", "value")] + ["classifier.weight"]
    assert all(layer["dist_fro"] > 0 for layer in doc["layers"])


# --------------------------------------------------------------------------- refusals


def _hand_made(folder: Path, config: dict, tensors: dict[str, torch.Tensor] | None) -> Path:
    from safetensors.torch import save_file

    folder.mkdir()
    full = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["query"],
            **config}
    (folder / "adapter_config.json").write_text(json.dumps(full))
    if tensors is not None:
        save_file(tensors, folder / "adapter_model.safetensors")
    return folder


_Q = "base_model.model.bert.encoder.layer.0.attention.self.query"


def _ab(r_a: int = 2, r_b: int = 2, out: int = 16, fill: float = 0.1) -> dict:
    return {f"{_Q}.lora_A.weight": torch.full((r_a, 16), fill),
            f"{_Q}.lora_B.weight": torch.full((out, r_b), fill)}


REFUSALS = {
    "ia3": ({"peft_type": "IA3"}, _ab(), "peft_type 'IA3' is not supported"),
    "dora": ({"use_dora": True}, _ab(), "'use_dora'"),
    "pissa": ({"init_lora_weights": "pissa"}, _ab(), "changed the base weights"),
    "regex-alpha": ({"alpha_pattern": {"layer\\.[0-9]+\\.query": 3}}, _ab(), "regular expr"),
    "no-weights": ({}, None, "no adapter_model.safetensors"),
    "unknown-tensor": ({}, {**_ab(), f"{_Q}.lora_magnitude_vector": torch.ones(16)},
                       "neither a LoRA matrix"),
    "rank-mismatch": ({}, _ab(r_a=2, r_b=3), "rank 2 but B has 3"),
    "only-A": ({}, {f"{_Q}.lora_A.weight": torch.ones(2, 16)}, "only one of"),
    "wrong-shape": ({}, _ab(out=12), "another base model"),
    "wrong-base": ({}, {"base_model.model.roberta.encoder.layer.0.attention.self.query."
                        "lora_A.weight": torch.ones(2, 16),
                        "base_model.model.roberta.encoder.layer.0.attention.self.query."
                        "lora_B.weight": torch.ones(16, 2)}, "has no weight for"),
    "nan": ({}, _ab(fill=math.nan), "NaN or Inf"),
    "conv": ({}, {f"{_Q}.lora_A.weight": torch.ones(2, 16, 1, 1),
                  f"{_Q}.lora_B.weight": torch.ones(16, 2, 1, 1)}, "linear and embedding"),
    "bad-r": ({"r": "four"}, _ab(), "'r' must be a whole number"),
    "nested-targets": ({"target_modules": [[[["query"]]]]}, _ab(), "'target_modules' must be"),
    # B @ A would be 10^10 entries (80 GB): refused on the shapes, before it is formed
    "outer-product-bomb": ({"r": 1}, {f"{_Q}.lora_A.weight": torch.ones(1, 100_000),
                                      f"{_Q}.lora_B.weight": torch.ones(100_000, 1)},
                           "has shape (100000, 100000) but the base weight has (16, 16)"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_adapter_refusals(base, tmp_path: Path, capsys, case: str) -> None:
    config, tensors, words = REFUSALS[case]
    folder = _hand_made(tmp_path / "adapter", config, tensors)
    code, _, err = run_cli(["inspect", base["pre"], folder, "--model", base["pre"]], capsys)
    one_error_line(code, err, folder, words)


def test_pickled_adapter_weights_run_no_code(base, tmp_path: Path, capsys) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    folder = _hand_made(tmp_path / "adapter", {}, None)
    (folder / "adapter_model.bin").write_bytes(pickle.dumps({"w": Evil()}))
    code, _, err = run_cli(["inspect", base["pre"], folder, "--model", base["pre"]], capsys)
    one_error_line(code, err, "adapter_model.bin", "never unpickles")
    assert not (tmp_path / "PWNED").exists()
