"""Layer selection and pairing of pretrained and fine-tuned tensors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from hessaudit.audit.layers import Layer, pair_layers, tensor_kind
from hessaudit.errors import HessauditError
from hessaudit.inputs.checkpoints import load_checkpoint


def _names(pairing) -> list[str]:
    return [layer.name for layer in pairing.layers]


@pytest.fixture
def pair(tiny_net, perturb):
    """Same architecture, same head: (pretrained, fine-tuned) TinyNet state dicts."""
    pre = tiny_net(seed=0).state_dict()
    return pre, perturb(pre, seed=1)


def test_default_selection_is_kernels_in_finetuned_order(pair) -> None:
    pre, ft = pair
    pairing = pair_layers(pre, ft)
    assert _names(pairing) == ["conv1.weight", "fc.weight"]
    assert pairing.only_in_pretrained == pairing.only_in_finetuned == []
    assert pairing.shape_mismatches == []
    for layer in pairing.layers:
        assert not layer.is_new_head and layer.pretrained is pre[layer.name]
        assert layer.shape == tuple(ft[layer.name].shape) and layer.numel == ft[layer.name].numel()
        assert torch.equal(layer.delta, ft[layer.name] - pre[layer.name])
        expected = float(torch.linalg.vector_norm((ft[layer.name] - pre[layer.name]).double()))
        assert layer.dist_fro == pytest.approx(expected, rel=1e-6)
        assert layer.rel_dist == pytest.approx(expected / float(pre[layer.name].norm()), rel=1e-5)


def test_order_follows_the_finetuned_dict_or_order(pair) -> None:
    pre, ft = pair
    reordered = dict(reversed(list(ft.items())))
    assert _names(pair_layers(pre, reordered)) == ["fc.weight", "conv1.weight"]
    assert _names(pair_layers(pre, reordered, order=list(ft))) == ["conv1.weight", "fc.weight"]


def test_bias_and_norm_selection(pair) -> None:
    pre, ft = pair
    assert _names(pair_layers(pre, ft, include_bias=True)) == [
        "conv1.weight", "conv1.bias", "fc.weight", "fc.bias"
    ]
    assert _names(pair_layers(pre, ft, include_norm=True)) == [
        "conv1.weight", "bn1.weight", "bn1.bias", "fc.weight"
    ]
    everything = _names(pair_layers(pre, ft, include_bias=True, include_norm=True))
    assert len(everything) == 6
    assert not any("running" in n or "num_batches" in n for n in everything)


def test_tensor_kind() -> None:
    tensors = {
        "conv.weight": torch.zeros(2, 1, 3, 3),
        "conv.bias": torch.zeros(2),
        "bn.weight": torch.zeros(2),
        "bn.bias": torch.zeros(2),
        "bn.running_var": torch.ones(2),
        "ls.gamma": torch.ones(2),
        "idx": torch.zeros(2, 2, dtype=torch.long),
    }
    kinds = {n: tensor_kind(n, t, tensors) for n, t in tensors.items()}
    assert kinds == {
        "conv.weight": "weight", "conv.bias": "bias", "bn.weight": "norm", "bn.bias": "norm",
        "bn.running_var": None, "ls.gamma": "norm", "idx": None,
    }


def test_parameter_names_exclude_buffers(pair) -> None:
    pre, ft = pair
    pre = {**pre, "attn_bias_table": torch.zeros(4, 4)}
    ft = {**ft, "attn_bias_table": torch.ones(4, 4)}  # a 2-D float buffer
    assert "attn_bias_table" in _names(pair_layers(pre, ft))
    params = {n for n in ft if n != "attn_bias_table" and "running" not in n and "num_b" not in n}
    assert "attn_bias_table" not in _names(pair_layers(pre, ft, parameter_names=params))


def test_include_and_exclude_globs(pair) -> None:
    pre, ft = pair
    assert _names(pair_layers(pre, ft, include=["conv*"])) == ["conv1.weight"]
    assert _names(pair_layers(pre, ft, include=["*"], exclude=["fc.*"])) == ["conv1.weight"]
    assert _names(
        pair_layers(pre, ft, include=["conv1.*", "fc.*"], include_bias=True, exclude=["*.bias"])
    ) == ["conv1.weight", "fc.weight"]


def test_include_matching_nothing_names_the_pattern(pair) -> None:
    pre, ft = pair
    with pytest.raises(HessauditError, match=r"--include 'layer4\.\*'.*conv1.weight, fc.weight"):
        pair_layers(pre, ft, include=["layer4.*"])
    with pytest.raises(HessauditError, match="--include-bias"):
        pair_layers(pre, ft, include=["*.bias"])


def test_exclude_matching_nothing_warns(pair) -> None:
    pre, ft = pair
    with pytest.warns(UserWarning, match="--exclude 'nothing.*' matches no tensor"):
        pair_layers(pre, ft, exclude=["nothing.*"])


def test_excluding_everything_is_an_error(pair) -> None:
    pre, ft = pair
    with pytest.raises(HessauditError, match="no layers selected"):
        pair_layers(pre, ft, exclude=["*"])


def test_new_head_from_zero_and_excluded(tiny_checkpoints) -> None:
    pre = load_checkpoint(tiny_checkpoints.pretrained).tensors
    ft = load_checkpoint(tiny_checkpoints.finetuned).tensors
    pairing = pair_layers(pre, ft, include_bias=True)
    assert pairing.shape_mismatches == [
        ("fc.weight", (5, 16), (10, 16)), ("fc.bias", (5,), (10,))
    ]
    assert pairing.new_heads == ["fc.weight", "fc.bias"]
    head = pairing.layers[-2]
    assert head.name == "fc.weight" and head.is_new_head and head.pretrained is None
    assert torch.equal(head.delta, ft["fc.weight"])
    assert head.dist_fro == pytest.approx(float(ft["fc.weight"].double().norm()))
    assert head.rel_dist is None
    excluded = pair_layers(pre, ft, include_bias=True, new_heads="exclude")
    assert _names(excluded) == ["conv1.weight", "conv1.bias"]
    assert excluded.shape_mismatches == pairing.shape_mismatches  # still reported


def test_unpaired_tensors_are_reported(pair) -> None:
    pre, ft = pair
    pre = {**pre, "old_head.weight": torch.zeros(5, 16), "old_head.bias": torch.zeros(5)}
    ft = {**ft, "new_head.weight": torch.ones(3, 16)}
    pairing = pair_layers(pre, ft)
    assert pairing.only_in_pretrained == ["old_head.weight"]  # biases not selected
    assert pairing.only_in_finetuned == ["new_head.weight"]
    assert pairing.layers[-1].name == "new_head.weight" and pairing.layers[-1].is_new_head
    with_bias = pair_layers(pre, ft, include_bias=True, parameter_names=set(ft))
    assert with_bias.only_in_pretrained == ["old_head.weight", "old_head.bias"]
    summary = pairing.to_dict()
    json.dumps(summary)
    assert summary["num_layers"] == 3 and summary["new_heads"] == ["new_head.weight"]


def test_no_shared_layers_is_an_error(pair) -> None:
    pre, _ = pair
    other = {"encoder.proj.weight": torch.ones(4, 4), "head.weight": torch.ones(2, 4)}
    with pytest.raises(HessauditError, match="share no layers"):
        pair_layers(pre, other)
    with pytest.raises(HessauditError, match="share no layers"):
        pair_layers({"w": torch.zeros(2, 3)}, {"w": torch.zeros(3, 3)}, new_heads="exclude")


def test_bad_new_heads_policy(pair) -> None:
    # a library argument (the CLI flag is --exclude-new-head): no made-up flag in the message
    with pytest.raises(HessauditError, match="new_heads 'ignore'"):
        pair_layers(*pair, new_heads="ignore")


def test_delta_uses_the_finetuned_dtype_and_zero_pretrained() -> None:
    pre = {"w": torch.zeros(2, 2, dtype=torch.float16), "v": torch.ones(2, 2, dtype=torch.float16)}
    ft = {"w": torch.full((2, 2), 0.5), "v": torch.full((2, 2), 1.5, dtype=torch.float64)}
    layers = {layer.name: layer for layer in pair_layers(pre, ft).layers}
    assert layers["w"].delta.dtype == torch.float32 and layers["w"].rel_dist is None
    assert layers["w"].dist_fro == pytest.approx(1.0)
    assert layers["v"].delta.dtype == torch.float64
    assert layers["v"].rel_dist == pytest.approx(0.5)


def test_layer_to_dict() -> None:
    layer = Layer("w", (2, 2), 4, True, None, torch.full((2, 2), 3.0))
    assert layer.to_dict() == {
        "name": "w", "shape": [2, 2], "numel": 4, "is_new_head": True,
        "dist_fro": pytest.approx(6.0), "rel_dist": None,
    }
    assert math.isfinite(layer.dist_fro)


def test_timm_pair_with_model_parameter_names(timm_resnet_pair) -> None:
    import timm

    model = timm.create_model("test_resnet", pretrained=False, num_classes=4)
    params = {name for name, _ in model.named_parameters()}
    pairing = pair_layers(
        timm_resnet_pair.pretrained_state, timm_resnet_pair.finetuned_state,
        parameter_names=params, order=list(model.state_dict()),
    )
    assert pairing.new_heads == ["fc.weight"]
    assert pairing.layers[0].name == "conv1.0.weight" and pairing.layers[-1].name == "fc.weight"
    assert all(layer.name in params for layer in pairing.layers)
    assert all(layer.dist_fro > 0 for layer in pairing.layers)
