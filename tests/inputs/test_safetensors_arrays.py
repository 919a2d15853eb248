"""``inspect`` without torch: two plain safetensors files give the torch path's answer.

:func:`hessaudit.audit.distances.compare_weights` reads a pair of plain safetensors files with
:func:`hessaudit.inputs.safetensors_arrays.read_plain` (numpy, no torch) and every other file
with ``load_checkpoint``. Checked here: the same document (names, order, shapes, new heads,
unpaired tensors; distances to 1e-12 relative) as the torch path on files with every kind of
tensor and under every selection option, and every file that is not plain (NaN, bfloat16,
wrapper prefixes, torch files, corrupt files) goes to the torch path.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from hessaudit.audit.distances import compare_weights
from hessaudit.errors import HessauditError
from hessaudit.inputs import safetensors_arrays
from hessaudit.inputs.checkpoints import WRAPPER_PREFIXES, save_checkpoint
from hessaudit.inputs.safetensors_arrays import read_plain


def _states(seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A pretrained and a fine-tuned state with every kind of tensor layer selection sees."""
    rng = np.random.default_rng(seed)

    def r(*shape: int, dtype: str = "float32") -> np.ndarray:
        return np.array(rng.standard_normal(shape), dtype=dtype)

    pre = {
        "conv1.weight": r(8, 3, 3, 3),
        "bn1.weight": r(8), "bn1.bias": r(8), "bn1.running_mean": r(8),
        "bn1.num_batches_tracked": np.array(7, dtype="int64"),
        "layer1.0.weight": r(300, 300),  # 90000 terms: the summation order of the norm shows
        "layer1.0.bias": r(300),
        "half.weight": r(4, 5, dtype="float16"),
        "double.weight": r(4, 5, dtype="float64"),
        "zero.weight": np.zeros((3, 3), dtype="float32"),  # no relative distance
        "empty.weight": np.zeros((0, 3), dtype="float32"),
        "scale": r(),  # a 0-d "norm" tensor
        "mask.weight": np.ones((2, 2), dtype="bool"),  # not floating: never a layer
        "old_head.weight": r(5, 8),  # only in the pretrained file
        "fc.weight": r(5, 8), "fc.bias": r(5),  # a new head: another shape
    }
    ft = {k: np.array(v + 0.01 * r(*v.shape, dtype=str(v.dtype)), dtype=v.dtype)
          if v.dtype.kind == "f" else v for k, v in pre.items() if k != "old_head.weight"}
    ft.update({"fc.weight": r(10, 8), "fc.bias": r(10), "extra.weight": r(2, 6)})
    return pre, ft


def _write(tmp_path: Path, pre: dict, ft: dict, **metadata: str) -> tuple[Path, Path]:
    paths = tmp_path / "pre.safetensors", tmp_path / "ft.safetensors"
    save_file(pre, str(paths[0]), metadata=metadata or None)
    save_file(ft, str(paths[1]), metadata=metadata or None)
    return paths


def _torch_path(monkeypatch: pytest.MonkeyPatch, *args, **options):
    with monkeypatch.context() as m:
        m.setattr(safetensors_arrays, "read_plain", lambda path: None)
        return compare_weights(*map(str, args), **options).to_dict()


def _assert_same(light: dict, heavy: dict) -> None:
    numbers = ("dist_fro", "rel_dist")
    assert {k: v for k, v in light.items() if k != "layers"} == {
        k: v for k, v in heavy.items() if k != "layers"}
    assert len(light["layers"]) == len(heavy["layers"])
    for a, b in zip(light["layers"], heavy["layers"], strict=True):
        assert {k: v for k, v in a.items() if k not in numbers} == {
            k: v for k, v in b.items() if k not in numbers}
        for key in numbers:
            assert (a[key] is None) == (b[key] is None), (a["name"], key)
            if a[key] is not None:
                assert a[key] == pytest.approx(b[key], rel=1e-12, abs=0.0), (a["name"], key)


OPTIONS = [
    {},
    {"include_bias": True, "include_norm": True},
    {"exclude_new_head": True},
    {"include": ["layer1.*", "fc.*"], "exclude": ["*.bias"], "include_bias": True},
]


@pytest.mark.parametrize("options", OPTIONS)
def test_plain_pair_matches_the_torch_path(tmp_path, monkeypatch, options) -> None:
    pre, ft = _write(tmp_path, *_states())
    assert read_plain(pre) is not None and read_plain(ft) is not None
    light = compare_weights(str(pre), str(ft), **options).to_dict()
    _assert_same(light, _torch_path(monkeypatch, pre, ft, **options))
    assert any(layer["rel_dist"] is None and not layer["is_new_head"]
               for layer in light["layers"]) == ("include" not in options)


def test_the_saved_tensor_order_is_kept(tmp_path, monkeypatch) -> None:
    names = ["z.weight", "a.weight", "m.weight"]
    state = {name: torch.randn(3, 4, generator=torch.Generator().manual_seed(i))
             for i, name in enumerate(names)}
    pre, ft = tmp_path / "pre.safetensors", tmp_path / "ft.safetensors"
    save_checkpoint(pre, state)
    save_checkpoint(ft, {k: v + 1 for k, v in state.items()})
    plain = read_plain(ft)
    assert plain is not None and list(plain.tensors) == names
    light = compare_weights(str(pre), str(ft)).to_dict()
    assert [layer["name"] for layer in light["layers"]] == names
    _assert_same(light, _torch_path(monkeypatch, pre, ft))


