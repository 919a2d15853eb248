"""The measure on smooth networks at DEFAULT settings against dense float64 oracles.

Two smooth networks that no other test uses (a Conv-GELU-Conv-SiLU-Linear net on 1x6x6 images
and a tanh/SiLU/GELU MLP, each with a new head), every reduction x {positive, raw}, through the
public entry point the CLI uses (:func:`hessaudit.audit.measure.measure_layers`) and once through
``hessaudit measure`` itself. The oracle: the dense block Hessian of the per-example, per-batch
or mean loss (``torch.func.hessian`` / ``torch.autograd.functional.hessian``) and ``eigh`` for
its positive part. Before issue 12 the positive part stopped while every Ritz value was still
positive and reported ``quad_pos == quad_raw`` with ``converged: true`` (here: 1.0e-2 off on
the MLP's ``lin3`` with ``--reduce batch-max``, 3.5e-3 with ``mean``, 1.4e-3 on the conv net's
``conv2`` with ``mean``).
"""

from __future__ import annotations

import functools
import json
import textwrap
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from hessaudit.audit.layers import Layer, distance_vector, pair_layers
from hessaudit.audit.measure import MeasureSettings, measure_layers
from hessaudit.cli import main
from hessaudit.inputs.checkpoints import save_checkpoint
from hessaudit.inputs.data import Dataset
from tests.oracles import dense_block_hessian, dense_per_example_hessians, eigh_forms

F64 = torch.float64
DEFAULTS = MeasureSettings()

#: The factory file: the same source builds the nets in-process and for ``hessaudit measure``.
NETS_SOURCE = textwrap.dedent(
    '''
    import math
    from collections import OrderedDict

    import torch
    from torch import nn


    def _init(model, seed):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                std = 1.5 / math.sqrt(p[0].numel()) if p.ndim >= 2 else 0.1
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * std)
        return model.eval()


    def conv_gelu_silu(num_classes=3, seed=0):
        """conv1 - GELU - conv2 (stride 2) - SiLU - flatten - classifier; input (1, 6, 6)."""
        return _init(nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(1, 4, 3, padding=1), act1=nn.GELU(),
            conv2=nn.Conv2d(4, 4, 3, stride=2), act2=nn.SiLU(),
            flatten=nn.Flatten(), classifier=nn.Linear(16, num_classes),
        )), seed)


    def tanh_silu_gelu_mlp(num_classes=4, seed=0):
        """lin1 - tanh - lin2 - SiLU - lin3 - GELU - out; input (5,)."""
        return _init(nn.Sequential(OrderedDict(
            lin1=nn.Linear(5, 8), act1=nn.Tanh(), lin2=nn.Linear(8, 6), act2=nn.SiLU(),
            lin3=nn.Linear(6, 5), act3=nn.GELU(), out=nn.Linear(5, num_classes),
        )), seed)
    '''
)
NETS = types.ModuleType("smooth_oracle_nets")
exec(compile(NETS_SOURCE, "smooth_oracle_nets", "exec"), NETS.__dict__)

# name -> (factory, input shape, classes, head name, examples). The MLP has 40 examples so
# that batch-max at the default --batch-size 32 sees two batches (32 and 8).
CASES = {
    "conv": ("conv_gelu_silu", (1, 6, 6), 3, "classifier", 30),
    "mlp": ("tanh_silu_gelu_mlp", (5,), 4, "out", 40),
}


