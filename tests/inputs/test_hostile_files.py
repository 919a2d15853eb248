"""Issue 12, section 6: small files must not exhaust memory or hang (docs/errors.md, "Hostile
files").

Through the CLI, each hostile input ends with exit code 1 and one ``error:`` line naming the
file, no traceback and no output written; or, for a bad file inside an ImageFolder, with the
file skipped and named in the warning. The memory cases run in a subprocess under an address
space limit (a regression then fails with an out-of-memory line instead of taking the machine),
and in-process on smaller files that are refused before anything is allocated. FIFO cases run
under a timeout, so a regression fails instead of hanging.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import re
import resource
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from hessaudit.cli import main
from tests.files import write_png

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- helpers


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return int(exc.value.code), captured.out, captured.err


def assert_refused(code: int, err: str, *needles: str) -> str:
    """Exit 1, exactly one non-blank stderr line, an ``error:`` naming ``needles``."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1, err
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "internal error" not in lines[0] and "out of memory" not in lines[0], lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def measure_args(pair, *, pre=None, ft=None, data="digits", out: Path | None = None) -> list:
    args = [
        "measure", pre or pair.pretrained, ft or pair.finetuned, "--model", pair.spec,
        "--data", data, "--samples", "4", "--no-spectrum", "--quiet",
    ]
    return [*args, "--json", out] if out is not None else args


_POLY = 0xEDB88320


def _apply(matrix: list[int], vector: int) -> int:
    out, i = 0, 0
    while vector:
        if vector & 1:
            out ^= matrix[i]
        vector >>= 1
        i += 1
    return out


def crc32_zeros(crc: int, n: int) -> int:
    """``zlib.crc32(data + bytes(n))`` from ``crc = zlib.crc32(data)`` in O(log n) steps (the
    zero-byte operator of zlib's ``crc32_combine``), so that a 2 GiB bomb has a valid CRC."""
    op = [_POLY] + [1 << (i - 1) for i in range(1, 32)]  # one zero bit
    for _ in range(3):
        op = [_apply(op, column) for column in op]  # one zero byte
    state = crc ^ 0xFFFFFFFF
    while n:
        if n & 1:
            state = _apply(op, state)
        op = [_apply(op, column) for column in op]
        n >>= 1
    return state ^ 0xFFFFFFFF


def deflated_zeros(prefix: bytes, mib: int) -> tuple[bytes, int, int]:
    """Raw deflate of ``prefix`` + ``mib`` MiB of zeros, its CRC-32 and its size, without ever
    holding the zeros: after a full flush the compressor starts afresh, so every MiB of zeros
    compresses to the same ~1 KB."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    size = len(prefix) + (mib << 20)
    return head + block * mib + c.flush(), crc32_zeros(zlib.crc32(prefix), mib << 20), size


def write_zip(path: Path, members: list[tuple[str, bytes, int, int, int]]) -> Path:
    """A zip archive of ``(name, payload, method, crc, size)`` (payload already deflated when
    method is 8), written by hand since ``zipfile`` cannot take pre-deflated data."""
    out, central = bytearray(), bytearray()
    for name, payload, method, crc, size in members:
        offset, raw = len(out), name.encode()
        out += struct.pack(
            "<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(payload), size,
            len(raw), 0,
        ) + raw + payload
        central += struct.pack(
            "<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, crc, len(payload), size,
            len(raw), 0, 0, 0, 0, 0, offset,
        ) + raw
    end = struct.pack(
        "<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), len(out), 0
    )
    path.write_bytes(bytes(out + central + end))
    return path


def _stored(name: str, data: bytes) -> tuple[str, bytes, int, int, int]:
    return (name, data, 0, zlib.crc32(data), len(data))


def npz_bomb(path: Path, mib: int) -> Path:
    """A valid .npz whose ``x`` (``mib`` examples of 1 MiB of float32 zeros) inflates ~1000x."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (mib, 1, 512, 512)}
    )
    raw, crc, size = deflated_zeros(header.getvalue(), mib)
    y = io.BytesIO()
    np.save(y, np.zeros(mib, dtype=np.int64))
    return write_zip(path, [("x.npy", raw, 8, crc, size), _stored("y.npy", y.getvalue())])


