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

import os


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def bar(total: int, desc: str, unit: str, *, show: bool | None = None, threshold: int = 1):
    """A context manager with ``.update(n)``: a tqdm bar over ``total`` units, or a silent one
    (``show=False``, too little work, ``RINGKIT_PROGRESS=0``)."""
    env = os.environ.get("RINGKIT_PROGRESS")
    if env is not None and show is None:
        show = env not in ("0", "false", "no", "")
    if show is None:
        show = total >= threshold
    if not show:
        return _Silent()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
