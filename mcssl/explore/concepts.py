"""Concepts in images from data-token features: k-means label maps, colour-consistent labels
across k and across images, and pseudo-concept aggregations (paper Figure 1, Figures 5-9).

Pure functions over numpy arrays. Conventions:

* tokens are ``(N, D)`` data-token features of one image (row-major over the ``(gh, gw)``
  patch grid, so ``labels.reshape(gh, gw)`` is the label map on the grid);
* labels are non-negative integer cluster ids, ``int64``;
* k-means runs on L2-normalised tokens (cosine geometry, as the ViT features are compared);
* sizes are ``(H, W)`` = (height, width), numpy order (Pillow's ``.size`` is (W, H)).

k-means settings: scikit-learn ``KMeans`` with k-means++ seeding, one initialisation
(``n_init=1``, what ``n_init="auto"`` means for k-means++), Lloyd, float32, and - for small
inputs - BLAS/OpenMP limited to one thread: spinning up thread pools costs far more than the
arithmetic for a few hundred tokens. With these settings k = 2, 3, 4 on 196 x 384 tokens takes
a few ms in all. Pass ``n_init`` > 1 for slightly more stable clusters on hard inputs.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning

K_MIN, K_MAX = 2, 9  # 9: a colour a cluster in render.PALETTE; a labelled folder: 9 kinds
DEFAULT_KS = (2, 3, 4)
K_CHOICES = (2, 3, 4, 5, 6, 8)  # the explorer's k choices (labels are chained through them)
N_INIT = 1
MAX_ITER = 100
SINGLE_THREAD_MAX_TOKENS = 8192  # above this, let BLAS/OpenMP use their threads

_controller = None
_limit_lock = threading.RLock()


@contextlib.contextmanager
def _thread_limit(n_tokens: int):
    """Limit BLAS/OpenMP to one thread for small inputs (no-op for big ones).

    The limit is process-wide, so limited sections are serialised: two threads interleaving
    set/restore could otherwise leave the pools at one thread for good."""
    global _controller
    if n_tokens > SINGLE_THREAD_MAX_TOKENS:
        yield
        return
    with _limit_lock:
        if _controller is None:  # inspecting the loaded libraries takes ms: do it once
            from threadpoolctl import ThreadpoolController

            _controller = ThreadpoolController()
        with _controller.limit(limits=1):
            yield


# ----------------------------------------------------------------------------- validation


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an integer in {K_MIN}..{K_MAX}, got {k!r}")
    if not K_MIN <= int(k) <= K_MAX:
        raise ValueError(f"k must be in {K_MIN}..{K_MAX}, got {k}")
    return int(k)


def _check_tokens(tokens: np.ndarray, name: str = "tokens") -> np.ndarray:
    t = np.asarray(tokens)
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (N, D), got shape {t.shape}")
    if t.shape[1] == 0:
        raise ValueError(f"{name} must have at least one feature dimension, got shape {t.shape}")
    if not np.issubdtype(t.dtype, np.number) or np.iscomplexobj(t):
        raise ValueError(f"{name} must be real numbers, got dtype {t.dtype}")
    if not np.isfinite(t).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return t


def _check_labels(labels: np.ndarray, name: str = "labels", ndim: int = 1) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {lab.shape}")
    integral = np.issubdtype(lab.dtype, np.integer) or (
        np.issubdtype(lab.dtype, np.floating) and np.all(lab == np.round(lab))
    )
    if lab.size and not integral:
        raise ValueError(f"{name} must be integers, got dtype {lab.dtype}")
    lab = lab.astype(np.int64)
    if lab.size and lab.min() < 0:
        raise ValueError(f"{name} must be non-negative cluster ids, got {lab.min()}")
    return lab


def _normalise(tokens: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero), float32."""
    t = np.asarray(tokens, dtype=np.float32)
    norm = np.linalg.norm(t, axis=1, keepdims=True)
    return t / np.maximum(norm, np.float32(1e-12))


# ----------------------------------------------------------------------------- k-means


def _canonical(labels: np.ndarray, k: int) -> np.ndarray:
    """Renumber clusters by size, largest first (ties: first appearance), so ids do not
    depend on k-means' internal centre order."""
    n = labels.size
    sizes = np.bincount(labels, minlength=k)
    first = np.full(k, n, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(n))
    order = np.lexsort((first, -sizes))  # new id -> old id
    remap = np.empty(k, dtype=np.int64)
    remap[order] = np.arange(k)
    return remap[labels]


