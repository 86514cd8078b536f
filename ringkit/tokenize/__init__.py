"""Tokens: tokenizers with their chat templates, LWM's VQGAN (video frames <-> codes), and
documents laid out as prompt tokens.

Example::

    from ringkit.tokenize import VQGAN
    vq = VQGAN.load("LWM-Chat-1M-Jax/vqgan")
    codes = vq.encode(doc.frames)          # int32 [T, 16, 16]
"""

from ringkit.tokenize.prompts import Tokens
from ringkit.tokenize.text import Tokenizer
from ringkit.tokenize.vqgan import VQGAN, VQGANConfig

__all__ = ["Tokenizer", "Tokens", "VQGAN", "VQGANConfig"]
