"""SIGTERM handled like Ctrl-C while a run folder is being written.

Schedulers, ``timeout``, CI cancellation and container shutdown stop a job with SIGTERM. By
default Python dies at once (exit 143), leaving the temporary file of an atomic write behind
and no word about how to continue. Inside :func:`sigterm_as_interrupt` SIGTERM raises
:class:`Terminated`, a :class:`KeyboardInterrupt`, so it takes exactly Ctrl-C's path: the
atomic writes remove their temporary files, the run folder's lock is released, the command
prints how to continue with ``--resume``, and the exit code is 130 ("interrupted"). A second
SIGTERM while that cleanup runs kills the process the default way.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM."""


def _raise_terminated(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process
    raise Terminated("SIGTERM")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
