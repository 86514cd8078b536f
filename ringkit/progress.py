"""Progress bars for steps that can take more than a few seconds (tqdm.auto: a widget in Jupyter,
text on a terminal).

``show=None`` (the default everywhere) shows a bar only for work of at least ``threshold`` units;
``RINGKIT_PROGRESS=0`` in the environment turns every bar off, ``=1`` turns them all on.

Example::

    with bar(len(frames), "VQGAN", "frame") as b:
        for batch in batches:
            ...
            b.update(len(batch))
"""

from __future__ import annotations

import contextlib
import os

_REPORTING: list = []  # bars that compiled code reports to through ``tick`` (innermost last)


class Silent:
    def update(self, n: int = 1) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def _env_setting() -> bool | None:
    """``RINGKIT_PROGRESS``: True (all bars on), False (all off) or None (unset: by amount)."""
    env = os.environ.get("RINGKIT_PROGRESS")
    return None if env is None else env not in ("0", "false", "no", "")


def ticks_wanted() -> bool:
    """Whether compiled code should carry the ``tick`` callback, read when it is traced: not
    when ``RINGKIT_PROGRESS=0`` turns bars off. (An executable with a host callback is never
    written to JAX's persistent compilation cache, so without it repeated compiles are shared.)"""
    return _env_setting() is not False


def bar(total: int, desc: str, unit: str, *, show: bool | None = None, threshold: int = 1,
        amount: int | None = None):
    """A context manager with ``.update(n)``: a tqdm bar over ``total`` units, or a silent one
    (``show=False``, too little work: ``amount`` (default ``total``) under ``threshold``,
    ``RINGKIT_PROGRESS=0``)."""
    if show is None:
        show = _env_setting()
    if show is None:
        show = (total if amount is None else amount) >= threshold
    if not show:
        return Silent()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)


@contextlib.contextmanager
def reporting(progress):
    """Send ``tick`` calls made by compiled code (``jax.debug.callback``) to ``progress``."""
    _REPORTING.append(progress)
    try:
        yield progress
    finally:
        _REPORTING.pop()


def tick(*_) -> None:
    """Advance the bar compiled code reports to, if any: a host callback, e.g. once per layer
    of a prefill (``jax.debug.callback(tick, x)``; ``x`` orders it after the layer's work)."""
    if _REPORTING:
        _REPORTING[-1].update(1)
