"""Two CPU processes (gloo, 127.0.0.1) give the same audit and the same fine-tuned weights as one.

The ranks are started with ``torch.multiprocessing.spawn`` and the environment torchrun would
set (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT on a free local port); each runs
the library entry point (``run_audit`` / ``run_finetune``) exactly as ``torchrun -m hessaudit``
would, and writes what it got to a file the test compares with a one-process run.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from hessaudit.audit.distributed import SINGLE, Context, batch_slice


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker(rank: int, world: int, port: int, job: str, kwargs: dict, out: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    try:
        if job == "audit":
            from hessaudit.audit.run import AuditRequest, run_audit

            document = run_audit(AuditRequest(**kwargs)).to_dict()
            Path(out, f"rank{rank}.json").write_text(json.dumps(document))
        else:
            from hessaudit.robust.config import FinetuneConfig
            from hessaudit.robust.trainer import run_finetune

            run_finetune(FinetuneConfig(**kwargs), overwrite=True)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _launch(job: str, kwargs: dict, out: Path, world: int = 2) -> None:
    mp.spawn(_worker, args=(world, _free_port(), job, kwargs, str(out)), nprocs=world, join=True)


_COMPARED = ("quad_raw", "quad_pos", "hcal", "top_eig", "trace", "trace_stderr", "cross")


def _assert_same_audit(single: dict, dist: dict) -> None:
    assert [row["name"] for row in single["layers"]] == [row["name"] for row in dist["layers"]]
    for a, b in zip(single["layers"], dist["layers"], strict=True):
        assert a["engine_path"] == b["engine_path"]
        for key in _COMPARED:
            if a[key] is None:
                assert b[key] is None
            else:
                assert b[key] == pytest.approx(a[key], rel=2e-4, abs=1e-9), (a["name"], key)
    for key in ("train_loss", "C", "n", "hessian_term", "bound"):
        assert dist[key] == pytest.approx(single[key], rel=2e-4)


@pytest.mark.slow  # spawns two gloo ranks (~8 s each); CI runs -m slow
@pytest.mark.parametrize(
    "options",
    [
        {},  # example-max, JVP path, spectrum on
        {"reduce": "mean", "engine": "lanczos", "lanczos_steps": 8, "spectrum": False},
        {"reduce": "batch-max", "form": "cross", "spectrum": False},
    ],
    ids=["example-max-jvp", "mean-lanczos", "batch-max-cross"],
)
def test_two_rank_audit_equals_one_process(tmp_path, tiny_checkpoints, options):
    from hessaudit.audit.run import AuditRequest, run_audit

    kwargs = dict(
        pretrained=str(tiny_checkpoints.pretrained),
        finetuned=str(tiny_checkpoints.finetuned),
        model=tiny_checkpoints.spec,
        data="digits",
        samples=40,  # 5 batches of 8: uneven over 2 ranks
        batch_size=8,
        spectrum_samples=12,
        trace_probes=4,
        **options,
    )
    single = run_audit(AuditRequest(**kwargs)).to_dict()
    _launch("audit", kwargs, tmp_path)
    first = json.loads((tmp_path / "rank0.json").read_text())
    second = json.loads((tmp_path / "rank1.json").read_text())
    _assert_same_audit(single, first)
    assert first["layers"] == second["layers"]  # every rank ends with the same result


_NO_BN_FACTORY = """
import torch
from torch import nn


def make(num_classes=10):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(16, num_classes),
        )
"""


@pytest.mark.slow  # spawns two gloo ranks (~8 s each); CI runs -m slow
def test_two_rank_finetune_equals_one_process(tmp_path):
    # No BatchNorm: under DDP its batch statistics are per rank (as in any DDP run), which
    # would make the comparison inexact.
    from safetensors.torch import load_file, save_file

    from hessaudit.robust.config import FinetuneConfig
    from hessaudit.robust.trainer import run_finetune

    (tmp_path / "nobn.py").write_text(_NO_BN_FACTORY)
    spec = f"{tmp_path / 'nobn.py'}:make"
    namespace: dict = {}
    exec(_NO_BN_FACTORY, namespace)
    pre = {k: v.contiguous() for k, v in namespace["make"](5).state_dict().items()}
    save_file(pre, str(tmp_path / "pre.safetensors"))
    common = dict(
        model=spec, pretrained=str(tmp_path / "pre.safetensors"),
        data="digits", samples=120, batch_size=25, epochs=2, lr=1e-2, seed=3,
        loss="reweight", inject_noise="symmetric:0.3", noise_matrix="injected",
        constraint="frobenius", radius=0.05,
    )
    run_finetune(FinetuneConfig(out=str(tmp_path / "one"), **common))
    _launch("finetune", {**common, "out": str(tmp_path / "two")}, tmp_path)
    one = load_file(str(tmp_path / "one" / "final.safetensors"))
    two = load_file(str(tmp_path / "two" / "final.safetensors"))
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
    metrics_one = (tmp_path / "one" / "metrics.csv").read_text().splitlines()
    metrics_two = (tmp_path / "two" / "metrics.csv").read_text().splitlines()
    assert len(metrics_one) == len(metrics_two) == 4  # header, epochs 0-2: written once


def test_batch_slice_weights_give_the_global_mean():
    idx = torch.arange(7)
    parts = [batch_slice(idx, Context(rank=r, world_size=3)) for r in range(3)]
    assert sorted(torch.cat([p for p, _ in parts]).tolist()) == list(range(7))
    # DDP averages over 3 ranks: sum_r w_r * mean_r / 3 == global mean
    values = torch.arange(7, dtype=torch.float64) ** 2
    ddp = sum(w * values[p].mean() for p, w in parts) / 3
    assert float(ddp) == pytest.approx(float(values.mean()))
    assert batch_slice(idx, SINGLE) == (idx, None)
    empty, weight = batch_slice(torch.arange(1), Context(rank=1, world_size=2))
    assert weight == 0.0 and len(empty) == 1


def test_context_split_and_shard_cover_everything():
    for world in (1, 2, 3, 5):
        ctxs = [Context(rank=r, world_size=world) for r in range(world)]
        assert sorted(i for c in ctxs for i in c.split(11)) == list(range(11))
        assert sorted(i for c in ctxs for i in c.shard(11)) == list(range(11))
