"""The per-layer measure against dense float64 Hessians (torch.autograd.functional.hessian)."""

from __future__ import annotations

import math

import pytest
import torch

from hessaudit.audit.layers import pair_layers
from hessaudit.audit.measure import MeasureSettings, measure_layers
from hessaudit.inputs.data import Dataset
from tests.cases import NETS, Net
from tests.oracles import (
    dense_block_hessian,
    dense_joint_hessian,
    dense_per_example_hessians,
    quadratic_forms,
)

RTOL = 1e-8


def _pretrained_from(model: torch.nn.Module, *, seed: int, scale: float = 0.3, new_head: str):
    """Weights of a made-up 'pretrained' model: the fine-tuned ones minus a random delta.

    The head ``new_head`` gets a different shape, so it is a new head (distance from zero).
    """
    generator = torch.Generator().manual_seed(seed)
    pretrained = {}
    for name, tensor in model.state_dict().items():
        if not tensor.is_floating_point():
            pretrained[name] = tensor.clone()
        elif name.startswith(new_head):
            pretrained[name] = torch.zeros(
                tensor.shape[0] + 2, *tensor.shape[1:], dtype=tensor.dtype
            )
        else:
            noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
            pretrained[name] = tensor - scale * noise
    return pretrained


def _setup(net: Net, *, n: int = 6, seed: int = 0):
    model = net.model(seed)
    x, y = net.data(seed + 1, n)
    pretrained = _pretrained_from(model, seed=seed + 2, new_head=net.head)
    pairing = pair_layers(
        pretrained,
        model.state_dict(),
        parameter_names={name for name, _ in model.named_parameters()},
    )
    data = Dataset(x=x, y=y, num_classes=int(y.max()) + 1, source="test")
    return model, pairing.layers, data


def _dense_reduced(model, layer, data, reduce, batch_size):
    """Reduced (raw, positive) forms from dense Hessians, straight from the definitions."""
    v = layer.delta.reshape(-1).to(torch.float64)
    if reduce == "mean":
        return quadratic_forms(dense_block_hessian(model, [(data.x, data.y)], layer.name), v)
    if reduce == "batch-max":
        forms = [
            quadratic_forms(dense_block_hessian(model, [batch], layer.name), v)
            for batch in data.batches(batch_size)
        ]
    else:
        hessians = dense_per_example_hessians(model, data.x, data.y, layer.name)
        forms = [quadratic_forms(h, v) for h in hessians]
    return max(f[0] for f in forms), max(f[1] for f in forms)


def _settings(**overrides) -> MeasureSettings:
    # Enough Lanczos steps to exhaust every block of the test networks (tol 0: no early stop),
    # so the quadrature is exact.
    base = dict(lanczos_steps=120, tol=0.0, batch_size=4, spectrum=False)
    return MeasureSettings(**{**base, **overrides})


@pytest.mark.parametrize("reduce", ["example-max", "batch-max", "mean"])
def test_smooth_forms_equal_dense_hessian(smooth_net, reduce):
    model, layers, data = _setup(smooth_net)
    assert any(layer.is_new_head for layer in layers)
    settings = _settings(reduce=reduce)
    results = measure_layers(model, layers, data, settings, generator=torch.Generator())
    for layer, result in zip(layers, results, strict=True):
        raw, pos = _dense_reduced(model, layer, data, reduce, settings.batch_size)
        assert result.engine_path == "lanczos"
        assert result.quad_raw == pytest.approx(raw, rel=RTOL, abs=1e-12)
        assert result.quad_pos == pytest.approx(pos, rel=RTOL, abs=1e-12)
        assert result.hcal == pytest.approx(max(pos, 0.0), rel=RTOL, abs=1e-12)
        assert result.converged


def test_example_max_equals_explicit_loop_over_examples():
    model, layers, data = _setup(NETS["mlp"], n=5)
    settings = _settings(reduce="example-max")
    together = measure_layers(model, layers, data, settings, generator=torch.Generator())
    one_by_one = [
        measure_layers(
            model,
            layers,
            data.subset([i]),
            _settings(reduce="mean"),
            generator=torch.Generator(),
        )
        for i in range(len(data))
    ]
    for index, result in enumerate(together):
        assert result.quad_pos == pytest.approx(
            max(single[index].quad_pos for single in one_by_one), rel=RTOL
        )
        assert result.quad_raw == pytest.approx(
            max(single[index].quad_raw for single in one_by_one), rel=RTOL
        )