def _kmeans_normalised(x: np.ndarray, k: int, seed: int, n_init: int) -> np.ndarray:
    n = x.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if n <= k:  # every token its own cluster; ids by order of appearance
        return np.arange(n, dtype=np.int64)
    km = KMeans(
        n_clusters=k,
        init="k-means++",
        n_init=n_init,
        max_iter=MAX_ITER,
        algorithm="lloyd",
        random_state=seed,
    )
    with warnings.catch_warnings():
        # fewer distinct points than k: some clusters come out empty, which is fine here
        warnings.simplefilter("ignore", ConvergenceWarning)
        labels = km.fit_predict(x).astype(np.int64)
    return _canonical(labels, k)


def kmeans_labels(tokens: np.ndarray, k: int, seed: int = 0, n_init: int = N_INIT) -> np.ndarray:
    """Cluster ``tokens`` (N, D) into ``k`` clusters (2..9) by k-means on L2-normalised rows.

    Returns (N,) int64 ids in 0..k-1, renumbered by cluster size (0 = largest); the same
    tokens and seed always give the same labels. Small inputs: N == 0 gives an empty array;
    N <= k gives every token its own cluster (ids 0..N-1) - there is nothing to cluster.
    Fewer than k distinct tokens give fewer than k non-empty clusters.
    """
    k = _check_k(k)
    x = _normalise(_check_tokens(tokens))
    with _thread_limit(x.shape[0]):
        return _kmeans_normalised(x, k, seed, n_init)


