"""k-means concept maps, colour matching across k and images, pseudo-concept aggregations."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from mcssl.explore.concepts import (
    argmax_map,
    cluster_mean_probs,
    cocluster,
    cocluster_for_ks,
    concept_histograms,
    concepts_for_ks,
    kmeans_labels,
    match_labels,
    to_grid,
    top_concepts,
    upsample_labels,
)

D = 384


def blobs(sizes, seed=0, d=D, spread=0.05, centres=None):
    """Tokens from well-separated Gaussian clusters; returns (tokens, true labels, centres)."""
    rng = np.random.default_rng(seed)
    if centres is None:
        centres = rng.standard_normal((len(sizes), d)) * 3.0
    x = np.concatenate(
        [c + spread * rng.standard_normal((n, d)) for c, n in zip(centres, sizes, strict=True)]
    )
    y = np.repeat(np.arange(len(sizes)), sizes)
    perm = rng.permutation(len(y))
    return x[perm].astype(np.float32), y[perm], centres


# ----------------------------------------------------------------------------- k-means


@pytest.mark.parametrize("k", [2, 3, 4, 9])
def test_kmeans_shapes_and_range(k):
    x = np.random.default_rng(1).standard_normal((14 * 14, D)).astype(np.float32)
    lab = kmeans_labels(x, k, seed=0)
    assert lab.shape == (196,) and lab.dtype == np.int64
    assert lab.min() >= 0 and lab.max() < k and len(np.unique(lab)) <= k
    assert to_grid(lab, (14, 14)).shape == (14, 14)
    # canonical order: cluster 0 is the largest
    sizes = np.bincount(lab, minlength=k)
    assert sizes[0] == sizes.max() and np.all(np.diff(sizes) <= 0)


def test_kmeans_determinism():
    rng = np.random.default_rng(2)
    x, x2 = rng.standard_normal((2, 196, D)).astype(np.float32)
    a, b = kmeans_labels(x, 4, seed=3), kmeans_labels(x.copy(), 4, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, kmeans_labels(x2, 4, seed=3))
    for k, lab in concepts_for_ks(x, seed=3).items():
        np.testing.assert_array_equal(lab, concepts_for_ks(x, seed=3)[k])


def test_kmeans_recovers_separated_clusters():
    x, y, _ = blobs([80, 60, 56], seed=4)
    lab = kmeans_labels(x, 3, seed=0)
    assert adjusted_rand_score(y, lab) == 1.0


def test_kmeans_is_scale_invariant_per_token():
    """Clustering runs on L2-normalised tokens: rescaling single tokens changes nothing."""
    x, y, _ = blobs([50, 50], seed=5)
    scale = np.random.default_rng(0).uniform(0.1, 10.0, size=(len(x), 1)).astype(np.float32)
    np.testing.assert_array_equal(kmeans_labels(x, 2), kmeans_labels(x * scale, 2))
    assert adjusted_rand_score(y, kmeans_labels(x * scale, 2)) == 1.0


@pytest.mark.parametrize("k", [1, 10, 0, -2, 2.5, True])
def test_kmeans_bad_k(k):
    with pytest.raises(ValueError, match="k"):
        kmeans_labels(np.zeros((10, 4)), k)


def test_kmeans_bad_tokens():
    with pytest.raises(ValueError, match="2-D"):
        kmeans_labels(np.zeros(10), 2)
    bad = np.zeros((10, 4))
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        kmeans_labels(bad, 2)


def test_kmeans_tiny_inputs():
    assert kmeans_labels(np.zeros((0, 4)), 3).shape == (0,)
    np.testing.assert_array_equal(kmeans_labels(np.ones((2, 4)), 3), [0, 1])
    np.testing.assert_array_equal(kmeans_labels(np.eye(3, 4), 3), [0, 1, 2])
    # fewer distinct tokens than k: runs, at most k labels, identical tokens share one
    x = np.repeat(np.eye(2, 4), 5, axis=0)
    lab = kmeans_labels(x, 4)
    assert lab.max() < 4 and len(set(lab[:5])) == 1 and len(set(lab[5:])) == 1
    assert lab[0] != lab[5]


# ----------------------------------------------------------------------------- upsampling


def test_upsample_nearest_exact_multiple():
    g = np.arange(12).reshape(3, 4)
    up = upsample_labels(g, (6, 12))
    np.testing.assert_array_equal(up, np.kron(g, np.ones((2, 3), dtype=int)))


def test_upsample_nearest_non_multiple():
    g = np.array([[0, 1, 2], [3, 4, 5]])
    up = upsample_labels(g, (5, 7))
    # rows: pixel y -> patch floor(y * 2 / 5) = 0,0,0,1,1 ; cols: floor(x * 3 / 7) = 0,0,0,1,1,2,2
    expected = np.array(
        [
            [0, 0, 0, 1, 1, 2, 2],
            [0, 0, 0, 1, 1, 2, 2],
            [0, 0, 0, 1, 1, 2, 2],
            [3, 3, 3, 4, 4, 5, 5],
            [3, 3, 3, 4, 4, 5, 5],
        ]
    )
    np.testing.assert_array_equal(up, expected)
    # every patch appears as one solid block of roughly equal size
    up = upsample_labels(np.arange(14 * 14).reshape(14, 14), (333, 500))
    counts = np.bincount(up.ravel())
    assert counts.size == 196 and counts.min() >= (333 // 14) * (500 // 14)
    # downsampling also works (each pixel picks a patch)
    assert upsample_labels(g, (1, 1)).tolist() == [[0]]


def test_upsample_smooth():
    rng = np.random.default_rng(6)
    g = np.zeros((8, 8), dtype=int)
    g[:, 4:] = 1
    g[5:, :3] = 2
    H, W = 8 * 16 + 5, 8 * 16 + 11
    near = upsample_labels(g, (H, W))
    smooth = upsample_labels(g, (H, W), smooth=True)
    assert smooth.shape == (H, W) and set(np.unique(smooth)) <= {0, 1, 2}
    # interior of uniform regions (patches whose 3x3 neighbourhood has one label) agree
    inner = np.zeros_like(g, dtype=bool)
    for r in range(8):
        for c in range(8):
            nb = g[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2]
            inner[r, c] = np.all(nb == g[r, c])
    inner_px = upsample_labels(inner.astype(int), (H, W)).astype(bool)
    assert inner_px.sum() > H * W / 4
    np.testing.assert_array_equal(smooth[inner_px], near[inner_px])
    # smooth differs from nearest somewhere (it rounds the corner of the L-shaped region)
    assert np.any(smooth != near)
    # random maps: labels stay in range
    g = rng.integers(3, 7, size=(5, 9))
    s = upsample_labels(g, (37, 81), smooth=True)
    assert set(np.unique(s)) <= set(np.unique(g))
    # uniform map upsamples to a uniform map
    assert np.all(upsample_labels(np.full((3, 3), 5), (10, 10), smooth=True) == 5)


def test_upsample_errors():
    with pytest.raises(ValueError):
        upsample_labels(np.zeros(5, dtype=int), (4, 4))
    with pytest.raises(ValueError):
        upsample_labels(np.zeros((2, 2), dtype=int), (0, 4))
    with pytest.raises(ValueError):
        to_grid(np.zeros(10, dtype=int), (3, 3))


# ----------------------------------------------------------------------------- matching


def test_match_permutation_returns_prev():
    rng = np.random.default_rng(7)
    prev = rng.integers(0, 4, size=200)
    perm = np.array([2, 0, 3, 1])
    np.testing.assert_array_equal(match_labels(prev, perm[prev], 4), prev)


def test_match_split_keeps_unsplit_id():
    # k=2: cluster 0 = tokens 0..59, cluster 1 = 60..99. k=3 splits cluster 0 into 0..39 and
    # 40..59, with k-means' arbitrary ids.
    prev = np.r_[np.zeros(60, int), np.ones(40, int)]
    new = np.r_[np.full(40, 2), np.full(20, 1), np.full(40, 0)]
    out = match_labels(prev, new, 3)
    np.testing.assert_array_equal(out[60:], 1)  # unsplit cluster keeps its id
    np.testing.assert_array_equal(out[:40], 0)  # larger part of the split keeps the old id
    np.testing.assert_array_equal(out[40:60], 2)  # the new cluster gets the unused id
    # the other way round: the unsplit cluster is prev's cluster 0
    prev = 1 - prev
    out = match_labels(prev, new, 3)
    np.testing.assert_array_equal(out[60:], 0)
    np.testing.assert_array_equal(out[:40], 1)
    np.testing.assert_array_equal(out[40:60], 2)


def test_match_orphans_by_size_and_down_in_k():
    prev = np.zeros(10, int)
    new = np.r_[np.full(5, 3), np.full(1, 0), np.full(3, 2), np.full(1, 1)]
    out = match_labels(prev, new, 4)
    # best overlap keeps id 0; the rest get 1, 2, 3 by size (3 tokens, then ties by id)
    np.testing.assert_array_equal(out, np.r_[np.zeros(5), [2], np.full(3, 1), [3]])
    # going down in k the ids stay in range
    prev = np.repeat(np.arange(4), 5)
    new = np.r_[np.zeros(10, int), np.ones(10, int)]
    out = match_labels(prev, new, 2)
    assert set(out) == {0, 1}
    with pytest.raises(ValueError):
        match_labels(prev, new, 1)
    with pytest.raises(ValueError):
        match_labels(prev[:5], new, 2)


def test_concepts_for_ks_chain_colours():
    # three blobs, one much closer to another: k=2 merges them, k=3 splits them off
    rng = np.random.default_rng(8)
    c = rng.standard_normal((3, D)) * 3
    c[2] = c[1] + rng.standard_normal(D) * 0.6
    x, y, _ = blobs([90, 60, 46], seed=9, centres=c)
    out = concepts_for_ks(x, ks=(4, 2, 3), seed=0)
    assert list(out) == [2, 3, 4]
    for k, lab in out.items():
        assert lab.shape == (196,) and lab.max() < k
    assert adjusted_rand_score(y, out[3]) == 1.0
    # k=2: blob 0 vs blobs 1+2; blob 0 keeps its id at k=3
    assert adjusted_rand_score(np.minimum(y, 1), out[2]) == 1.0
    assert len(set(out[2][y == 0])) == 1
    assert out[3][y == 0][0] == out[2][y == 0][0]
    # and the larger part of the split keeps the merged cluster's id
    assert out[3][y == 1][0] == out[2][y == 1][0]
    # k=4 splits one blob; the clusters that survive intact keep their ids
    prev, cur = out[3], out[4]
    intact = 0
    for j in range(3):
        labs = np.unique(cur[prev == j])
        if len(labs) == 1 and np.all(prev[cur == labs[0]] == j):
            assert labs[0] == j
            intact += 1
    assert intact == 2


# ----------------------------------------------------------------------------- co-clustering


def test_cocluster_consistent_labels():
    rng = np.random.default_rng(10)
    centres = rng.standard_normal((3, D)) * 3
    sets, truths = [], []
    for i, sizes in enumerate([[50, 30, 20], [10, 60, 30], [0, 40, 9]]):
        x, y, _ = blobs(sizes, seed=20 + i, centres=centres)
        sets.append(x)
        truths.append(y)
    out = cocluster(sets, 3, seed=0)
    assert [o.shape for o in out] == [(100,), (100,), (49,)]
    # same true cluster -> same label in every image; different clusters -> different labels
    lab_of = {}
    for o, y in zip(out, truths, strict=True):
        for c in np.unique(y):
            labs = set(o[y == c])
            assert len(labs) == 1
            lab_of.setdefault(c, labs.pop())
            assert lab_of[c] == o[y == c][0]
    assert len(set(lab_of.values())) == 3
    # tokens are L2-normalised per token: an image with larger feature norms clusters the same
    scaled = cocluster([sets[0], sets[1] * 50.0, sets[2] * 0.02], 3, seed=0)
    for a, b in zip(scaled, out, strict=True):
        np.testing.assert_array_equal(a, b)
    multi = cocluster_for_ks(sets, ks=(2, 3), seed=0)
    assert set(multi) == {2, 3} and all(len(v) == 3 for v in multi.values())
    for a, b in zip(multi[3], out, strict=True):
        assert adjusted_rand_score(a, b) == 1.0
    with pytest.raises(ValueError, match="feature"):
        cocluster([np.zeros((4, 3)), np.zeros((4, 5))], 2)
    with pytest.raises(ValueError):
        cocluster([], 2)


# ----------------------------------------------------------------------------- pseudo-concepts


def test_argmax_and_cluster_means():
    probs = np.array(
        [
            [0.7, 0.2, 0.1],
            [0.1, 0.8, 0.1],
            [0.5, 0.1, 0.4],
            [0.2, 0.2, 0.6],
        ]
    )
    np.testing.assert_array_equal(argmax_map(probs), [0, 1, 0, 2])
    labels = np.array([0, 2, 0, 2])
    m = cluster_mean_probs(probs, labels, 4)
    expected = np.array(
        [
            [0.6, 0.15, 0.25],  # tokens 0 and 2
            [0.0, 0.0, 0.0],  # empty
            [0.15, 0.5, 0.35],  # tokens 1 and 3
            [0.0, 0.0, 0.0],  # empty
        ]
    )
    np.testing.assert_allclose(m, expected)
    with pytest.raises(ValueError):
        cluster_mean_probs(probs, labels, 2)  # label 2 out of range
    with pytest.raises(ValueError):
        cluster_mean_probs(probs, labels[:3], 4)


def test_top_concepts():
    m = np.array([0.1, 0.4, 0.05, 0.4, 0.3])
    assert top_concepts(m, 3) == [(1, 0.4), (3, 0.4), (4, 0.3)]
    assert [i for i, _ in top_concepts(m, 10)] == [1, 3, 4, 0, 2]
    assert top_concepts(m, 0) == []


def test_concept_histograms():
    p1 = np.array([[0.6, 0.3, 0.1, 0.0], [0.2, 0.2, 0.2, 0.4], [0.4, 0.5, 0.1, 0.0]])
    l1 = np.array([1, 0, 1])  # cluster 1 = tokens 0, 2 -> mean [0.5, 0.4, 0.1, 0.0]
    p2 = np.array([[0.0, 0.1, 0.2, 0.7], [0.1, 0.1, 0.1, 0.7]])
    l2 = np.array([0, 0])  # cluster 0 = both -> mean [0.05, 0.1, 0.15, 0.7]
    h = concept_histograms([(p1, l1, 1), (p2, l2, 0)], top_n=1)
    # top-1: image 1 -> concept 0, image 2 -> concept 3; ordered by mean over images
    assert h["concepts"] == [3, 0]  # means 0.35 vs 0.275
    np.testing.assert_allclose(h["images"], [[0.0, 0.5], [0.7, 0.05]])
    assert h["n_tokens"] == [2, 2]
    h = concept_histograms([(p1, l1, 1), (p2, l2, 0)], top_n=2, sort="id")
    assert h["concepts"] == [0, 1, 2, 3]
    np.testing.assert_allclose(h["images"], [[0.5, 0.4, 0.1, 0.0], [0.05, 0.1, 0.15, 0.7]])
    # an empty cluster contributes zeros and no concepts
    h = concept_histograms([(p1, l1, 1), (p2, l2, 5)], top_n=1)
    assert h["concepts"] == [0] and h["n_tokens"] == [2, 0]
    np.testing.assert_allclose(h["images"], [[0.5], [0.0]])
    with pytest.raises(ValueError):
        concept_histograms([(p1, l1, 1), (p2[:, :3], l2, 0)], top_n=1)


def test_label_colours_of_a_k_do_not_depend_on_the_other_ks() -> None:
    """With a chain (the app's k choices), k = 4's labels are the same whether k = 3 is
    shown or not; per image and co-clustered."""
    from mcssl.explore.features import ImageFeatures
    from mcssl.explore.pipeline import label_features

    rng = np.random.default_rng(3)
    feats = []
    for _ in range(2):
        centres = rng.normal(size=(6, 16))
        tokens = centres[rng.integers(0, 6, 64)] + 0.3 * rng.normal(size=(64, 16))
        feats.append(ImageFeatures(tokens.astype(np.float32), (8, 8), (64, 64), None))
    chain = (2, 3, 4, 5, 6, 8)
    for co in (False, True):
        alone = label_features(feats, (4,), cocluster=co, chain=chain)
        with_2 = label_features(feats, (2, 4), cocluster=co, chain=chain)
        full = label_features(feats, (2, 3, 4), cocluster=co, chain=chain)
        for a, b, c in zip(alone, with_2, full, strict=True):
            assert list(a) == [4] and list(b) == [2, 4] and list(c) == [2, 3, 4]
            assert np.array_equal(a[4], b[4]) and np.array_equal(a[4], c[4])
            assert np.array_equal(b[2], c[2])
    # without the chain the colours of k = 4 follow whichever smaller k is shown
    no_chain = [label_features(feats, ks)[0][4] for ks in ((4,), (2, 4), (3, 4))]
    assert any(not np.array_equal(no_chain[0], x) for x in no_chain[1:])
