"""Issue 7, untrusted files: property-based tests of the loaders.

Whatever bytes or tensors a file holds, ``load_checkpoint`` / ``load_data`` /
``load_matrix_file`` either load it correctly or raise :class:`HessauditError` (the documented
error, printed as one line by the CLI); never another exception, and never code execution.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hessaudit.errors import HessauditError
from hessaudit.inputs.checkpoints import load_checkpoint, strip_prefixes
from hessaudit.inputs.data import load_data
from hessaudit.robust.noise_matrix import load_matrix_file

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

_WORKDIR = Path(tempfile.mkdtemp(prefix="hessaudit-props-"))


def _write(name: str, data: bytes) -> Path:
    path = _WORKDIR / name
    path.write_bytes(data)
    return path


def _valid_safetensors() -> bytes:
    from safetensors.torch import save

    return save({"conv1.weight": torch.randn(2, 1, 3, 3), "fc.bias": torch.zeros(3)})


def _valid_torch_zip() -> bytes:
    buffer = io.BytesIO()
    torch.save({"state_dict": {"fc.weight": torch.ones(2, 2)}, "epoch": 3}, buffer)
    return buffer.getvalue()


SAFETENSORS = _valid_safetensors()
TORCH_ZIP = _valid_torch_zip()
SUFFIXES = [".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".weights", ""]


def _loads_or_documented_error(path: Path):
    try:
        checkpoint = load_checkpoint(path)
    except HessauditError as exc:
        assert str(exc).strip(), "an empty error message"
        assert "\n" not in str(exc)
        return None
    assert checkpoint.tensors
    assert all(isinstance(t, torch.Tensor) for t in checkpoint.tensors.values())
    return checkpoint


# --------------------------------------------------------------------------- random bytes


@SETTINGS
@given(data=st.binary(max_size=512), suffix=st.sampled_from(SUFFIXES))
def test_random_bytes(data: bytes, suffix: str) -> None:
    _loads_or_documented_error(_write(f"random{suffix}", data))


_PREFIXES = [
    b"PK\x03\x04",  # a zip
    b"\x80\x02",  # a pickle
    b"\x80\x05",
    (40).to_bytes(8, "little") + b"{",  # a safetensors header length
    (2).to_bytes(8, "little") + b"{}",
]


@SETTINGS
@given(
    prefix=st.sampled_from(_PREFIXES),
    data=st.binary(max_size=256),
    suffix=st.sampled_from(SUFFIXES),
)
def test_random_bytes_behind_a_plausible_magic(prefix: bytes, data: bytes, suffix: str) -> None:
    _loads_or_documented_error(_write(f"magic{suffix}", prefix + data))


@SETTINGS
@given(
    which=st.sampled_from(["safetensors", "torch"]),
    cut=st.integers(min_value=0, max_value=10_000),
    flips=st.lists(
        st.tuples(st.integers(min_value=0, max_value=10_000), st.integers(0, 255)), max_size=4
    ),
    suffix=st.sampled_from([".safetensors", ".pt", ""]),
)
def test_corrupted_valid_files(which: str, cut: int, flips, suffix: str) -> None:
    original = SAFETENSORS if which == "safetensors" else TORCH_ZIP
    data = bytearray(original[: max(1, len(original) - cut % len(original))])
    for position, value in flips:
        data[position % len(data)] = value
    _loads_or_documented_error(_write(f"corrupt{suffix}", bytes(data)))


# --------------------------------------------------------------------------- random tensors

_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64,
           torch.int8, torch.uint8, torch.bool]
_names = st.lists(
    st.one_of(
        st.text(alphabet="abc._01", min_size=1, max_size=12),
        st.sampled_from(["module.fc.weight", "fc.weight", "model.fc.weight",
                         "_orig_mod.module.conv.weight", "module.", "model."]),
    ),
    min_size=0, max_size=5, unique=True,
)


@st.composite
def tensor_dicts(draw):
    names = draw(_names)
    tensors = {}
    for name in names:
        dtype = draw(st.sampled_from(_DTYPES))
        shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
        values = draw(st.sampled_from(["randn", "nan", "inf", "zeros"]))
        t = torch.randn(shape, dtype=torch.float64)
        if values == "nan" and t.numel():
            t.view(-1)[0] = float("nan")
        elif values == "inf" and t.numel():
            t.view(-1)[0] = float("inf")
        elif values == "zeros":
            t = torch.zeros(shape, dtype=torch.float64)
        if dtype.is_floating_point:
            t = t.to(dtype)
        else:
            t = torch.nan_to_num(t, nan=0.0, posinf=1.0, neginf=-1.0).to(dtype)
        tensors[name] = t
    return tensors


def _check_round_trip(tensors: dict[str, torch.Tensor], checkpoint) -> None:
    if checkpoint is None:
        return
    mapping, _ = strip_prefixes(list(tensors))
    assert set(checkpoint.tensors) == set(mapping.values())
    for name, tensor in tensors.items():
        loaded = checkpoint.tensors[mapping[name]]
        assert loaded.dtype == tensor.dtype and loaded.shape == tensor.shape
        assert torch.equal(loaded, tensor)


@SETTINGS
@given(tensors=tensor_dicts())
def test_random_tensor_dicts_as_safetensors(tensors) -> None:
    from safetensors.torch import save_file

    path = _WORKDIR / "dict.safetensors"
    if not tensors:
        path.write_bytes(b"")
        _loads_or_documented_error(path)
        return
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    checkpoint = _loads_or_documented_error(path)
    finite = all(not t.is_floating_point() or bool(torch.isfinite(t).all())
                 for t in tensors.values())
    if finite and checkpoint is None:
        # the only other documented refusal is two names colliding once prefixes go
        mapping, _ = strip_prefixes(list(tensors))
        assert len(set(mapping.values())) < len(mapping)
    _check_round_trip(tensors, checkpoint)


@SETTINGS
@given(tensors=tensor_dicts(), container=st.sampled_from([None, "state_dict", "model_ema"]),
       extra=st.sampled_from([None, 3, "resnet", 1.5, [1, 2], {"a": 1}]))
def test_random_tensor_dicts_as_torch_files(tensors, container, extra) -> None:
    obj = tensors if container is None else {container: tensors}
    if extra is not None:
        obj = {**obj, "extra_key": extra}
    path = _WORKDIR / "dict.pt"
    torch.save(obj, path)
    checkpoint = _loads_or_documented_error(path)
    if checkpoint is not None and container is not None:
        _check_round_trip(tensors, checkpoint)


# --------------------------------------------------------------------------- data and matrices


def _load_data_or_documented_error(path: Path) -> None:
    try:
        ds = load_data(str(path))
    except HessauditError:
        return
    assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
    assert len(ds) == ds.x.shape[0] > 0
    assert int(ds.y.min()) >= 0 and int(ds.y.max()) < ds.num_classes


@SETTINGS
@given(data=st.binary(max_size=400), prefix=st.sampled_from([b"", b"PK\x03\x04", b"\x93NUMPY"]))
def test_random_bytes_as_npz(data: bytes, prefix: bytes) -> None:
    _load_data_or_documented_error(_write("random.npz", prefix + data))


_ARRAYS = st.one_of(
    st.builds(lambda n: np.zeros((n, 1, 2, 2), np.float32), st.integers(0, 4)),
    st.builds(lambda n: np.arange(n), st.integers(0, 4)),
    st.builds(lambda n: np.arange(n) - 2, st.integers(0, 4)),
    st.builds(lambda n: np.full(n, 0.5), st.integers(0, 4)),
    st.builds(lambda n: np.full((n, 2), np.nan), st.integers(0, 4)),
    st.builds(lambda n: np.array(["a"] * n), st.integers(0, 4)),
    st.builds(lambda n: np.ones(n, dtype=bool), st.integers(0, 4)),
    st.builds(lambda n: np.ones(n, dtype=np.complex64), st.integers(0, 4)),
    st.just(np.float32(3.0)),
    st.just(np.array([None, 1], dtype=object)),  # pickled inside the .npz: must be refused
)


@SETTINGS
@given(arrays=st.dictionaries(st.sampled_from(["x", "y", "clean_y", "other"]), _ARRAYS))
def test_random_npz_contents(arrays) -> None:
    path = _WORKDIR / "arrays.npz"
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    _load_data_or_documented_error(path)


@SETTINGS
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.text(alphabet="0123456789.,-e \n[]{}\"abc", max_size=120).map(str.encode),
    ),
    suffix=st.sampled_from([".csv", ".json", ".npy"]),
)
def test_random_noise_matrix_files(data: bytes, suffix: str) -> None:
    path = _write(f"matrix{suffix}", data)
    try:
        matrix = load_matrix_file(path)
    except HessauditError:
        return
    assert isinstance(matrix, np.ndarray)


def test_zip_bomb_like_member_is_refused_quickly() -> None:
    """A torch-looking zip whose data.pkl is garbage: a documented error, not a crash."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00(X\x01\x00\x00\x00a" + b"\xff" * 64)
        zf.writestr("archive/version", b"3\n")
    path = _write("fake.pt", buffer.getvalue())
    with pytest.raises(HessauditError):
        load_checkpoint(path)