@pytest.mark.parametrize("reduce", ["example-max", "batch-max", "mean"])
def test_relu_cnn_takes_exact_jvp_path_equal_to_dense(reduce):
    model, layers, data = _setup(NETS["relu_cnn"])
    settings = _settings(reduce=reduce)
    results = measure_layers(model, layers, data, settings, generator=torch.Generator())
    for layer, result in zip(layers, results, strict=True):
        raw, pos = _dense_reduced(model, layer, data, reduce, settings.batch_size)
        assert result.engine_path == "jvp"
        assert result.quad_raw == pytest.approx(raw, rel=1e-7, abs=1e-12)
        assert result.quad_pos == pytest.approx(pos, rel=1e-7, abs=1e-12)


def test_forced_lanczos_on_relu_cnn_agrees_with_jvp():
    model, layers, data = _setup(NETS["relu_cnn"])
    fast = measure_layers(model, layers, data, _settings(), generator=torch.Generator())
    slow = measure_layers(
        model, layers, data, _settings(engine="lanczos"), generator=torch.Generator()
    )
    for a, b in zip(fast, slow, strict=True):
        assert b.engine_path == "lanczos"
        assert a.quad_pos == pytest.approx(b.quad_pos, rel=1e-7, abs=1e-12)


def test_cross_form_matches_released_code_definition():
    model, layers, data = _setup(NETS["mlp"], n=8)
    names = [layer.name for layer in layers]

    def dense_cross(batch):
        # Full Hessian over all selected layers at once, other parameters fixed.
        hessian, sizes = dense_joint_hessian(model, [batch], names)
        v = torch.cat([layer.delta.reshape(-1).to(torch.float64) for layer in layers])
        hv = torch.split(hessian @ v, sizes)
        vs = torch.split(v, sizes)
        return [float(a @ b) for a, b in zip(vs, hv, strict=True)]

    settings = _settings(form="cross", reduce="batch-max")
    results = measure_layers(model, layers, data, settings, generator=torch.Generator())
    per_batch = [dense_cross(batch) for batch in data.batches(settings.batch_size)]
    for index, result in enumerate(results):
        expected = max(values[index] for values in per_batch)
        assert result.cross == pytest.approx(expected, rel=1e-8, abs=1e-12)
        assert result.hcal == pytest.approx(max(expected, 0.0), rel=1e-8, abs=1e-12)
        assert result.clamped == (expected < 0)
    mean_results = measure_layers(
        model, layers, data, _settings(form="cross", reduce="mean"), generator=torch.Generator()
    )
    total = dense_cross((data.x, data.y))
    for index, result in enumerate(mean_results):
        assert result.cross == pytest.approx(total[index], rel=1e-8, abs=1e-12)


def test_top_eigenvalue_and_trace_match_eigh():
    model, layers, data = _setup(NETS["mlp"], n=6)
    settings = _settings(spectrum=True, spectrum_samples=4, trace_probes=400)
    results = measure_layers(
        model, layers, data, settings, generator=torch.Generator().manual_seed(0)
    )
    for layer, result in zip(layers, results, strict=True):
        hessian = dense_block_hessian(model, [(data.x[:4], data.y[:4])], layer.name)
        eigenvalues = torch.linalg.eigvalsh(hessian)
        assert result.top_eig == pytest.approx(float(eigenvalues.max()), rel=1e-6, abs=1e-10)
        exact_trace = float(eigenvalues.sum())
        assert abs(result.trace - exact_trace) <= 5 * result.trace_stderr + 1e-10


def test_zero_delta_gives_zero_not_nan():
    model, _, data = _setup(NETS["mlp"])
    same = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    pairing = pair_layers(same, model.state_dict())
    results = measure_layers(model, pairing.layers, data, _settings(), generator=torch.Generator())
    for result in results:
        assert result.quad_raw == 0.0
        assert result.quad_pos == 0.0
        assert result.hcal == 0.0
        assert not math.isnan(result.hcal)


def test_same_generator_seed_same_numbers():
    model, layers, data = _setup(NETS["mlp"])
    settings = _settings(spectrum=True, lanczos_steps=10, tol=1e-3)
    first = measure_layers(
        model, layers, data, settings, generator=torch.Generator().manual_seed(3)
    )
    second = measure_layers(
        model, layers, data, settings, generator=torch.Generator().manual_seed(3)
    )
    assert [r.to_dict() for r in first] == [r.to_dict() for r in second]


def test_refuses_a_model_in_train_mode():
    from hessaudit.errors import HessauditError

    model, layers, data = _setup(NETS["mlp"])
    model.train()
    with pytest.raises(HessauditError):
        measure_layers(model, layers, data, _settings(), generator=torch.Generator())
