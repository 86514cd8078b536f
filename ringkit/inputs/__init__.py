"""Inputs: books, source trees, text files, videos and images read into an ordered ``Document`` (``rk.ingest``).

The package is not named ``ingest``: ``rk.ingest`` is the function, and a package of the same name
would shadow it (or be shadowed: ``import ringkit.ingest.repo`` then fails)."""

from ringkit.inputs.document import Document, FramesSegment, Skipped, TextSegment
from ringkit.inputs.sources import ingest

__all__ = ["Document", "FramesSegment", "Skipped", "TextSegment", "ingest"]
