"""Evaluations of long-context retrieval: needle in a haystack (``needle``) and RULER's tasks
(``ruler``).

Example::

    results = ringkit.eval.needle(lengths=[1024, 2048, 4096, 8192], depths=[0, .25, .5, .75, 1])
    results.plot()
    ruler = ringkit.eval.ruler(tasks=["niah", "vt"], length=[4096, 8192], samples=10)
    ruler.scores(), ruler.effective_length()
    ringkit.eval.needle_prompt(None, 2048, 0.5).text     # any cell's prompt, no model run
    ringkit.eval.ruler_prompt("vt", None, 4096).answers
"""

from ringkit.eval.common import CellPrompt
from ringkit.eval.needle import NeedleResults, needle, needle_prompt
from ringkit.eval.ruler import RulerResults, ruler, ruler_prompt
from ringkit.eval.video_needle import VideoNeedleResults, video_needle

__all__ = ["CellPrompt", "NeedleResults", "RulerResults", "VideoNeedleResults", "needle",
           "needle_prompt", "ruler", "ruler_prompt", "video_needle"]
