"""``hessaudit measure --recipe released`` against an independent re-implementation of the
paper's released ``compute_hessian_measures.py`` (CNN branch), through the CLI, in float64.

The oracle below follows the released procedure step by step, written from its description in
docs/measure.md and audit/recipes.py, not from hessaudit's engine: it walks the modules for
its layers (exact ``nn.Conv2d`` named ``*conv*``, exact ``nn.Linear`` named ``*pred_head*``),
takes v = W - W_pre for convolutions and v = W for the head, visits the held-out examples in a
seeded permutation in batches of 4 until it has seen *more* than S examples, computes one full
Hessian-vector product of each batch's mean NLL-of-log-softmax loss along all those weights by
double backward, reads out v_i^T (H v)_i, and keeps the per-layer maximum over batches.
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hessaudit.cli import main

# A small ResNet-like CNN: conv* layers, a ResNet-style downsample convolution (not measured by
# the released code), an extra Linear with tanh (not measured either: it is not the head) and a
# head named pred_head, as in the released code's models.
FACTORY_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Block(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=2, bias=False), nn.BatchNorm2d(cout)
            )

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(out)) + self.downsample(x))


    class RecipeNet(nn.Module):
        def __init__(self, num_classes=3):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(4)
            self.layer1 = Block(4, 6)
            self.pool = nn.AdaptiveAvgPool2d(2)
            self.fc1 = nn.Linear(24, 8)
            self.pred_head = nn.Linear(8, num_classes)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            x = self.pool(self.layer1(x)).flatten(1)
            return self.pred_head(torch.tanh(self.fc1(x)))


    def make(num_classes=3, seed=0):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return RecipeNet(num_classes)
    """
)

MEASURED = ["conv1.weight", "layer1.conv1.weight", "layer1.conv2.weight", "pred_head.weight"]


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return int(exc.value.code), captured.out, captured.err


