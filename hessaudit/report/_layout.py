"""One layout for every table hessaudit prints: which columns a width has room for, how wide.

The rules (the same for ``measure``, ``inspect``, ``compare``, ``finetune`` and ``tune``):

* a number is never cut, wrapped or ellipsized: a numeric column is exactly as wide as its
  widest cell, or it is not shown;
* a layer name is never broken: it stays on one line, and when it must be shortened it loses
  its *left* end behind a visible marker (``…layer4.1.conv2.weight``), never so much that
  two names read alike;
* prose cells (labels, values of a key/value table) wrap between words only: their column is
  never narrower than their longest word;
* when the width is short, the table first wraps its headers (between words and after ``_``),
  then applies each column's steps in rank order (lowest first) until it fits: a narrower form
  of the column (a shorter bar, a suffix moved to a second line), a smaller least width for a
  name or prose column, or leaving the column out. Columns left out are named in the caption.

:func:`plan` decides from widths alone (it is what the tests reason about); :func:`fit_table`
measures the cells, calls it and builds the rich table. ``width=None`` means no limit: the
piped stdout of a CI log (see :func:`hessaudit.report.console.table_width`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

#: Marker of a name shortened from the left.
MARKER = "…"
#: Rank of the last steps: what happens only when nothing else is left to try.
LAST = 1_000_000
#: Least width of a layer-name column (the marker and 11 characters of the name).
NAME_MIN = 12
#: Names up to this width stay whole until the steps ranked below the column's ``shrink`` are
#: used up.
NAME_FLOOR = 28
#: Borders and padding of a rich table with the default box: 3 cells per column, 1 more.
PER_COLUMN, EDGE = 3, 1

Kind = Literal["form", "shrink", "drop"]


@dataclass(frozen=True)
class Step:
    """One way a column gives up width: ``form`` switches its cells to a narrower form of
    width ``width``; ``shrink`` lets it be as narrow as ``width`` (name and prose columns);
    ``drop`` leaves it out."""

    rank: int
    kind: Kind
    width: int = 0


@dataclass(frozen=True)
class Spec:
    """A column's widths: its widest cell, its header on one line and its header's least
    width (longest piece between break points), and its steps."""

    key: str
    cells: int
    header: int
    header_min: int
    steps: tuple[Step, ...] = ()


@dataclass(frozen=True)
class Plan:
    """The columns shown, in order, with their widths; the forms chosen; the columns left
    out; and the table's width (borders included)."""

    widths: dict[str, int]
    forms: dict[str, int]
    dropped: tuple[str, ...]
    total: int


def table_total(widths: Sequence[int]) -> int:
    """Width of a rich table with these column widths (default box, padding 1)."""
    return sum(widths) + PER_COLUMN * len(widths) + EDGE


@dataclass(frozen=True)
class _State:
    """Where a column stands: its cells' width, its least width once it may shrink, the
    number of narrower forms applied, whether it is shown."""

    cells: int
    least: int | None = None
    form: int = 0
    shown: bool = True

    def after(self, step: Step) -> _State:
        if step.kind == "drop":
            return replace(self, shown=False)
        if step.kind == "form":
            return replace(self, cells=step.width, form=self.form + 1)
        return replace(self, least=step.width)

    def need(self, header: int) -> int:
        own = self.cells if self.least is None else min(self.cells, self.least)
        return max(own, header)


def plan(specs: Sequence[Spec], width: int | None) -> Plan:
    """Fit ``specs`` into ``width`` cells (see the module doc); ``None``: no limit.

    Headers are wrapped first, the one that gains most first, as far as needed. Then steps
    are taken in rank order until the table fits; then each is undone, latest first, when
    the table still fits without it (a column dropped before a name was allowed to shrink
    comes back if the shrinking made room for it). Room left over goes to the flexible
    columns, then to wrapped headers.
    """
    state = {s.key: _State(s.cells) for s in specs}
    header = {s.key: s.header for s in specs}

    def widths() -> dict[str, int]:
        return {s.key: state[s.key].need(header[s.key]) for s in specs if state[s.key].shown}

    def fits() -> bool:
        return width is None or table_total(list(widths().values())) <= width

    def wrap_headers() -> bool:
        """Wrap headers, the one that gains most first, until the table fits; whether it does."""
        while not fits():
            gain = {s.key: header[s.key] - max(state[s.key].need(0), s.header_min)
                    for s in specs if state[s.key].shown}
            key = max(gain, key=lambda k: gain[k], default=None)
            if key is None or gain[key] <= 0:
                return False
            header[key] -= gain[key]
        return True

    steps = sorted(
        ((step.rank, i, spec.key, step) for i, spec in enumerate(specs) for step in spec.steps),
        key=lambda item: item[:2],
    )
    taken: list[tuple[str, _State]] = []
    for _, _, key, step in steps:
        if wrap_headers():
            break
        if state[key].shown:
            taken.append((key, state[key]))
            state[key] = state[key].after(step)
    wrap_headers()
    for key, before in reversed(taken):
        now, state[key] = state[key], before
        if not fits():
            state[key] = now
    final = widths()
    if width is not None:
        room = width - table_total(list(final.values()))
        # values sit right of their labels: they grow first
        flexible = [k for k in reversed(final) if state[k].least is not None]
        room = _grow(final, {k: max(state[k].cells, header[k]) for k in flexible}, room)
        _grow(final, {s.key: s.header for s in specs if s.key in final}, room)
    forms = {s.key: state[s.key].form for s in specs}
    dropped = tuple(s.key for s in specs if not state[s.key].shown)
    return Plan(final, forms, dropped, table_total(list(final.values())))