def test_the_demo_pair_matches_the_torch_path(digits_pretrained, tmp_path, monkeypatch) -> None:
    from safetensors.numpy import load_file

    ft = tmp_path / "ft.safetensors"
    state = load_file(digits_pretrained)
    save_file({k: v * 1.5 if v.dtype.kind == "f" else v for k, v in state.items()}, str(ft))
    assert read_plain(digits_pretrained) is not None
    light = compare_weights(digits_pretrained, str(ft)).to_dict()
    _assert_same(light, _torch_path(monkeypatch, digits_pretrained, ft))


def _nan(tmp_path: Path) -> tuple[Path, Path]:
    pre, ft = _states()
    pre["conv1.weight"][0, 0, 0, 0] = np.nan
    return _write(tmp_path, pre, ft)


def _inf(tmp_path: Path) -> tuple[Path, Path]:
    pre, ft = _states()
    ft["half.weight"][0, 0] = np.inf
    return _write(tmp_path, pre, ft)


def _bfloat16(tmp_path: Path) -> tuple[Path, Path]:
    pre, ft = tmp_path / "pre.safetensors", tmp_path / "ft.safetensors"
    save_checkpoint(pre, {"w": torch.ones(3, 3, dtype=torch.bfloat16)})
    save_checkpoint(ft, {"w": torch.full((3, 3), 2.0, dtype=torch.bfloat16)})
    return pre, ft


def _prefixed(prefix: str):
    def make(tmp_path: Path) -> tuple[Path, Path]:
        pre, ft = _states()
        return _write(tmp_path, {prefix + k: v for k, v in pre.items()},
                      {prefix + k: v for k, v in ft.items()})
    return make


def _torch_files(tmp_path: Path) -> tuple[Path, Path]:
    paths = tmp_path / "pre.pt", tmp_path / "ft.pt"
    for path, state in zip(paths, _states(), strict=True):
        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    return paths


def _truncated(tmp_path: Path) -> tuple[Path, Path]:
    pre, ft = _write(tmp_path, *_states())
    ft.write_bytes(ft.read_bytes()[:-100])
    return pre, ft


def _lying_header(tmp_path: Path) -> tuple[Path, Path]:
    pre, _ = _write(tmp_path, *_states())
    header = json.dumps({"w": {"dtype": "F32", "shape": [3000, 3000], "data_offsets": [0, 4]}})
    ft = tmp_path / "lie.safetensors"
    ft.write_bytes(struct.pack("<Q", len(header)) + header.encode() + bytes(4))
    return pre, ft


def _odd_order(tmp_path: Path) -> tuple[Path, Path]:
    return _write(tmp_path, *_states(), **{"hessaudit.tensor_order": "[1, 2]"})


NOT_PLAIN = {
    "nan": _nan, "inf": _inf, "bfloat16": _bfloat16, "torch-files": _torch_files,
    "truncated": _truncated, "lying-header": _lying_header, "odd-order": _odd_order,
    **{f"prefix-{p}": _prefixed(p) for p in (*WRAPPER_PREFIXES, "model.")},
}


@pytest.mark.parametrize("case", sorted(NOT_PLAIN))
def test_a_file_that_is_not_plain_goes_to_the_torch_path(tmp_path, monkeypatch, case) -> None:
    pre, ft = NOT_PLAIN[case](tmp_path)
    assert read_plain(pre) is None or read_plain(ft) is None
    try:
        light = compare_weights(str(pre), str(ft)).to_dict()
    except HessauditError as exc:
        with pytest.raises(HessauditError) as heavy:
            _torch_path(monkeypatch, pre, ft)
        assert str(exc) == str(heavy.value)
    else:
        assert light == _torch_path(monkeypatch, pre, ft)


@pytest.mark.parametrize("name", ["missing.safetensors", "folder.safetensors", "empty.safetensors"])
def test_no_plain_reading_of_a_missing_empty_or_folder_path(tmp_path, name) -> None:
    (tmp_path / "folder.safetensors").mkdir()
    (tmp_path / "empty.safetensors").write_bytes(b"")
    assert read_plain(tmp_path / name) is None


def _count_openings(monkeypatch) -> list[str]:
    import safetensors

    opened: list[str] = []
    real = safetensors.safe_open

    def counting(path, *args, **kwargs):
        opened.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(safetensors, "safe_open", counting)
    return opened


def test_a_large_file_is_mapped_again_as_it_is_read(tmp_path, monkeypatch) -> None:
    """64 tensors of 64 KiB through mappings of 256 KiB: 4 tensors a mapping, so the pages of
    the whole file never count in the resident set at once."""
    state = {f"t{i:02d}.weight": np.full((128, 128), i, dtype="float32") for i in range(64)}
    path = tmp_path / "big.safetensors"
    save_file(state, str(path))
    monkeypatch.setattr(safetensors_arrays, "REMAP_BYTES", 256 << 10)
    opened = _count_openings(monkeypatch)
    assert read_plain(path) is not None  # the header, then every tensor's finite check
    assert len(opened) == 1 + 64 // 4


def test_a_file_of_many_small_tensors_is_opened_once(tmp_path, monkeypatch) -> None:
    state = {f"layer{i}.weight": np.ones((2, 2), dtype="float32") for i in range(3000)}
    path = tmp_path / "many.safetensors"
    save_file(state, str(path))
    opened = _count_openings(monkeypatch)
    plain = read_plain(path)
    assert plain is not None and len(opened) == 2  # the header, then one mapping for all
    assert all(t.float64().sum() == 4.0 for t in plain.tensors.values())
    assert len(opened) == 2
