"""Memory that must not grow with the number of images (benchmarks/scale.py measures it; these check the
structure): the pixel memo is bounded and least-recently-used, and an audit's results do not depend on it."""

from __future__ import annotations

import numpy as np
import pytest

import fpindex.pixels as pixels
from fpindex import audit
from fpindex.pixels import PixelStore


def _folder(helpers, root, n):
    root.mkdir()
    for i in range(n):
        helpers.write_png(root / f"img_{i}.png", helpers.smooth_image(i))
    return sorted(root.iterdir())


def test_pixel_memo_is_bounded_and_drops_the_least_recently_used(helpers, tmp_path):
    files = _folder(helpers, tmp_path / "imgs", 5)
    one = helpers.SIZE * helpers.SIZE * 4                     # float32 canonical pixels
    store = PixelStore(helpers.SIZE, limit_bytes=3 * one)
    fail = lambda reason: reason                              # noqa: E731
    for f in files[:3]:
        store.get(f, fail)
    store.get(files[0], fail)                                 # used again: now the most recent
    store.get(files[3], fail)                                 # drops files[1], the least recently used
    assert len(store) == 3 and store.held_bytes == 3 * one <= store.limit
    assert store.known(files[1]) is None and all(store.known(f) is not None for f in (files[0], files[2], files[3]))
    assert store.decoded == 4
    store.get(files[1], fail)                                 # decoded again, same pixels
    assert store.decoded == 5 and len(store) == 3
    tiny = PixelStore(helpers.SIZE, limit_bytes=one - 1)      # an image larger than the memo is never kept
    img = tiny.get(files[4], fail)
    assert img.shape == (helpers.SIZE, helpers.SIZE) and len(tiny) == 0 and tiny.held_bytes == 0


@pytest.mark.slow
def test_audit_results_do_not_depend_on_the_memo_size(leak, helpers, monkeypatch):
    """With room for only 8 images the memo never holds more, and every output number is the same."""
    cfg = helpers.CFG.override(embed={"cache": False})
    full = audit(leak.generated, leak.real, used=leak.used, not_used=leak.not_used, config=cfg)
    one = helpers.SIZE * helpers.SIZE * 4
    monkeypatch.setattr(pixels, "DEFAULT_LIMIT", 8 * one)
    most = [0]
    keep = PixelStore._keep

    def watched(self, k, img):
        keep(self, k, img)
        most[0] = max(most[0], self.held_bytes)

    monkeypatch.setattr(PixelStore, "_keep", watched)
    small = audit(leak.generated, leak.real, used=leak.used, not_used=leak.not_used, config=cfg)
    assert 0 < most[0] <= 8 * one
    assert full.predictions.equals(small.predictions) and full.neighbours.equals(small.neighbours)
    np.testing.assert_array_equal(full.decision.score, small.decision.score)
