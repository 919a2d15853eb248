"""Escaping of every string that comes from an input, for each place hessaudit shows text.

Layer and tensor names, paths, class folder names, gate patterns and any field of a JSON file
are input: a hostile checkpoint or audit file chooses them. Each renderer escapes them here:

* :func:`visible` (used by all of them): characters that are invisible or change the layout
  are shown as Python escapes: control characters (``\\n``, ``\\r``, ``\\t``, the terminal's
  ``\\x1b``), Unicode format characters (bidirectional overrides such as ``\\u202e``,
  zero-width characters) and line / paragraph separators; so are lone surrogates (undecodable
  bytes of a file name), which could not be written as UTF-8. A name can then neither break a
  line, a table row or a terminal, nor reorder or hide what is shown.
* :func:`console_text`: for rich *markup* strings (table cells and titles given as ``str``,
  ``Text.from_markup``, ``console.print`` with markup): ``[tag]`` is shown literally, never
  interpreted (``x[/]y`` no longer crashes, ``[link=...]`` no longer makes a link).
  :func:`visible` alone is enough for ``rich.text.Text(...)`` and ``markup=False``.
* :func:`md_text`: for GitHub-flavoured markdown (``--summary-md``): ``&``, ``<``, ``>``
  become HTML entities (so no raw HTML), every other ASCII punctuation character is
  backslash-escaped (no emphasis, links, images, code spans, tables cells, headings, lists or
  math), and a zero-width space (U+200B) is inserted after ``@``, after ``:`` before ``/``,
  after ``#`` before a digit and after ``www`` before ``.``, so that neither a renderer's
  autolinks (``https://...``, ``www.``, e-mail addresses) nor GitHub's mentions and issue
  references can turn the text into a link. :func:`md_code` shows it in ``<code>`` tags.
* HTML (``hessaudit report``): ``html.escape`` of :func:`visible`, in
  :mod:`hessaudit.report.html`.
"""

from __future__ import annotations

import string
import unicodedata
from typing import Any

from rich.markup import escape as _rich_escape

#: Unicode categories shown as escapes: controls, format characters (bidi, zero-width),
#: line and paragraph separators, surrogates.
_HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_BACKSLASHED = frozenset(string.punctuation) - set(_ENTITIES)
ZERO_WIDTH_SPACE = "\u200b"


def visible(value: Any) -> str:
    """``str(value)`` with invisible and layout characters shown as Python escapes."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(
        ch.encode("unicode_escape").decode("ascii")
        if unicodedata.category(ch) in _HIDDEN
        else ch
        for ch in text
    )



def console_text(value: Any) -> str:
    """``value`` made safe to put inside a rich markup string."""
    return _rich_escape(visible(value))


def _link_breaker_after(text: str, i: int) -> bool:
    """Whether a zero-width space goes after ``text[i]`` so that no autolink can start."""
    ch = text[i]
    after = text[i + 1] if i + 1 < len(text) else ""
    if ch == "@":
        return True
    if ch == ":":
        return after == "/"
    if ch == "#":
        return after.isdigit()
    return after == "." and text[max(i - 2, 0) : i + 1].lower() == "www"


def md_text(value: Any) -> str:
    """``value`` as GitHub-flavoured markdown that renders as exactly that text, on one line."""
    text = visible(value)
    out: list[str] = []
    for i, ch in enumerate(text):
        if ch in _ENTITIES:
            out.append(_ENTITIES[ch])
        elif ch in _BACKSLASHED:
            out.append("\\" + ch)
        else:
            out.append(ch)
        if _link_breaker_after(text, i):
            out.append(ZERO_WIDTH_SPACE)
    return "".join(out)


def md_code(value: Any) -> str:
    """``value`` escaped by :func:`md_text`, in monospace (``<code>`` tags, not a code span:
    a code span cannot hold every string, and entities are not decoded inside one)."""
    return f"<code>{md_text(value)}</code>"
