"""Real images' own neighbours (search_real, sibling_groups) through an index: exact below the threshold, an
inverted file above it that gives the exhaustive answers when it visits every list."""

import numpy as np

from fpindex.search import real_factory, real_index, search_real, sibling_groups


def unit(rng, n, d=16):
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def brute(groups, k):
    """The exhaustive answer, written out: every other image (not the same content), best first."""
    allv = np.concatenate([v for v, _ in groups])
    alls = [s for _, sh in groups for s in sh]
    out = []
    for v, shas in groups:
        o = np.full((len(v), k), np.nan, np.float32)
        for r, (x, s) in enumerate(zip(v, shas)):
            sims = np.sort([float(x @ w) for w, t in zip(allv, alls) if t != s])[::-1][:k]
            o[r, :len(sims)] = sims
        out.append(o)
    return out


def test_the_factory_is_exact_below_the_threshold_and_an_inverted_file_above():
    import faiss

    v = unit(np.random.default_rng(0), 700)
    assert real_factory(700, exact_below=701) == "Flat" and real_factory(699, exact_below=700) == "Flat"
    flat = real_index(v, exact_below=701)
    assert faiss.try_extract_index_ivf(flat) is None and flat.ntotal == 700
    factory = real_factory(700, exact_below=700)
    assert factory.startswith("IVF") and factory.endswith(",Flat")
    ivf = real_index(v, exact_below=700, nprobe=3)
    assert ivf.ntotal == 700 and faiss.extract_index_ivf(ivf).nprobe == 3


def test_search_real_equals_the_exhaustive_search_flat_and_ivf_visiting_every_list():
    rng = np.random.default_rng(1)
    a, b = unit(rng, 400), unit(rng, 300)
    sha_a, sha_b = [f"a{i}" for i in range(400)], [f"b{i}" for i in range(300)]
    b[5], sha_b[5] = a[7], "a7"                         # the same file in two folders: never its own neighbour
    groups = [(a, sha_a), (b, sha_b)]
    want = brute(groups, 6)
    flat = search_real(groups, k=6, batch=128)
    ivf = search_real(groups, k=6, batch=128, exact_below=0, nprobe=10**6)
    for w, f, i in zip(want, flat, ivf):
        np.testing.assert_allclose(f, w, atol=1e-6)
        np.testing.assert_allclose(i, w, atol=1e-5)


def test_search_real_through_an_inverted_file_returns_exact_cosines_of_real_neighbours():
    rng = np.random.default_rng(2)
    v = unit(rng, 800)
    (got,) = search_real([(v, [str(i) for i in range(800)])], k=4, exact_below=0, nprobe=2)
    (want,) = search_real([(v, [str(i) for i in range(800)])], k=4)
    sims = v @ v.T
    np.fill_diagonal(sims, -np.inf)
    found = np.isfinite(got)
    assert found[:, 0].all()                            # a few lists always hold some neighbour
    for r in range(0, 800, 37):                         # every value is some other image's exact cosine
        for x in got[r][found[r]]:
            assert np.min(np.abs(sims[r] - x)) < 1e-5
    assert np.all(got[found] <= want[found] + 1e-5)     # never better than the exact k-th neighbour


def test_sibling_groups_through_an_inverted_file_visiting_every_list_equal_the_exact_ones():
    rng = np.random.default_rng(3)
    centres = unit(rng, 40)
    series = np.repeat(centres, 5, axis=0) + 0.05 * rng.standard_normal((200, 16)).astype(np.float32)
    series /= np.linalg.norm(series, axis=1, keepdims=True)
    exact = sibling_groups([series, series[:50].copy()])
    ivf = sibling_groups([series, series[:50].copy()], exact_below=0, nprobe=10**6)
    for e, i in zip(exact, ivf):
        np.testing.assert_array_equal(e, i)
    series_of = np.repeat(np.arange(40), 5)
    assert all(len(set(series_of[exact[0] == g])) == 1 for g in np.unique(exact[0]))   # no group spans two series
    assert len(np.unique(exact[0])) < 200               # and some siblings were joined
