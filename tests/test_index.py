"""TokenIndex: exactness against numpy, filters, persistence, approximate recall."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mcssl.explore import index as index_mod
from mcssl.explore.index import TokenIndex, TokenIndexError

DIM = 32
GRID = (6, 5)  # 30 tokens per image


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _clustered(rng: np.random.Generator, n: int, dim: int, clusters: int, noise: float):
    centres = rng.standard_normal((clusters, dim))
    labels = rng.integers(0, clusters, n)
    x = centres[labels] + noise * rng.standard_normal((n, dim))
    return _unit(x), labels


def _build(images: int = 40, kind: str = "flat", seed: int = 0, n_concepts: int = 5):
    """An index of random images plus the full (normalised) matrix and metadata for numpy."""
    rng = np.random.default_rng(seed)
    ix = TokenIndex(DIM, kind=kind)
    n = GRID[0] * GRID[1]
    feats, concepts = [], []
    for i in range(images):
        f = rng.standard_normal((n, DIM)).astype(np.float32) * rng.uniform(0.5, 3)  # unnormalised
        c = rng.integers(0, n_concepts, n)
        assert ix.add_image(f, GRID, f"img{i}.jpg", c) == i
        feats.append(f)
        concepts.append(c)
    x = _unit(np.concatenate(feats))
    image = np.repeat(np.arange(images), n)
    return ix, x, image, np.concatenate(concepts)


def _brute(x: np.ndarray, q: np.ndarray, top: int, mask: np.ndarray | None = None):
    s = x @ q
    ids = np.flatnonzero(np.ones(len(x), bool) if mask is None else mask)
    order = ids[np.argsort(-s[ids], kind="stable")][:top]
    return order, s[order]


def _ids(hits) -> np.ndarray:
    return np.array([h.token for h in hits], np.int64)


def _scores(hits) -> np.ndarray:
    return np.array([h.score for h in hits], np.float32)


def test_own_token_is_top_hit():
    ix, x, _, _ = _build(images=10)
    for image, row, col in [(0, 0, 0), (3, 2, 4), (9, 5, 0)]:
        hits = ix.query_token(image, row, col, top=5)
        assert (hits[0].image, hits[0].row, hits[0].col) == (image, row, col)
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert hits[0].path == f"img{image}.jpg"
        assert hits[0].token == ix.token_id(image, row, col)
        assert hits[1].score < hits[0].score
    np.testing.assert_allclose(ix.token_vector(3, 2, 4), x[ix.token_id(3, 2, 4)], atol=1e-6)


def test_metadata_columns():
    ix, _, image, concept = _build(images=4)
    assert ix.ntotal == 4 * 30 and len(ix.images) == 4
    np.testing.assert_array_equal(ix.meta.image, image)
    np.testing.assert_array_equal(ix.meta.concept, concept)
    np.testing.assert_array_equal(ix.meta.row[:7], [0, 0, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(ix.meta.col[:7], [0, 1, 2, 3, 4, 0, 1])
    assert ix.images[2] == {"path": "img2.jpg", "grid": [6, 5]}
    assert ix.backend in ("faiss-cpu", "faiss-gpu")


def test_search_equals_numpy_bruteforce():
    ix, x, _, _ = _build(images=60)
    rng = np.random.default_rng(1)
    for _ in range(5):
        q = rng.standard_normal(DIM).astype(np.float32) * 7  # unnormalised query
        hits = ix.search(q, top=25)
        ids, scores = _brute(x, _unit(q), 25)
        np.testing.assert_array_equal(_ids(hits), ids)
        np.testing.assert_allclose(_scores(hits), scores, atol=1e-5)
    # several rows: mean cosine similarity to the normalised rows
    qs = rng.standard_normal((3, DIM)).astype(np.float32)
    ids, scores = _brute(x, _unit(qs).mean(0), 10)
    hits = ix.search(qs, top=10)
    np.testing.assert_array_equal(_ids(hits), ids)
    np.testing.assert_allclose(_scores(hits), scores, atol=1e-5)
    assert len(ix.search(q, top=10_000)) == ix.ntotal


def test_same_concept_filter():
    ix, x, _, concept = _build(images=50, n_concepts=8)
    tok = ix.token_id(7, 3, 3)
    c = int(concept[tok])
    hits = ix.query_token(7, 3, 3, top=30, same_concept=True)
    assert len(hits) == 30
    assert all(h.concept == c for h in hits)
    ids, scores = _brute(x, x[tok], 30, concept == c)
    np.testing.assert_array_equal(_ids(hits), ids)
    np.testing.assert_allclose(_scores(hits), scores, atol=1e-5)
    # an explicit concept id through search(); fewer tokens than `top` -> all of them
    rare = ix.search(x[tok], top=10_000, same_concept=c)
    assert len(rare) == int((concept == c).sum())
    assert ix.search(x[tok], top=5, same_concept=99) == []
    with pytest.raises(TypeError):
        ix.search(x[tok], top=5, same_concept=True)


def test_exclude_image_filter():
    ix, x, image, _ = _build(images=30)
    tok = ix.token_id(4, 1, 1)
    hits = ix.query_token(4, 1, 1, top=40, exclude_image=True)
    assert len(hits) == 40 and all(h.image != 4 for h in hits)
    ids, _ = _brute(x, x[tok], 40, image != 4)
    np.testing.assert_array_equal(_ids(hits), ids)
    hits = ix.search(x[tok], top=ix.ntotal, exclude_image=0)
    assert len(hits) == ix.ntotal - 30 and all(h.image != 0 for h in hits)


def test_one_per_image():
    ix, x, image, concept = _build(images=40)
    q = x[ix.token_id(2, 2, 2)]
    for kwargs, mask in [
        ({}, np.ones(len(x), bool)),
        ({"same_concept": 1, "exclude_image": 2}, (concept == 1) & (image != 2)),
    ]:
        hits = ix.search(q, top=15, one_per_image=True, **kwargs)
        assert len(hits) == 15
        imgs = [h.image for h in hits]
        assert len(set(imgs)) == 15
        s = np.where(mask, x @ q, -np.inf)
        best_tok = np.array([np.argmax(np.where(image == i, s, -np.inf)) for i in range(40)])
        expect_imgs = np.argsort(-s[best_tok], kind="stable")[:15]
        assert imgs == expect_imgs.tolist()
        np.testing.assert_array_equal(_ids(hits), best_tok[expect_imgs])
    assert len(ix.search(q, top=100, one_per_image=True)) == 40


def test_save_load_roundtrip(tmp_path):
    ix, x, _, _ = _build(images=20)
    q = x[5] + x[77]
    before = ix.search(q, top=20, same_concept=2, one_per_image=True)
    ix.save(tmp_path / "idx")
    back = TokenIndex.load(tmp_path / "idx")
    assert back.ntotal == ix.ntotal and back.images == ix.images and back.active == "flat"
    assert back.search(q, top=20, same_concept=2, one_per_image=True) == before
    assert back.query_token(3, 1, 2, top=10) == ix.query_token(3, 1, 2, top=10)
    back.add_image(x[:30], GRID, "new.jpg")  # still growable after load
    assert back.ntotal == ix.ntotal + 30
    assert {h.path for h in back.search(x[0], top=2)} == {"img0.jpg", "new.jpg"}  # same vector


def _one_line_error(folder) -> str:
    with pytest.raises(TokenIndexError) as err:
        TokenIndex.load(folder)
    msg = str(err.value)
    assert "\n" not in msg and msg
    return msg


def test_load_bogus_folder(tmp_path):
    assert "no such" in _one_line_error(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert "not a token index" in _one_line_error(tmp_path / "empty")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "images.json").write_text("{not json")
    _one_line_error(junk)
    (junk / "images.json").write_text(json.dumps([1, 2]))
    assert "not a token index" in _one_line_error(junk)
    # a real index whose faiss file is damaged
    ix, _, _, _ = _build(images=2)
    ix.save(tmp_path / "broken")
    (tmp_path / "broken" / "index.faiss").write_bytes(b"garbage")
    assert "broken" in _one_line_error(tmp_path / "broken")
    # newer format version
    ix.save(tmp_path / "newer")
    head = json.loads((tmp_path / "newer" / "images.json").read_text())
    head["version"] = 99
    (tmp_path / "newer" / "images.json").write_text(json.dumps(head))
    assert "version" in _one_line_error(tmp_path / "newer")


def test_bad_inputs():
    ix = TokenIndex(DIM)
    with pytest.raises(ValueError):
        ix.add_image(np.zeros((30, DIM + 1), np.float32), GRID, "a")
    with pytest.raises(ValueError):
        ix.add_image(np.zeros((29, DIM), np.float32), GRID, "a")
    with pytest.raises(ValueError):
        TokenIndex(DIM, kind="lsh")
    assert ix.search(np.ones(DIM, np.float32), top=5) == []
    ix.add_image(np.ones((30, DIM), np.float32), GRID, "a")  # concepts unknown
    with pytest.raises(TokenIndexError):
        ix.query_token(0, 0, 0, same_concept=True)
    with pytest.raises(IndexError):
        ix.query_token(0, 6, 0)


def _recall(ix: TokenIndex, x: np.ndarray, queries: np.ndarray, k: int = 50) -> float:
    got = [set(_ids(ix.search(q, top=k)).tolist()) for q in queries]
    exact = [set(_brute(x, q, k)[0].tolist()) for q in queries]
    return float(np.mean([len(a & b) / k for a, b in zip(got, exact, strict=True)]))


@pytest.fixture(scope="module")
def clustered():
    rng = np.random.default_rng(3)
    x, labels = _clustered(rng, 20_000, 64, clusters=50, noise=0.6)
    picks = x[rng.choice(len(x), 100, replace=False)]
    queries = _unit(picks + 0.3 * rng.standard_normal((100, 64)))
    return x, labels, queries


# Measured recall@50 on this data (100 queries): pq 0.99+, ivf (calibrated nprobe) 0.98.
@pytest.mark.parametrize("kind", ["pq", "ivf"])
def test_approximate_recall(kind, clustered, tmp_path, monkeypatch):
    x, labels, queries = clustered
    ix = TokenIndex(64, kind=kind, expected=len(x))
    for i in range(0, len(x), 200):  # 100 "images" of 10x20 tokens, streamed
        ix.add_image(x[i : i + 200], (10, 20), f"{i}.png", labels[i : i + 200] % 7)
    assert ix.ntotal == len(x) and ix.active == kind
    recall = _recall(ix, x, queries)
    assert recall >= 0.9, f"{kind}: recall@50 {recall:.3f}"
    # own token still found; filters still return `top` valid hits
    hit = ix.query_token(17, 4, 4, top=1)[0]
    assert (hit.image, hit.row, hit.col) == (17, 4, 4)
    concept = labels[17 * 200 + 4 * 20 + 4] % 7
    hits = ix.query_token(17, 4, 4, top=50, same_concept=True, exclude_image=True)
    assert len(hits) == 50 and all(h.concept == concept and h.image != 17 for h in hits)
    hits = ix.search(queries[0], top=30, one_per_image=True)
    assert len(hits) == 30 and len({h.image for h in hits}) == 30
    # the exact fallback over stored (fp16 / SQ8) vectors, forced: matches numpy
    monkeypatch.setattr(index_mod, "FETCH_CAP", 0)
    q = queries[2]
    hits = ix.search(q, top=40, same_concept=3, one_per_image=True)
    s = np.where(labels % 7 == 3, x @ q, -np.inf).reshape(100, 200)
    best = np.sort(s.max(1))[::-1][:40]
    tol = 1e-3 if kind == "pq" else 2e-2  # fp16 / SQ8 storage: near-ties may swap
    assert len({h.image for h in hits}) == 40 and all(h.concept == 3 for h in hits)
    np.testing.assert_allclose(_scores(hits), best, atol=tol)
    for h in hits:  # each hit is (within storage precision) its image's best token
        assert s[h.image, h.token - 200 * h.image] >= s[h.image].max() - tol
    hits = ix.search(q, top=50, exclude_image=0)
    assert len(set(_ids(hits).tolist()) & set(_brute(x, q, 50, np.arange(len(x)) >= 200)[0])) >= 48
    monkeypatch.undo()
    # save / load keeps kind, parameters and results
    ix.save(tmp_path / kind)
    back = TokenIndex.load(tmp_path / kind)
    assert back.active == kind and back.params == ix.params
    assert back.search(queries[1], top=20) == ix.search(queries[1], top=20)


def test_auto_switches_to_approximate(monkeypatch):
    monkeypatch.setattr(index_mod, "EXACT_LIMIT", 3000)
    monkeypatch.setattr(index_mod, "PQ_TRAIN", 1000)
    rng = np.random.default_rng(5)
    x, _ = _clustered(rng, 4000, DIM, clusters=20, noise=0.5)
    ix = TokenIndex(DIM)
    for i in range(0, 3000, 30):
        ix.add_image(x[i : i + 30], GRID, f"{i}")
    assert ix.active == "flat"
    ix.add_image(x[3000:3030], GRID, "over")
    assert ix.active == "pq" and ix.ntotal == 3030
    for i in range(3030, 3990, 30):
        ix.add_image(x[i : i + 30], GRID, f"{i}")
    assert ix.ntotal == 3990 and ix.describe().startswith("PQ")
    hit = ix.query_token(50, 2, 3, top=1)[0]
    assert (hit.image, hit.row, hit.col) == (50, 2, 3)
    assert _recall(ix, x[:3990], x[:40]) >= 0.9


def test_training_buffer_and_hnsw(tmp_path):
    rng = np.random.default_rng(6)
    x, _ = _clustered(rng, 1500, DIM, clusters=10, noise=0.5)
    for kind in ("pq", "hnsw"):
        ix = TokenIndex(DIM, kind=kind)
        assert ix.search(x[0], top=3) == []
        ix.save(tmp_path / f"empty-{kind}")  # empty, untrained: still saves and loads
        assert TokenIndex.load(tmp_path / f"empty-{kind}").ntotal == 0
        for i in range(0, 900, 30):  # fewer than the training sample: stays buffered
            ix.add_image(x[i : i + 30], GRID, f"{i}")
        hit = ix.query_token(3, 0, 0, top=1)[0]  # trains on the buffer
        assert (hit.image, hit.row, hit.col) == (3, 0, 0)
        for i in range(900, 1500, 30):  # keeps streaming after training
            ix.add_image(x[i : i + 30], GRID, f"{i}")
        assert ix.ntotal == 1500
        assert _recall(ix, x, x[::50], k=20) >= 0.9
