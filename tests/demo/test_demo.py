"""``hessaudit demo`` and :mod:`hessaudit.demo.run`: building, caching and auditing the demo pair.

The default suite runs the demo with one-epoch settings (a few seconds); the real settings run
in the ``slow`` test, which also checks the two-minute budget.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from hessaudit._version import __version__
from hessaudit.cli import main
from hessaudit.demo import run as demo


@pytest.fixture
def tiny_settings(monkeypatch):
    """One epoch of pretraining and of fine-tuning: the same code path, in seconds."""
    monkeypatch.setitem(demo.PRETRAIN_SETTINGS, "epochs", 1)
    monkeypatch.setitem(demo.FINETUNE_SETTINGS, "epochs", 1)


def _run(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(args)
    return int(exc.value.code)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from hessaudit.inputs.checkpoints import load_checkpoint

    return {k: v.clone() for k, v in load_checkpoint(path).tensors.items()}


def test_cache_key_follows_version_and_settings(monkeypatch) -> None:
    key = demo.cache_key()
    assert key.startswith(f"v{__version__}-")
    monkeypatch.setitem(demo.FINETUNE_SETTINGS, "epochs", 99)
    assert demo.cache_key() != key


def test_default_cache_dir(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HESSAUDIT_CACHE", str(tmp_path / "root"))
    assert demo.default_cache_dir() == tmp_path / "root" / "demo"
    monkeypatch.delenv("HESSAUDIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert demo.default_cache_dir() == tmp_path / "xdg" / "hessaudit" / "demo"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert demo.default_cache_dir() == tmp_path / "home" / ".cache" / "hessaudit" / "demo"


def test_build_cache_reuse_and_rebuild(tiny_settings, tmp_path) -> None:
    first = demo.build_checkpoints(tmp_path)
    assert not first.cached
    assert first.folder == tmp_path / demo.cache_key()
    manifest = json.loads((first.folder / demo.MANIFEST).read_text())
    assert manifest["tool_version"] == __version__
    assert manifest["finetune"]["epochs"] == 1
    # nothing but the entry's files is left behind (no temporary build folder)
    assert sorted(p.name for p in first.folder.iterdir()) == sorted(
        [demo.MANIFEST, demo.PRETRAINED, demo.FINETUNED]
    )

    second = demo.build_checkpoints(tmp_path)
    assert second.cached
    assert second.manifest["sha256"] == manifest["sha256"]

    # A damaged file is detected and the entry rebuilt, deterministically (same tensors; the
    # file bytes may differ: safetensors writes the metadata header in no fixed order).
    before = {name: _tensors(first.folder / name) for name in (demo.PRETRAINED, demo.FINETUNED)}
    first.finetuned.write_bytes(b"not a checkpoint")
    third = demo.build_checkpoints(tmp_path)
    assert not third.cached
    for name, tensors in before.items():
        after = _tensors(third.folder / name)
        assert list(after) == list(tensors)
        assert all(torch.equal(after[k], tensors[k]) for k in tensors), name

    # An entry without its manifest (an interrupted build) is not trusted either.
    (first.folder / demo.MANIFEST).unlink()
    assert not demo.build_checkpoints(tmp_path).cached
    # and --rebuild rebuilds a valid entry
    assert demo.build_checkpoints(tmp_path).cached
    assert not demo.build_checkpoints(tmp_path, rebuild=True).cached


def test_run_demo_audits_with_the_gap(tiny_settings, tmp_path) -> None:
    result = demo.run_demo(tmp_path)
    document = result.to_dict()
    assert document["schema"] == "hessaudit.audit/1"
    assert document["inputs"]["data"] == "digits"
    assert document["inputs"]["eval_data"] == "digits"
    assert document["n"] == 1201
    assert document["gap"] is not None and document["hessian_term"] > 0
    assert [layer["name"] for layer in document["layers"]] == [
        "conv1.weight", "layer1.0.weight", "layer2.0.weight", "fc.weight"
    ]
    assert document["layers"][-1]["is_new_head"]
    assert document["demo"]["cached"] is False


def test_cli_demo_json_and_cache(tiny_settings, tmp_path, capsys) -> None:
    out = tmp_path / "audit.json"
    cache = tmp_path / "cache"
    assert _run(["demo", "--cache-dir", str(cache), "--json", str(out)]) == 0
    captured = capsys.readouterr()
    assert "Generalization bound" in captured.out
    assert "G / gap" in captured.out
    assert "pretraining digits_cnn" in captured.err
    document = json.loads(out.read_text())
    assert document["schema"] == "hessaudit.audit/1" and document["gap"] is not None

    assert _run(["demo", "--cache-dir", str(cache), "--json", "-"]) == 0
    captured = capsys.readouterr()
    again = json.loads(captured.out)  # only the JSON on stdout
    assert again["hessian_term"] == pytest.approx(document["hessian_term"], rel=1e-6)
    assert "using the cached demo checkpoints" in captured.err


def test_cli_demo_env_cache_and_quiet(tiny_settings, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HESSAUDIT_CACHE", str(tmp_path / "env"))
    assert _run(["demo", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert (tmp_path / "env" / "demo" / demo.cache_key() / demo.MANIFEST).is_file()


def test_cli_demo_bad_json_path_fails_fast(tmp_path, capsys) -> None:
    code = _run(["demo", "--cache-dir", str(tmp_path), "--json", str(tmp_path / "no" / "a.json")])
    assert code == 1
    assert "does not exist" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # failed before building anything


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permissions")
def test_cli_demo_unwritable_cache(tmp_path, capsys) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert _run(["demo", "--cache-dir", str(locked / "demo")]) == 1
        assert "cache" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


@pytest.mark.slow
def test_real_demo_cold_and_cached(tmp_path) -> None:
    start = time.perf_counter()
    cold = demo.run_demo(tmp_path)
    cold_seconds = time.perf_counter() - start
    start = time.perf_counter()
    warm = demo.run_demo(tmp_path)
    warm_seconds = time.perf_counter() - start
    assert not cold.checkpoints.cached and warm.checkpoints.cached
    assert cold_seconds < 120, cold_seconds
    assert warm_seconds < cold_seconds
    document = warm.to_dict()
    assert document["gap"] > 0 and document["ratio_to_gap"] > 0
    assert document["demo"]["finetune"]["heldout_acc"] > 0.9
    assert Path(document["inputs"]["finetuned"]["path"]).parent == cold.checkpoints.folder
