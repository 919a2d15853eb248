"""Reading and writing checkpoints: formats, containers, prefixes, metadata, refusals."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import struct
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from hessaudit.errors import HessauditError
from hessaudit.inputs.checkpoints import (
    FileRecord,
    load_checkpoint,
    save_checkpoint,
    sha256_file,
    strip_prefixes,
)


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "conv.weight": torch.randn(4, 1, 3, 3, generator=g),
        "conv.bias": torch.randn(4, generator=g),
        "bn.running_mean": torch.zeros(4),
        "bn.num_batches_tracked": torch.tensor(7),
        "fc.weight": torch.randn(3, 4, generator=g),
    }


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


class _Marker:
    """Unpickling this would run ``os.mkdir(path)``: the classic malicious-pickle payload."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


# ------------------------------------------------------------------ hashes and records


def test_sha256_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    data = os.urandom(3 * (1 << 20) + 17)  # several chunks
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_record_of_loaded_file(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(_state(), path)
    ckpt = load_checkpoint(path)
    assert ckpt.record == FileRecord(str(path), sha256_file(path), path.stat().st_size)
    assert ckpt.record.to_dict() == {
        "path": str(path), "sha256": ckpt.record.sha256, "size": path.stat().st_size
    }
    summary = ckpt.to_dict()
    assert summary["num_tensors"] == 5 and summary["container"] is None
    json.dumps(summary)


# ------------------------------------------------------------------ torch formats, containers


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt", ".pth.tar"])
def test_torch_suffixes_bare_state_dict(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"w{suffix}"
    torch.save(_state(), path)
    ckpt = load_checkpoint(path)
    assert ckpt.container is None
    assert _same(ckpt.tensors, _state())


@pytest.mark.parametrize(
    ("container", "extra", "expected"),
    [
        ({"state_dict": "A"}, {}, "state_dict"),
        ({"model": "A"}, {}, "model"),
        ({"state_dict": "B", "state_dict_ema": "A"}, {}, "state_dict_ema"),
        ({"model": "B", "model_ema": "A"}, {}, "model_ema"),
        ({"state_dict": "A", "model": "B"}, {}, "state_dict"),
        ({"state_dict": "A"}, {"state_dict_ema": None}, "state_dict"),
    ],
)
def test_containers_follow_timm_preference(
    tmp_path: Path, container: dict, extra: dict, expected: str
) -> None:
    a = _state()
    b = {k: v + 1 if v.is_floating_point() else v for k, v in a.items()}
    obj = {key: (a if which == "A" else b) for key, which in container.items()}
    obj.update(extra)
    obj.update({"epoch": 12, "arch": "tiny", "optimizer": {"lr": torch.tensor(0.1)}})
    path = tmp_path / "w.pth"
    torch.save(obj, path)
    ckpt = load_checkpoint(path)
    assert ckpt.container == expected
    assert _same(ckpt.tensors, a)
    assert ckpt.metadata == {"epoch": 12, "arch": "tiny"}


def test_timm_train_checkpoint_with_args_namespace(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint-3.pth.tar"
    torch.save(
        {"epoch": 3, "arch": "resnet18", "state_dict": _state(),
         "args": argparse.Namespace(lr=0.1, model="resnet18"), "metric": 71.5},
        path,
    )
    ckpt = load_checkpoint(path)
    assert ckpt.container == "state_dict" and ckpt.metadata["metric"] == 71.5


def test_bare_state_dict_with_scalars_keeps_them_as_metadata(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save({**_state(), "epoch": 4, "step": 100}, path)
    ckpt = load_checkpoint(path)
    assert list(ckpt.tensors) == list(_state())
    assert ckpt.metadata == {"epoch": 4, "step": 100}


def test_legacy_non_zip_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "old.pth"
    torch.save(_state(), path, _use_new_zipfile_serialization=False)
    assert _same(load_checkpoint(path).tensors, _state())


def test_unknown_extension_is_sniffed(tmp_path: Path) -> None:
    torch_file = tmp_path / "weights.data"
    torch.save(_state(), torch_file)
    assert _same(load_checkpoint(torch_file).tensors, _state())
    st_file = tmp_path / "weights.model"
    safetensors.torch.save_file(_state(), str(st_file))
    assert set(load_checkpoint(st_file).tensors) == set(_state())
    # a safetensors file with a torch extension is read as safetensors
    st_as_pt = tmp_path / "really_safetensors.pt"
    st_as_pt.write_bytes(st_file.read_bytes())
    assert set(load_checkpoint(st_as_pt).tensors) == set(_state())


# ------------------------------------------------------------------ prefixes


@pytest.mark.parametrize(
    ("prefix", "stripped"),
    [
        ("module.", ("module.",)),
        ("_orig_mod.", ("_orig_mod.",)),
        ("_orig_mod.module.", ("_orig_mod.", "module.")),
        ("module._orig_mod.", ("module.", "_orig_mod.")),
        ("model.", ("model.",)),
    ],
)
def test_wrapper_prefixes_are_stripped(tmp_path: Path, prefix: str, stripped: tuple) -> None:
    path = tmp_path / "w.pt"
    torch.save({"state_dict": {prefix + k: v for k, v in _state().items()}}, path)
    ckpt = load_checkpoint(path)
    assert _same(ckpt.tensors, _state())
    assert ckpt.stripped == stripped


def test_model_prefix_kept_unless_every_name_has_it(tmp_path: Path) -> None:
    state = {"model.conv.weight": torch.ones(2, 2), "head.weight": torch.ones(3, 2)}
    path = tmp_path / "w.pt"
    torch.save(state, path)
    assert list(load_checkpoint(path).tensors) == ["model.conv.weight", "head.weight"]


def test_prefix_collision_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save({"module.fc.weight": torch.ones(2, 2), "fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(HessauditError, match=r"both become 'fc\.weight'"):
        load_checkpoint(path)


def test_strip_prefixes_function() -> None:
    mapping, removed = strip_prefixes(["module.model.a", "module.model.b"])
    assert mapping == {"module.model.a": "a", "module.model.b": "b"}
    assert removed == ("module.", "model.")
    assert strip_prefixes(["a", "b.c"]) == ({"a": "a", "b.c": "b.c"}, ())


# ------------------------------------------------------------------ safetensors


def test_safetensors_round_trip_with_metadata_and_order(tmp_path: Path) -> None:
    state = _state()
    meta = {"epoch": 3, "note": "fine-tuned", "cfg": {"lr": 0.1, "layers": [1, 2]},
            "zip": "007", "flag": True}
    path = tmp_path / "ft.safetensors"
    record = save_checkpoint(path, state, metadata=meta)
    assert record.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record.size == path.stat().st_size
    ckpt = load_checkpoint(path)
    assert ckpt.metadata == meta
    assert ckpt.container is None and ckpt.record == record
    assert _same(ckpt.tensors, state)  # including the original (unsorted) order
    assert not list(tmp_path.glob(".*.tmp"))


def test_external_safetensors_metadata_is_json_decoded_when_json(tmp_path: Path) -> None:
    path = tmp_path / "hub.safetensors"
    safetensors.torch.save_file(_state(), str(path), metadata={"format": "pt", "n": "3"})
    ckpt = load_checkpoint(path)
    assert ckpt.metadata == {"format": "pt", "n": 3}
    assert list(ckpt.tensors) == sorted(_state())  # no order stored: names come sorted


def test_save_handles_shared_and_non_contiguous_tensors(tmp_path: Path) -> None:
    base = torch.arange(12.0).reshape(3, 4)
    tied = torch.randn(5, 3)
    state = {
        "emb.weight": tied,
        "head.weight": tied,  # tied weights share storage
        "t": base.t(),  # non-contiguous
        "row": base[1],  # a view into a larger storage
    }
    path = tmp_path / "shared.safetensors"
    save_checkpoint(path, state)
    loaded = load_checkpoint(path).tensors
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor)


def test_save_refuses_bad_metadata_and_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    with pytest.raises(HessauditError, match="not JSON-serializable"):
        save_checkpoint(path, _state(), metadata={"bad": object()})
    with pytest.raises(HessauditError, match="not a tensor"):
        save_checkpoint(path, {"a": [1, 2]})  # type: ignore[dict-item]
    with pytest.raises(HessauditError, match=r"folder .* does not exist"):
        save_checkpoint(tmp_path / "nope" / "x.safetensors", _state())
    assert not path.exists() and not list(tmp_path.iterdir())


def test_save_is_atomic_over_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    save_checkpoint(path, {"a": torch.ones(2)})
    before = path.read_bytes()
    with pytest.raises(HessauditError):
        save_checkpoint(path, {"a": torch.zeros(2)}, metadata={"bad": {1, 2}})
    assert path.read_bytes() == before


# ------------------------------------------------------------------ refusals


def test_malicious_pickle_is_refused_and_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "payload": _Marker(str(marker))}, path)
    with pytest.raises(HessauditError, match="non-tensor Python objects and was not loaded"):
        load_checkpoint(path)
    assert not marker.exists()
    # the payload is live: an unrestricted load would have run it
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_raw_malicious_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(_Marker(str(marker)), protocol=2))
    with pytest.raises(HessauditError, match="non-tensor Python objects"):
        load_checkpoint(path)
    assert not marker.exists()


def test_pickled_module_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(nn.Linear(2, 2), path)
    with pytest.raises(HessauditError, match="non-tensor Python objects") as info:
        load_checkpoint(path)
    assert "state_dict" in str(info.value)  # the hint says what to save instead


def test_non_tensor_values_in_state_dict_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save({"state_dict": {"w": torch.ones(2), "extra": [1, 2]}}, path)
    with pytest.raises(HessauditError, match="'extra' of 'state_dict' is a list"):
        load_checkpoint(path)
    torch.save({"w": torch.ones(2), "history": [1.0, 2.0]}, path)
    with pytest.raises(HessauditError, match="'history' is a list, not a tensor"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ({}, "no tensors found"),
        ({"state_dict": {}}, "no tensors found"),
        (torch.ones(3), "single tensor"),
        ([torch.ones(3)], "holds a list"),
    ],
)
def test_files_without_a_state_dict(tmp_path: Path, obj, match: str) -> None:
    path = tmp_path / "w.pt"
    torch.save(obj, path)
    with pytest.raises(HessauditError, match=match):
        load_checkpoint(path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_tensors_name_the_first_offender(tmp_path: Path, bad: float) -> None:
    state = _state()
    state["conv.bias"][1] = bad
    state["fc.weight"][0, 0] = bad
    path = tmp_path / "w.safetensors"
    save_checkpoint(path, state)
    kind = "NaN" if bad != bad else "Inf"
    with pytest.raises(HessauditError, match=f"'conv.bias' contains {kind}"):
        load_checkpoint(path)


def test_missing_directory_and_empty(tmp_path: Path) -> None:
    with pytest.raises(HessauditError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(HessauditError, match="is a directory"):
        load_checkpoint(tmp_path)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(HessauditError, match="is empty"):
        load_checkpoint(empty)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads anything")
def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(_state(), path)
    path.chmod(0)
    try:
        with pytest.raises(HessauditError, match="cannot be read"):
            load_checkpoint(path)
    finally:
        path.chmod(0o600)


def test_truncated_and_corrupt_safetensors(tmp_path: Path) -> None:
    good = tmp_path / "good.safetensors"
    save_checkpoint(good, _state())
    data = good.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) - 40])
    with pytest.raises(HessauditError, match="not a valid safetensors file"):
        load_checkpoint(truncated)
    header_cut = tmp_path / "header_cut.safetensors"
    header_cut.write_bytes(data[:20])
    with pytest.raises(HessauditError, match="not a valid safetensors file"):
        load_checkpoint(header_cut)
    bad_json = tmp_path / "bad_json.safetensors"
    bad_json.write_bytes(struct.pack("<Q", 5) + b"{oops" + b"\0" * 16)
    with pytest.raises(HessauditError, match="not a valid safetensors file"):
        load_checkpoint(bad_json)


def test_truncated_and_garbage_torch_files(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    torch.save(_state(), good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(HessauditError, match="truncated or corrupt"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"this is not a checkpoint at all\n" * 4)
    with pytest.raises(HessauditError, match="not a PyTorch checkpoint"):
        load_checkpoint(garbage)
    unknown = tmp_path / "weights.xyz"
    unknown.write_bytes(b"\x00\x01\x02 random")
    with pytest.raises(HessauditError, match="unknown format"):
        load_checkpoint(unknown)
    # a zip archive that is not a torch checkpoint
    import zipfile

    other_zip = tmp_path / "other.pt"
    with zipfile.ZipFile(other_zip, "w") as zf:
        zf.writestr("hello.txt", "hi")
    with pytest.raises(HessauditError, match="could not be read"):
        load_checkpoint(other_zip)


def test_errors_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"x": _Marker(str(tmp_path / "m"))}, path)
    with pytest.raises(HessauditError) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
    assert str(path) in info.value.message
