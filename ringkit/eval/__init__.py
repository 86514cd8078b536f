"""Evaluations of long-context retrieval: needle in a haystack (``needle``).

Example::

    results = ringkit.eval.needle(lengths=[1024, 2048, 4096, 8192], depths=[0, .25, .5, .75, 1])
    results.plot()
"""

from ringkit.eval.needle import NeedleResults, needle

__all__ = ["NeedleResults", "needle"]