class _Storage:
    pass


class _Tensor:
    def __init__(self, n: int) -> None:
        self.n = n

    def __reduce__(self):
        args = (_Storage(), 0, (self.n,), (1,), False, collections.OrderedDict())
        return (torch._utils._rebuild_tensor_v2, args)


def pt_bomb(path: Path, mib: int) -> Path:
    """A valid torch zip checkpoint ``{"w": zeros(mib MiB / 4)}`` whose storage is deflated."""
    n = (mib << 20) // 4

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _Storage):
                return ("storage", torch.FloatStorage, "0", "cpu", n)
            return None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump({"w": _Tensor(n)})
    raw, crc, size = deflated_zeros(b"", mib)
    return write_zip(path, [
        _stored("bomb/data.pkl", buf.getvalue()), _stored("bomb/byteorder", b"little"),
        ("bomb/data/0", raw, 8, crc, size), _stored("bomb/version", b"3\n"),
    ])


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A tiny grayscale PNG that declares ``width`` x ``height`` (its data is not needed: PIL
    checks the size when it opens the file)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + data)
    return path


def flat_png(path: Path, side: int) -> Path:
    """A valid, all-black grayscale PNG of side x side pixels (side a multiple of 64), about
    1 KB on disk per megapixel: every 64 rows deflate to the same bytes after a full flush."""
    assert side % 64 == 0
    rows = bytes((side + 1) * 64)  # 64 rows: a filter byte and side pixels each
    c = zlib.compressobj(9)
    first = c.compress(rows) + c.flush(zlib.Z_FULL_FLUSH)  # with the 2-byte zlib header
    block = c.compress(rows) + c.flush(zlib.Z_FULL_FLUSH)
    tail = c.flush()[:-4]  # the final block; its Adler-32 covers only two blocks
    n = (side + 1) * side
    adler = struct.pack(">I", ((n % 65521) << 16) | 1)  # Adler-32 of n zeros: a = 1, b = n
    stream = first + block * (side // 64 - 1) + tail + adler

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data)
        )

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", stream) + chunk(b"IEND", b"")
    )
    return path


def image_folder(root: Path, per_class: int = 4) -> Path:
    for cls in ("a", "b"):
        for i in range(per_class):
            write_png(root / cls / f"{i}.png", size=(8, 8), mode="L", value=30 * i + 7)
    return root


# --------------------------------------------------------------------------- memory


def test_the_bomb_builders_make_valid_files(tmp_path) -> None:
    """Control: the hand-made files are what they claim (small versions load, CRCs hold)."""
    for n in (0, 1, 5, 1000, 3 << 20):
        assert crc32_zeros(zlib.crc32(b"abc"), n) == zlib.crc32(b"abc" + bytes(n))
    with np.load(npz_bomb(tmp_path / "b.npz", 3)) as archive:
        assert archive["x"].shape == (3, 1, 512, 512) and not archive["x"].any()
    w = torch.load(pt_bomb(tmp_path / "b.pt", 3), weights_only=True)["w"]
    assert w.shape == (3 << 18,) and not w.any()
    from PIL import Image

    with Image.open(flat_png(tmp_path / "f.png", 256)) as img:
        img.load()
        assert img.size == (256, 256) and not np.asarray(img).any()


