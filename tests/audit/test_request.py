"""The audit request (hessaudit/audit/request.py): defaults written once, one constructor shared
by the command, finetune --audit, tune and the demo, validated once when built, frozen."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

from hessaudit.audit.request import DEFAULTS, FIELDS, FINETUNE_OPTIONS, AuditRequest
from hessaudit.audit.settings import MeasureSettings
from hessaudit.cli import main
from hessaudit.errors import HessauditError
from hessaudit.inputs.text_options import TextOptions

BASE = {"pretrained": "pre.pt", "finetuned": "ft.pt", "model": "m", "data": "d"}


def _measure_parameters() -> dict[str, inspect.Parameter]:
    from hessaudit.commands.measure import measure_command

    return dict(inspect.signature(measure_command).parameters)


# --------------------------------------------------------------------------- defaults


def test_the_command_line_defaults_are_the_requests() -> None:
    cli = {name: p.default for name, p in _measure_parameters().items() if name in DEFAULTS}
    # every defaulted field is an option of measure (tags is --label, a list of KEY=VALUE;
    # text is --text-column, --label-column, --tokenizer and --max-length)
    assert set(DEFAULTS) - set(cli) == {"tags", "text"}
    params = _measure_parameters()
    text = {name: params[name].default for name in
            ("text_column", "label_column", "tokenizer", "max_length")}
    assert TextOptions(**text) == DEFAULTS["text"]
    # a repeatable option not given is None on the command line and () in the request
    shown = {name: (() if value is None and DEFAULTS[name] == () else value)
             for name, value in cli.items()}
    assert shown == {name: DEFAULTS[name] for name in cli}
    assert AuditRequest(**BASE, **cli) == AuditRequest(**BASE)


def test_the_measure_defaults_are_written_once() -> None:
    settings = MeasureSettings()
    for field in dataclasses.fields(MeasureSettings):
        assert DEFAULTS[field.name] == getattr(settings, field.name), field.name
    assert AuditRequest(**BASE).settings() == settings


def test_fields_are_the_dataclass_fields() -> None:
    assert {f.name for f in dataclasses.fields(AuditRequest)} == FIELDS
    assert set(DEFAULTS) == FIELDS - {"pretrained", "finetuned", "model", "data"}


# --------------------------------------------------------------------------- the constructor


def test_for_checkpoints_takes_command_line_shapes() -> None:
    request = AuditRequest.for_checkpoints(
        Path("pre.pt"), Path("ft.pt"), model="m", data="d", include=["a*"], exclude=None,
        mean=["0.5", "0.25,0.125"], std=[], tags=(("k", "v"),),
    )
    assert request == AuditRequest(
        **BASE, include=("a*",), mean=(0.5, 0.25, 0.125), tags=(("k", "v"),)
    )
    assert request.pretrained == "pre.pt" and isinstance(request.pretrained, str)
    assert request.std is None and request.exclude == ()


def test_for_checkpoints_applies_the_recipe() -> None:
    released = AuditRequest.for_checkpoints("pre.pt", "ft.pt", model="m", data="d",
                                            recipe="released")
    assert (released.form, released.reduce, released.batch_size) == ("cross", "batch-max", 4)
    assert released.samples == 100
    # an option the user gave with the recipe's other value is a conflict; the same value is not
    with pytest.raises(HessauditError, match="--recipe released sets --form cross"):
        AuditRequest.for_checkpoints("pre.pt", "ft.pt", model="m", data="d",
                                     recipe="released", form="positive", given={"form"})
    same = AuditRequest.for_checkpoints("pre.pt", "ft.pt", model="m", data="d",
                                        recipe="released", form="cross", given={"form"})
    assert same == released


def test_for_checkpoints_takes_the_shared_options_of_a_finetune_config() -> None:
    from hessaudit.robust.config import FinetuneConfig

    config = FinetuneConfig(
        model="m", pretrained="pre.pt", data="d", out="run", batch_size=7, mean=(0.5,),
        std=(0.25,), input_size=12, interpolation="bicubic", crop_pct=0.875, seed=3,
        device="cpu", allow_hub=True, samples=11, eval_data="e",
    )
    request = AuditRequest.for_checkpoints(
        config.pretrained, "final.safetensors", model=config.model, data="d", finetune=config,
        samples=5, seed=9,
    )
    assert {name: getattr(request, name) for name in FINETUNE_OPTIONS} == {
        **{name: getattr(config, name) for name in FINETUNE_OPTIONS}, "seed": 9,
    }
    # only the shared options come from the config: not its training --samples or --eval-data
    assert request.samples == 5 and request.eval_data is None


def test_the_shared_options_mean_the_same_in_a_finetune_config() -> None:
    from hessaudit.robust.config import FinetuneConfig

    finetune = {f.name: f.default for f in dataclasses.fields(FinetuneConfig)}
    for name in FINETUNE_OPTIONS:
        assert finetune[name] == DEFAULTS[name], name


def test_the_command_builds_its_request_with_the_constructor(tmp_path, monkeypatch) -> None:
    """What ``measure`` hands to run_audit is what for_checkpoints builds from its options."""
    import hessaudit.audit.run

    seen = []

    def stop(request, **kwargs):
        seen.append(request)
        raise HessauditError("stopped before any work")

    monkeypatch.chdir(tmp_path)  # no pyproject.toml with gates
    monkeypatch.setattr(hessaudit.audit.run, "run_audit", stop)
    with pytest.raises(SystemExit) as exit_info:
        main(["measure", "pre.pt", "ft.pt", "--model", "m", "--data", "d", "--mean", "0.5",
              "--include", "a*", "--label", "k=v", "--reduce", "mean", "--no-spectrum",
              "--quiet"])
    assert exit_info.value.code == 1
    assert seen == [
        AuditRequest.for_checkpoints(
            "pre.pt", "ft.pt", model="m", data="d", mean=("0.5",), include=("a*",),
            tags=(("k", "v"),), reduce="mean", spectrum=False,
        )
    ]


# --------------------------------------------------------------------------- validated, frozen


@pytest.mark.parametrize(
    ("change", "flag"),
    [
        ({"model": " "}, "--model"),
        ({"reduce": "median"}, "--reduce"),
        ({"tol": 1.0}, "--tol"),
        ({"lanczos_steps": 0}, "--lanczos-steps"),
        ({"lanczos_steps": 10**6}, "--lanczos-steps"),
        ({"samples": 0}, "--samples"),
        ({"n_train": 0}, "--n-train"),
        ({"loss_bound": "quantile:2"}, "--loss-bound"),
        ({"noise_draws": 5}, "--noise-draws"),
        ({"tags": (("a.b", "1"),)}, "--label"),
        ({"std": (0.0,)}, "--std"),
        ({"dtype": "float16"}, "--dtype"),
        ({"seed": -1}, "--seed"),
    ],
)
def test_an_invalid_request_cannot_be_built(change, flag) -> None:
    with pytest.raises(HessauditError) as info:
        AuditRequest(**{**BASE, **change})
    assert str(info.value).startswith(flag)
    valid = AuditRequest(**BASE)
    with pytest.raises(HessauditError):  # replace builds a new request: checked again
        dataclasses.replace(valid, **change)


def test_a_request_is_frozen() -> None:
    request = AuditRequest(**BASE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.form = "raw"  # type: ignore[misc]


def test_measure_settings_use_the_requests_messages() -> None:
    with pytest.raises(HessauditError, match=r"^--lanczos-steps 0: must be an integer >= 1"):
        MeasureSettings(lanczos_steps=0)
    with pytest.raises(HessauditError, match=r"^--engine must be one of auto, jvp, lanczos"):
        MeasureSettings(engine="gpu")


def test_the_request_imports_no_torch() -> None:
    """The command line may take its defaults from DEFAULTS at import time (``--help`` stays
    fast): building and checking a request needs neither torch nor timm."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from hessaudit.audit.request import DEFAULTS, AuditRequest\n"
        "AuditRequest('a', 'b', 'm', 'd', recipe='released')\n"
        "assert 'torch' not in sys.modules and 'timm' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
