"""Read a text table (``.csv``, ``.tsv``, ``.jsonl``, ``.parquet``) into texts and labels.

Formats, each read strictly so that a malformed file is an error, never shifted columns:

* ``.csv``: comma-separated, first line the header, double-quoted fields may hold commas and
  newlines (pandas' C parser); UTF-8, a byte-order mark is ignored. A row with more fields than
  the header is an error (pandas would otherwise turn its first field into an index). Every
  cell is read as text: ``NA``, ``null`` or ``None`` are words, not missing values.
* ``.tsv``: tab-separated with no quoting at all (GLUE's files hold unbalanced quotes); a field
  cannot hold a tab or a newline.
* ``.jsonl``: one JSON object per line (blank lines skipped), read with :mod:`json`, so strings
  stay strings and numbers keep their types; ``NaN`` / ``Infinity`` literals are refused.
* ``.parquet``: read with pandas and pyarrow (``pip install pyarrow``); the uncompressed size
  the file declares is checked against its size on disk before anything is decoded
  (:func:`hessaudit.inputs.guard.check_expansion`).

Every file is opened with :func:`hessaudit.inputs.guard.open_regular` (no FIFOs or devices).
Rows are numbered from 1, header not counted. A text cell must be a non-empty string of at most
:data:`MAX_TEXT_CHARS` characters; a label is an integer (a whole float such as ``1.0`` counts),
or a string: a name in the model config's ``label2id`` first, else an integer literal.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hessaudit._messages import few, oneline
from hessaudit.errors import HessauditError
from hessaudit.inputs.guard import check_expansion, open_regular
from hessaudit.inputs.text_options import TextOptions

__all__ = ["MAX_TEXT_CHARS", "TextTable", "parse_label", "read_text_table"]

#: Longest text cell accepted. --max-length keeps a few hundred tokens, but a tokenizer reads
#: the whole string first: a multi-megabyte cell is refused rather than silently clipped.
MAX_TEXT_CHARS = 1_000_000
_INT = re.compile(r"[+-]?\d{1,18}")
_FLOAT = re.compile(r"[+-]?\d{1,18}\.0*")


@dataclass(frozen=True)
class TextTable:
    """The examples of a text table: ``texts`` (and ``pairs`` for a sentence pair), integer
    ``labels``, the columns used and whether any label was a name mapped through label2id."""

    source: str
    columns: tuple[str, ...]
    texts: list[str]
    pairs: list[str] | None
    labels: list[int]
    named_labels: bool


def read_text_table(
    path: Path, options: TextOptions, label2id: Mapping[str, int]
) -> TextTable:
    """Read ``path`` and pick its text and label columns (see the module docstring).

    Raises:
        HessauditError: unreadable or malformed file, a missing column, an empty or overlong
            text, a missing or unknown label; the message names the file, row and column.
    """
    what = f"data {path}"
    columns, rows = _read_columns(path, what)
    if rows == 0:
        raise HessauditError(f"{what} holds no rows", hint="the first line is the header")
    names = list(columns)
    text_columns = options.text_columns(names)
    for name in (*text_columns, options.label_column):
        if name not in columns:
            flag = "--label-column" if name == options.label_column else "--text-column"
            default = (
                " (default: text, or sentence1 and sentence2 for a pair)"
                if flag == "--text-column" and options.text_column is None else ""
            )
            raise HessauditError(
                f"{what} has no column {name!r} for {flag}{default}; its columns are: "
                f"{few([repr(n) for n in names], 8)}",
                hint=f"pass {flag} with one of those names",
            )
    texts = [_texts(columns[name], name, what) for name in text_columns]
    labels: list[int] = []
    named = False
    for row, value in enumerate(columns[options.label_column], start=1):
        label, by_name = parse_label(value, label2id, where=f"{what}, row {row}")
        labels.append(label)
        named = named or by_name
    return TextTable(
        source=str(path),
        columns=tuple(text_columns),
        texts=texts[0],
        pairs=texts[1] if len(texts) > 1 else None,
        labels=labels,
        named_labels=named,
    )


# --------------------------------------------------------------------------- cells


def _texts(values: Sequence[Any], column: str, what: str) -> list[str]:
    out = []
    for row, value in enumerate(values, start=1):
        where = f"{what}, row {row}, column {column!r}"
        if value is None or (isinstance(value, float) and math.isnan(value)):
            raise HessauditError(f"{where}: the text is missing (null or NaN)")
        if not isinstance(value, str):
            raise HessauditError(
                f"{where}: the text must be a string, found {type(value).__name__}"
            )
        if not value.strip():
            raise HessauditError(f"{where}: the text is empty", hint="remove the row")
        if len(value) > MAX_TEXT_CHARS:
            raise HessauditError(
                f"{where}: a text of {len(value)} characters is longer than the "
                f"{MAX_TEXT_CHARS} hessaudit reads",
                hint="shorten it: --max-length keeps only the first tokens anyway",
            )
        out.append(value)
    return out


def parse_label(value: Any, label2id: Mapping[str, int], *, where: str) -> tuple[int, bool]:
    """The class index of one label cell, and whether it was a name from ``label2id``."""
    import numpy as np

    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise HessauditError(f"{where}: the label is missing (null or NaN)")
    if isinstance(value, bool):
        raise HessauditError(f"{where}: label {value!r} is a boolean, not a class")
    if isinstance(value, int):
        return _non_negative(value, where), False
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise HessauditError(f"{where}: label {value!r} is not a whole number")
        return _non_negative(int(value), where), False
    if isinstance(value, str):
        key = value.strip()
        if not key:
            raise HessauditError(f"{where}: the label is empty")
        if key in label2id:
            return int(label2id[key]), True
        if _INT.fullmatch(key) or _FLOAT.fullmatch(key):
            return _non_negative(int(key.split(".")[0]), where), False
        known = ", ".join(repr(k) for k in list(label2id)[:10])
        known += f", ... ({len(label2id)} in all)" if len(label2id) > 10 else ""
        raise HessauditError(
            f"{where}: label {_clip(value)!r} is neither a class index nor one of the model's "
            f"label names ({known or 'the model config has none'})",
            hint="labels are integers 0..k-1 or names from label2id in the model's config.json",
        )
    raise HessauditError(
        f"{where}: the label must be an integer or a string, found {type(value).__name__}"
    )


def _non_negative(label: int, where: str) -> int:
    if label < 0:
        raise HessauditError(f"{where}: label {label} is negative")
    return label


def _clip(value: str, n: int = 60) -> str:
    return value if len(value) <= n else value[: n - 3] + "..."


# --------------------------------------------------------------------------- formats


def _read_columns(path: Path, what: str) -> tuple[dict[str, list[Any]], int]:
    """Column name -> values, and the number of rows."""
    suffix = path.suffix.lower()
    with open_regular(path, "data") as fh:
        if suffix == ".jsonl":
            return _read_jsonl(fh, what)
        if suffix == ".parquet":
            return _read_parquet(fh, what)
        return _read_delimited(fh, what, tab=suffix == ".tsv")


def _read_delimited(fh: Any, what: str, *, tab: bool) -> tuple[dict[str, list[Any]], int]:
    import pandas as pd

    try:
        frame = pd.read_csv(
            fh,
            sep="\t" if tab else ",",
            header=None,  # the header is row 0: a row with an extra field is then an error
            dtype=str,
            na_filter=False,
            keep_default_na=False,
            encoding="utf-8-sig",
            quoting=csv.QUOTE_NONE if tab else csv.QUOTE_MINIMAL,
            engine="c",
        )
    except pd.errors.EmptyDataError:
        raise HessauditError(f"{what} is empty", hint="the first line is the header") from None
    except UnicodeDecodeError:
        raise HessauditError(f"{what} is not UTF-8 text", hint="save it as UTF-8") from None
    except Exception as exc:  # ParserError (field counts, quotes), MemoryError
        kind = "TSV" if tab else "CSV"
        raise HessauditError(f"{what} is not a readable {kind} file: {oneline(exc)}") from None
    values = frame.to_numpy().tolist()
    header = [str(h) for h in values[0]]
    _check_header(header, what)
    rows = values[1:]
    return {name: [r[i] for r in rows] for i, name in enumerate(header)}, len(rows)


def _check_header(header: list[str], what: str) -> None:
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise HessauditError(f"{what}: the header names column {name!r} twice")
        seen.add(name)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _read_jsonl(fh: Any, what: str) -> tuple[dict[str, list[Any]], int]:
    records: list[dict[str, Any]] = []
    stream = io.TextIOWrapper(fh, encoding="utf-8-sig", errors="strict", newline="")
    try:
        for line_no, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line, parse_constant=_refuse_constant)
            except (ValueError, RecursionError) as exc:
                raise HessauditError(
                    f"{what}, line {line_no}: not a JSON object: {oneline(exc)}",
                    hint="a .jsonl file holds one JSON object per line",
                ) from None
            if not isinstance(record, dict):
                raise HessauditError(
                    f"{what}, line {line_no}: a JSON {type(record).__name__}, not an object",
                    hint='write one object per line, e.g. {"text": "...", "label": 0}',
                )
            records.append(record)
    except UnicodeDecodeError:
        raise HessauditError(f"{what} is not UTF-8 text", hint="save it as UTF-8") from None
    finally:
        stream.detach()
    names: dict[str, None] = {}
    for record in records:
        names.update(dict.fromkeys(record))
    # a key absent from a row reads as missing (None), reported by the cell checks
    return {name: [r.get(name) for r in records] for name in names}, len(records)


def _read_parquet(fh: Any, what: str) -> tuple[dict[str, list[Any]], int]:
    """Columns of a .parquet file, with two size checks before any string is decoded: what the
    file declares (uncompressed pages, 16 bytes a row and column for the decoded objects), then
    what its dictionary-encoded strings expand to (a short dictionary value repeated by a
    run-length index over many rows takes little room on disk and in the pages)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise HessauditError(
            f"{what}: reading .parquet needs pyarrow, which is not installed",
            hint="pip install pyarrow, or save the data as .csv, .tsv or .jsonl",
        ) from None
    stored = os.fstat(fh.fileno()).st_size
    try:
        names = pq.ParquetFile(fh).schema_arrow.names
        fh.seek(0)
        parquet = pq.ParquetFile(fh, read_dictionary=names)  # strings stay dictionary-encoded
        meta = parquet.metadata
        pages = sum(
            max(int(meta.row_group(i).total_byte_size), 0) for i in range(meta.num_row_groups)
        )
        rows = int(meta.num_rows)
        check_expansion(pages + 16 * rows * max(len(names), 1), stored, what,
                        before="decoding it")
        table = parquet.read()
        check_expansion(_decoded_bytes(table), stored, what, before="decoding it")
        frame = table.to_pandas()
    except HessauditError:
        raise
    except Exception as exc:  # ArrowInvalid, OSError on a truncated or crafted file
        raise HessauditError(f"{what} is not a readable .parquet file: {oneline(exc)}") from None
    header = [str(c) for c in frame.columns]
    _check_header(header, what)
    return {name: frame.iloc[:, i].tolist() for i, name in enumerate(header)}, len(frame)


def _decoded_bytes(table: Any) -> int:
    """Bytes the columns of an Arrow table take once every value is decoded: a dictionary
    column's value lengths summed over its indices, other columns as they are held, plus 16
    bytes a cell for the Python objects."""
    import pyarrow as pa
    import pyarrow.compute as pc

    total = 16 * table.num_rows * max(table.num_columns, 1)
    for column in table.columns:
        for chunk in column.chunks:
            if pa.types.is_dictionary(chunk.type) and (
                pa.types.is_string(chunk.dictionary.type)
                or pa.types.is_large_string(chunk.dictionary.type)
                or pa.types.is_binary(chunk.dictionary.type)
                or pa.types.is_large_binary(chunk.dictionary.type)
            ):
                lengths = pc.binary_length(chunk.dictionary)
                total += int(pc.sum(pc.take(lengths, chunk.indices)).as_py() or 0)
            else:
                total += int(chunk.nbytes)
    return total