_CHILD = """
import contextlib, io, json, sys
from hessaudit.cli import main
results = []
for args in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(args)
        except SystemExit as exc:
            code = exc.code
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""


def _address_space() -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(r"VmSize:\s+(\d+) kB", text).group(1)) * 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_small_files_that_expand_to_gigabytes_are_refused_under_a_memory_limit(
    tiny_checkpoints, tmp_path
) -> None:
    """The issue's cases at full size, in one subprocess whose address space is limited to
    this process's size + 1.25 GiB (torch alone maps ~3 GiB): a 1.5 KB stride-0 view of
    30000 x 30000 floats (3.6 GB), a 2 MB .pt whose storage inflates to 2 GiB and a 2 MB .npz
    whose x does. Before the fix: "out of memory" or an allocator failure."""
    pair = tiny_checkpoints
    stride0 = tmp_path / "stride0.pt"
    torch.save({"fc.weight": torch.zeros(1).expand(30000, 30000)}, stride0)
    bomb_pt = pt_bomb(tmp_path / "bomb.pt", 2048)
    bomb_npz = npz_bomb(tmp_path / "bomb.npz", 2048)
    assert max(p.stat().st_size for p in (stride0, bomb_pt, bomb_npz)) < 3 << 20
    out = tmp_path / "audit.json"
    cases = [
        measure_args(pair, ft=stride0, out=out),
        measure_args(pair, ft=bomb_pt, out=out),
        measure_args(pair, data=bomb_npz, out=out),
    ]
    limit = _address_space() + (5 << 28)

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps([[str(a) for a in c] for c in cases])],
        env=env, capture_output=True, text=True, timeout=600, preexec_fn=limited,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    (c0, e0), (c1, e1), (c2, e2) = results
    assert_refused(c0, e0, "stride0.pt", "stride-0", "(30000, 30000)")
    assert_refused(c1, e1, "bomb.pt", "2.0 GiB", "refused before")
    assert_refused(c2, e2, "bomb.npz", "2.0 GiB", "refused before")
    assert not out.exists()


@pytest.mark.parametrize(
    "kind", ["expand", "overlap", "shared-storage", "pt-zip-bomb"]
)
def test_torch_checkpoints_that_expand_are_refused_before_loading(
    kind, tiny_checkpoints, tmp_path, capsys
) -> None:
    """In-process, on sizes that are harmless if a regression lets them through."""
    pair = tiny_checkpoints
    path = tmp_path / f"{kind}.pt"
    if kind == "expand":
        torch.save({**pair.finetuned_state, "fc.weight": torch.zeros(1).expand(10, 16)}, path)
        needles = ["'fc.weight'", "stride-0"]
    elif kind == "overlap":
        base = torch.arange(25.0)  # 25 elements, read as 160
        state = {**pair.finetuned_state, "fc.weight": base.as_strided((10, 16), (1, 1))}
        torch.save(state, path)
        needles = ["'fc.weight'", "(1, 1)", "overlapping"]
    elif kind == "shared-storage":
        storage = torch.zeros(1 << 18)  # 1 MiB
        torch.save({f"t{i}": storage.view(512, 512) for i in range(300)}, path)
        needles = ["all tensors together", "300.0 MiB"]
    else:
        pt_bomb(path, 300)
        needles = ["300.0 MiB", "refused before"]
    out = tmp_path / "audit.json"
    code, _, err = run_cli(measure_args(pair, ft=path, out=out), capsys)
    assert_refused(code, err, f"checkpoint {path}", *needles)
    assert not out.exists()


def test_a_safetensors_header_that_lies_about_its_size_is_refused(tmp_path, capsys) -> None:
    """safetensors itself checks declared shapes against data offsets: 4 bytes are never read
    as a 30000 x 30000 tensor."""
    header = json.dumps(
        {"w": {"dtype": "F32", "shape": [30000, 30000], "data_offsets": [0, 4]}}
    ).encode()
    path = tmp_path / "lie.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(4))
    code, _, err = run_cli(["inspect", path, path], capsys)
    assert_refused(code, err, f"checkpoint {path}", "invalid")


def test_an_npz_zip_bomb_is_refused_before_inflating(
    tiny_checkpoints, tmp_path, capsys, monkeypatch
) -> None:
    bomb = npz_bomb(tmp_path / "bomb.npz", 300)

    def never(*args, **kwargs):
        raise AssertionError("numpy started reading the bomb")

    monkeypatch.setattr(np.lib.format, "read_array", never)
    out = tmp_path / "audit.json"
    code, _, err = run_cli(measure_args(tiny_checkpoints, data=bomb, out=out), capsys)
    assert_refused(code, err, f"data {bomb}", "300.0 MiB", "refused before")
    assert not out.exists()


def test_an_npy_header_that_declares_more_than_it_holds_is_refused(
    tiny_checkpoints, tmp_path, capsys
) -> None:
    """12 bytes on disk whose header asks numpy for 4 TB."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (1 << 20, 1 << 20)}
    )
    y = io.BytesIO()
    np.save(y, np.zeros(3, dtype=np.int64))
    path = write_zip(tmp_path / "liar.npz", [
        _stored("x.npy", header.getvalue() + bytes(12)), _stored("y.npy", y.getvalue()),
    ])
    code, _, err = run_cli(measure_args(tiny_checkpoints, data=path), capsys)
    assert_refused(code, err, f"data {path}", "'x'", "header declares")


