"""``hessaudit`` run in this process, and the built-in digits CNN's checkpoints it audits: the
helpers of the CLI-level tests (gates, compare, the HTML report)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from hessaudit.cli import main

#: ``--model`` of the built-in digits CNN.
MODEL = "hessaudit.zoo:digits_cnn"


def make_checkpoints(folder: Path, scales: dict[str, float]) -> dict[str, Path]:
    """A pretrained digits CNN and fine-tuned copies perturbed by ``scale * N(0, 1)``."""
    import torch

    from hessaudit.inputs.checkpoints import save_checkpoint
    from hessaudit.zoo import digits_cnn

    with torch.random.fork_rng():
        torch.manual_seed(0)
        state = {k: v.clone() for k, v in digits_cnn(num_classes=10).state_dict().items()}
    paths = {"pre": folder / "pre.safetensors"}
    save_checkpoint(paths["pre"], state)
    generator = torch.Generator().manual_seed(1)
    for name, scale in scales.items():
        tuned = {
            key: value + scale * torch.randn(value.shape, generator=generator)
            if value.is_floating_point() and "running" not in key
            else value.clone()
            for key, value in state.items()
        }
        paths[name] = folder / f"{name}.safetensors"
        save_checkpoint(paths[name], tuned)
    return paths


@contextlib.contextmanager
def one_thread():
    """Run torch on one thread: the audits here are tiny, and on a busy two-core machine two
    spinning threads make them several times slower. The previous setting is restored."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_main(args: list) -> int:
    """``hessaudit ARGS`` in this process; returns the exit code."""
    with one_thread(), pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return exc.value.code


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    """``hessaudit ARGS`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = run_main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
