"""The sharding view and frame strip of a context's display."""

import numpy as np
import pytest

from ringkit.display import device_ranges, frame_strip_html, sharding_html, sharding_text
from ringkit.model.batch import padded_length


@pytest.mark.parametrize("n, sp, layout", [(8190, 4, "zigzag"), (1000, 8, "zigzag"),
                                           (37, 2, "contiguous"), (5, 1, "zigzag")])
def test_every_token_is_held_once(n, sp, layout):
    ranges = device_ranges(n, sp, layout)
    held = np.concatenate([np.arange(a, b + 1) for rs in ranges for a, b in rs])
    assert len(ranges) == sp and sorted(held.tolist()) == list(range(n))
    if layout == "zigzag" and sp > 1:
        counts = [sum(b - a + 1 for a, b in rs) for rs in ranges]
        assert max(counts) - min(counts) <= padded_length(n, sp, layout) - n  # balanced
        assert ranges[0][0][0] == 0 and ranges[0][-1][1] == n - 1  # device 0: first and last


def test_text_and_html_views():
    text = sharding_text(8192, 4)
    assert "device 0: tokens 0-1,023 and 7,168-8,191 (2,048)" in text
    assert "... and 8 more devices" in sharding_text(64, 16, max_devices=8)
    vision = np.zeros(8192, bool)
    vision[4096:] = True
    page = sharding_html(8192, 4, vision=vision)
    assert page.count(">device ") == 4 and "#F58518" in page and "#4C78A8" in page


def test_frame_strip():
    pytest.importorskip("PIL")
    frames = np.random.default_rng(0).integers(0, 255, (30, 256, 256, 3), dtype=np.uint8)
    page = frame_strip_html(frames, np.arange(30.0), k=5)
    assert page.count("<img") == 5 and "29 s" in page and "0 s" in page
    assert frame_strip_html(frames[:0]) == ""
