"""The text fine-tuning recipe on its own: the data's defaults, AdamW's no-decay groups (the
seed's name rule on BERT and RoBERTa), the linear schedule against transformers', and the group
radii with their precedence (a --radius-table glob wins)."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("transformers")

from hessaudit.errors import HessauditError
from hessaudit.inputs.models import build_model
from hessaudit.robust.config import FinetuneConfig
from hessaudit.robust.group_radii import group_radii, tensor_groups
from hessaudit.robust.model_setup import make_optimizer, make_scheduler
from hessaudit.robust.optim import no_decay_names
from hessaudit.robust.projection import constrainable_names, layer_radii
from hessaudit.robust.text_recipe import IMAGE_RECIPE, TEXT_RECIPE, linear_plan
from tests.text_cases import make_text_case


@pytest.fixture(scope="module", params=["bert", "roberta"])
def model(request, tmp_path_factory):
    case = make_text_case(tmp_path_factory.mktemp(request.param), request.param)
    return build_model(str(case.ft), num_classes=2)


def _config(data: str = "train.csv", **changes) -> FinetuneConfig:
    return FinetuneConfig(model="m", pretrained="p", data=data, out="o", **changes)


def test_text_data_gets_the_hugging_face_recipe() -> None:
    text = _config("train.csv")
    assert {k: getattr(text, k) for k in TEXT_RECIPE} == TEXT_RECIPE
    for data in ("digits", "images/", "x.npz"):
        image = _config(data)
        assert {k: getattr(image, k) for k in IMAGE_RECIPE} == IMAGE_RECIPE
    assert IMAGE_RECIPE == {"optimizer": "adam", "lr": 1e-4, "weight_decay": 0.0,
                            "schedule": "step"}  # the paper's released code, unchanged
    given = _config("t.jsonl", lr=1e-3, optimizer="sgd", weight_decay=0.0, schedule="none")
    assert (given.lr, given.optimizer, given.weight_decay, given.schedule) == (
        1e-3, "sgd", 0.0, "none")
    # the resolved values are what config.json records, so a reload keeps them
    assert FinetuneConfig.from_dict(text.to_dict()) == text


@pytest.mark.parametrize(
    ("changes", "flag"),
    [
        ({"warmup_epochs": -1.0}, "--warmup-epochs"),
        ({"warmup_epochs": 31.0}, "--warmup-epochs"),
        ({"warmup_epochs": math.nan}, "--warmup-epochs"),
        ({"warmup_epochs": 1.0, "schedule": "cosine"}, "--warmup-epochs"),
        ({"radius_linear": -2.0}, "--radius-linear"),
        ({"radius_attention": math.inf}, "--radius-attention"),
        ({"schedule": "exponential"}, "--schedule"),
    ],
)
def test_bad_recipe_options(changes, flag) -> None:
    config = _config(noise_matrix="symmetric:0.2", **changes)
    with pytest.raises(HessauditError, match=f"^{flag}"):
        config.resolved()


def test_adamw_skips_decay_exactly_where_the_seed_does(model) -> None:
    """The seed: no decay where the name holds 'bias' or 'LayerNorm.weight'; our rule (biases,
    normalization layers, tensors under 2-D) gives the same set on BERT and RoBERTa."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    seed = [n for n in names if any(k in n for k in ("bias", "LayerNorm.weight"))]
    assert no_decay_names(model) == seed
    optimizer = make_optimizer(_config(weight_decay=0.1, optimizer="adamw"), model)
    decayed, free = optimizer.param_groups
    params = dict(model.named_parameters())
    assert decayed["weight_decay"] == 0.1 and free["weight_decay"] == 0.0
    assert [id(p) for p in free["params"]] == [id(params[n]) for n in seed]
    assert len(decayed["params"]) + len(free["params"]) == len(names)
    # no weight decay: one group, as before the groups existed
    assert len(make_optimizer(_config(weight_decay=0.0), model).param_groups) == 1


