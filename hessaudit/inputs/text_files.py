"""The text-table data source (``.csv``, ``.tsv``, ``.jsonl``, ``.parquet``), registered in
:data:`hessaudit.inputs.data.SOURCES`.

A table is read and tokenized by :func:`hessaudit.inputs.text_data.read_text_data` with the
model's tokenizer and the text options carried by the request (``text_source``, built by
:func:`hessaudit.inputs.text_model.text_source` for a text classifier). The source draws its
own ``--samples`` subset (rows, with the same seeded draw as for images) and returns token
tensors, which are never adapted like images.
"""

from __future__ import annotations

from hessaudit.inputs.dataset import Dataset, DataSource, SourceRequest
from hessaudit.inputs.text_options import is_text_file

__all__ = ["SOURCE", "load", "matches"]


def matches(request: SourceRequest) -> bool:
    """A file (not a folder) whose name ends in a text-table extension."""
    return is_text_file(request.path) and not request.path.is_dir()


def load(request: SourceRequest) -> Dataset:
    """The tokenized table at ``request.path`` (the ``--samples`` subset already drawn)."""
    from hessaudit.inputs.text_data import read_text_data  # pandas, tokenizers: only for text

    return read_text_data(
        request.path, text=request.text_source, num_classes=request.num_classes,
        samples=request.samples, seed=request.seed,
    )


SOURCE = DataSource(
    name="text",
    matches=matches,
    load=load,
    offer="a text table (.csv, .tsv, .jsonl, .parquet)",
    draws_samples=True,
)
