"""The checkpoint dispatcher (hessaudit.inputs.checkpoints): the ordered FORMATS table, what
it does for every format (record, unwrapping, prefixes, checks), and how a layout plugs in."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import safetensors.torch
import torch

from hessaudit.errors import HessauditError
from hessaudit.inputs import checkpoints
from hessaudit.inputs.checkpoint_safetensors import read_safetensors
from hessaudit.inputs.checkpoint_torch import read_torch
from hessaudit.inputs.checkpoints import FORMATS, CheckpointFormat, load_checkpoint
from hessaudit.inputs.file_record import FileRecord, sha256_file


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(3, 2, generator=g), "a.bias": torch.randn(3, generator=g)}


def test_the_table_tries_the_extension_then_the_bytes() -> None:
    assert [(f.name, f.read, f.folder) for f in FORMATS] == [
        ("safetensors", read_safetensors, False),
        ("torch", read_torch, False),
        ("safetensors", read_safetensors, False),
    ]


def test_content_decides_for_other_extensions(tmp_path: Path) -> None:
    state = _state()
    safetensors.torch.save_file(state, str(tmp_path / "st.pt"))  # safetensors named .pt
    torch.save({"state_dict": state}, tmp_path / "t.weights")  # torch zip, unknown extension
    st, t = load_checkpoint(tmp_path / "st.pt"), load_checkpoint(tmp_path / "t.weights")
    assert st.container is None and t.container == "state_dict"
    for ck in (st, t):
        assert all(torch.equal(ck.tensors[k], v) for k, v in state.items())


def test_a_new_file_format_plugs_in_with_one_table_entry(tmp_path: Path, monkeypatch) -> None:
    """A stand-in layout: a '.pair' file holding a torch file behind an 8-byte tag, whose
    tensors sit in a container and under a wrapper prefix; the dispatcher records the file and
    strips the prefix; the tensor checks apply."""
    state = {"module." + k: v for k, v in _state().items()}

    def read(p: Path, map_location) -> tuple:
        (tmp_path / "inner.pt").write_bytes(p.read_bytes()[8:])
        return torch.load(tmp_path / "inner.pt", map_location=map_location), "pair", {"v": 1}

    fmt = CheckpointFormat("pair", lambda p: p.read_bytes()[:8] == b"PAIRFILE", read)
    monkeypatch.setattr(checkpoints, "FORMATS", (fmt, *FORMATS))
    torch.save(state, tmp_path / "raw.pt")
    path = tmp_path / "w.pair"
    path.write_bytes(b"PAIRFILE" + (tmp_path / "raw.pt").read_bytes())
    ck = load_checkpoint(path)
    assert ck.container == "pair" and ck.metadata == {"v": 1} and ck.stripped == ("module.",)
    assert ck.record == FileRecord(str(path), sha256_file(path), path.stat().st_size)
    assert sorted(ck.tensors) == ["a.bias", "a.weight"]
    torch.save({"module.a.weight": torch.tensor([float("nan")])}, tmp_path / "raw.pt")
    path.write_bytes(b"PAIRFILE" + (tmp_path / "raw.pt").read_bytes())
    with pytest.raises(HessauditError, match="contains NaN values"):
        load_checkpoint(path)


def test_a_folder_layout_is_asked_before_folders_are_refused(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    # no registered folder layout claims it: read as a Hugging Face directory, which it is not
    with pytest.raises(HessauditError, match=r"is a directory without model\.safetensors"):
        load_checkpoint(folder)
    safetensors.torch.save_file(_state(), str(folder / "model.safetensors"))
    fmt = CheckpointFormat(
        "folder",
        claims=lambda p: (p / "model.safetensors").is_file(),
        read=lambda p, loc: read_safetensors(p / "model.safetensors", loc),
        folder=True,
        record=lambda p: dataclasses.replace(
            checkpoints.file_record(p / "model.safetensors"), path=str(p)
        ),
    )
    monkeypatch.setattr(checkpoints, "FORMATS", (fmt, *FORMATS))
    ck = load_checkpoint(folder)
    assert ck.record.path == str(folder) and len(ck.tensors) == 2
    assert ck.record.sha256 == sha256_file(folder / "model.safetensors")
    assert load_checkpoint(folder / "model.safetensors").record.path != str(folder)