def test_adamw_decay_leaves_excluded_tensors_alone(model) -> None:
    """One step with zero gradients: decoupled decay shrinks the decayed tensors only."""
    optimizer = make_optimizer(_config(weight_decay=0.5, lr=0.1, schedule="none"), model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    skip = set(no_decay_names(model))
    for name, p in model.named_parameters():
        if name in skip:
            assert torch.equal(p, before[name]), name
        else:
            torch.testing.assert_close(p.detach(), before[name] * (1 - 0.1 * 0.5))
    with torch.no_grad():  # put the shared module-scope model back
        for name, p in model.named_parameters():
            p.copy_(before[name])


@pytest.mark.parametrize(("warmup_epochs", "epochs", "steps"), [
    (None, 3, 7), (None, 30, 3), (1.0, 3, 7), (0.5, 2, 5), (0, 2, 4), (2, 2, 3),
])
def test_linear_schedule_equals_transformers(warmup_epochs, epochs, steps) -> None:
    from transformers import get_linear_schedule_with_warmup

    config = _config(epochs=epochs, warmup_epochs=warmup_epochs, lr=2e-5)
    warmup, total = linear_plan(warmup_epochs, epochs, steps)
    expected_warmup = (math.ceil(total / 10) if warmup_epochs is None
                       else round(warmup_epochs * steps))
    assert (warmup, total) == (expected_warmup, epochs * steps)
    ours_param = torch.nn.Parameter(torch.zeros(1))
    theirs_param = torch.nn.Parameter(torch.zeros(1))
    ours_opt = torch.optim.AdamW([ours_param], lr=2e-5)
    theirs_opt = torch.optim.AdamW([theirs_param], lr=2e-5)
    ours = make_scheduler(config, ours_opt, epochs, steps)
    theirs = get_linear_schedule_with_warmup(theirs_opt, warmup, total)
    rates = []
    for _ in range(total):
        rates.append(ours_opt.param_groups[0]["lr"])
        assert rates[-1] == theirs_opt.param_groups[0]["lr"]
        ours_opt.step(), theirs_opt.step()
        ours.step(), theirs.step()
    assert ours_opt.param_groups[0]["lr"] == 0.0  # down to 0 at the end
    if warmup:
        assert rates[0] == 0.0
    if warmup < total:  # the peak is reached at step W
        assert rates[warmup] == max(rates) == pytest.approx(2e-5)


def test_group_radii_and_their_precedence(model) -> None:
    """--radius-attention / --radius-linear by the audit's groups; the new head keeps
    --head-radius; embeddings keep --radius; a --radius-table glob wins over all of them."""
    names = constrainable_names(model)
    head = [n for n in names if n.startswith("classifier")]
    groups = tensor_groups(model, names)
    overrides = group_radii(model, names, new=head, attention=0.1, linear=0.2)
    table = [("*.attention.self.query.weight", 7.0), ("*.embeddings.word_embeddings.*", None)]
    radii = layer_radii(names, radius=1.0, head_radius=3.0, head_names=head, table=table,
                        overrides=overrides)
    for name in names:
        if name.endswith("attention.self.query.weight"):
            assert radii[name] == 7.0
        elif "word_embeddings" in name:
            assert name not in radii  # the table leaves it free
        elif name in head:
            assert groups[name] == "predictor" and radii[name] == 3.0
        elif groups[name] == "attention":
            assert radii[name] == 0.1
        elif groups[name] == "linear":
            assert radii[name] == 0.2
        else:
            assert groups[name] == "embedding" and radii[name] == 1.0
    assert {groups[n] for n in names} == {"attention", "linear", "predictor", "embedding"}
    # RoBERTa's head has two linear layers, both in the predictor group
    assert all(groups[n] == "predictor" for n in head) and len(head) in (1, 2)
    # without the group flags nothing changes
    assert group_radii(model, names, new=head, attention=None, linear=None) == {}