# --------------------------------------------------------------------------- images


def test_decompression_bombs_are_skipped_like_unreadable_images(
    tiny_checkpoints, tmp_path, capsys
) -> None:
    """Over PIL's limit (DecompressionBombError) and between the limit and twice it (PIL only
    warns there): both skipped with the one-line warning, the audit goes on."""
    root = image_folder(tmp_path / "imgs", per_class=3)
    png_header_only(root / "a" / "huge.png", 20000, 20000)  # 400 M pixels: error
    png_header_only(root / "b" / "big.png", 10000, 10000)  # 100 M pixels: warning
    out = tmp_path / "audit.json"
    args = measure_args(tiny_checkpoints, data=root, out=out)
    code, _, err = run_cli([*args[:-2], "--num-classes", "10", *args[-2:]], capsys)
    assert code == 0, err
    assert "Traceback" not in err
    warning = [line for line in err.splitlines() if "skipped 2 file" in line]
    assert len(warning) == 1, err
    assert "a/huge.png (unreadable: DecompressionBombError)" in warning[0]
    assert "b/big.png (unreadable: DecompressionBombWarning)" in warning[0]
    assert json.loads(out.read_text())["inputs"]["data_summary"]["n"] == 6


def test_images_that_decode_to_far_more_than_their_files_are_refused(
    tiny_checkpoints, tmp_path, capsys
) -> None:
    """Four 80 KB PNGs of 8960 x 8960 pixels (under PIL's limit each) decode to 306 MiB."""
    root = image_folder(tmp_path / "imgs", per_class=1)
    for i in range(4):
        flat_png(root / "a" / f"flat{i}.png", 8960)
    out = tmp_path / "audit.json"
    args = measure_args(tiny_checkpoints, data=root, out=out)
    code, _, err = run_cli([*args[:-2], "--num-classes", "10", *args[-2:]], capsys)
    assert_refused(code, err, f"data {root}", "refused before")
    assert not out.exists()


# --------------------------------------------------------------------------- ImageFolder links


def _n_and_labels(out: Path) -> tuple[int, list[str]]:
    summary = json.loads(out.read_text())["inputs"]["data_summary"]
    return summary["n"], summary["classes"]


def test_a_symlink_loop_counts_each_image_once(tiny_checkpoints, tmp_path, capsys) -> None:
    """8 images, a loop back to the root inside a class and links between classes: 8 examples,
    each with its own folder's label (before: 328, mislabelled), and the warning says what was
    not followed."""
    root = image_folder(tmp_path / "imgs")
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)
    (root / "b" / "alias").symlink_to(root / "a", target_is_directory=True)
    (root / "b" / "again.png").symlink_to(root / "a" / "0.png")
    os.link(root / "a" / "1.png", root / "b" / "hard.png")
    out = tmp_path / "audit.json"
    args = measure_args(tiny_checkpoints, data=root, out=out)
    code, _, err = run_cli([*args[:-2], "--num-classes", "10", *args[-2:]], capsys)
    assert code == 0, err
    n, classes = _n_and_labels(out)
    assert (n, classes) == (8, ["a", "b"])
    from hessaudit.inputs.data import DataWarning, load_data

    with pytest.warns(DataWarning):
        assert load_data(str(root)).y.tolist() == [0] * 4 + [1] * 4
    warning = next(line for line in err.splitlines() if "skipped" in line)
    assert "a/loop (a link to a folder that contains it (a symlink loop), not followed)" in warning
    assert "b/alias (a link to a folder outside class folder 'b', not followed)" in warning
    assert "b/again.png (the same file as a/0.png" in warning
    assert "b/hard.png (the same file as a/1.png" in warning


