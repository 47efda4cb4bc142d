"""Where a unit of work spends its time: named steps, each timed without the steps timed inside it, so that a
profile's steps add up to the time they cover (``shopseq bench --demo`` prints them per asset)."""

import contextvars
import time
from collections.abc import Iterator
from contextlib import contextmanager

# The profile being collected in this context: (seconds per step, the child seconds of each open step).
_PROFILE: contextvars.ContextVar[tuple[dict[str, float], list[float]] | None] = contextvars.ContextVar(
    "shopseq_profile", default=None
)


@contextmanager
def profiled() -> Iterator[dict[str, float]]:
    """Collect the steps timed inside the block (in this thread) into the dict yielded: ``{step: seconds}``."""
    seconds: dict[str, float] = {}
    token = _PROFILE.set((seconds, []))
    try:
        yield seconds
    finally:
        _PROFILE.reset(token)


@contextmanager
def step(name: str) -> Iterator[None]:
    """Time the block as ``name`` in the profile being collected (nothing when none is): its own time, the steps
    inside it left out; a step met again adds up."""
    state = _PROFILE.get()
    if state is None:
        yield
        return
    seconds, open_steps = state
    began = time.perf_counter()
    open_steps.append(0.0)
    try:
        yield
    finally:
        elapsed = time.perf_counter() - began
        inner = open_steps.pop()
        seconds[name] = seconds.get(name, 0.0) + elapsed - inner
        if open_steps:
            open_steps[-1] += elapsed
