"""The search space of ``hessaudit tune`` (:mod:`hessaudit.robust.tune.space`), tested directly:
the ``--space`` file's checks, the ranges Optuna is asked for, and which defaults apply."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import pytest

from hessaudit.errors import HessauditError
from hessaudit.robust.config import FinetuneConfig
from hessaudit.robust.tune.space import (
    DEFAULT_SPACE,
    NOT_TUNABLE,
    ParamSpec,
    build_space,
    load_space_file,
)

FIELDS = {f.name for f in dataclasses.fields(FinetuneConfig)}


def _base(**changes) -> FinetuneConfig:
    options = {"model": "m.py:f", "pretrained": "p.safetensors", "data": "digits", "out": "o",
               "noise_matrix": "symmetric:0.2"}
    return FinetuneConfig(**{**options, **changes})


class _Trial:
    """Records what Optuna would be asked for."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def suggest_float(self, name, low, high, *, log):
        self.calls.append(("float", name, low, high, log))
        return low

    def suggest_int(self, name, low, high, *, log):
        self.calls.append(("int", name, low, high, log))
        return low

    def suggest_categorical(self, name, choices):
        self.calls.append(("categorical", name, choices))
        return choices[0]


def _write(tmp_path: Path, document) -> Path:
    path = tmp_path / "space.json"
    path.write_text(json.dumps(document))
    return path


def test_names_are_finetune_options() -> None:
    # a typo in either list would silently search (or never refuse) a wrong name
    assert NOT_TUNABLE <= FIELDS
    assert set(DEFAULT_SPACE) <= FIELDS and not set(DEFAULT_SPACE) & NOT_TUNABLE
    assert all(spec.name == name for name, spec in DEFAULT_SPACE.items())


def test_spec_round_trip_and_suggest() -> None:
    cases = {
        "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "batch_size": {"type": "int", "low": 16.0, "high": 64.0, "log": False},
        "loss": {"choices": ["ce", "gce"]},
    }
    trial = _Trial()
    for name, document in cases.items():
        spec = ParamSpec.from_dict(name, document)
        assert spec.to_dict() == document
        assert ParamSpec.from_dict(name, spec.to_dict()) == spec
        spec.suggest(trial)
    assert trial.calls == [
        ("float", "lr", 1e-4, 1e-2, True),
        ("int", "batch_size", 16, 64, False),  # ints handed to suggest_int
        ("categorical", "loss", ["ce", "gce"]),
    ]
    assert isinstance(trial.calls[1][2], int)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([1e-4, 1e-2], "must be an object"),
        ({"low": 1, "high": 2, "step": 1}, "unknown key(s) step"),
        ({"choices": []}, "choices must be a non-empty list"),
        ({"choices": "ab"}, "choices must be a non-empty list"),
        ({"type": "str", "low": 1, "high": 2}, "type must be float or int"),
        ({"low": 2, "high": 1}, "needs finite numbers low <= high"),
        ({"low": 1}, "needs finite numbers low <= high"),
        ({"low": True, "high": 2}, "needs finite numbers low <= high"),
        ({"low": "1", "high": 2}, "needs finite numbers low <= high"),
        ({"low": 0, "high": 1, "log": True}, "a log-uniform range needs low > 0"),
    ],
)
def test_bad_spec_names_source_and_option(document, message) -> None:
    with pytest.raises(HessauditError) as exc:
        ParamSpec.from_dict("lr", document, source="--space s.json")
    assert str(exc.value).startswith("--space s.json: lr")
    assert message in str(exc.value)


def test_non_finite_bounds_are_refused(tmp_path) -> None:
    # JSON has no inf/nan literals but Python's reader accepts them: refused as non-finite
    path = tmp_path / "space.json"
    path.write_text('{"lr": {"low": 1e-4, "high": Infinity}}')
    with pytest.raises(HessauditError, match="needs finite numbers"):
        load_space_file(path)
    assert not math.isfinite(json.loads(path.read_text())["lr"]["high"])


def test_space_file_shapes(tmp_path) -> None:
    # a bare {NAME: SPEC} object is the params; dashes are underscores; null removes
    path = _write(tmp_path, {"head-radius": None, "lr": {"low": 1e-3, "high": 1e-2}})
    params, defaults = load_space_file(path)
    assert defaults is True and params["head_radius"] is None
    assert params["lr"] == ParamSpec("lr", low=1e-3, high=1e-2)
    path = _write(tmp_path, {"defaults": False, "params": {"lr": {"choices": [1e-3]}}})
    params, defaults = load_space_file(path)
    assert defaults is False and params["lr"].choices == (1e-3,)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"params": {}, "extra": 1}', "unknown key(s) extra"),
        ('{"params": [1]}', "params must be an object"),
        ('{"nope": {"low": 1, "high": 2}}', "nope is not a finetune option"),
    ],
)
def test_bad_space_file(tmp_path, content, message) -> None:
    path = tmp_path / "space.json"
    path.write_text(content)
    with pytest.raises(HessauditError, match="--space") as exc:
        load_space_file(path)
    assert message in str(exc.value) and str(path) in str(exc.value)


@pytest.mark.parametrize("name", sorted(NOT_TUNABLE))
def test_fixed_options_cannot_be_searched(tmp_path, name) -> None:
    path = _write(tmp_path, {"params": {name.replace("_", "-"): {"choices": [1]}}})
    with pytest.raises(HessauditError, match="cannot be searched"):
        load_space_file(path)


def test_unreadable_space_files(tmp_path) -> None:
    with pytest.raises(HessauditError, match="cannot be read"):
        load_space_file(tmp_path / "missing.json")
    if hasattr(os, "mkfifo"):  # a FIFO would block the read forever: refused at once
        fifo = tmp_path / "fifo.json"
        os.mkfifo(fifo)
        with pytest.raises(HessauditError, match="--space"):
            load_space_file(fifo)


def test_defaults_follow_loss_and_constraint() -> None:
    base = _base(loss="reweight")
    assert set(build_space(base)) == {"lr", "radius", "radius_growth", "head_radius"}
    assert set(build_space(base.replace(constraint="none"))) == {"lr"}
    for loss, extra in (("label-smoothing", {"smoothing"}), ("gce", {"gce_q"}),
                        ("sce", {"sce_alpha", "sce_beta"})):
        assert set(build_space(base.replace(loss=loss))) - set(build_space(base)) == extra
    assert build_space(base, use_defaults=False) == {}


def test_overrides_and_fixed() -> None:
    base = _base(loss="reweight")
    lr = ParamSpec("lr", low=1e-3, high=1e-2)
    bs = ParamSpec("batch_size", kind="categorical", choices=(32, 64))
    space = build_space(base, overrides={"lr": lr, "batch_size": bs, "radius": None})
    assert space["lr"] is lr and space["batch_size"] is bs and "radius" not in space
    # fixed on the command line: removed even when the file names it
    assert "lr" not in build_space(base, overrides={"lr": lr}, fixed={"lr"})
    # the defaults are shared, never changed in place
    assert DEFAULT_SPACE["lr"] == ParamSpec("lr", low=1e-5, high=1e-2, log=True)