def to_grid(labels: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(N,) token labels -> (gh, gw) label map on the patch grid (row-major tokens)."""
    gh, gw = (int(v) for v in grid)
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.size != gh * gw:
        raise ValueError(f"{lab.shape} labels do not fill a {gh} x {gw} token grid")
    return lab.reshape(gh, gw)


# ----------------------------------------------------------------------------- upsampling


def _bilinear_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) weights of bilinear resampling, half-pixel centres, edges clamped
    (as torch ``interpolate(mode="bilinear", align_corners=False)``)."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, n_in - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = src - i0
    m = np.zeros((n_out, n_in), dtype=np.float32)
    rows = np.arange(n_out)
    np.add.at(m, (rows, i0), 1.0 - w1)
    np.add.at(m, (rows, i1), w1)
    return m


def upsample_labels(
    grid_labels: np.ndarray, size: tuple[int, int], smooth: bool = False
) -> np.ndarray:
    """(gh, gw) label map -> (H, W) label map, ``size = (H, W)``.

    Nearest: output pixel (y, x) takes patch (y * gh // H, x * gw // W), so each patch becomes
    a block; when H or W is not a multiple of the grid the blocks differ by at most one pixel.
    Smooth: each label's one-hot map is resampled bilinearly and the pixel takes the label of
    highest weight (ties -> lower id); boundaries follow the patch centres instead of a
    staircase, and away from boundaries it equals nearest. Memory is O(H * W), one label at a
    time.
    """
    lab = _check_labels(grid_labels, "grid_labels", ndim=2)
    gh, gw = lab.shape
    if gh == 0 or gw == 0:
        raise ValueError(f"grid_labels must be non-empty, got shape {lab.shape}")
    H, W = (int(v) for v in size)
    if H <= 0 or W <= 0:
        raise ValueError(f"size must be positive (H, W), got {size}")
    if not smooth:
        rows = (np.arange(H, dtype=np.int64) * gh) // H
        cols = (np.arange(W, dtype=np.int64) * gw) // W
        return lab[rows[:, None], cols[None, :]]
    ry = _bilinear_matrix(H, gh)  # (H, gh)
    rxt = _bilinear_matrix(W, gw).T  # (gw, W)
    best = np.full((H, W), -1.0, dtype=np.float32)
    out = np.zeros((H, W), dtype=np.int64)
    better = np.empty((H, W), dtype=bool)
    # thin products (inner size gh or gw): one BLAS thread is much faster than a pool
    with _thread_limit(0):
        for c in np.unique(lab):  # ascending, so strict ">" keeps the lower id on ties
            onehot = (lab == c).astype(np.float32)
            # cheaper association order: ~gh*H*W vs ~gw*H*W multiply-adds
            w = ry @ (onehot @ rxt) if gh <= gw else (ry @ onehot) @ rxt
            np.greater(w, best, out=better)
            np.copyto(best, w, where=better)
            np.copyto(out, c, where=better)
    return out


# ----------------------------------------------------------------------------- colour consistency


def match_labels(prev: np.ndarray, new: np.ndarray, k_new: int) -> np.ndarray:
    """Relabel ``new`` (ids 0..k_new-1) so its clusters keep the ids of ``prev``'s clusters
    they overlap most with (colours stay put when k changes).

    A maximum-overlap one-to-one assignment (Hungarian on the contingency matrix) pairs new
    clusters with prev ids; only prev ids < k_new are available, so the output stays in
    0..k_new-1 (going down in k, prev clusters with higher ids lose their colour). A new
    cluster paired with zero overlap, or not paired, has no counterpart: those get the unused
    ids in ascending order, the largest such cluster first (ties -> lower original id).
    """
    k_new = int(k_new)
    if k_new < 1:
        raise ValueError(f"k_new must be >= 1, got {k_new}")
    p = _check_labels(prev, "prev")
    q = _check_labels(new, "new")
    if p.shape != q.shape:
        raise ValueError(f"prev and new label different tokens: {p.shape} vs {q.shape}")
    if q.size and q.max() >= k_new:
        raise ValueError(f"new has id {q.max()} >= k_new = {k_new}")
    if q.size == 0:
        return q
    k_prev = int(p.max()) + 1
    cont = np.zeros((k_new, max(k_prev, k_new)), dtype=np.int64)
    np.add.at(cont, (q, p), 1)
    cont = cont[:, :k_new]  # target ids are 0..k_new-1
    rows, cols = linear_sum_assignment(cont, maximize=True)
    mapping = np.full(k_new, -1, dtype=np.int64)
    for r, c in zip(rows, cols, strict=True):
        if cont[r, c] > 0:
            mapping[r] = c
    taken = set(mapping.tolist())
    unused = [i for i in range(k_new) if i not in taken]
    sizes = np.bincount(q, minlength=k_new)
    orphans = [r for r in np.lexsort((np.arange(k_new), -sizes)) if mapping[r] < 0]
    for r, c in zip(orphans, unused, strict=True):
        mapping[r] = c
    return mapping[q]


def _sorted_ks(ks: Iterable[int]) -> list[int]:
    out = sorted({_check_k(k) for k in ks})
    if not out:
        raise ValueError("ks must name at least one k")
    return out


def _chained(x: np.ndarray, ks: list[int], seed: int, n_init: int) -> dict[int, np.ndarray]:
    out: dict[int, np.ndarray] = {}
    prev = None
    with _thread_limit(x.shape[0]):
        for k in ks:
            lab = _kmeans_normalised(x, k, seed, n_init)
            if prev is not None and lab.size:
                lab = match_labels(prev, lab, k)
            out[k] = lab
            prev = lab
    return out


def concepts_for_ks(
    tokens: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
    seed: int = 0,
    n_init: int = N_INIT,
) -> dict[int, np.ndarray]:
    """k-means labels of one image's tokens for every k in ``ks``, chained smallest k to
    largest with :func:`match_labels`, so a cluster that survives from k to k+1 keeps its id
    (and colour). Returns {k: (N,) labels}, keys ascending."""
    x = _normalise(_check_tokens(tokens))
    return _chained(x, _sorted_ks(ks), seed, n_init)


# ----------------------------------------------------------------------------- co-clustering


def _stack(token_sets: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    if len(token_sets) == 0:
        raise ValueError("token_sets is empty")
    sets = [_check_tokens(t, f"token_sets[{i}]") for i, t in enumerate(token_sets)]
    dims = {t.shape[1] for t in sets}
    if len(dims) != 1:
        raise ValueError(f"token_sets have different feature sizes: {sorted(dims)}")
    x = np.concatenate([_normalise(t) for t in sets], axis=0)
    splits = np.cumsum([t.shape[0] for t in sets])[:-1]
    return x, splits


def cocluster(
    token_sets: Sequence[np.ndarray], k: int, seed: int = 0, n_init: int = N_INIT
) -> list[np.ndarray]:
    """One k-means over the (L2-normalised) tokens of all images, split back per image:
    label j is the same cluster in every image. Returns one (N_i,) array per image."""
    k = _check_k(k)
    x, splits = _stack(token_sets)
    with _thread_limit(x.shape[0]):
        lab = _kmeans_normalised(x, k, seed, n_init)
    return np.split(lab, splits)


def cocluster_for_ks(
    token_sets: Sequence[np.ndarray],
    ks: Sequence[int] = DEFAULT_KS,
    seed: int = 0,
    n_init: int = N_INIT,
) -> dict[int, list[np.ndarray]]:
    """:func:`cocluster` for every k in ``ks`` with colours chained across k (matching on
    all tokens of all images). Returns {k: [(N_i,) labels per image]}."""
    x, splits = _stack(token_sets)
    chained = _chained(x, _sorted_ks(ks), seed, n_init)
    return {k: np.split(lab, splits) for k, lab in chained.items()}


def token_similarity(tokens: np.ndarray, n: int) -> np.ndarray:
    """Cosine similarity of every token to token ``n``: (N, D) -> (N,) in [-1, 1]."""
    x = _normalise(_check_tokens(tokens))
    if not 0 <= n < len(x):
        raise ValueError(f"token {n} is outside 0..{len(x) - 1}")
    return x @ x[n]


# ----------------------------------------------------------------------------- pseudo-concepts


def _check_probs(probs: np.ndarray, name: str = "probs") -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, K), got shape {p.shape}")
    if p.shape[1] == 0:
        raise ValueError(f"{name} has no concepts (K = 0)")
    if not np.isfinite(p).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return p


def argmax_map(probs: np.ndarray) -> np.ndarray:
    """(N, K) pseudo-concept probabilities -> (N,) most likely concept per token (int64)."""
    return _check_probs(probs).argmax(axis=1).astype(np.int64)


def cluster_mean_probs(probs: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(k, K) mean probability vector of the tokens of each cluster 0..k-1; a cluster with no
    tokens gets a row of zeros."""
    p = _check_probs(probs)
    lab = _check_labels(labels)
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if lab.shape[0] != p.shape[0]:
        raise ValueError(f"{lab.shape[0]} labels for {p.shape[0]} tokens")
    if lab.size and lab.max() >= k:
        raise ValueError(f"label {lab.max()} out of range for k = {k}")
    sums = np.zeros((k, p.shape[1]), dtype=np.float64)
    np.add.at(sums, lab, p)
    counts = np.bincount(lab, minlength=k).astype(np.float64)
    return np.divide(sums, counts[:, None], out=np.zeros_like(sums), where=counts[:, None] > 0)


def top_concepts(mean_probs: np.ndarray, n: int) -> list[tuple[int, float]]:
    """The ``n`` highest entries of a (K,) probability vector as [(concept id, prob)],
    descending (ties -> lower id first); fewer when K < n."""
    m = np.asarray(mean_probs, dtype=np.float64)
    if m.ndim != 1:
        raise ValueError(f"mean_probs must be 1-D (K,), got shape {m.shape}")
    n = int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    order = np.argsort(-m, kind="stable")[:n]
    return [(int(i), float(m[i])) for i in order]


def concept_histograms(
    per_image: Sequence[tuple[np.ndarray, np.ndarray, int]],
    top_n: int,
    sort: str = "mean",
) -> dict:
    """Bar-plot data for the paper's Figures 5-9: one chosen cluster per image, its mean
    pseudo-concept probabilities, restricted to the union of every image's top-``top_n``
    concepts so the bars line up across images.

    ``per_image``: [(probs (N, K), labels (N,), cluster_id), ...], same K for all images.
    ``sort``: "mean" orders concepts by their probability averaged over the images
    (descending, ties -> lower id), "id" by concept id.

    Returns {"concepts": [concept ids], "images": [[prob per concept] per image],
    "n_tokens": [tokens in the chosen cluster per image]}; an image whose chosen cluster is
    empty contributes zeros and no top concepts.
    """
    if sort not in ("mean", "id"):
        raise ValueError(f"sort must be 'mean' or 'id', got {sort!r}")
    top_n = int(top_n)
    if top_n < 1:
        raise ValueError(f"top_n must be >= 1, got {top_n}")
    means, counts, n_concepts = [], [], None
    for i, item in enumerate(per_image):
        if len(item) != 3:
            raise ValueError(f"per_image[{i}] must be (probs, labels, cluster_id)")
        probs, labels, cid = item
        p = _check_probs(probs, f"per_image[{i}] probs")
        if n_concepts is None:
            n_concepts = p.shape[1]
        elif p.shape[1] != n_concepts:
            raise ValueError(f"per_image[{i}] has {p.shape[1]} concepts, expected {n_concepts}")
        lab = _check_labels(labels, f"per_image[{i}] labels")
        if lab.shape[0] != p.shape[0]:
            raise ValueError(f"per_image[{i}]: {lab.shape[0]} labels for {p.shape[0]} tokens")
        cid = int(cid)
        if cid < 0:
            raise ValueError(f"per_image[{i}]: cluster_id must be >= 0, got {cid}")
        sel = lab == cid
        counts.append(int(sel.sum()))
        means.append(p[sel].mean(axis=0) if sel.any() else np.zeros(n_concepts))
    if not means:
        return {"concepts": [], "images": [], "n_tokens": []}
    chosen: set[int] = set()
    for m, c in zip(means, counts, strict=True):
        if c:
            chosen.update(i for i, _ in top_concepts(m, top_n))
    ids = np.array(sorted(chosen), dtype=np.int64)
    table = np.stack(means)[:, ids] if ids.size else np.zeros((len(means), 0))
    if sort == "mean" and ids.size:
        order = np.argsort(-table.mean(axis=0), kind="stable")
        ids, table = ids[order], table[:, order]
    return {
        "concepts": [int(i) for i in ids],
        "images": [[float(v) for v in row] for row in table],
        "n_tokens": counts,
    }