def _grow(widths: dict[str, int], targets: dict[str, int], room: int) -> int:
    """Widen the columns of ``targets`` towards their target, in order, within ``room``;
    the room left."""
    for key, target in targets.items():
        grow = max(0, min(room, target - widths[key]))
        widths[key] += grow
        room -= grow
    return room


# ------------------------------------------------------------------ text helpers


def shorten_left(name: str, width: int) -> str:
    """``name`` in at most ``width`` cells: whole, or its right end behind :data:`MARKER`."""
    if cell_len(name) <= width:
        return name
    room = max(width - cell_len(MARKER), 1)
    tail, used = "", 0
    for ch in reversed(name):
        if used + cell_len(ch) > room:
            break
        tail, used = ch + tail, used + cell_len(ch)
    return MARKER + tail


def distinct_width(names: Sequence[str], least: int) -> int:
    """The narrowest width, at least ``least``, at which :func:`shorten_left` keeps distinct
    names distinct (a longer right end tells apart whatever a shorter one does)."""
    longest = max(map(cell_len, names), default=0)
    count = len(set(names))
    low, high = min(least, longest), longest
    while low < high:
        mid = (low + high) // 2
        if len({shorten_left(n, mid) for n in names}) == count:
            high = mid
        else:
            low = mid + 1
    return low


_PIECE = re.compile(r"[^_]*_|[^_]+")


def _pieces(text: str) -> list[tuple[str, str]]:
    """``(piece, separator before it)``: breaks at spaces and after underscores."""
    out: list[tuple[str, str]] = []
    for i, word in enumerate(text.split(" ")):
        for j, part in enumerate(_PIECE.findall(word) or [""]):
            out.append((part, " " if i > 0 and j == 0 else ""))
    return out


def header_min(text: str) -> int:
    return max((cell_len(piece) for piece, _ in _pieces(text)), default=0)


def wrap_header(text: str, width: int) -> str:
    """``text`` broken into lines of at most ``width`` cells at spaces and after ``_``."""
    lines: list[str] = []
    line = ""
    for piece, sep in _pieces(text):
        candidate = line + sep + piece if line else piece
        if line and cell_len(candidate) > width:
            lines.append(line)
            line = piece
        else:
            line = candidate
    lines.append(line)
    return "\n".join(lines)


def text_width(cell: Text | str) -> int:
    """Widest line of ``cell``."""
    plain = cell.plain if isinstance(cell, Text) else cell
    return max((cell_len(line) for line in plain.split("\n")), default=0)


def longest_word(cell: Text | str) -> int:
    plain = cell.plain if isinstance(cell, Text) else cell
    return max((cell_len(word) for word in plain.split()), default=0)


# ------------------------------------------------------------------ building tables


