"""Read data files for :mod:`hessaudit.inputs.data` without letting a hostile file take over.

* ``.npz``: every member's declared (uncompressed) size and every ``.npy`` header's
  ``prod(shape) * itemsize`` are checked against the archive's size on disk before numpy
  inflates or allocates anything (:func:`read_npz`);
* ImageFolder: each file counted once, no folder links out of a class folder or into a loop, no
  FIFOs (:func:`image_files`); images that PIL cannot read, decompression bombs included, are
  :class:`Unreadable`; the bytes all images decode to are bounded by their size on disk
  (:class:`DecodeBudget`).

The budgets are those of :mod:`hessaudit.inputs.guard`.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hessaudit._messages import few, oneline
from hessaudit.errors import HessauditError
from hessaudit.inputs.guard import check_expansion, check_zip_members, walk_files

__all__ = [
    "DecodeBudget",
    "Unreadable",
    "check_npy_header",
    "class_folders",
    "image_files",
    "open_image",
    "read_npz",
]


# --------------------------------------------------------------------------- npz


def read_npz(fh: Any, path: Path) -> tuple[Any, Any, Any]:
    """Arrays x, y and clean_y (or None) of an open .npz, with every declared size checked
    against the file's size before anything is inflated or allocated."""
    import zipfile

    import numpy as np

    hint = "save with numpy.savez(path, x=inputs, y=labels)"
    if not zipfile.is_zipfile(fh):
        raise HessauditError(
            f"data {path} is not a readable .npz (not a zip archive; truncated or corrupt?)",
            hint=hint,
        )
    stored = os.fstat(fh.fileno()).st_size
    try:
        with zipfile.ZipFile(fh) as archive:
            check_zip_members(archive, stored, f"data {path}")
            for info in archive.infolist():
                check_npy_header(archive, info, stored, path)
        fh.seek(0)
        with np.load(fh, allow_pickle=False) as archive:
            names = list(archive.files)
            missing = [k for k in ("x", "y") if k not in names]
            if missing:
                raise HessauditError(
                    f"data {path}: no array named {' or '.join(repr(m) for m in missing)} "
                    f"(arrays found: {few(names) or 'none'})",
                    hint=hint,
                )
            x = archive["x"]
            y = archive["y"]
            clean = archive["clean_y"] if "clean_y" in names else None
    except HessauditError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise HessauditError(
                f"data {path}: holds Python objects (object arrays), which are not loaded",
                hint="store x as a numeric array and y as an integer array",
            ) from None
        raise HessauditError(f"data {path} is not a readable .npz: {oneline(exc)}") from None
    except Exception as exc:
        raise HessauditError(f"data {path} is not a readable .npz: {oneline(exc)}") from None
    return x, y, clean


def check_npy_header(archive: Any, info: Any, stored: int, path: Path) -> None:
    """Refuse a member whose .npy header declares more bytes than the member holds.

    numpy allocates ``prod(shape) * itemsize`` from the header before it reads the data, so a
    few bytes of header could otherwise ask for any amount of memory.
    """
    import math

    import numpy as np

    if not info.filename.endswith(".npy"):
        return
    fmt = np.lib.format
    with archive.open(info) as member:
        try:
            version = fmt.read_magic(member)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(member)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(member)
            else:  # version 3.0 has no public reader; np.load checks it as it reads
                return
        except ValueError:
            return  # not a valid header: np.load reports it
        header = member.tell()
    if dtype.hasobject:
        return  # refused by allow_pickle=False
    declared = math.prod(int(d) for d in shape) * dtype.itemsize
    what = f"data {path} (array {info.filename[:-4]!r})"
    if declared > info.file_size - header:
        raise HessauditError(
            f"{what}: its header declares {declared} bytes of data but it holds "
            f"{max(info.file_size - header, 0)}; refused before allocating (truncated or "
            "crafted file?)"
        )
    check_expansion(declared, stored, what)


# --------------------------------------------------------------------------- ImageFolder


def class_folders(root: Path) -> list[str]:
    """Sorted names of the class sub-folders; a link to a folder outside ``root`` is refused."""
    real_root = os.path.realpath(root)
    classes = []
    for p in sorted(root.iterdir(), key=lambda q: q.name):
        if p.name.startswith(".") or not p.is_dir():
            continue
        real = os.path.realpath(p)
        if os.path.commonpath([real, real_root]) != real_root or real == real_root:
            where = "the data folder itself" if real == real_root else "outside the data folder"
            raise HessauditError(
                f"data {root}: class folder {p.name!r} is a link to {real}, {where}; hessaudit "
                "does not follow folder links out of the data folder or into a loop",
                hint="give the folder the links lead to, or copy the images in",
            )
        classes.append(p.name)
    return classes


def image_files(
    root: Path, classes: list[str], extensions: tuple[str, ...]
) -> tuple[list[Path], list[int], list[tuple[Path, str]]]:
    """Image files and labels of every class folder, each file once; and the files skipped."""
    seen_files: dict[tuple[int, int], Path] = {}
    seen_dirs: set[tuple[int, int]] = set()
    files: list[Path] = []
    labels: list[int] = []
    skipped: list[tuple[Path, str]] = []
    for label, name in enumerate(classes):
        found = duplicates = 0
        for f, why in walk_files(
            root / name, root=root, seen_files=seen_files, seen_dirs=seen_dirs,
            within=f"class folder {name!r}",
        ):
            if why is not None:
                skipped.append((f, why))
                duplicates += why.startswith(("the same file as", "a link to a folder already"))
            elif f.suffix.lower() in extensions:
                files.append(f)
                labels.append(label)
                found += 1
            else:
                skipped.append((f, "not an image file"))
        if not found:
            more = (
                " of its own (what it holds was already counted under another class folder)"
                if duplicates else ""
            )
            raise HessauditError(f"data {root}: class folder {name!r} has no image files{more}")
    return files, labels, skipped


class Unreadable(Exception):
    pass


@dataclass
class DecodeBudget:
    """Bytes the images decode to, against :func:`check_expansion` of their size on disk:
    a folder of small, flat PNGs of huge dimensions must not exhaust memory."""

    root: Path
    stored: int = 0
    decoded: int = 0

    def charge(self, f: Path, image: Any) -> None:
        mode = str(image.mode)
        depth = 4 if mode in ("I", "F") else 2 if mode.startswith("I;16") else 1
        self.stored += os.stat(f).st_size
        self.decoded += int(image.width) * int(image.height) * len(image.getbands()) * depth
        what = f"data {self.root} (images up to {f.relative_to(self.root)})"
        check_expansion(
            self.decoded, self.stored, what,
            hint="resize the images on disk: --input-size resizes only after decoding",
            before="decoding them",
        )


def open_image(f: Path, budget: DecodeBudget) -> Any:
    """The decoded PIL image of ``f``; any failure (decompression bombs included) raises
    ``Unreadable`` with the reason."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that: refuse it there too
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(f) as img:
                budget.charge(f, img)  # from the header, before decoding
                img.load()
                return img.copy()
    except HessauditError:
        raise
    except (Exception, Image.DecompressionBombWarning) as exc:
        # PIL decoders raise many types on hostile input (OSError, ValueError, SyntaxError,
        # struct.error, DecompressionBombError...): every one means "cannot read this image"
        raise Unreadable(f"unreadable: {type(exc).__name__}") from None
