"""Which implementation of the engine's hot paths runs: ``"new"`` (the default) or ``"old"``.

``"old"`` is the engine as it was before issue 16 (per-layer whole-network JVPs on the exact
path; per-example HVPs recomputed from scratch at every Lanczos step, one Gram-Schmidt update per
stored vector, no screening on the Lanczos path). It is kept only so that
``benchmarks/run.py --engine-version old`` can measure the speed-ups against it in the same run;
both compute the same quantities, and agree to round-off (see docs/performance.md). Nothing in
the CLI sets it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from hessaudit.errors import HessauditError

VERSIONS = ("new", "old")

_current = "new"


def engine_version() -> str:
    """The implementation in use: ``"new"`` or ``"old"``."""
    return _current


def set_engine_version(version: str) -> None:
    """Select the implementation for the rest of the process (benchmarks only)."""
    global _current
    if version not in VERSIONS:
        raise HessauditError(f"unknown engine version {version!r}",
                             hint=f"choose one of {', '.join(VERSIONS)}")
    _current = version


@contextmanager
def use_engine_version(version: str) -> Iterator[None]:
    """Run a block with ``version`` selected, restoring the previous choice afterwards."""
    previous = _current
    set_engine_version(version)
    try:
        yield
    finally:
        set_engine_version(previous)


def legacy() -> bool:
    return _current == "old"