@dataclass
class Column:
    """A column of :func:`fit_table`.

    ``cells`` are plain ``str`` (never markup) or :class:`rich.text.Text`. ``forms`` are
    narrower forms of the cells, each with the rank at which it is used. ``kind``: ``number``
    cells stay on one line at full width; ``prose`` cells wrap between words (the column may
    shrink to its longest word at rank ``shrink``); ``name`` cells are layer names, shortened
    from the left (``suffixes``, e.g. ``(new head)``, follow on the same line or the next).
    """

    key: str
    header: str
    cells: Sequence[Text | str]
    justify: Literal["left", "right"] = "right"
    kind: Literal["number", "prose", "name"] = "number"
    forms: Sequence[tuple[int, Sequence[Text | str]]] = ()
    drop: int | None = None
    shrink: int = 0
    suffixes: Sequence[Text | None] = field(default_factory=list)

    def spec(self) -> Spec:
        steps = [Step(rank, "form", _widest(cells)) for rank, cells in self.forms]
        widest = _widest(self.cells)
        if self.kind == "name":
            widest = max(
                [cell_len(str(n)) + _suffix_width(s, inline=True)
                 for n, s in zip(self.cells, self._suffixes(), strict=True)] or [0]
            )
            names = max([cell_len(str(n)) for n in self.cells] or [0])
            below = max([_suffix_width(s, inline=False) for s in self._suffixes()] or [0])
            least = max(min(names, NAME_MIN), below)
            distinct = max(distinct_width([str(n) for n in self.cells], NAME_MIN), least)
            # Whole up to NAME_FLOOR, then still told apart; never so short that two rows read
            # alike (a table wider than the terminal is the lesser evil: it wraps, nothing lies).
            steps.append(Step(self.shrink, "shrink", max(min(names, NAME_FLOOR), distinct)))
            steps.append(Step(LAST, "shrink", distinct))
        elif self.kind == "prose":
            steps.append(Step(self.shrink, "shrink", max(map(longest_word, self.cells),
                                                         default=0)))
        if self.drop is not None:
            steps.append(Step(self.drop, "drop"))
        return Spec(self.key, widest, cell_len(self.header), header_min(self.header),
                    tuple(steps))

    def _suffixes(self) -> list[Text | None]:
        return list(self.suffixes) or [None] * len(self.cells)

    def rendered(self, form: int, width: int) -> list[Text]:
        """The cells in form ``form`` (0: natural) for a column ``width`` cells wide."""
        if self.kind == "name":
            return [_name_cell(str(n), s, width)
                    for n, s in zip(self.cells, self._suffixes(), strict=True)]
        cells = self.cells if form == 0 else self.forms[form - 1][1]
        return [c if isinstance(c, Text) else Text(c) for c in cells]


def _widest(cells: Sequence[Text | str]) -> int:
    return max(map(text_width, cells), default=0)


def _suffix_width(suffix: Text | None, *, inline: bool) -> int:
    if suffix is None:
        return 0
    return cell_len(suffix.plain) + (1 if inline else 0)


def _name_cell(name: str, suffix: Text | None, width: int) -> Text:
    cell = Text(shorten_left(name, width))
    if suffix is not None:
        inline = cell.cell_len + 1 + suffix.cell_len <= width
        cell.append(" " if inline else "\n")
        cell.append_text(suffix)
    return cell


def fit_table(
    columns: Sequence[Column], width: int | None, *, title: str | Text | None = None,
    **table_options: object,
) -> tuple[Table, Plan]:
    """A rich table of ``columns`` laid out by :func:`plan` for ``width`` cells.

    Columns left out for want of room are named in the caption. With ``width=None``, or when
    even the last steps leave the table wider than ``width``, the table keeps its own width
    (print it with ``crop=False``: the terminal wraps the lines, no number is cut).
    """
    chosen = plan([c.spec() for c in columns], width)
    table = Table(title=title, title_justify="left", header_style="bold", **table_options)
    if width is None or chosen.total > width:
        table.width = chosen.total
    shown = [c for c in columns if c.key in chosen.widths]
    rendered = []
    for column in shown:
        w = chosen.widths[column.key]
        table.add_column(
            Text(wrap_header(column.header, w)),
            justify=column.justify,
            width=w,
            no_wrap=column.kind != "prose",
        )
        rendered.append(column.rendered(chosen.forms[column.key], w))
    for row in zip(*rendered, strict=True):
        table.add_row(*row)
    if chosen.dropped:
        names = ", ".join(c.header for c in columns if c.key in chosen.dropped)
        table.caption = Text(f"not shown at this width: {names}", style="dim")
        table.caption_justify = "left"
    return table, chosen


def merge_identical(columns: list[Column], keys: Sequence[str]) -> list[Column]:
    """Columns among ``keys`` whose cells read the same merged into one, headed
    ``a = b = c`` (the first keeps its place and its other settings)."""
    groups: list[list[Column]] = []
    for column in (c for c in columns if c.key in keys):
        for group in groups:
            if _plain(group[0].cells) == _plain(column.cells):
                group.append(column)
                break
        else:
            groups.append([column])
    merged = {g[0].key: g for g in groups if len(g) > 1}
    gone = {c.key for g in merged.values() for c in g[1:]}
    out = []
    for column in columns:
        if column.key in gone:
            continue
        if column.key in merged:
            group = merged[column.key]
            column = replace(
                column, header=" = ".join(c.header for c in group), drop=_never_first(group)
            )
        out.append(column)
    return out


def _plain(cells: Sequence[Text | str]) -> list[str]:
    return [c.plain if isinstance(c, Text) else c for c in cells]


def _never_first(group: Sequence[Column]) -> int | None:
    """A merged column is dropped no earlier than the most important of its members."""
    ranks = [c.drop for c in group]
    return None if None in ranks else max(r for r in ranks if r is not None)
