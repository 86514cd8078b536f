"""What a context looks like: how its sequence is sharded over the ring, its video frames, and
an answer as it streams.

Plain text for terminals (``sharding_text``), HTML for notebooks (``sharding_html``,
``frame_strip_html``); ``Context`` uses both in its ``repr`` and rich display.
``AnswerPrinter`` shows a streamed answer as one growing output.

Example::

    print(sharding_text(8192, sp=4))
    # device 0: tokens 0-1,023 and 7,168-8,191 (2,048)
    # ...
"""

from __future__ import annotations

import base64
import html
import io
import sys

import numpy as np

from ringkit.attention.layouts import layout_positions
from ringkit.model.batch import padded_length

_TEXT, _VISION, _PAD = "#4C78A8", "#F58518", "#DDDDDD"


def device_ranges(n: int, sp: int, layout: str = "zigzag") -> list[list[tuple[int, int]]]:
    """For each device of the ring, the ``(first, last)`` position ranges (inclusive) of the
    ``n`` real tokens it holds after padding to the ring (padding left out)."""
    total = padded_length(n, sp, layout)
    held = layout_positions(total, sp, layout).reshape(sp, total // sp)
    out = []
    for row in held:
        row = np.sort(row[row < n])
        if not len(row):
            out.append([])
            continue
        cuts = np.flatnonzero(np.diff(row) != 1) + 1
        out.append([(int(r[0]), int(r[-1])) for r in np.split(row, cuts)])
    return out


def sharding_text(n: int, sp: int, layout: str = "zigzag", *, max_devices: int = 8) -> str:
    """Which tokens each device holds, one line per device (the first ``max_devices``)."""
    ranges = device_ranges(n, sp, layout)
    lines = [f"{layout} layout over sp={sp}:"]
    for d, rs in enumerate(ranges[:max_devices]):
        parts = " and ".join(f"{a:,}-{b:,}" for a, b in rs) or "padding only"
        lines.append(f"  device {d}: tokens {parts} ({sum(b - a + 1 for a, b in rs):,})")
    if sp > max_devices:
        lines.append(f"  ... and {sp - max_devices} more devices")
    return "\n".join(lines)


def sharding_html(n: int, sp: int, layout: str = "zigzag", vision=None, *,
                  max_devices: int = 16, width: int = 480) -> str:
    """HTML: one bar per device over the whole sequence of ``n`` tokens laid out on ``sp``
    devices, showing the spans it holds, coloured by modality (``vision``: bool ``[n]``; orange
    where a span is mostly vision tokens). A ``Context`` shows its own in Jupyter.

    Example::

        from IPython.display import HTML
        HTML(rk.sharding_html(131072, 8))      # zigzag: each device holds two spans
    """
    ranges = device_ranges(n, sp, layout)
    rows = []
    for d, rs in enumerate(ranges[:max_devices]):
        spans = []
        for a, b in rs:
            mostly_vision = vision is not None and vision[a:b + 1].mean() > 0.5
            colour = _VISION if mostly_vision else _TEXT
            left, w = 100 * a / n, max(100 * (b - a + 1) / n, 0.3)
            spans.append(f'<div title="tokens {a:,}-{b:,}" style="position:absolute;'
                         f'left:{left:.3f}%;width:{w:.3f}%;height:100%;background:{colour}">'
                         "</div>")
        rows.append(f'<tr><td style="padding:0 6px;font:11px monospace">device {d}</td><td>'
                    f'<div style="position:relative;width:{width}px;height:10px;'
                    f'background:{_PAD}">{"".join(spans)}</div></td></tr>')
    more = (f'<tr><td colspan="2" style="font:11px monospace">... and {sp - max_devices} more'
            "</td></tr>" if sp > max_devices else "")
    return (f'<div style="font:12px sans-serif">{html.escape(layout)} layout over sp={sp}: '
            f"each device holds these tokens of 0-{n - 1:,} "
            f'(<span style="color:{_TEXT}">text</span>, '
            f'<span style="color:{_VISION}">vision</span>)</div>'
            f"<table>{''.join(rows)}{more}</table>")


def sample_frames(count: int, k: int) -> np.ndarray:
    """``min(k, count)`` evenly spaced frame indices."""
    return np.unique(np.linspace(0, count - 1, min(k, count)).round().astype(int))


def frame_strip_html(frames, times=None, *, k: int = 8, size: int = 96) -> str:
    """``k`` evenly sampled frames of uint8 ``[T, H, W, 3]`` as a strip of thumbnails with their
    times (``times [T]`` seconds); empty without frames or without pillow."""
    if frames is None or not len(frames):
        return ""
    try:
        from PIL import Image
    except ImportError:
        return ""
    cells = []
    for i in sample_frames(len(frames), k):
        buf = io.BytesIO()
        Image.fromarray(np.asarray(frames[i])).resize((size, size)).save(buf, format="PNG")
        data = base64.b64encode(buf.getvalue()).decode()
        label = f"{times[i]:.0f} s" if times is not None and len(times) > i else f"#{i}"
        cells.append(f'<figure style="display:inline-block;margin:2px;text-align:center">'
                     f'<img src="data:image/png;base64,{data}" width="{size}" height="{size}">'
                     f'<figcaption style="font:10px monospace">{label}</figcaption></figure>')
    return f'<div>{"".join(cells)}</div>'


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (where output can be updated in place)."""
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


class AnswerPrinter:
    """``stream=True``: the answer as one growing output. In Jupyter, one display updated in
    place (a saved notebook keeps one output, not one per token); elsewhere, stdout."""

    def __init__(self):
        self.text, self.handle = "", None
        if in_notebook():
            from IPython.display import Pretty, display

            self.handle = display(Pretty(""), display_id=True)

    def __call__(self, piece: str, row: int = 0) -> None:
        self.text += piece
        if self.handle is not None:
            from IPython.display import Pretty

            self.handle.update(Pretty(self.text))
        else:
            sys.stdout.write(piece)
            sys.stdout.flush()

    def close(self) -> None:
        if self.handle is None:
            print()
