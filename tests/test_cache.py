"""The content cache: what it stores comes back exactly, what it cannot vouch for is treated as unknown."""

from __future__ import annotations

import re

import json
import pathlib
from pathlib import Path

import numpy as np
import pytest

import fpindex.cache as cache
from fpindex.cache import ContentCache, blob_meta, blob_path, pair_keys, read_blob, write_blob
from fpindex.errors import FpindexError, FpindexWarning

IDENT = {"model": "cnn", "weights_id": "random:seed=0", "dim": 4}


def key(i: int) -> str:
    return f"{i:064x}"


def shards(c: ContentCache) -> list[Path]:
    return sorted(c.dir.glob("shard-*.npz"))


def test_vectors_round_trip_and_unknown_is_nan(tmp_path):
    c = ContentCache(tmp_path, "embedding", IDENT, 4)
    vecs = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    c.put([key(i) for i in range(3)], vecs)
    fresh = ContentCache(tmp_path, "embedding", IDENT, 4)
    assert fresh.dir == c.dir and fresh.keys() == {key(0), key(1), key(2)}
    got = fresh.get(iter([key(2), key(9), key(0)]))              # any iterable of keys
    assert got.dtype == np.float32 and got.shape == (3, 4)
    np.testing.assert_array_equal(got[[0, 2]], vecs[[2, 0]])
    assert np.isnan(got[1]).all()
    assert fresh.get([]).shape == (0, 4)
    ident = json.loads((c.dir / "identity.json").read_text())
    assert ident["kind"] == "embedding" and ident["width"] == 4 and ident["format"] == cache.FORMAT
    assert c.dir.name.startswith("embedding-")
    # Another kind, width or identity is another directory.
    assert ContentCache(tmp_path, "embedding", IDENT, 5).dir != c.dir
    assert ContentCache(tmp_path, "other", IDENT, 4).dir != c.dir
    assert ContentCache(tmp_path, "embedding", {**IDENT, "seed": 1}, 4).dir != c.dir


def test_pairs_round_trip_by_ordered_pair(tmp_path):
    a, b = [key(1), key(2), key(1)], [key(5), key(5), key(6)]
    assert pair_keys(a, b) == [f"{x}:{y}" for x, y in zip(a, b)]
    with pytest.raises(ValueError, match=r"^zip\(\) argument 2 is shorter than argument 1$"):
        pair_keys(a, b[:2])
    c = ContentCache(tmp_path, "ssim", {"size": 64}, 1)
    c.put(pair_keys(a, b), np.array([0.5, -0.25, 1.0], np.float32))
    fresh = ContentCache(tmp_path, "ssim", {"size": 64}, 1)
    got = fresh.get(pair_keys([key(2), key(5), key(1)], [key(5), key(2), key(6)]))
    assert got.shape == (3,) and got.dtype == np.float32
    assert got[0] == -0.25 and np.isnan(got[1]) and got[2] == 1.0     # (a, b) is not (b, a)
    c.put(pair_keys([key(7)], [key(8)]), np.array([[0.125]], np.float32))   # (n, 1) is accepted too
    assert ContentCache(tmp_path, "ssim", {"size": 64}, 1).get(pair_keys([key(7)], [key(8)]))[0] == 0.125


def test_put_skips_known_keys_and_checks_shapes(tmp_path):
    c = ContentCache(tmp_path, "embedding", IDENT, 4)
    c.put([key(0)], np.ones((1, 4)))
    c.put([key(0)], np.full((1, 4), 2.0))                        # known: nothing written, the first value stays
    assert len(shards(c)) == 1
    before = set(shards(c))
    c.put([key(0), key(1)], np.full((2, 4), 3.0))                # one new shard, holding only the new key
    (added,) = set(shards(c)) - before
    fresh = ContentCache(tmp_path, "embedding", IDENT, 4)
    np.testing.assert_array_equal(fresh.get([key(0), key(1)]), [[1] * 4, [3] * 4])
    with np.load(added, allow_pickle=False) as z:
        assert z["keys"].tolist() == [key(1)] and z["vectors"].dtype == np.float32
    c.put([], np.empty((0, 4)))
    assert len(shards(c)) == 2
    for bad in (np.ones((1, 4)), np.ones((2, 3)), np.ones(2)):
        with pytest.raises(ValueError, match=rf"^2 rows of 4 values expected, got shape {re.escape(str(bad.shape))}$"):
            c.put([key(5), key(6)], bad)


def test_concurrent_writers_share_a_directory(tmp_path):
    one, two = (ContentCache(tmp_path, "ssim", {"size": 64}, 1) for _ in range(2))
    one.keys(), two.keys()                                       # both loaded before either writes
    one.put([key(1)], np.array([0.1]))
    two.put([key(2)], np.array([0.2]))
    assert ContentCache(tmp_path, "ssim", {"size": 64}, 1).keys() == {key(1), key(2)}