def test_folder_links_out_of_the_data_folder_are_not_followed(
    tiny_checkpoints, tmp_path, capsys
) -> None:
    root = image_folder(tmp_path / "imgs")
    outside = tmp_path / "elsewhere"
    for i in range(5):
        write_png(outside / f"{i}.png", size=(8, 8), mode="L", value=i)
    (root / "a" / "ext").symlink_to(outside, target_is_directory=True)
    out = tmp_path / "audit.json"
    args = measure_args(tiny_checkpoints, data=root, out=out)
    code, _, err = run_cli([*args[:-2], "--num-classes", "10", *args[-2:]], capsys)
    assert code == 0, err
    assert _n_and_labels(out)[0] == 8
    assert "a/ext (a link to a folder outside class folder 'a', not followed)" in err


def test_a_class_folder_linking_out_of_the_data_folder_is_refused(
    tiny_checkpoints, tmp_path, capsys
) -> None:
    root = image_folder(tmp_path / "imgs")
    outside = tmp_path / "elsewhere"
    write_png(outside / "0.png", size=(8, 8), mode="L")
    (root / "c").symlink_to(outside, target_is_directory=True)
    out = tmp_path / "audit.json"
    code, _, err = run_cli(measure_args(tiny_checkpoints, data=root, out=out), capsys)
    assert_refused(code, err, f"data {root}", "'c'", "outside the data folder")
    assert not out.exists()


# --------------------------------------------------------------------------- FIFOs and devices


needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


FIFO_CASES = {
    "checkpoint": lambda pair, fifo: measure_args(pair, ft=fifo),
    "inspect": lambda pair, fifo: ["inspect", fifo, pair.finetuned],
    "npz": lambda pair, fifo: measure_args(pair, data=fifo),
    "data-no-extension": lambda pair, fifo: measure_args(pair, data=fifo),
    "compare": lambda pair, fifo: ["compare", fifo, fifo],
    "report": lambda pair, fifo: ["report", fifo, "--out", fifo.parent / "r.html"],
    "gates-config": lambda pair, fifo: [*measure_args(pair), "--config", fifo],
}
FIFO_NAMES = {
    "checkpoint": "ft.pt", "inspect": "pre.safetensors", "npz": "data.npz",
    "data-no-extension": "data", "compare": "a.json", "report": "a.json",
    "gates-config": "gates.toml",
}


@needs_fifo
@pytest.mark.timeout(60, method="signal")
@pytest.mark.parametrize("case", list(FIFO_CASES))
def test_a_fifo_given_as_an_input_is_refused_without_hanging(
    case, tiny_checkpoints, tmp_path, capsys
) -> None:
    fifo = _fifo(tmp_path / FIFO_NAMES[case])
    code, _, err = run_cli(FIFO_CASES[case](tiny_checkpoints, fifo), capsys)
    needle = "not a file" if case == "gates-config" else "is a FIFO (named pipe)"
    assert_refused(code, err, str(fifo), needle)
    assert not (tmp_path / "r.html").exists()


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
@pytest.mark.timeout(60, method="signal")
def test_a_character_device_given_as_a_checkpoint_is_refused(
    tiny_checkpoints, capsys
) -> None:
    code, _, err = run_cli(measure_args(tiny_checkpoints, ft="/dev/zero"), capsys)
    assert_refused(code, err, "/dev/zero", "character device")


@needs_fifo
@pytest.mark.timeout(60, method="signal")
def test_a_fifo_inside_an_image_folder_is_skipped(tiny_checkpoints, tmp_path, capsys) -> None:
    root = image_folder(tmp_path / "imgs")
    _fifo(root / "a" / "pipe.png")
    out = tmp_path / "audit.json"
    args = measure_args(tiny_checkpoints, data=root, out=out)
    code, _, err = run_cli([*args[:-2], "--num-classes", "10", *args[-2:]], capsys)
    assert code == 0, err
    assert "a/pipe.png (a FIFO (named pipe), not a regular file)" in err
    assert _n_and_labels(out)[0] == 8
