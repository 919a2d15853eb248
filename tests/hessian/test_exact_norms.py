"""Second derivatives through normalization layers: the raw block form against dense Hessians.

torch's forward-over-forward derivative of layer_norm, instance_norm and training-mode
batch_norm is wrong (hessaudit/hessian/exact_norms.py); the raw form v^T H_n v is computed that
way, so these tests check it on networks with each layer, per example and through the CLI for
every reduction, against ``torch.autograd.functional.hessian`` in float64.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp

from hessaudit.cli import main
from hessaudit.hessian.exact_norms import exact_norms
from hessaudit.hessian.per_example import per_example_directional_second_derivative
from hessaudit.inputs.checkpoints import save_checkpoint

F64 = torch.float64

NORMS = {
    "layer_norm": lambda x: F.layer_norm(x, (3,), torch.full((3,), 1.3, dtype=F64),
                                         torch.full((3,), 0.2, dtype=F64)),
    "instance_norm": lambda x: F.instance_norm(x),
    "batch_norm_train": lambda x: F.batch_norm(x, None, None, training=True),
}


def _second_forward(f, x, v):
    return jvp(lambda z: jvp(f, (z,), (v,))[1], (x,), (v,))[1]


@pytest.mark.parametrize("name", sorted(NORMS))
def test_forward_over_forward_is_exact_under_the_mode(name):
    g = torch.Generator().manual_seed(0)
    x, v, c = (torch.randn(2, 4, 3, generator=g, dtype=F64) for _ in range(3))

    def f(z):
        return (NORMS[name](z) * c).tanh().sum()

    dense = v.flatten() @ torch.autograd.functional.hessian(f, x).reshape(24, 24) @ v.flatten()
    with exact_norms():
        value = _second_forward(f, x, v)
    assert torch.allclose(value, dense, rtol=1e-12, atol=1e-12)
    with exact_norms():  # the values themselves are the kernels' to round-off
        composite = NORMS[name](x)
    assert torch.allclose(composite, NORMS[name](x), rtol=1e-12, atol=1e-12)


def test_eval_batch_norm_and_other_functions_pass_through_bit_for_bit():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 5, 5, generator=g)
    bn = nn.BatchNorm2d(3).eval()
    bn.running_mean.uniform_(-1, 1, generator=g)
    gn = nn.GroupNorm(1, 3)
    with exact_norms():
        inside = (bn(x), gn(x), F.gelu(x))
    assert all(torch.equal(a, b) for a, b in zip(inside, (bn(x), gn(x), F.gelu(x)), strict=True))


NETS = '''
import torch
from torch import nn


def ln_mlp(num_classes=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.LayerNorm(6), nn.GELU(), nn.Linear(6, 6),
                         nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, num_classes)).double()


def in_conv(num_classes=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.InstanceNorm2d(3, affine=True),
                         nn.SiLU(), nn.Flatten(), nn.Linear(3 * 16, num_classes)).double()
'''
CASES = {"ln_mlp": ((5,), 4), "in_conv": ((1, 4, 4), 3)}


def _namespace() -> dict:
    namespace: dict = {}
    exec(NETS, namespace)
    return namespace


def _dense_forms(model, name, v, x, y) -> torch.Tensor:
    w = model.get_parameter(name).detach()
    out = []
    for n in range(len(x)):
        def loss(p, n=n):
            return F.cross_entropy(functional_call(model, {name: p}, (x[n:n + 1],)), y[n:n + 1])
        hessian = torch.autograd.functional.hessian(loss, w).reshape(w.numel(), w.numel())
        out.append(v.flatten() @ hessian @ v.flatten())
    return torch.stack(out)


@pytest.mark.parametrize("net", sorted(CASES))
def test_per_example_raw_forms_match_dense_hessians(net):
    model = _namespace()[net]().eval()
    shape, classes = CASES[net]
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, *shape, generator=g, dtype=F64)
    y = torch.randint(0, classes, (6,), generator=g)
    for name, param in model.named_parameters():
        if param.ndim < 2:
            continue
        v = torch.randn(param.shape, generator=g, dtype=F64)
        values = per_example_directional_second_derivative(model, x, y, name, v)
        assert torch.allclose(values, _dense_forms(model, name, v, x, y), rtol=1e-10,
                              atol=1e-12), name


@pytest.mark.parametrize("reduce", ["example-max", "batch-max", "mean"])
def test_cli_raw_form_through_layer_norm_matches_the_oracle(tmp_path: Path, capsys, reduce):
    ns = _namespace()
    ft_model = ns["ln_mlp"]().eval()
    ft = {k: t.detach().clone() for k, t in ft_model.state_dict().items()}
    g = torch.Generator().manual_seed(3)
    pre = {k: t + 0.2 * torch.randn(t.shape, generator=g, dtype=F64) for k, t in ft.items()}
    (tmp_path / "nets.py").write_text(NETS)
    save_checkpoint(tmp_path / "pre.safetensors", pre)
    save_checkpoint(tmp_path / "ft.safetensors", ft)
    x = torch.randn(10, 5, generator=g).double()  # the audit holds data as float32
    y = torch.randint(0, 4, (10,), generator=g)
    np.savez(tmp_path / "d.npz", x=x.numpy(), y=y.numpy())
    with pytest.raises(SystemExit) as exit_info:
        main(["measure", str(tmp_path / "pre.safetensors"), str(tmp_path / "ft.safetensors"),
              "--model", f"{tmp_path / 'nets.py'}:ln_mlp", "--data", str(tmp_path / "d.npz"),
              "--dtype", "float64", "--form", "raw", "--reduce", reduce, "--batch-size", "4",
              "--json", "-", "--quiet"])
    assert exit_info.value.code == 0
    document = json.loads(capsys.readouterr().out)
    for row in document["layers"]:
        name = row["name"]
        v = ft[name] - pre[name]
        forms = _dense_forms(ft_model, name, v, x, y)
        if reduce == "example-max":
            exact = forms.max()
        elif reduce == "mean":
            exact = forms.mean()
        else:
            exact = torch.stack([forms[i:i + 4].mean() for i in range(0, 10, 4)]).max()
        assert row["quad_raw"] == pytest.approx(float(exact), rel=1e-9, abs=1e-12), name