def _load_factory(path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("_recipe_factory", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def setup(tmp_path: Path, perturb):
    """Factory file, float64 checkpoints (the pretrained one has a head of the same shape, as
    the released code's epoch-0 file does) and .npz train / held-out data."""
    from hessaudit.inputs.checkpoints import save_checkpoint

    factory = tmp_path / "recipenet.py"
    factory.write_text(FACTORY_SOURCE)
    module = _load_factory(factory)
    base = module.make(seed=0)
    stats = torch.Generator().manual_seed(7)
    with torch.no_grad():  # non-trivial running statistics for eval-mode BatchNorm
        for m in base.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2, generator=stats)
                m.running_var.uniform_(0.5, 1.5, generator=stats)
    pre = {k: v.clone() for k, v in base.state_dict().items()}
    ft = perturb(pre, seed=5, scale=0.3)
    # float64 files holding float32 values: the factory builds a float32 model, which would
    # round anything finer before the audit casts it to float64
    pre, ft = (
        {k: v.double() if v.is_floating_point() else v for k, v in state.items()}
        for state in (pre, ft)
    )
    save_checkpoint(tmp_path / "pre.safetensors", pre)
    save_checkpoint(tmp_path / "ft.safetensors", ft)
    g = torch.Generator().manual_seed(11)
    for name, count in (("train", 40), ("eval", 30)):
        x = torch.randn(count, 1, 8, 8, generator=g).numpy().astype(np.float32)
        y = torch.randint(0, 3, (count,), generator=g).numpy()
        np.savez(tmp_path / f"{name}.npz", x=x, y=y)
    return {
        "dir": tmp_path,
        "spec": f"{factory}:make",
        "module": module,
        "pre": pre,
        "ft": ft,
    }


def base_args(s: dict, out: Path) -> list:
    d = s["dir"]
    return [
        "measure", d / "pre.safetensors", d / "ft.safetensors", "--model", s["spec"],
        "--data", d / "train.npz", "--eval-data", d / "eval.npz", "--dtype", "float64",
        "--json", out, "--quiet",
    ]


def released_oracle(
    s: dict, *, sample_size: int, seed: int | None
) -> tuple[dict[str, float], int]:
    """The released procedure, re-implemented (see the module docstring); returns the per-layer
    values and the number of examples visited."""
    model = s["module"].make(seed=0).double()
    model.load_state_dict(s["ft"])
    model.eval()
    layers = {
        name: module
        for name, module in model.named_modules()
        if (type(module) is nn.Conv2d and "conv" in name)
        or (type(module) is nn.Linear and "pred_head" in name)
    }
    weights = [module.weight for module in layers.values()]
    vs = [
        module.weight.detach().clone()
        if "pred_head" in name
        else module.weight.detach() - s["pre"][name + ".weight"]
        for name, module in layers.items()
    ]
    data = np.load(s["dir"] / "eval.npz")
    x = torch.from_numpy(data["x"]).double()
    y = torch.from_numpy(data["y"]).long()
    order = (
        torch.arange(len(x))  # seed None: the data's own order (to show that order matters)
        if seed is None
        else torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    )
    best = None
    seen = 0
    for start in range(0, len(x), 4):
        idx = order[start : start + 4]
        loss = F.nll_loss(F.log_softmax(model(x[idx]), dim=1), y[idx])
        grads = torch.autograd.grad(loss, weights, create_graph=True)
        hvs = torch.autograd.grad(grads, weights, grad_outputs=vs)
        values = np.array([float((hv * v).sum()) for hv, v in zip(hvs, vs, strict=True)])
        best = values if best is None else np.maximum(best, values)
        seen += len(idx)
        if seen > sample_size:
            break
    names = [name + ".weight" for name in layers]
    return dict(zip(names, best.tolist(), strict=True)), seen


def check_against_oracle(document: dict, expected: dict[str, float], seen: int) -> None:
    layers = {layer["name"]: layer for layer in document["layers"]}
    assert list(layers) == MEASURED  # no downsample conv, no fc1, no biases or norms
    assert list(expected) == MEASURED
    scale = max(abs(v) for v in expected.values())
    for name, value in expected.items():
        got = layers[name]["cross"]
        assert abs(got - value) <= 1e-10 * scale, (name, got, value)
        assert layers[name]["hcal"] == max(got, 0.0)
        assert layers[name]["clamped"] == (got < 0)
    assert layers["pred_head.weight"]["is_new_head"] is True  # measured from zero
    assert layers["pred_head.weight"]["rel_dist"] is None
    assert document["inputs"]["audit_examples"] == seen
    assert document["inputs"]["audit_examples_from"] == "eval_data"
    settings = document["settings"]
    assert settings["form"] == "cross"
    assert (settings["reduce"], settings["batch_size"]) == ("batch-max", 4)
    assert settings["recipe"] == "released"
    roots = sum(math.sqrt(layer["hcal"]) for layer in document["layers"])
    assert document["hessian_term"] == pytest.approx(
        math.sqrt(document["C"]) * roots / math.sqrt(document["n"]), rel=1e-12
    )


def test_released_recipe_matches_the_released_procedure(setup, tmp_path, capsys):
    # default S = 100 > 30 held-out examples: every example, 8 batches, the last one of 2
    out = tmp_path / "released.json"
    code, _, err = run_cli([*base_args(setup, out), "--recipe", "released"], capsys)
    assert code == 0, err
    expected, seen = released_oracle(setup, sample_size=100, seed=0)
    assert seen == 30
    document = json.loads(out.read_text())
    assert document["inputs"]["samples"] == 100
    check_against_oracle(document, expected, seen)
    # the permutation matters: the data's own order gives other batches, other maxima
    in_order, _ = released_oracle(setup, sample_size=100, seed=None)
    assert max(abs(in_order[n] - expected[n]) / abs(expected[n]) for n in MEASURED) > 1e-3


def test_released_recipe_with_a_sample_size_and_seed(setup, tmp_path, capsys):
    # S = 10: floor(10/4)+1 = 3 batches of 4 = 12 examples; an explicit --form cross agrees
    # with the recipe and is accepted
    out = tmp_path / "released_s10.json"
    code, _, err = run_cli(
        [*base_args(setup, out), "--recipe", "released", "--samples", 10, "--seed", 3,
         "--form", "cross", "--batch-size", 4],
        capsys,
    )
    assert code == 0, err
    expected, seen = released_oracle(setup, sample_size=10, seed=3)
    assert seen == 12
    check_against_oracle(json.loads(out.read_text()), expected, seen)


def test_default_recipe_is_recorded_as_theorem(setup, tmp_path, capsys):
    out = tmp_path / "theorem.json"
    code, _, err = run_cli([*base_args(setup, out), "--samples", 8, "--no-spectrum"], capsys)
    assert code == 0, err
    document = json.loads(out.read_text())
    assert document["settings"]["recipe"] == "theorem"
    assert document["settings"]["form"] == "positive"
    assert document["inputs"]["audit_examples_from"] == "data"
    # the theorem's default selection keeps the downsample conv and the extra Linear
    names = [layer["name"] for layer in document["layers"]]
    assert "layer1.downsample.0.weight" in names and "fc1.weight" in names


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--form", "positive"], "--form positive"),
        (["--reduce", "example-max"], "--reduce example-max"),
        (["--batch-size", "8"], "--batch-size 8"),
        (["--include", "conv*"], "--include 'conv*'"),
        (["--exclude", "fc1.weight"], "--exclude 'fc1.weight'"),
        (["--include-bias"], "--include-bias"),
        (["--exclude-new-head"], "--exclude-new-head"),
    ],
)
def test_conflicting_flags_fail_with_one_line(setup, tmp_path, capsys, extra, named):
    out = tmp_path / "conflict.json"
    code, _, err = run_cli([*base_args(setup, out), "--recipe", "released", *extra], capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: --recipe released ")
    assert named in lines[0]
    assert "Traceback" not in err
    assert not out.exists()


def test_unknown_recipe_fails_with_one_line(setup, tmp_path, capsys):
    out = tmp_path / "unknown.json"
    code, _, err = run_cli([*base_args(setup, out), "--recipe", "paper"], capsys)
    assert code == 1
    assert err.strip().splitlines() == ["error: --recipe 'paper': must be one of theorem, released"]
    assert not out.exists()


# --------------------------------------------------------------------------- library level


def test_resolve_request_sets_checks_and_is_idempotent():
    from hessaudit.audit.recipes import resolve_request
    from hessaudit.audit.run import AuditRequest
    from hessaudit.errors import HessauditError

    request = AuditRequest("a", "b", "m", "d", recipe="released")
    resolved = resolve_request(request)
    assert (resolved.form, resolved.reduce, resolved.batch_size, resolved.samples) == (
        "cross", "batch-max", 4, 100
    )
    assert resolve_request(resolved) == resolved
    assert resolve_request(resolved, explicit={"form", "batch_size"}) == resolved
    theorem = AuditRequest("a", "b", "m", "d", form="raw", batch_size=7)
    assert resolve_request(theorem, explicit={"form"}) == theorem
    # a library caller's non-default value counts as given
    with pytest.raises(HessauditError, match="--reduce mean"):
        resolve_request(AuditRequest("a", "b", "m", "d", reduce="mean", recipe="released"))
    # on the command line, an explicit value equal to the theorem's default conflicts too
    with pytest.raises(HessauditError, match="conflicts with --form positive"):
        resolve_request(request, explicit={"form"})


def test_released_layers_and_examples_without_held_out_data(setup):
    from hessaudit.audit.layers import pair_layers
    from hessaudit.audit.recipes import audit_examples, get_recipe, select_layers
    from hessaudit.inputs.data import Dataset

    model = setup["module"].make(seed=0)
    pairing = pair_layers(setup["pre"], setup["ft"], order=list(model.state_dict()))
    recipe = get_recipe("released")
    layers = select_layers(recipe, model, pairing.layers)
    assert [layer.name for layer in layers] == MEASURED
    head = layers[-1]
    assert head.is_new_head and torch.equal(head.delta, setup["ft"]["pred_head.weight"])
    # the theorem keeps every paired weight as it is
    assert select_layers(get_recipe("theorem"), model, pairing.layers) == pairing.layers

    x = torch.arange(36, dtype=torch.float32).reshape(9, 1, 2, 2)
    train = Dataset(x=x, y=torch.arange(9) % 3, num_classes=3, source="t")
    with pytest.warns(UserWarning, match="no --eval-data"):
        chosen, where = audit_examples(
            recipe, train=train, held_out=None, samples=5, batch_size=4, seed=0
        )
    assert where == "data"
    expected = torch.randperm(9, generator=torch.Generator().manual_seed(0))[:8]
    assert torch.equal(chosen.x, x[expected])  # b * (floor(5 / 4) + 1) = 8, in that order
    assert audit_examples(
        get_recipe("theorem"), train=train, held_out=None, samples=5, batch_size=4, seed=0
    ) is None


def test_released_recipe_without_a_measurable_layer_is_an_error():
    from hessaudit.audit.layers import pair_layers
    from hessaudit.audit.recipes import get_recipe, select_layers
    from hessaudit.errors import HessauditError

    # VGG-style naming: the convolution is "features.0", and there is no Linear classifier
    model = nn.Sequential()
    model.add_module("features", nn.Sequential(nn.Conv2d(1, 2, 3)))
    state = model.state_dict()
    pairing = pair_layers(state, {k: v + 1 for k, v in state.items()})
    with pytest.raises(HessauditError, match="--recipe released selects no layer"):
        select_layers(get_recipe("released"), model, pairing.layers)
