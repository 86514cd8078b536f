"""Evaluations of long-context retrieval: needle in a haystack (``needle``) and RULER's tasks
(``ruler``).

Example::

    results = ringkit.eval.needle(lengths=[1024, 2048, 4096, 8192], depths=[0, .25, .5, .75, 1])
    results.plot()
    ruler = ringkit.eval.ruler(tasks=["niah", "vt"], length=[4096, 8192], samples=10)
    ruler.scores(), ruler.effective_length()
"""

from ringkit.eval.needle import NeedleResults, needle
from ringkit.eval.ruler import RulerResults, ruler
from ringkit.eval.video_needle import VideoNeedleResults, video_needle

__all__ = ["NeedleResults", "RulerResults", "VideoNeedleResults", "needle", "ruler", "video_needle"]
