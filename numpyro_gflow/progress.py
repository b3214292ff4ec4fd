"""A tqdm progress bar driven from inside a compiled ``lax.scan``, as NumPyro shows them.

The compiled loop calls back to the host only every ``every`` steps (``jax.debug.callback``
under ``lax.cond``), so the bar costs nothing measurable. Bars live in a registry keyed by an
integer id passed as a traced argument: the compiled program never changes between runs, so a
second run with a new bar does not recompile.
"""

from __future__ import annotations

import itertools
import threading

import jax
import numpy as np
from jax import lax
from tqdm.auto import tqdm

_BARS: dict[int, tqdm] = {}
_NAMES: dict[int, str] = {}
_IDS = itertools.count(1)
_LOCK = threading.Lock()
#: a Ctrl-C that arrived while a host callback ran (see `_update`), not yet honoured
_INTERRUPT = threading.Event()


def _update(bar_id, step, value):
    try:
        bar = _BARS.get(int(bar_id))
        if bar is None:
            return
        with _LOCK:
            step = int(step)
            if step > bar.n:
                if int(bar_id) in _NAMES:  # first report: compilation is over
                    bar.set_description(_NAMES.pop(int(bar_id)), refresh=False)
                bar.update(step - bar.n)
                if np.isfinite(value):
                    bar.set_postfix_str(f"objective={float(value):.4g}", refresh=False)
    except KeyboardInterrupt:
        # the callback can run on the main thread, where Ctrl-C lands: raised here it would
        # surface as a JaxRuntimeError from the compiled loop. The driver honours it after the
        # chunk instead (`take_interrupt`)
        _INTERRUPT.set()


def take_interrupt() -> bool:
    """Whether a Ctrl-C arrived during a progress callback since the last call (and clear it)."""
    pending = _INTERRUPT.is_set()
    _INTERRUPT.clear()
    return pending


def every_for(num_steps: int) -> int:
    """Update about 50 times per run (never more often than every step)."""
    return max(1, num_steps // 50)


def tick(bar_id, step, value, every: int):
    """Inside the scan: report ``step`` (1-based count of finished steps) every ``every`` steps."""
    def report():
        jax.debug.callback(_update, bar_id, step, value)

    lax.cond((step % every == 0) & (bar_id > 0), report, lambda: None)


class ProgressBar:
    """Context manager: opens a bar, yields its id (0 when disabled), closes it at the end."""

    def __init__(self, num_steps: int, description: str, enabled: bool = True):
        self.num_steps, self.description, self.enabled = num_steps, description, enabled
        self.id = 0

    def __enter__(self) -> np.int32:
        if self.enabled:
            self.id = next(_IDS)
            _BARS[self.id] = tqdm(total=self.num_steps, desc=f"Compiling.. {self.description}")
            _NAMES[self.id] = self.description
        return np.int32(self.id)   # NumPy: no XLA program to make it

    def finish(self, steps_done: int | None = None):
        """Show the bar at ``steps_done`` (default: all steps; less for a stopped run)."""
        bar = _BARS.get(self.id)
        if bar is not None:
            _NAMES.pop(self.id, None)
            bar.set_description(self.description, refresh=False)
            done = self.num_steps if steps_done is None else steps_done
            if done > bar.n:
                bar.update(done - bar.n)

    def __exit__(self, *exc):
        bar = _BARS.pop(self.id, None)
        _NAMES.pop(self.id, None)
        if bar is not None:
            bar.close()
        return False
