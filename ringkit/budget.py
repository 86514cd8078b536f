"""What fits: a prompt against the devices' memory (``check_memory``) and against the model's
context, where a source tree too long is read as its outline (``fit_prompt``). ``ringkit.read``
and ``ringkit info`` use both."""

from __future__ import annotations

import os

from ringkit.errors import ConfigError, ResourceError, ShapeError, advice
from ringkit.inputs.document import Document, TextSegment
from ringkit.inputs.outline import fit_focused, fit_outline
from ringkit.inputs.repo import HEADER
from ringkit.model.memory import estimate
from ringkit.tokenize.prompts import context_prompt


def host_available() -> int:
    """Bytes of memory this host can still give (``MemAvailable``)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(model, tokens: int, new_tokens: int = 0) -> None:
    """Refuse a prompt whose estimated prefill peak exceeds the memory the devices have."""
    est = estimate(model, tokens, new_tokens=new_tokens)
    tokens += new_tokens
    devices = list(model.mesh.devices.flat)
    if devices[0].platform == "cpu":  # simulated CPU devices share the host's memory
        have, need = host_available(), est.prefill_peak * len(devices)
    else:
        stats = devices[0].memory_stats() or {}
        have, need = int(stats.get("bytes_limit") or 0), est.prefill_peak
    if have and need > have:
        raise ResourceError(
            f"{tokens:,} tokens need about {need / 1e9:.1f} GB "
            f"({'all devices' if devices[0].platform == 'cpu' else 'per device'}) and "
            f"{have / 1e9:.1f} GB is available: use a mesh with more devices on 'sp' ("
            + advice("ringkit.make_mesh(sp=...)", "--mesh 1,1,1,N") + "), or read less of the "
            "source")


def fit_prompt(doc: Document, prompt, model, room: int, fit: str, vqgan, cache,
               focus=None):
    """``(doc, prompt, note)``: the document as it will be read under ``fit`` (see ``read``)."""
    limit = model.config.context_length
    whole = len(prompt.prefix)
    if fit == "outline" and not doc.files:
        raise ConfigError(f"{advice('fit=', '--fit ')}outline reads a source tree's outline, and "
                          "this source has no source-tree files: use auto or whole")
    if fit == "whole" or (fit == "auto" and (whole + room <= limit or not doc.files)):
        return doc, prompt, None
    count = lambda d: len(context_prompt(d, model, vqgan=vqgan, cache=False).prefix)
    found = (fit_outline(doc, count, limit - room) if focus is None
             else fit_focused(doc, focus, count, limit - room))
    if found is None:
        raise ShapeError(
            f"even the list of the {len(doc.files):,} files' paths exceeds the "
            f"{limit:,}-token context of {model.config.name} (less {room:,} tokens of room): "
            "read a part of the tree, or load the model with RoPE scaling")
    small, detail, read_whole = found
    prompt = context_prompt(small, model, vqgan=vqgan, cache=cache)
    kind = {2: "docstrings and definitions", 1: "one line", 0: "paths only"}[detail]
    # Name the files read whole (most relevant first): the retrieval's answer to "where",
    # whatever a small model makes of it.
    names = [seg.source for seg in small.segments[::-1] if isinstance(seg, TextSegment)
             and seg.source in small.files and seg.text.startswith(HEADER.format(path=seg.source))]
    focused = (f", the {'file' if read_whole == 1 else f'{read_whole} files'} most relevant to "
               f"the question read whole and placed last: {', '.join(names)}"
               if read_whole else "")
    note = (f"read as an outline ({kind} per file{focused}; {len(prompt.prefix):,} tokens): "
            f"the whole source is {whole:,} tokens and {model.config.name} reads {limit:,}; "
            "for all of it, use a longer-context model or RoPE scaling with "
            + advice("fit='whole'", "--rope-scaling yarn:FACTOR --fit whole"))
    return small, prompt, note
