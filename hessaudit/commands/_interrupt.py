"""Ctrl-C (SIGINT) while a command runs ends as exit 130, whatever the code it lands in does.

Python's own SIGINT handler raises one ``KeyboardInterrupt``, in whatever code the main thread
is running at that moment. That is not enough for a CI gate, for two reasons:

* The exception can be lost: a finalizer (``__del__``, a weakref callback) that happens to run
  when the signal lands, a library's ``except BaseException`` or C code that clears errors
  swallows it, and the command runs on to exit 0 with its outputs written.
* The process can die by the signal after hessaudit handled it: when a ``KeyboardInterrupt``
  leaves code that ``exec()`` or ``eval()`` runs from a string (``collections.namedtuple``,
  numpy's f2py and scipy's ``array_api_compat`` do so while being imported), CPython (3.10 to
  3.13 at least) marks the interrupt "unhandled" even when it is caught later, and
  ``python -m hessaudit`` then kills itself with SIGINT at exit (return code -2) instead of
  exiting 130 (the installed ``hessaudit`` script exits by another path). CPython tests the
  exception's exact type there (``run_eval_code_obj`` in Python/pythonrun.c).

So within :func:`sigint_recorded`, SIGINT raises :class:`Interrupted`, a subclass of
``KeyboardInterrupt`` (every ``except KeyboardInterrupt`` still catches it; CPython's exact-type
test does not), and records that it came. The CLI maps a recorded interrupt to exit 130 even
when the exception was swallowed, and :func:`check` lets a command refuse to write its outputs
after one.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGINT (Ctrl-C)."""


class _State:
    received = False


_state = _State()


def _raise_interrupted(signum: int, frame: Any) -> None:
    _state.received = True
    raise Interrupted


def received() -> bool:
    """Whether SIGINT came within the current :func:`sigint_recorded` block."""
    return _state.received


def check() -> None:
    """Raise :class:`Interrupted` if SIGINT came, even if its exception was swallowed."""
    if _state.received:
        raise Interrupted


def checked(callback: Callable[..., None]) -> Callable[..., None]:
    """``callback`` (a progress update), calling :func:`check` first: a long computation whose
    Ctrl-C was swallowed stops at its next step instead of running to its end."""

    def call(*args: Any) -> None:
        check()
        callback(*args)

    return call


@contextlib.contextmanager
def sigint_recorded() -> Iterator[None]:
    """Within the block, SIGINT raises :class:`Interrupted` and is recorded.

    Only Python's default handler is replaced: an ignored SIGINT (``nohup``, a background job)
    and a handler set by a program that embeds hessaudit are left as they are.
    """
    install = (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )
    _state.received = False
    if install:
        signal.signal(signal.SIGINT, _raise_interrupted)
    try:
        yield
    finally:
        if install:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        _state.received = False
