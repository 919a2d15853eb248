"""Issue 12, section 9: every flag value is validated before any work. Through the CLI.

Flag values are checked when the request is built (``AuditRequest.__post_init__`` ->
``hessaudit.audit.validate``; ``FinetuneConfig.resolved`` for finetune and tune): the cases below
give checkpoint paths that do not exist, so an error naming the *flag* (not the missing file)
proves that the check ran before anything was read. Layer-gate patterns need the layer names,
so they are checked once the checkpoints are paired, before any Hessian work: there the
Hessian engine is replaced by one that fails the test if it is ever called.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hessaudit.cli import main

MISSING_PRE = "no/such/pre.safetensors"
MISSING_FT = "no/such/ft.safetensors"


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return int(exc.value.code), captured.out, captured.err


def assert_flag_error(code: int, err: str, flag: str) -> str:
    assert code == 1, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert flag in lines[0], (flag, lines[0])
    assert "does not exist" not in lines[0]  # the flag was checked first
    return lines[0]


MEASURE_CASES = [
    ("--epsilon", "-1"),
    ("--epsilon", "nan"),
    ("--epsilon", "inf"),
    ("--epsilon", "-inf"),
    ("--loss-bound", "0"),
    ("--loss-bound", "-2"),
    ("--loss-bound", "nan"),
    ("--loss-bound", "inf"),
    ("--tol", "-0.1"),
    ("--tol", "nan"),
    ("--tol", "1"),
    ("--tol", "inf"),
    ("--lanczos-steps", "0"),
    ("--lanczos-steps", "-5"),
    ("--lanczos-steps", "1000000000"),
    ("--samples", "0"),
    ("--samples", "-3"),
    ("--batch-size", "0"),
    ("--batch-size", "-1"),
    ("--input-size", "0"),
    ("--input-size", "-8"),
    ("--input-size", "100000"),
    ("--spectrum-samples", "0"),
    ("--trace-probes", "0"),
    ("--n-train", "0"),
    ("--num-classes", "0"),
    ("--seed", "-1"),
    ("--seed", str(2**64)),
    ("--dtype", "float16"),
    ("--reduce", "median"),
    ("--form", "square"),
    ("--engine", "magic"),
    ("--mean", "abc"),
    ("--mean", "nan"),
    ("--mean", ","),
    ("--std", "0"),
    ("--std", "-0.5"),
    ("--std", "inf"),
    ("--std", "0.2,0"),
    ("--interpolation", "lanczos"),
    ("--interpolation", "Bilinear"),
    ("--crop-pct", "0"),
    ("--crop-pct", "-0.5"),
    ("--crop-pct", "1.5"),
    ("--crop-pct", "nan"),
]


@pytest.mark.parametrize(
    ("flag", "value"), MEASURE_CASES, ids=[f"{f}={v}" for f, v in MEASURE_CASES]
)
def test_measure_refuses_bad_values_before_reading_anything(flag, value, tmp_path, capsys):
    out = tmp_path / "audit.json"
    code, _, err = run_cli(
        ["measure", MISSING_PRE, MISSING_FT, "--model", "resnet18", "--data", "digits",
         "--json", out, f"{flag}={value}"],
        capsys,
    )
    assert_flag_error(code, err, flag)
    assert not out.exists()


FINETUNE_CASES = [
    ("--input-size", "0"),
    ("--input-size", "5000"),
    ("--mean", "x"),
    ("--std", "0"),
    ("--interpolation", "area"),
    ("--crop-pct", "0"),
    ("--crop-pct", "2"),
]


@pytest.mark.parametrize("command", ["finetune", "tune"])
@pytest.mark.parametrize(
    ("flag", "value"), FINETUNE_CASES, ids=[f"{f}={v}" for f, v in FINETUNE_CASES]
)
def test_finetune_and_tune_refuse_bad_data_flags(command, flag, value, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(
        [command, "--model", "resnet18", "--pretrained", MISSING_PRE, "--data", "digits",
         "--out", out, "--loss", "ce", f"{flag}={value}"],
        capsys,
    )
    assert_flag_error(code, err, flag)
    assert not out.exists()


def test_finetune_config_normalizes_the_data_flags() -> None:
    from hessaudit.robust.config import FinetuneConfig

    config = FinetuneConfig(
        model="m", pretrained="p", data="d", out="o", loss="ce", mean=("0.5,0.25", "0.1"),
        std=["1"], interpolation="bicubic", crop_pct=1,
    ).resolved()
    assert config.mean == (0.5, 0.25, 0.1) and config.std == (1.0,)
    assert config.crop_pct == 1.0 and config.interpolation == "bicubic"
    again = FinetuneConfig.from_dict(config.to_dict()).resolved()
    assert again == config
    from hessaudit.robust.tune.best import command_line  # what tune prints for the best trial

    assert "--mean 0.5,0.25,0.1 --std 1 --interpolation bicubic --crop-pct 1" in command_line(
        config
    )


# --------------------------------------------------------------------------- layer gates


@pytest.fixture
def no_hessian_work(monkeypatch):
    """Fail the test if the audit reaches the Hessian engine."""
    import hessaudit.audit.run

    def refuse(*args, **kwargs):
        raise AssertionError("the Hessian work started before the flags were checked")

    monkeypatch.setattr(hessaudit.audit.run, "measure_layers", refuse)


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--max-layer-hcal", "blocks.*=1"),
        ("--max-layer-hcal", "conv9.weight=0.5"),
        ("--max-layer-share", "head.*=0.5"),
    ],
)
def test_layer_gate_matching_nothing_fails_before_the_audit(
    flag, value, tiny_checkpoints, no_hessian_work, tmp_path, capsys
):
    out = tmp_path / "audit.json"
    code, _, err = run_cli(
        ["measure", tiny_checkpoints.pretrained, tiny_checkpoints.finetuned, "--model",
         tiny_checkpoints.spec, "--data", "digits", "--samples", "8", "--json", out, flag, value],
        capsys,
    )
    pattern = value.split("=")[0]
    line = assert_flag_error(code, err, flag)
    assert repr(pattern) in line and "matches no layer" in line
    assert "conv1.weight" in line and "fc.weight" in line  # a few layer names
    assert not out.exists()


def test_layer_gate_from_a_config_file_names_the_file(
    tiny_checkpoints, no_hessian_work, tmp_path, capsys
):
    config = tmp_path / "gates.toml"
    config.write_text('[gates]\nmax-layer-hcal = { "layer9.*" = 1.0 }\n')
    code, _, err = run_cli(
        ["measure", tiny_checkpoints.pretrained, tiny_checkpoints.finetuned, "--model",
         tiny_checkpoints.spec, "--data", "digits", "--samples", "8", "--config", config],
        capsys,
    )
    line = assert_flag_error(code, err, "--max-layer-hcal")
    assert str(config) in line and "'layer9.*'" in line


def test_a_matching_layer_gate_still_runs(tiny_checkpoints, tmp_path, capsys):
    code, _, err = run_cli(
        ["measure", tiny_checkpoints.pretrained, tiny_checkpoints.finetuned, "--model",
         tiny_checkpoints.spec, "--data", "digits", "--samples", "8", "--no-spectrum", "-q",
         "--max-layer-hcal", "conv*=1e9", "--max-layer-share", "fc.*=1"],
        capsys,
    )
    assert code == 0, err


def test_validation_lives_in_the_request(tmp_path: Path) -> None:
    """The library entry point refuses the same values (one place for every check)."""
    from hessaudit.audit.run import AuditRequest
    from hessaudit.errors import HessauditError

    base = {"pretrained": "a", "finetuned": "b", "model": "m", "data": "digits"}
    AuditRequest(**base)
    for change, flag in [
        ({"epsilon": float("nan")}, "--epsilon"),
        ({"loss_bound": 0.0}, "--loss-bound"),
        ({"tol": -1.0}, "--tol"),
        ({"lanczos_steps": 0}, "--lanczos-steps"),
        ({"batch_size": 0}, "--batch-size"),
        ({"input_size": 10**6}, "--input-size"),
        ({"crop_pct": 0.0}, "--crop-pct"),
        ({"interpolation": "cubic"}, "--interpolation"),
        ({"mean": ("x",)}, "--mean"),
    ]:
        with pytest.raises(HessauditError, match=flag):
            AuditRequest(**base, **change)
    assert AuditRequest(**base, mean=("0.5", "0.25,0.125")).mean == (0.5, 0.25, 0.125)
