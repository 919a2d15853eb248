"""Module groups (attention, linear, predictor, embedding, norm), G per group, default layers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

from hessaudit.audit.groups import default_layers, hessian_term_by_group, layer_groups
from hessaudit.audit.layers import pair_layers
from hessaudit.errors import HessauditError
from hessaudit.inputs.checkpoints import load_checkpoint
from hessaudit.inputs.models import build_model, classifier_names
from tests.hf_cases import save_dir, tiny_model, transformers

EXPECTED = {
    "bert": {
        "bert.embeddings.word_embeddings.weight": "embedding",
        "bert.embeddings.position_embeddings.weight": "embedding",
        "bert.embeddings.LayerNorm.weight": "norm",
        "bert.encoder.layer.0.attention.self.query.weight": "attention",
        "bert.encoder.layer.0.attention.self.key.bias": "attention",
        "bert.encoder.layer.0.attention.output.dense.weight": "attention",
        "bert.encoder.layer.0.attention.output.LayerNorm.weight": "norm",
        "bert.encoder.layer.1.intermediate.dense.weight": "linear",
        "bert.encoder.layer.1.output.dense.weight": "linear",
        "bert.pooler.dense.weight": "linear",
        "classifier.weight": "predictor",
        "classifier.bias": "predictor",
    },
    "roberta": {
        "roberta.encoder.layer.1.attention.self.value.weight": "attention",
        "roberta.encoder.layer.1.output.dense.weight": "linear",
        "classifier.dense.weight": "predictor",
        "classifier.out_proj.weight": "predictor",
    },
    "distilbert": {
        "distilbert.transformer.layer.0.attention.q_lin.weight": "attention",
        "distilbert.transformer.layer.0.attention.out_lin.weight": "attention",
        "distilbert.transformer.layer.0.sa_layer_norm.weight": "norm",
        "distilbert.transformer.layer.0.ffn.lin1.weight": "linear",
        "pre_classifier.weight": "predictor",
        "classifier.weight": "predictor",
    },
}


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_text_model_groups(kind: str) -> None:
    model = tiny_model(kind)
    groups = layer_groups(model, list(EXPECTED[kind]))
    assert groups == EXPECTED[kind]


def test_vit_image_classifier_from_a_directory(tmp_path: Path) -> None:
    """``architectures: ViTForImageClassification`` builds the image classifier; its patch
    projection and position embeddings are embeddings."""
    config = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=16,
                                    num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=32, num_labels=4)
    torch.manual_seed(0)
    vit = transformers.ViTForImageClassification(config).eval()
    folder = save_dir(vit, tmp_path / "vit")
    model = build_model(str(folder))
    assert type(model).__name__ == "ViTForImageClassification"
    # transformers 5 saves ViT in its original layout and renames on load: so does hessaudit
    ckpt = load_checkpoint(folder)
    assert "vit.encoder.layer.0.attention.attention.query.weight" in (
        json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
        if (folder / "model.safetensors.index.json").exists()
        else safe_open(str(folder / "model.safetensors"), "pt").keys()
    )
    assert ckpt.metadata["hf_renamed"] > 0
    model.load_state_dict(ckpt.tensors)
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(model(x), vit(pixel_values=x).logits)
    names = [n for n, p in model.named_parameters() if p.ndim >= 2]
    groups = layer_groups(model, names)
    assert groups["vit.embeddings.patch_embeddings.projection.weight"] == "embedding"
    assert groups["vit.embeddings.position_embeddings"] == "embedding"
    assert groups["vit.layers.0.attention.q_proj.weight"] == "attention"
    assert groups["vit.layers.0.attention.o_proj.weight"] == "attention"
    assert groups["vit.layers.0.mlp.fc1.weight"] == "linear"
    assert groups["classifier.weight"] == "predictor"


class Tiny(nn.Module):
    """A non-transformers model: the head comes from classifier_names (the last Linear)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.attn = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.conv = nn.Conv1d(4, 4, 1)
        self.fc = nn.Linear(4, 3)


def test_other_models_use_the_classifier_names() -> None:
    model = Tiny()
    names = [n for n, _ in model.named_parameters()]
    groups = layer_groups(model, names, heads=classifier_names(model))
    assert groups == {
        "embed.weight": "embedding", "attn.weight": "attention", "attn.bias": "attention",
        "norm.weight": "norm", "norm.bias": "norm", "conv.weight": "linear",
        "conv.bias": "linear", "fc.weight": "predictor", "fc.bias": "predictor",
    }
    assert layer_groups(model, ["fc.weight"])["fc.weight"] == "linear"  # no heads given


def test_hessian_term_by_group_adds_up_to_g() -> None:
    layers = [{"name": "a", "hcal": 4.0}, {"name": "b", "hcal": 9.0},
              {"name": "c", "hcal": -1.0}, {"name": "d", "hcal": 16.0}]
    groups = {"a": "attention", "b": "predictor", "c": "attention", "d": "linear"}
    terms = hessian_term_by_group(layers, groups, loss_bound=4.0, n=16)
    assert list(terms) == ["attention", "linear", "predictor"]
    assert terms == {"attention": 2 * 2 / 4, "linear": 2 * 4 / 4, "predictor": 2 * 3 / 4}
    assert math.isclose(sum(terms.values()), 2 * (2 + 3 + 4) / 4)
    # a layer without a group (an older audit) counts as linear
    assert hessian_term_by_group(layers[:1], None, loss_bound=1.0, n=1) == {"linear": 2.0}


def test_default_layers(tmp_path: Path) -> None:
    model = tiny_model("bert")
    state = model.state_dict()
    pairing = pair_layers(state, state, parameter_names={n for n, _ in model.named_parameters()})
    names = [layer.name for layer in pairing.layers]
    assert "bert.embeddings.word_embeddings.weight" in names
    kept = [layer.name for layer in default_layers(pairing, model, include=(),
                                                   adapter=None).layers]
    assert kept == [n for n in names if "embeddings" not in n] and "classifier.weight" in kept
    same = default_layers(pairing, model, include=("*",), adapter=None)
    assert same is pairing  # --include given: nothing changes
    assert default_layers(pairing, Tiny(), include=(), adapter=None) is pairing  # not HF
    adapter = {"adapted": ["bert.encoder.layer.0.attention.self.query.weight"],
               "saved": ["classifier.weight", "classifier.bias"]}
    kept = [layer.name for layer in default_layers(pairing, model, include=(),
                                                   adapter=adapter).layers]
    assert kept == ["bert.encoder.layer.0.attention.self.query.weight", "classifier.weight"]
    with pytest.raises(HessauditError, match="adapter's adapted and saved modules"):
        default_layers(pairing, model, include=(), adapter={"adapted": ["nope"], "saved": []})
