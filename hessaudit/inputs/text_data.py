"""Text data for ``--data`` / ``--eval-data``: a table file tokenized for a text classifier.

:func:`read_text_data` reads a ``.csv``, ``.tsv``, ``.jsonl`` or ``.parquet`` file
(:mod:`hessaudit.inputs.text_table`), takes the seeded subset of ``samples`` rows (the same draw
as for images: ``torch.randperm(N, generator=seed)[:samples]``, kept in file order), tokenizes
it (:mod:`hessaudit.inputs.text_tokens`) and returns a
:class:`~hessaudit.inputs.text_dataset.TextDataset`: ``x`` the packed (N, 3, L) int64 tokens,
``y`` the labels, ``scaling`` ``"tokens"`` and ``preprocessing`` the tokenization steps in words.
:func:`hessaudit.inputs.data.load_data` dispatches text files here; the options and the
tokenizer come from :func:`hessaudit.inputs.text_model.text_source`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hessaudit.errors import HessauditError
from hessaudit.inputs.text_options import TEXT_EXTENSIONS
from hessaudit.inputs.text_table import read_text_table
from hessaudit.inputs.text_tokens import TextSource, encode

__all__ = ["read_text_data"]


def read_text_data(
    path: Path,
    *,
    text: TextSource | None,
    num_classes: int | None = None,
    samples: int | None = None,
    seed: int = 0,
) -> Any:
    """The data set of the text table ``path`` (see the module docstring).

    Raises:
        HessauditError: no text model to tokenize for (``text`` is None), a bad file, a label
            outside [0, num_classes), an impossible ``samples``.
    """
    what = f"data {path}"
    if text is None:
        raise HessauditError(
            f"{what} is text data ({', '.join(TEXT_EXTENSIONS)}), but --model is not a text "
            "classifier",
            hint="pass --model a Hugging Face sequence-classification folder (config.json), or "
            "a factory returning hessaudit.inputs.text_model.TextClassifier",
        )
    table = read_text_table(path, text.options, text.label2id)
    rows = list(range(len(table.labels)))
    if samples is not None:
        if isinstance(samples, bool) or not isinstance(samples, int) or not (
            1 <= samples <= len(rows)
        ):
            raise HessauditError(
                f"--samples {samples}: must be between 1 and the {len(rows)} examples of {path}"
            )
        generator = torch.Generator().manual_seed(int(seed))
        rows = torch.sort(torch.randperm(len(rows), generator=generator)[:samples]).values.tolist()
    labels = [table.labels[i] for i in rows]
    if num_classes is not None:
        for i in rows:
            if table.labels[i] >= num_classes:
                raise HessauditError(
                    f"{what}, row {i + 1}: label {table.labels[i]} is outside [0, {num_classes}) "
                    f"for the model's {num_classes} classes",
                    hint="check --label-column, or that the data belongs to this model",
                )
    texts = [table.texts[i] for i in rows]
    pairs = None if table.pairs is None else [table.pairs[i] for i in rows]
    x, steps = encode(text, texts, pairs, what=what)
    columns = " and ".join(repr(c) for c in table.columns)
    steps.insert(0, f"read text column{'s' if pairs else ''} {columns}"
                 + (" as sentence pairs" if pairs else ""))
    classes = None
    count = num_classes if num_classes is not None else max(labels) + 1
    if table.named_labels:
        steps.append("labels named by the model config's label2id mapped to class indices")
        names = [text.id2label.get(i) for i in range(count)]
        if all(isinstance(n, str) for n in names):
            classes = tuple(str(n) for n in names)
    assert text.dataset is not None, "text_source() sets the data set class"
    return text.dataset(
        x=x,
        y=torch.tensor(labels, dtype=torch.int64),
        num_classes=count,
        source=str(path),
        classes=classes,
        scaling="tokens",
        preprocessing=tuple(steps),
    )
