"""Upper bounds on integer flags, checked before any work.

Typer accepts any Python integer, so ``--seed 2**70`` or ``--trace-probes 1000000000`` would
otherwise get as far as torch and fail there ("Overflow when unpacking long long", or out of
memory minutes later). Each limit is far above any useful value:

* seeds are 64-bit: torch's generators take integers in [0, 2^64 - 1] (negative seeds are
  refused, as ``finetune`` always did, so that one seed has one spelling);
* ``--lanczos-steps``: the Krylov basis holds one vector per step (and per example with
  ``--reduce example-max``); the default is 100, and 10 000 steps of a 10^6-parameter layer
  already take 40 GB in float32;
* ``--trace-probes``: Hutchinson's probes are drawn at once, a (probes x parameters) matrix; the
  standard error falls only as 1/sqrt(probes), so 10 000 probes are 1% of one probe's spread;
* ``--spectrum-samples`` counts examples (it is capped by the data's size anyway).
"""

from __future__ import annotations

from hessaudit.errors import HessauditError

SEED_MAX = 2**64 - 1
MAX_LANCZOS_STEPS = 10_000
MAX_TRACE_PROBES = 10_000
MAX_SPECTRUM_SAMPLES = 1_000_000


def check_seed(value: int | None, flag: str = "--seed") -> None:
    """Refuse a seed outside [0, 2^64 - 1] (``None``: not given)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        shown = str(value) if len(str(value)) <= 30 else f"{str(value)[:27]}..."
        raise HessauditError(
            f"{flag} {shown} is outside [0, 2^64 - 1]",
            hint="seeds are 64-bit integers, e.g. 0 or 1234",
        )


def check_at_most(flag: str, value: int, limit: int, why: str) -> None:
    if value > limit:
        raise HessauditError(f"{flag} {value} is above the limit of {limit}", hint=why)


def check_measure_flags(
    *, seed: int, lanczos_steps: int, trace_probes: int, spectrum_samples: int
) -> None:
    """The upper bounds of the module docstring for ``measure``'s flags."""
    check_seed(seed)
    check_at_most(
        "--lanczos-steps", lanczos_steps, MAX_LANCZOS_STEPS,
        "the Lanczos basis holds one vector per step; the default is 100",
    )
    check_at_most(
        "--trace-probes", trace_probes, MAX_TRACE_PROBES,
        "all probes are held in memory at once, and the trace's standard error falls only as "
        "1/sqrt(probes); the default is 8",
    )
    check_at_most(
        "--spectrum-samples", spectrum_samples, MAX_SPECTRUM_SAMPLES,
        "it counts examples; the default is 32",
    )