def _pretrained(state: dict[str, torch.Tensor], head: str, seed: int) -> dict[str, torch.Tensor]:
    """A made-up pretrained state: every tensor moved by seeded noise; the head gets two more
    rows, so the fine-tuned head is new (measured from zero)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in state.items():
        if name.startswith(head + "."):
            out[name] = torch.zeros(t.shape[0] + 2, *t.shape[1:], dtype=t.dtype)
        else:
            out[name] = t - 0.3 * torch.randn(t.shape, generator=g, dtype=F64).to(t.dtype)
    return out


def _data(case: str) -> tuple[torch.Tensor, torch.Tensor]:
    _, shape, classes, _, n = CASES[case]
    g = torch.Generator().manual_seed(11)
    # float32-representable inputs: the .npz loader reads x as float32
    x = torch.randn((n, *shape), generator=g, dtype=torch.float32).to(F64)
    return x, torch.randint(0, classes, (n,), generator=g)


@functools.cache
def _setup(case: str):
    factory, _, classes, head, _ = CASES[case]
    model = getattr(NETS, factory)(num_classes=classes).to(F64)
    x, y = _data(case)
    pairing = pair_layers(
        _pretrained(model.state_dict(), head, seed=5),
        model.state_dict(),
        parameter_names={name for name, _ in model.named_parameters()},
    )
    assert [layer.is_new_head for layer in pairing.layers][-1]
    return model, pairing.layers, Dataset(x=x, y=y, num_classes=classes, source=case)


def _v(layer: Layer) -> torch.Tensor:
    """v = W_ft - W_pre in float64 from the float64 casts of both tensors."""
    ft = layer.finetuned.to(F64)
    return (ft if layer.pretrained is None else ft - layer.pretrained.to(F64)).reshape(-1)


def _hessians(model, name: str, x, y, reduce: str) -> list[torch.Tensor]:
    """Dense block Hessians of the losses that ``reduce`` maximizes over (or of the mean)."""
    if reduce == "example-max":
        return list(dense_per_example_hessians(model, x, y, name, vectorized=True))
    size = len(x) if reduce == "mean" else DEFAULTS.batch_size
    return [
        dense_block_hessian(model, [(x[i : i + size], y[i : i + size])], name)
        for i in range(0, len(x), size)
    ]


@functools.cache
def _oracle(case: str, reduce: str) -> dict[str, tuple[float, float]]:
    """layer -> (reduced v^T H v, reduced v^T H^+ v), straight from the definitions."""
    model, layers, data = _setup(case)
    out = {}
    for layer in layers:
        v = _v(layer)
        forms = [eigh_forms(hessian, v)
                 for hessian in _hessians(model, layer.name, data.x, data.y, reduce)]
        out[layer.name] = (max(f[0] for f in forms), max(f[1] for f in forms))
    return out


def _relerr(value: float, exact: float) -> float:
    return 0.0 if value == exact else abs(value - exact) / abs(exact)


@pytest.mark.parametrize("form", ["positive", "raw"])
@pytest.mark.parametrize("reduce", ["example-max", "batch-max", "mean"])
@pytest.mark.parametrize("case", list(CASES))
def test_default_settings_match_the_dense_oracle(case, reduce, form):
    model, layers, data = _setup(case)
    settings = MeasureSettings(reduce=reduce, form=form)  # every other setting: the default
    results = measure_layers(model, layers, data, settings, generator=torch.Generator())
    oracle = _oracle(case, reduce)
    tol = settings.tol
    for result in results:
        raw, pos = oracle[result.name]
        assert result.engine_path == "lanczos"
        assert result.converged, result
        # exact: forward-over-forward (form raw) or the first Lanczos step (form positive)
        assert _relerr(result.quad_raw, raw) <= 1e-10
        if form == "positive":
            assert _relerr(result.quad_pos, pos) <= tol, (result.name, result.quad_pos, pos)
            assert _relerr(result.hcal, max(pos, 0.0)) <= tol
            assert result.quad_error is not None and result.quad_error <= tol
        else:
            assert result.quad_pos is None
            assert _relerr(result.hcal, max(raw, 0.0)) <= 1e-10


@pytest.mark.parametrize("reduce", ["batch-max", "mean"])
def test_the_old_failure_cases_are_resolved(reduce):
    """The MLP's lin3: its positive part is 1.0% (batch-max) and 0.35% (mean) above the raw
    form. The old rule stopped while every Ritz value was positive (after 18 and 4 steps) with
    quad_pos equal to the raw form and converged true: 1.0e-2 and 3.5e-3 off."""
    raw, pos = _oracle("mlp", reduce)["lin3.weight"]
    assert pos > raw * (1 + 3 * DEFAULTS.tol)  # the oracle shows the gap the old rule missed
    model, layers, data = _setup("mlp")
    result = measure_layers(model, layers, data, MeasureSettings(reduce=reduce, spectrum=False),
                            generator=torch.Generator())[2]
    assert result.name == "lin3.weight" and result.converged
    assert _relerr(result.quad_pos, pos) <= DEFAULTS.tol
    assert result.quad_steps > 4


def test_a_small_step_budget_says_not_converged_and_warns():
    model, layers, data = _setup("conv")
    settings = MeasureSettings(reduce="mean", lanczos_steps=8, spectrum=False)
    with pytest.warns(UserWarning, match=r"did not converge within --lanczos-steps 8.*conv2"):
        results = measure_layers(model, layers, data, settings, generator=torch.Generator())
    oracle = _oracle("conv", "mean")
    stuck = [r for r in results if not r.converged]
    assert stuck, "8 steps cannot resolve the conv blocks"
    for result in results:
        err = _relerr(result.quad_pos, oracle[result.name][1])
        if result.converged:  # whatever says converged is within tolerance
            assert err <= settings.tol
        else:
            assert result.quad_error is None or result.quad_error > settings.tol


def test_no_warning_when_everything_converged():
    model, layers, data = _setup("mlp")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        measure_layers(model, layers, data, MeasureSettings(reduce="example-max", spectrum=False),
                       generator=torch.Generator())


def test_delta_is_subtracted_in_the_audit_dtype():
    g = torch.Generator().manual_seed(0)
    pre = torch.randn(6, 5, generator=g)  # float32 checkpoints, a float64 audit
    # a change of the weights' own size (a float32 difference of close numbers is exact)
    ft = pre + torch.randn(6, 5, generator=g)
    layer = Layer("w", (6, 5), 30, False, pre, ft)
    exact = ft.double() - pre.double()
    assert torch.equal(layer.delta_as(dtype=F64), exact)
    assert not torch.equal((ft - pre).double(), exact)  # the old way loses bits
    model = torch.nn.Sequential()
    model.register_parameter("w", torch.nn.Parameter(torch.zeros(6, 5, dtype=F64)))
    assert torch.equal(distance_vector(model, layer), exact)
    assert layer.dist_fro == float(exact.norm())
    head = Layer("w", (6, 5), 30, True, None, ft)
    assert torch.equal(distance_vector(model, head), ft.double())


def test_cli_at_defaults_matches_the_dense_oracle(tmp_path: Path, capsys):
    """``hessaudit measure`` on float32 files, ``--dtype float64``, defaults otherwise
    (example-max), compared with the oracle of the same float32 weights cast to float64."""
    factory, _, classes, head, _ = CASES["conv"]
    (tmp_path / "nets.py").write_text(NETS_SOURCE)
    ft = {k: t.float() for k, t in getattr(NETS, factory)(num_classes=classes).state_dict().items()}
    pre = _pretrained(ft, head, seed=5)
    save_checkpoint(tmp_path / "pre.safetensors", pre)
    save_checkpoint(tmp_path / "ft.safetensors", ft)
    x, y = _data("conv")
    np.savez(tmp_path / "data.npz", x=x.float().numpy(), y=y.numpy())
    with pytest.raises(SystemExit) as exit_info:
        main([
            "measure", str(tmp_path / "pre.safetensors"), str(tmp_path / "ft.safetensors"),
            "--model", f"{tmp_path / 'nets.py'}:{factory}", "--data", str(tmp_path / "data.npz"),
            "--dtype", "float64", "--json", "-",
        ])
    assert exit_info.value.code == 0
    document = json.loads(capsys.readouterr().out)
    assert document["settings"]["reduce"] == "example-max"
    model = getattr(NETS, factory)(num_classes=classes).to(F64)
    model.load_state_dict({k: t.to(F64) for k, t in ft.items()})
    pairing = pair_layers(pre, ft, parameter_names={n for n, _ in model.named_parameters()})
    for layer, row in zip(pairing.layers, document["layers"], strict=True):
        assert row["name"] == layer.name and row["converged"] is True
        v = _v(layer)
        forms = [eigh_forms(hessian, v) for hessian in _hessians(model, layer.name, x, y,
                                                                 "example-max")]
        raws, poss = [f[0] for f in forms], [f[1] for f in forms]
        assert _relerr(row["quad_raw"], max(raws)) <= 1e-10
        assert _relerr(row["quad_pos"], max(poss)) <= document["settings"]["tol"]
        assert _relerr(row["hcal"], max(max(poss), 0.0)) <= document["settings"]["tol"]
