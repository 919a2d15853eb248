"""The Lanczos path's examples regrouped into chunks (:func:`example_chunks`), and audits that
do not depend on the chunking: the per-example quadratures are independent, so joining or
cutting the batches may move a number only by round-off."""

from __future__ import annotations

import pytest
import torch

import hessaudit.audit._positive_forms as positive_forms
from hessaudit.audit.layers import pair_layers
from hessaudit.audit.measure import MeasureSettings, measure_layers
from hessaudit.hessian.version import use_engine_version
from hessaudit.inputs.data import Dataset
from tests.cases import IMAGE, make_data, make_smooth_cnn

NAME = "conv2.weight"


def _flat(model):
    return model.get_parameter(NAME).detach().reshape(-1)


def _batches(sizes, shape=IMAGE, seed=1):
    return [make_data(seed + k, n, shape) for k, n in enumerate(sizes)]


def _rows(chunks):
    return torch.cat([x for x, _ in chunks]), torch.cat([y for _, y in chunks])


def test_batches_of_one_shape_are_joined_then_cut_at_the_cap(monkeypatch):
    monkeypatch.setattr(positive_forms, "EXAMPLES_PER_CHUNK", 5)
    model = make_smooth_cnn(0)
    batches = _batches([4, 4, 3])
    chunks = positive_forms.example_chunks(model, NAME, _flat(model), batches, steps=10)
    assert [len(x) for x, _ in chunks] == [5, 5, 1]
    x, y = _rows(chunks)
    assert torch.equal(x, torch.cat([b[0] for b in batches]))  # same examples, same order
    assert torch.equal(y, torch.cat([b[1] for b in batches]))


def test_batches_of_other_shapes_stay_apart():
    # text batches are padded per batch: their examples cannot be stacked
    model = make_smooth_cnn(0)
    batches = [*_batches([3, 2]), *_batches([2], shape=(2, 10, 10)), *_batches([3])]
    chunks = positive_forms.example_chunks(model, NAME, _flat(model), batches, steps=10)
    assert [tuple(x.shape) for x, _ in chunks] == [(5, *IMAGE), (2, 2, 10, 10), (3, *IMAGE)]


def test_chunks_respect_the_memory_budgets(monkeypatch):
    model = make_smooth_cnn(0)
    flat = _flat(model)
    steps = 10
    per_example = flat.numel() * flat.element_size() * (steps + 2)
    monkeypatch.setattr(positive_forms, "LANCZOS_MEMORY_BUDGET_BYTES", 3 * per_example)
    chunks = positive_forms.example_chunks(model, NAME, flat, _batches([8]), steps=steps)
    assert [len(x) for x, _ in chunks] == [3, 3, 2]
    monkeypatch.setattr(positive_forms, "LANCZOS_MEMORY_BUDGET_BYTES", 1 << 30)
    monkeypatch.setattr(positive_forms, "examples_per_graph", lambda *a, **k: 2)
    chunks = positive_forms.example_chunks(model, NAME, flat, _batches([5]), steps=steps)
    assert [len(x) for x, _ in chunks] == [2, 2, 1]


@pytest.mark.parametrize("graph", ["none", "not one example", "old engine"])
def test_without_a_cached_graph_the_batches_are_kept(monkeypatch, graph):
    model = make_smooth_cnn(0)
    batches = _batches([4, 3])
    if graph != "old engine":  # products are recomputed: a larger chunk saves nothing
        capacity = None if graph == "none" else 0
        monkeypatch.setattr(positive_forms, "examples_per_graph", lambda *a, **k: capacity)
        chunks = positive_forms.example_chunks(model, NAME, _flat(model), batches, steps=10)
    else:
        with use_engine_version("old"):
            chunks = positive_forms.example_chunks(model, NAME, _flat(model), batches,
                                                   steps=10)
    assert [len(x) for x, _ in chunks] == [4, 3]


def _audit_setup(n=12):
    model = make_smooth_cnn(0)
    x, y = make_data(1, n, IMAGE)
    g = torch.Generator().manual_seed(2)
    pretrained = {k: t - 0.3 * torch.randn(t.shape, generator=g, dtype=t.dtype)
                  for k, t in model.state_dict().items()}
    layers = pair_layers(pretrained, model.state_dict(),
                         parameter_names={k for k, _ in model.named_parameters()}).layers
    return model, layers, Dataset(x=x, y=y, num_classes=3, source="test")


def test_the_audit_does_not_depend_on_the_chunking(monkeypatch):
    model, layers, data = _audit_setup()
    settings = MeasureSettings(reduce="example-max", batch_size=4, spectrum=False)
    results = {}
    for cap in (1, 5, 64):
        monkeypatch.setattr(positive_forms, "EXAMPLES_PER_CHUNK", cap)
        results[cap] = measure_layers(model, layers, data, settings,
                                      generator=torch.Generator())
    for rows in zip(*results.values(), strict=True):
        assert all(r.engine_path == "lanczos" for r in rows)
        for key in ("quad_raw", "quad_pos", "hcal"):
            values = [getattr(r, key) for r in rows]
            assert values == pytest.approx([values[0]] * 3, rel=1e-10, abs=1e-300), key
        assert len({r.converged for r in rows}) == 1


@pytest.mark.parametrize("reduce", ["example-max", "batch-max", "mean"])
def test_the_raw_form_from_the_quadrature_is_the_exact_one(reduce):
    """``--form positive`` takes v^T H v from the first Lanczos step; ``--form raw`` from a
    forward-over-forward pass. Both are exact: equal to round-off in float64."""
    model, layers, data = _audit_setup()
    both = {form: measure_layers(model, layers, data,
                                 MeasureSettings(reduce=reduce, form=form, batch_size=4,
                                                 spectrum=False),
                                 generator=torch.Generator())
            for form in ("positive", "raw")}
    for pos, raw in zip(both["positive"], both["raw"], strict=True):
        assert pos.quad_raw == pytest.approx(raw.quad_raw, rel=1e-10, abs=1e-300), pos.name
