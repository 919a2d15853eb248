"""Run the user's model code so that whatever it does ends as one line naming the factory.

A ``--model path/to/file.py:fn`` factory is the user's code: importing its module, calling it
and running the model's ``forward``. That code may call ``sys.exit(0)`` (hessaudit would exit
0 with nothing written, and a CI gate would pass), parse the command line with ``argparse``
(which prints a usage message and exits 2, hessaudit's "gate failed" code), or raise anything.

* :func:`user_code` wraps an import or a call: a ``SystemExit`` (or any other non-``Exception``
  ``BaseException`` but ``KeyboardInterrupt``) becomes a :class:`HessauditError` naming the
  factory; what the code wrote to ``sys.stderr`` is held back, replayed when it succeeds and
  reduced to its last line, quoted in the error, when it exits. Ordinary exceptions pass
  through unchanged to the caller's own handling.
* :func:`guard_forward` wraps a model's ``forward`` the same way, and marks ordinary
  exceptions raised inside it (:func:`raised_in_forward`) so the CLI can name the factory
  instead of reporting an internal error.

``os._exit`` and signals cannot be intercepted; a factory that calls them ends the process.
"""

from __future__ import annotations

import contextlib
import functools
import io
import sys
import threading
from collections.abc import Iterator
from typing import Any

from hessaudit.errors import HessauditError

__all__ = ["describe", "guard_forward", "raised_in_forward", "user_code"]

_MARK = "_hessaudit_forward_of"
_NO_EXIT = (
    "a model factory must return the model; it must not exit or parse the command line "
    "(use function arguments, not argparse)"
)


def describe(exc: BaseException) -> str:
    """``SystemExit(0)``, ``ValueError: text``...: an exception in one short line."""
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r})"
    text = " ".join(str(exc).split())
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    line = lines[-1] if len(lines[-1]) <= 160 else lines[-1][:157] + "..."
    return f"; its last line on stderr: {line!r}"


@contextlib.contextmanager
def user_code(spec: str, stage: str) -> Iterator[None]:
    """Run the block as the factory ``spec``'s code, during ``stage`` ("importing f.py"...).

    Raises:
        HessauditError: the block raised ``SystemExit`` (or another ``BaseException`` that is
            neither an ``Exception`` nor ``KeyboardInterrupt``).
    """
    real = sys.stderr
    held = _HeldStderr(real)
    sys.stderr = held
    try:
        yield
    except (Exception, KeyboardInterrupt):
        sys.stderr = real
        _replay(real, held.text())
        raise
    except BaseException as exc:
        sys.stderr = real
        raise HessauditError(
            f"--model {spec}: the model factory raised {describe(exc)} while {stage}"
            f"{_last_line(held.text())}",
            hint=_NO_EXIT,
        ) from None
    sys.stderr = real
    _replay(real, held.text())


class _HeldStderr(io.TextIOBase):
    """``sys.stderr`` while user code runs: this thread's writes are held, other threads'
    (a progress bar refreshing in the background) go straight to the real stream."""

    def __init__(self, real: Any) -> None:
        super().__init__()
        self._real = real
        self._owner = threading.get_ident()
        self._held = io.StringIO()

    def write(self, text: str) -> int:
        if threading.get_ident() == self._owner:
            return self._held.write(text)
        return self._real.write(text)

    def flush(self) -> None:
        if threading.get_ident() != self._owner:
            with contextlib.suppress(OSError, ValueError):
                self._real.flush()

    def isatty(self) -> bool:
        return bool(getattr(self._real, "isatty", lambda: False)())

    def fileno(self) -> int:
        return self._real.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._real, "encoding", None) or "utf-8"

    def text(self) -> str:
        return self._held.getvalue()


def _replay(stream: Any, text: str) -> None:
    if not text:
        return
    with contextlib.suppress(OSError, ValueError):
        stream.write(text)
        stream.flush()


def guard_forward(model: Any, spec: str) -> None:
    """Make ``model``'s forward end any ``SystemExit`` as a :class:`HessauditError` naming
    ``spec``, and mark ordinary exceptions from it for :func:`raised_in_forward`.

    The wrapper is set on the instance (``model.forward``), so the model's class, its
    ``state_dict`` and ``torch.func.functional_call`` see the same module as before.
    """
    inner = model.forward

    @functools.wraps(inner)
    def forward(*args: Any, **kwargs: Any) -> Any:
        try:
            return inner(*args, **kwargs)
        except HessauditError:
            raise
        except Exception as exc:
            with contextlib.suppress(AttributeError, TypeError):
                if getattr(exc, _MARK, None) is None:
                    setattr(exc, _MARK, spec)
            raise
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            raise HessauditError(
                f"--model {spec}: the model's forward raised {describe(exc)}",
                hint="a model's forward must return its output; it must not exit",
            ) from None

    model.forward = forward


def raised_in_forward(exc: BaseException) -> str | None:
    """The factory spec whose model's forward raised ``exc``, or None."""
    spec = getattr(exc, _MARK, None)
    return spec if isinstance(spec, str) else None
