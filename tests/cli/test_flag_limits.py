"""Issue 12 §10(b, d): seeds beyond 64 bits or negative, and absurd --trace-probes,
--lanczos-steps, --spectrum-samples: one error line naming the flag, before any work, through
the CLI of every command that takes the flag."""

from __future__ import annotations

from pathlib import Path

import pytest

from hessaudit.cli import main

BIG = str(2**64)
HUGE = "9" * 40


def run_cli(args: list[object], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return int(exc.value.code), capsys.readouterr().err


def _measure(pair, tmp: Path, *extra: str) -> list[object]:
    return [
        "measure", pair.pretrained, pair.finetuned, "--model", pair.spec, "--data", "digits",
        "--json", tmp / "audit.json", *extra,
    ]


def _finetune(pair, tmp: Path, *extra: str, command: str = "finetune") -> list[object]:
    return [
        command, "--model", "hessaudit.zoo:digits_cnn", "--pretrained", pair.pretrained,
        "--data", "digits", "--out", tmp / "run", *extra,
    ]


CASES = {
    "measure-seed-2^64": ("measure", ["--seed", BIG], f"--seed {BIG} is outside [0, 2^64 - 1]"),
    "measure-seed-negative": ("measure", ["--seed", "-1"], "--seed -1 is outside"),
    "measure-seed-huge": ("measure", ["--seed", HUGE], "--seed 999999999999999999999999999..."),
    "measure-trace-probes": (
        "measure", ["--trace-probes", "1000000000"], "--trace-probes 1000000000 is above"
    ),
    "measure-lanczos-steps": (
        "measure", ["--lanczos-steps", "100000"], "--lanczos-steps 100000 is above"
    ),
    "measure-spectrum-samples": (
        "measure", ["--spectrum-samples", "10000000"], "--spectrum-samples 10000000 is above"
    ),
    "finetune-seed-2^64": ("finetune", ["--seed", BIG], f"--seed {BIG} is outside"),
    "finetune-seed-negative": ("finetune", ["--seed", "-5"], "--seed -5 is outside"),
    "finetune-noise-seed": ("finetune", ["--noise-seed", BIG], f"--noise-seed {BIG} is outside"),
    "tune-seed-2^64": ("tune", ["--seed", BIG, "--trials", "2"], f"--seed {BIG} is outside"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_flag_out_of_range(tmp_path, tiny_checkpoints, capsys, case: str) -> None:
    command, extra, expected = CASES[case]
    if command == "measure":
        args = _measure(tiny_checkpoints, tmp_path, *extra)
    else:
        args = _finetune(tiny_checkpoints, tmp_path, *extra, command=command)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, err = run_cli(args, capsys)
    assert code == 1
    assert err.startswith("error: ") and expected in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_largest_seed_is_accepted(tmp_path, tiny_checkpoints, capsys) -> None:
    args = _measure(tiny_checkpoints, tmp_path, "--seed", str(2**64 - 1), "--samples", "4",
                    "--no-spectrum", "-q")
    code, err = run_cli(args, capsys)
    assert code == 0, err
    assert (tmp_path / "audit.json").exists()