def test_compaction_keeps_every_value_and_removes_old_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "MAX_SHARDS", 4)
    c = ContentCache(tmp_path, "embedding", IDENT, 4)
    other = ContentCache(tmp_path, "embedding", IDENT, 4)
    expect = {}
    for i in range(3):
        expect[key(i)] = np.full(4, i, np.float32)
        c.put([key(i)], expect[key(i)][None])
    other.keys()
    expect[key(10)] = np.full(4, 10, np.float32)
    other.put([key(10)], expect[key(10)][None])                  # a concurrent run's shard, unknown to `c`
    before = set(shards(c))
    assert len(before) == 4

    # Whenever an old shard goes, everything is already readable without it.
    real_unlink = pathlib.Path.unlink

    def checked_unlink(self, *a, **kw):
        if self.name.startswith("shard-"):
            assert ContentCache(tmp_path, "embedding", IDENT, 4).keys() >= set(expect)
        return real_unlink(self, *a, **kw)

    monkeypatch.setattr(pathlib.Path, "unlink", checked_unlink)
    expect[key(4)] = np.full(4, 4, np.float32)
    c.put([key(4)], expect[key(4)][None])                        # 5 shards > 4: merged into one
    after = shards(c)
    assert len(after) == 1 and not before & set(after)
    fresh = ContentCache(tmp_path, "embedding", IDENT, 4)
    assert fresh.keys() == set(expect)
    np.testing.assert_array_equal(fresh.get(list(expect)), np.stack(list(expect.values())))
    assert c.keys() == set(expect)


class _Marker:
    """Unpickling this touches a file: proof that it was (or was not) executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


def test_damaged_shards_are_ignored_and_never_executed(tmp_path):
    c = ContentCache(tmp_path, "embedding", IDENT, 4)
    c.put([key(0)], np.ones((1, 4)))
    good = shards(c)[0]
    marker = tmp_path / "executed"
    truncated = c.dir / "shard-truncated.npz"
    truncated.write_bytes(good.read_bytes()[:40])
    (c.dir / "shard-text.npz").write_text("not a zip")
    with open(c.dir / "shard-pickle.npz", "wb") as f:
        np.savez(f, keys=np.array([key(1), _Marker(marker)], dtype=object), vectors=np.ones((2, 4), np.float32))
    bad_shapes = {"width": (np.array([key(2)]), np.ones((1, 3), np.float32)),
                  "rows": (np.array([key(3), key(4)]), np.ones((1, 4), np.float32)),
                  "keys2d": (np.array([[key(5)]]), np.ones((1, 4), np.float32)),
                  "intkeys": (np.array([6]), np.ones((1, 4), np.float32)),
                  "strvecs": (np.array([key(7)]), np.array([["a"] * 4]))}
    for name, (k, v) in bad_shapes.items():
        with open(c.dir / f"shard-{name}.npz", "wb") as f:
            np.savez(f, keys=k, vectors=v)
    with open(c.dir / "shard-names.npz", "wb") as f:
        np.savez(f, a=np.array([key(8)]), values=np.ones(1, np.float32))
    pickled = (c.dir / "shard-pickle.npz").read_bytes()
    fresh = ContentCache(tmp_path, "embedding", IDENT, 4)
    with pytest.warns(FpindexWarning, match=r"shard-pickle\.npz is damaged .*recomputed and the shard removed"):
        assert fresh.keys() == {key(0)}
    assert np.isnan(fresh.get([key(1), key(2), key(3)])).all()
    assert not marker.exists()
    assert shards(c) == [good]                  # damaged shards are fpindex's own: removed, warned about once
    # The test is meaningful: that shard does run code when pickles are allowed.
    (tmp_path / "pickle.npz").write_bytes(pickled)
    with np.load(tmp_path / "pickle.npz", allow_pickle=True) as z:
        z["keys"]
    assert marker.exists()


def test_unwritable_root_raises_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    c = ContentCache(blocker / "cache", "ssim", {"size": 64}, 1)
    assert c.keys() == set() and np.isnan(c.get([key(1)])).all()
    with pytest.raises(FpindexError, match=r"^ssim cache .*a-file.*: cannot write \(.*\); "
                                           r"pass --cache-dir elsewhere or --no-cache$"):
        c.put([key(1)], np.array([0.5]))
    path = blob_path(blocker, "selfsup", {"x": 1}, ".pt")
    with pytest.raises(FpindexError, match=r"^selfsup cache .*: cannot write .*--no-cache$"):
        write_blob(path, b"data")


def test_blobs_round_trip_and_partial_ones_read_as_absent(tmp_path):
    path = blob_path(tmp_path, "selfsup", {"sample": "abc", "steps": 10}, ".pt")
    assert path.parent == tmp_path / "selfsup" and path.suffix == ".pt"
    assert path == blob_path(tmp_path, "selfsup", {"steps": 10, "sample": "abc"}, ".pt")
    assert path != blob_path(tmp_path, "selfsup", {"sample": "abd", "steps": 10}, ".pt")
    assert path != blob_path(tmp_path, "subspace", {"sample": "abc", "steps": 10}, ".pt")
    assert read_blob(path) is None and blob_meta(path) is None
    data = bytes(range(256)) * 40
    write_blob(path, data, {"loss": 0.5, "steps": 10})
    assert read_blob(path) == data and blob_meta(path) == {"loss": 0.5, "steps": 10}
    path.write_bytes(data[:-1])                                  # truncated
    with pytest.warns(FpindexWarning, match=r"do not match the recorded hash\); computed again and rewritten"):
        assert read_blob(path) is None
    write_blob(path, data)                                       # rewritten, without meta
    assert read_blob(path) == data and blob_meta(path) is None
    path.with_name(path.name + ".json").write_text("{")          # damaged sidecar
    with pytest.warns(FpindexWarning, match="JSONDecodeError"):
        assert read_blob(path) is None
    assert blob_meta(path) is None
    write_blob(path, data, {"a": 1})
    path.with_name(path.name + ".json").unlink()                 # blob without its sidecar
    assert read_blob(path) is None
