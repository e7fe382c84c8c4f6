"""A FAISS index over ViT data-token features, with a per-token metadata table.

Every data token of every added image is one row: its L2-normalised feature lives in FAISS
(inner product = cosine similarity) and its image id, grid position and argmax pseudo-concept
live in :class:`TokenMeta` (numpy columns grown by chunks). Tokens of one image are added
together, so an image owns a contiguous range of token ids; ``images`` keeps one record per
image (``{"path": str, "grid": [h, w]}``).

Index kinds (``TokenIndex(kind=...)``):

``flat``  ``IndexFlatIP``: exact. On CPU a search is one BLAS matrix-vector product over the
          stored matrix (read in place) and a partial sort, which also gives exact filtered and
          one-per-image results in the same pass. With GPU FAISS the search runs on a GPU copy.
``pq``    ``PQ{D/2}x4fs,Refine(SQfp16)``: an exhaustive 4-bit product-quantisation fast scan
          (2 dimensions per sub-quantiser) proposes ``k_factor * k`` candidates that are
          re-ranked with the fp16 copy of the vectors. Scan cost does not depend on how the data
          cluster, so recall holds even on uniform random data (recall@50 0.99 at 1e6 uniform
          random 384-d tokens with ``k_factor=32``; see docs/BENCHMARKS_EXPLORE.md).
``ivf``   ``IVF{nlist},SQ8`` with ``nprobe`` calibrated on the stored data (recall target).
          Good on clustered features, poor on unstructured ones (nprobe climbs to ~nlist).
``hnsw``  ``HNSW32,SQ8`` with ``efSearch`` calibrated the same way; slow to build on few cores.
``auto``  ``flat`` up to :data:`EXACT_LIMIT` tokens, ``pq`` beyond (converted in place when the
          index outgrows the limit, or from the start when ``expected`` says so).

Kinds that need training buffer the first vectors (normalised, one growing array) until the
training sample is complete, then train, add the buffer and stream the rest to FAISS in
batches of :data:`ADD_BATCH` rows (flushed before any search or save). Nothing else keeps
features: FAISS holds the vectors, numpy holds the metadata.

Filters (``same_concept``, ``exclude_image``) and ``one_per_image`` are exact on the flat CPU
path. On approximate indices the search over-fetches progressively (``ivf``/``hnsw`` also pass
an ``IDSelectorBitmap``) up to :data:`FETCH_CAP` hits and, when that cannot produce ``top``
results, runs an exact FAISS scan of the stored codes (pq: the fp16 copy; ivf/hnsw: SQ8) with
the filter as an ``IDSelectorBitmap``; so a filtered search returns ``top`` hits whenever that
many tokens pass the filter.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

FORMAT = "mcssl-token-index"
FORMAT_VERSION = 1
EXACT_LIMIT = 1_000_000  # auto: exact IndexFlatIP up to this many tokens
KINDS = ("auto", "flat", "pq", "ivf", "hnsw")
PQ_K_FACTOR = 32  # pq: candidates re-ranked per requested hit (measured, see module doc)
PQ_TRAIN = 65_536  # pq: training buffer; faiss samples 4096 of it per sub-space (16 centroids)
MIN_TRAIN = 1024  # fewer buffered rows at the first search: pad with random unit vectors
HNSW_TRAIN = 16_384  # hnsw: SQ8 value ranges
CALIB_TARGET = 0.97  # ivf/hnsw: recall@50 on stored-token queries (0.95 + margin)
ADD_BATCH = 8192  # approximate kinds: rows buffered per FAISS add
FETCH_CAP = 2048  # approximate over-fetch beyond this k -> exact scan of stored vectors
SCAN_CHUNK = 65_536  # rows per chunk when auto converts flat -> pq

INDEX_FILE = "index.faiss"
META_FILE = "meta.npz"
IMAGES_FILE = "images.json"

# faiss-cpu 1.15.1 ships distance_compute_blas_threshold = 128000, so every query batch below
# that size takes the per-query (non-BLAS) kernel: 4-10x slower for 16-256 queries against 2e5
# 384-d vectors (measured, 1 thread); 20 is FAISS's historical default. Single queries are
# unaffected (flat CPU searches here use numpy's BLAS on the FAISS storage anyway).
faiss.cvar.distance_compute_blas_threshold = 20


class TokenIndexError(ValueError):
    """A folder that is not a usable token index (or a bad request); one-line message."""


@dataclass(slots=True)
class Hit:
    image: int
    path: str
    row: int
    col: int
    score: float
    concept: int
    token: int = -1  # global token id (row of the index)


class TokenMeta:
    """Per-token columns (numpy, grown by chunks): ``image``, ``row``, ``col``, ``concept``."""

    DTYPES = {"image": np.int32, "row": np.int16, "col": np.int16, "concept": np.int32}

    def __init__(self) -> None:
        self._size = 0
        self._cols = {k: np.empty(0, dt) for k, dt in self.DTYPES.items()}

    def __len__(self) -> int:
        return self._size

    def _column(self, name: str) -> np.ndarray:
        return self._cols[name][: self._size]

    @property
    def image(self) -> np.ndarray:
        return self._column("image")

    @property
    def row(self) -> np.ndarray:
        return self._column("row")

    @property
    def col(self) -> np.ndarray:
        return self._column("col")

    @property
    def concept(self) -> np.ndarray:
        return self._column("concept")

    def append(self, image: int, grid: tuple[int, int], concepts: np.ndarray) -> None:
        h, w = grid
        n = h * w
        end = self._size + n
        cap = len(self._cols["image"])
        if end > cap:
            new_cap = max(end, 2 * cap, 4096)
            for k, col in self._cols.items():
                grown = np.empty(new_cap, col.dtype)
                grown[: self._size] = col[: self._size]
                self._cols[k] = grown
        s = slice(self._size, end)
        self._cols["image"][s] = image
        self._cols["row"][s] = np.repeat(np.arange(h), w)
        self._cols["col"][s] = np.tile(np.arange(w), h)
        self._cols["concept"][s] = concepts
        self._size = end

    def save(self, path: Path) -> None:
        np.savez(path, **{k: self._column(k) for k in self.DTYPES})

    @classmethod
    def load(cls, path: Path) -> TokenMeta:
        meta = cls()
        with np.load(path, allow_pickle=False) as z:
            cols = {k: np.ascontiguousarray(z[k], dtype=dt) for k, dt in cls.DTYPES.items()}
        sizes = {len(c) for c in cols.values()}
        if len(sizes) != 1:
            raise TokenIndexError(f"{path}: metadata columns differ in length")
        meta._cols, meta._size = cols, sizes.pop()
        return meta


def gpu_available() -> bool:
    """True when this FAISS build has GPU support and sees at least one GPU."""
    try:
        return (
            hasattr(faiss, "get_num_gpus")
            and hasattr(faiss, "index_cpu_to_all_gpus")
            and faiss.get_num_gpus() > 0
        )
    except Exception:  # a CPU build may expose stubs that fail
        return False


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _pq_subquantisers(dim: int) -> int:
    return dim // 2 if dim % 2 == 0 else dim  # 2 (or 1) dimensions per 4-bit sub-quantiser


def _ivf_nlist(target: int, n_train: int) -> int:
    nlist = 2 ** round(math.log2(max(math.sqrt(max(target, 1)), 1)))
    nlist = int(min(max(nlist, 8), 8192))
    while nlist > 1 and nlist * 39 > n_train:  # faiss wants >= 39 training points per list
        nlist //= 2
    return nlist


@contextlib.contextmanager
def _faiss_threads(n: int) -> Iterator[None]:
    """Run FAISS with ``n`` OpenMP threads inside the block.

    Single-query searches and PQ training (192 tiny k-means) gain nothing from threads, and
    FAISS's spinning OpenMP barriers make them 10-70x slower whenever the cores are busy
    (measured on this 2-core machine next to another job, or torch's own OpenMP pool).
    """
    before = faiss.omp_get_max_threads()
    if n == before:
        yield
        return
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[-1].strip() if text else type(e).__name__


class TokenIndex:
    """Cosine-similarity search over data tokens of many images (see module docstring)."""

    def __init__(
        self,
        dim: int,
        kind: str = "auto",
        expected: int | None = None,
        use_gpu: bool | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = int(dim)
        self.kind = kind
        self.expected = expected
        self.use_gpu = gpu_available() if use_gpu is None else bool(use_gpu and gpu_available())
        self.images: list[dict[str, Any]] = []
        self.meta = TokenMeta()
        self._starts: list[int] = []  # first token id per image
        self._starts_arr: np.ndarray | None = None
        if kind == "auto":
            big = expected is not None and expected > EXACT_LIMIT
            self.active = "pq" if big else "flat"
        else:
            self.active = kind
        self.params: dict[str, float] = {}
        self._auto_params = True  # ivf/hnsw: calibrate nprobe / efSearch on the data
        self._calibrated_at = 0
        self._index: faiss.Index | None = (
            faiss.IndexFlatIP(self.dim) if self.active == "flat" else None
        )
        self._buffer = np.empty((0, self.dim), np.float32)  # pending rows (approximate kinds)
        self._nbuf = 0
        self._gpu: faiss.Index | None = None

    # ------------------------------------------------------------------ properties
    @property
    def ntotal(self) -> int:
        """Number of tokens added (including any still in the training buffer)."""
        return len(self.meta)

    @property
    def backend(self) -> str:
        return "faiss-gpu" if self.use_gpu and self.active == "flat" else "faiss-cpu"

    def describe(self) -> str:
        """One line for a UI: kind, size, parameters, backend."""
        names = {
            "flat": "exact IndexFlatIP",
            "pq": f"PQ{_pq_subquantisers(self.dim)}x4 fast scan + fp16 re-rank",
            "ivf": "IVF-SQ8",
            "hnsw": "HNSW32-SQ8",
        }
        params = ", ".join(f"{k}={v:g}" for k, v in self.params.items())
        return (
            f"{names[self.active]}{f' ({params})' if params else ''}: {self.ntotal:,} tokens "
            f"from {len(self.images):,} images, {self.backend}"
        )

    # ------------------------------------------------------------------ building
    def _train_size(self) -> int:
        if self.active == "pq":
            return PQ_TRAIN
        if self.active == "hnsw":
            return HNSW_TRAIN
        if self.active == "ivf":
            target = self.expected if self.expected is not None else EXACT_LIMIT
            return 64 * _ivf_nlist(target, 1 << 40)
        return 0

    def _new_index(self, train: np.ndarray) -> faiss.Index:
        """Build and train an index of the active kind on ``train`` (normalised rows)."""
        ip = faiss.METRIC_INNER_PRODUCT
        if self.active == "pq":
            index = faiss.index_factory(
                self.dim, f"PQ{_pq_subquantisers(self.dim)}x4fs,Refine(SQfp16)", ip
            )
            with _faiss_threads(1):
                index.train(train)
            index.k_factor = float(self.params.get("k_factor", PQ_K_FACTOR))
            self.params = {"k_factor": index.k_factor}
        elif self.active == "ivf":
            target = self.expected if self.expected is not None else EXACT_LIMIT
            nlist = _ivf_nlist(target, len(train))
            index = faiss.index_factory(self.dim, f"IVF{nlist},SQ8", ip)
            index.train(train)
            index.make_direct_map()  # reconstruct() for query_token and exact fallbacks
            index.nprobe = min(nlist, int(self.params.get("nprobe", max(1, nlist // 8))))
            self.params = {"nprobe": index.nprobe}
        elif self.active == "hnsw":
            index = faiss.index_factory(self.dim, "HNSW32,SQ8", ip)
            index.train(train)
            index.hnsw.efSearch = int(self.params.get("ef_search", 128))
            self.params = {"ef_search": index.hnsw.efSearch}
        else:
            index = faiss.IndexFlatIP(self.dim)
        return index

    def _add_vectors(self, x: np.ndarray) -> None:
        if self.active == "flat" and self._index is not None:
            self._index.add(x)
            if self._gpu is not None:
                self._gpu.add(x)
            return
        # approximate kinds: pending rows are the training sample until the index is trained,
        # then a small batch (PQ / SQ encoding is several times cheaper per row in batches)
        need = self._nbuf + len(x)
        if need > len(self._buffer):
            grown = np.empty((max(need, 2 * len(self._buffer), 1024), self.dim), np.float32)
            grown[: self._nbuf] = self._buffer[: self._nbuf]
            self._buffer = grown
        self._buffer[self._nbuf : need] = x
        self._nbuf = need
        if self._nbuf >= (self._train_size() if self._index is None else ADD_BATCH):
            self._flush()

    def _flush(self) -> None:
        """Add the pending rows to FAISS, training the index on them first if needed."""
        if self._nbuf == 0:
            return
        buf = self._buffer[: self._nbuf]
        if self._index is None:
            train = buf[: self._train_size()]
            if len(train) < MIN_TRAIN:  # a tiny index: pad the sample with random directions
                pad = np.random.default_rng(0).standard_normal((MIN_TRAIN - len(train), self.dim))
                train = np.concatenate([train, _normalise(pad)])
            self._index = self._new_index(train)
            self._calibrated_at = 0
        self._index.add(buf)
        if len(self._buffer) > 2 * ADD_BATCH:  # drop a large training buffer
            self._buffer = np.empty((0, self.dim), np.float32)
        self._nbuf = 0

    def _convert(self, kind: str) -> None:
        """Rebuild the (flat) index as ``kind``: train on a sample, re-add in chunks."""
        old, n = self._index, self.ntotal
        if old is None or n == 0:
            self.active = kind
            self._index = None if kind != "flat" else faiss.IndexFlatIP(self.dim)
            return
        self.active = kind
        rng = np.random.default_rng(0)
        size = min(n, self._train_size())
        sample = np.sort(rng.choice(n, size, replace=False))
        new = self._new_index(self._rows(old, sample))
        for s in range(0, n, SCAN_CHUNK):
            new.add(self._rows(old, np.arange(s, min(n, s + SCAN_CHUNK))))
        self._index, self._gpu = new, None
        self._calibrated_at = 0

    def add_image(
        self,
        features: np.ndarray,
        grid: tuple[int, int],
        path: str,
        concepts: np.ndarray | None = None,
    ) -> int:
        """Add one image's data tokens ((h*w, D), row-major over ``grid``); returns its id."""
        features = np.asarray(features)
        h, w = (int(v) for v in grid)
        n = h * w
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features must be (n, {self.dim}), got {features.shape}")
        if not (0 < h <= 32767 and 0 < w <= 32767) or features.shape[0] != n:
            raise ValueError(f"grid {h}x{w} does not match {features.shape[0]} tokens")
        if concepts is None:
            concepts = np.full(n, -1, np.int32)
        concepts = np.asarray(concepts).reshape(-1)
        if len(concepts) != n:
            raise ValueError(f"concepts must have {n} entries, got {len(concepts)}")
        x = _normalise(features)
        if not np.isfinite(x).all():
            raise ValueError("features contain NaN or inf")
        if self.kind == "auto" and self.active == "flat" and self.ntotal + n > EXACT_LIMIT:
            self._convert("pq")
        image = len(self.images)
        self._add_vectors(x)
        self._starts.append(self.ntotal)
        self._starts_arr = None
        self.meta.append(image, (h, w), concepts)
        self.images.append({"path": str(path), "grid": [h, w]})
        return image

    # ------------------------------------------------------------------ stored vectors
    def _ready(self) -> faiss.Index | None:
        """The FAISS index with every added vector in it (None: untrained kind, no data)."""
        self._flush()
        return self._index

    @staticmethod
    def _flat_view(index: faiss.Index) -> np.ndarray:
        n, d = index.ntotal, index.d
        if n == 0:
            return np.empty((0, d), np.float32)
        return faiss.rev_swig_ptr(index.get_xb(), n * d).reshape(n, d)

    @staticmethod
    def _fp16_view(index: faiss.Index) -> np.ndarray:
        refine = faiss.downcast_index(index.refine_index)
        n, d = refine.ntotal, refine.d
        if n == 0:
            return np.empty((0, d), np.float16)
        raw = faiss.rev_swig_ptr(refine.codes.data(), n * refine.code_size)
        return raw.view(np.float16).reshape(n, d)

    def _rows(self, index: faiss.Index, ids: np.ndarray) -> np.ndarray:
        """Stored (decoded) vectors of token ids, float32 (q, D)."""
        ids = np.asarray(ids, np.int64)
        if isinstance(index, faiss.IndexFlat):
            return self._flat_view(index)[ids].copy()
        if isinstance(index, faiss.IndexRefine):
            return self._fp16_view(index)[ids].astype(np.float32)
        return index.reconstruct_batch(ids)

    def _scores_all(self, q: np.ndarray) -> np.ndarray:
        """flat: exact inner products of ``q`` (D,) with every stored vector (ntotal,)."""
        return self._flat_view(self._ready()) @ q

    def token_id(self, image: int, row: int, col: int) -> int:
        if not 0 <= image < len(self.images):
            raise IndexError(f"image {image} out of range (0..{len(self.images) - 1})")
        h, w = self.images[image]["grid"]
        if not (0 <= row < h and 0 <= col < w):
            raise IndexError(f"token ({row}, {col}) outside the {h}x{w} grid of image {image}")
        return self._starts[image] + row * w + col

    def token_vector(self, image: int, row: int, col: int) -> np.ndarray:
        """The stored (normalised) feature of one token, float32 (D,)."""
        tok = self.token_id(image, row, col)
        return self._rows(self._ready(), np.array([tok]))[0]

    # ------------------------------------------------------------------ parameters
    def set_params(self, **params: float) -> None:
        """Fix search parameters (``k_factor`` for pq, ``nprobe`` ivf, ``ef_search`` hnsw)."""
        allowed = {"pq": {"k_factor"}, "ivf": {"nprobe"}, "hnsw": {"ef_search"}}.get(
            self.active, set()
        )
        unknown = set(params) - allowed
        if unknown:
            raise ValueError(f"{sorted(unknown)} not a parameter of a {self.active} index")
        self.params.update(params)
        self._auto_params = False
        self._apply_params()

    def _apply_params(self) -> None:
        index = self._index
        if index is None:
            return
        if self.active == "pq" and "k_factor" in self.params:
            index.k_factor = float(self.params["k_factor"])
        elif self.active == "ivf" and "nprobe" in self.params:
            index.nprobe = min(index.nlist, int(self.params["nprobe"]))
            self.params["nprobe"] = index.nprobe
        elif self.active == "hnsw" and "ef_search" in self.params:
            index.hnsw.efSearch = int(self.params["ef_search"])

    def calibrate(self, target: float = CALIB_TARGET, k: int = 50, queries: int = 64) -> dict:
        """ivf/hnsw: smallest nprobe / efSearch reaching ``target`` recall@k.

        Queries are stored tokens (themselves left out of both lists); the reference is an
        exhaustive search over the same compressed codes, so this tunes the search structure
        only (SQ8 quantisation error comes on top, ~0.02 recall@50 on uniform random data).
        The value one ladder step (x2) above the first that reaches ``target`` is kept.
        """
        index = self._ready()
        n = 0 if index is None else index.ntotal
        if self.active not in ("ivf", "hnsw") or n <= k + 1:
            return dict(self.params)
        rng = np.random.default_rng(0)
        ids = np.sort(rng.choice(n, min(queries, n), replace=False))
        q = self._rows(index, ids)

        def params(value: int) -> faiss.SearchParameters:
            if self.active == "ivf":
                return faiss.SearchParametersIVF(nprobe=value)
            return faiss.SearchParametersHNSW(efSearch=value)

        if self.active == "ivf":
            ref = index.search(q, k + 1, params=params(index.nlist))[1]
            ladder = [2**i for i in range(int(math.log2(index.nlist)) + 1)]
            if ladder[-1] != index.nlist:
                ladder.append(index.nlist)
            key = "nprobe"
        else:
            ref = faiss.downcast_index(index.storage).search(q, k + 1)[1]
            ladder = [16 << i for i in range(9)]  # 16 .. 4096
            key = "ef_search"
        truth = [set([t for t in row if t != i][:k]) for row, i in zip(ref, ids, strict=True)]
        chosen = ladder[-1]
        for step, value in enumerate(ladder):
            found = index.search(q, k + 1, params=params(value))[1]
            recall = np.mean(
                [len(t & set([f for f in row if f != i][:k])) / k
                 for row, i, t in zip(found, ids, truth, strict=True)]
            )  # fmt: skip
            if recall >= target:
                # one step more: queries from images outside the index sit off the stored
                # tokens and need more probes than these (measured: 0.86 -> 0.95 on test data)
                chosen = ladder[min(step + 1, len(ladder) - 1)]
                break
        self.params[key] = chosen
        self._apply_params()
        self._calibrated_at = n
        return dict(self.params)

    # ------------------------------------------------------------------ search
    def _prepare(self) -> faiss.Index:
        index = self._ready()
        if (
            self.active in ("ivf", "hnsw")
            and self._auto_params
            and index.ntotal >= 2 * max(self._calibrated_at, 1)
        ):
            self.calibrate()
        if self.use_gpu and self.active == "flat" and self._gpu is None and index.ntotal:
            try:
                self._gpu = faiss.index_cpu_to_all_gpus(index)
            except Exception:  # GPU build without a usable device: stay on CPU
                self.use_gpu = False
        return index

    def _starts_array(self) -> np.ndarray:
        if self._starts_arr is None:
            self._starts_arr = np.asarray(self._starts, np.int64)
        return self._starts_arr

    def _allowed(self, same_concept: int | None, exclude_image: int | None) -> np.ndarray | None:
        if same_concept is None and exclude_image is None:
            return None
        if same_concept is not None:
            mask = self.meta.concept == int(same_concept)
        else:
            mask = np.ones(self.ntotal, bool)
        if exclude_image is not None and 0 <= exclude_image < len(self.images):
            s = self._starts[exclude_image]
            mask[s : s + int(np.prod(self.images[exclude_image]["grid"]))] = False
        return mask

    def _select_exact(
        self, scores: np.ndarray, top: int, allowed: np.ndarray | None, one_per_image: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ids from a full score array (exact filters and one-per-image)."""
        if allowed is not None and not one_per_image:
            cand = np.flatnonzero(allowed)
            ids, sc = self._select_exact(scores[cand], top, None, False)
            return cand[ids], sc
        if allowed is not None:
            scores = np.where(allowed, scores, -np.inf)
        if one_per_image:
            starts = self._starts_array()
            best = np.maximum.reduceat(scores, starts)
            imgs = np.flatnonzero(best > -np.inf)
            if len(imgs) > top:
                imgs = imgs[np.argpartition(-best[imgs], top - 1)[:top]]
            ends = np.append(starts[1:], len(scores))
            ids = np.array(
                [
                    s + int(np.argmax(scores[s:e]))
                    for s, e in zip(starts[imgs], ends[imgs], strict=True)
                ],
                np.int64,
            )
        else:
            n = len(scores)
            kk = min(top, n)
            if kk <= 0:
                return np.empty(0, np.int64), np.empty(0, np.float32)
            ids = np.argpartition(scores, n - kk)[n - kk :] if kk < n else np.arange(n)
        order = np.lexsort((ids, -scores[ids]))  # score desc, then token id
        ids = ids[order]
        return ids, scores[ids].astype(np.float32)

    def _raw_search(
        self,
        index: faiss.Index,
        q: np.ndarray,
        k: int,
        allowed: np.ndarray | None,
        exhaustive: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One single-query FAISS search.

        ``exhaustive``: scan every stored code exactly (pq: the fp16 re-rank copy, hnsw: its SQ8
        storage, ivf: all lists) instead of the approximate structure. ``allowed`` goes in as an
        IDSelectorBitmap wherever it is honoured (ivf, hnsw, exhaustive scans); elsewhere the
        caller filters the results.
        """
        q2 = q[None, :]
        if self._gpu is not None and not exhaustive:
            d, i = self._gpu.search(q2, k)
            return i[0], d[0]
        kw: dict[str, Any] = {}
        bits = None  # the selector reads this buffer during the search
        if allowed is not None and (exhaustive or self.active in ("ivf", "hnsw")):
            bits = np.packbits(allowed, bitorder="little")
            kw["sel"] = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
        target, params = index, None
        if self.active == "ivf":
            nprobe = index.nlist if exhaustive else index.nprobe
            params = faiss.SearchParametersIVF(nprobe=nprobe, **kw)
        elif exhaustive and self.active in ("pq", "hnsw"):
            codes = index.refine_index if self.active == "pq" else index.storage
            target, params = faiss.downcast_index(codes), faiss.SearchParameters(**kw)
        elif self.active == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=index.hnsw.efSearch, **kw)
        with _faiss_threads(1):
            d, i = target.search(q2, k, params=params)
        del bits, kw
        return i[0], d[0]

    def _dedupe_images(self, ids: np.ndarray, scores: np.ndarray):
        _, first = np.unique(self.meta.image[ids], return_index=True)
        first.sort()  # hits come best first: the first hit of an image is its best
        return ids[first], scores[first]

    def _search_vector(
        self, q: np.ndarray, top: int, allowed: np.ndarray | None, one_per_image: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        empty = np.empty(0, np.int64), np.empty(0, np.float32)
        if self.ntotal == 0 or top <= 0:
            return empty
        index = self._prepare()
        n = index.ntotal
        n_allowed = n if allowed is None else int(allowed.sum())
        if n_allowed == 0:
            return empty
        if self._gpu is None and self.active == "flat":
            if allowed is not None and not one_per_image and n_allowed <= n // 8:
                # selective filter: score only the allowed rows (gathered), not all of them
                cand = np.flatnonzero(allowed)
                ids, scores = self._select_exact(self._flat_view(index)[cand] @ q, top, None, False)
                return cand[ids], scores
            return self._select_exact(self._scores_all(q), top, allowed, one_per_image)
        # 1) the approximate structure, over-fetching progressively while that stays cheap;
        #    a selective filter (< 1/8 of the tokens) goes straight to the exact scan: IVF / HNSW
        #    with a selector only see the lists / graph region they visit (measured: recall
        #    0.49 for a 1/64 filter at nprobe 4 on clustered data)
        selector = allowed is not None and self._gpu is None and self.active in ("ivf", "hnsw")
        if selector or allowed is None:
            k = top * (4 if one_per_image else 1)
        else:
            k = math.ceil(4 * top * n / n_allowed)
        k = min(max(k, top), n)
        if 8 * n_allowed < n:
            k = FETCH_CAP + 1
        while k <= FETCH_CAP:
            ids, scores = self._raw_search(index, q, k, allowed if selector else None)
            ok = ids >= 0
            exhausted = int(ok.sum()) < k  # ivf/hnsw reached all they can: more k won't help
            if allowed is not None:
                ok &= allowed[np.where(ok, ids, 0)]
            ids, scores = ids[ok], scores[ok]
            if one_per_image:
                ids, scores = self._dedupe_images(ids, scores)
            if len(ids) >= top or k >= n:
                return ids[:top].astype(np.int64), scores[:top].astype(np.float32)
            if exhausted:
                break
            k = min(2 * k, n)
        # 2) exact over the stored vectors: numpy for flat (GPU case), else a FAISS scan of
        #    every code with the filter as a selector, growing k only for one_per_image
        if self.active == "flat":
            return self._select_exact(self._scores_all(q), top, allowed, one_per_image)
        k = min(n, top * (4 if one_per_image else 1))
        while True:
            ids, scores = self._raw_search(index, q, k, allowed, exhaustive=True)
            found = ids >= 0
            ids, scores = ids[found], scores[found]
            if one_per_image:
                ids, scores = self._dedupe_images(ids, scores)
            if len(ids) >= top or int(found.sum()) < k or k >= n:
                return ids[:top].astype(np.int64), scores[:top].astype(np.float32)
            k = min(n, 4 * k)

    def _hits(self, ids: np.ndarray, scores: np.ndarray) -> list[Hit]:
        m = self.meta
        cols = [a[ids].tolist() for a in (m.image, m.row, m.col, m.concept)]
        paths = self.images
        return [
            Hit(i, paths[i]["path"], r, c, s, k, t)
            for i, r, c, k, s, t in zip(*cols, scores.tolist(), ids.tolist(), strict=True)
        ]

    def search(
        self,
        query: np.ndarray,
        top: int = 20,
        same_concept: int | None = None,
        exclude_image: int | None = None,
        one_per_image: bool = False,
    ) -> list[Hit]:
        """Tokens most similar (cosine) to ``query``, best first.

        ``query``: (D,) one feature, or (q, D) several (e.g. a selected region): each row is
        normalised and the score is the mean cosine similarity to the rows.
        ``same_concept``: keep only tokens whose argmax concept is this id.
        ``exclude_image``: drop tokens of this image. ``one_per_image``: best token per image.
        """
        if isinstance(same_concept, bool) or isinstance(exclude_image, bool):
            raise TypeError("search() takes concept / image ids; use query_token() for True")
        q = np.asarray(query, np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim or len(q) == 0:
            raise ValueError(f"query must be ({self.dim},) or (q, {self.dim}), got {q.shape}")
        if not np.isfinite(q).all() or not np.linalg.norm(q, axis=1).all():
            raise ValueError("query must be finite and non-zero")
        qv = np.ascontiguousarray(_normalise(q).mean(axis=0), np.float32)
        allowed = self._allowed(same_concept, exclude_image)
        ids, scores = self._search_vector(qv, int(top), allowed, one_per_image)
        return self._hits(ids, scores)

    def query_token(
        self,
        image: int,
        row: int,
        col: int,
        top: int = 20,
        same_concept: bool | int | None = None,
        exclude_image: bool | int | None = None,
        one_per_image: bool = False,
    ) -> list[Hit]:
        """Search with a stored token's own feature.

        ``same_concept=True``: only tokens sharing this token's argmax concept (an int picks
        another concept). ``exclude_image=True``: leave out this token's image.
        """
        tok = self.token_id(image, row, col)
        if same_concept is True:
            same_concept = int(self.meta.concept[tok])
            if same_concept < 0:
                raise TokenIndexError(f"token ({row}, {col}) of image {image} has no concept")
        elif same_concept is False:
            same_concept = None
        if exclude_image is True:
            exclude_image = image
        elif exclude_image is False:
            exclude_image = None
        return self.search(
            self.token_vector(image, row, col),
            top=top,
            same_concept=same_concept,
            exclude_image=exclude_image,
            one_per_image=one_per_image,
        )

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | Path) -> Path:
        """Write ``index.faiss``, ``meta.npz`` and ``images.json`` (format header) to folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        index = self._ready()
        if index is None:  # untrained kind, no tokens yet: placeholder
            index = faiss.IndexFlatIP(self.dim)
        faiss.write_index(index, str(folder / INDEX_FILE))  # CPU master (GPU is a replica)
        self.meta.save(folder / META_FILE)
        header = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "dim": self.dim,
            "kind": self.kind,
            "active": self.active,
            "expected": self.expected,
            "params": self.params,
            "auto_params": self._auto_params,
            "calibrated_at": self._calibrated_at,
            "ntotal": self.ntotal,
            "images": self.images,
        }
        tmp = folder / (IMAGES_FILE + ".tmp")
        tmp.write_text(json.dumps(header))
        tmp.replace(folder / IMAGES_FILE)  # written last: marks a complete index
        return folder

    @classmethod
    def load(cls, folder: str | Path, use_gpu: bool | None = None) -> TokenIndex:
        folder = Path(folder)
        if not folder.is_dir():
            raise TokenIndexError(f"{folder}: no such index folder")
        head_path = folder / IMAGES_FILE
        if not head_path.is_file():
            raise TokenIndexError(f"{folder}: not a token index (no {IMAGES_FILE})")
        try:
            head = json.loads(head_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TokenIndexError(f"{head_path}: unreadable ({_first_line(e)})") from None
        if not isinstance(head, dict) or head.get("format") != FORMAT:
            raise TokenIndexError(f"{folder}: not a token index ({IMAGES_FILE} lacks the header)")
        if not isinstance(head.get("version"), int) or head["version"] > FORMAT_VERSION:
            raise TokenIndexError(
                f"{folder}: index format version {head.get('version')!r} is newer than "
                f"supported ({FORMAT_VERSION})"
            )
        try:
            index = faiss.read_index(str(folder / INDEX_FILE))
            meta = TokenMeta.load(folder / META_FILE)
            obj = cls(int(head["dim"]), kind=head["kind"], expected=head["expected"],
                      use_gpu=use_gpu)  # fmt: skip
            images = [{"path": str(r["path"]), "grid": [int(g) for g in r["grid"]]}
                      for r in head["images"]]  # fmt: skip
            active = head["active"]
            if active not in KINDS[1:]:
                raise ValueError(f"unknown index kind {active!r}")
        except TokenIndexError:
            raise
        except Exception as e:  # faiss RuntimeError, zip/npz errors, missing keys
            raise TokenIndexError(f"{folder}: broken token index ({_first_line(e)})") from None
        sizes = [h * w for h, w in (r["grid"] for r in images)]
        if not (index.ntotal == len(meta) == sum(sizes) == head.get("ntotal")) or (
            index.d != obj.dim
        ):
            raise TokenIndexError(
                f"{folder}: inconsistent index ({index.ntotal} vectors, {len(meta)} metadata "
                f"rows, {sum(sizes)} grid tokens)"
            )
        if active == "ivf" and index.direct_map.type == faiss.DirectMap.NoMap:
            index.make_direct_map()
        if index.ntotal == 0 and active != "flat":
            index = None  # placeholder of an empty untrained index
        obj.active, obj._index, obj.meta, obj.images = active, index, meta, images
        obj._starts = [int(v) for v in np.cumsum([0, *sizes[:-1]])] if images else []
        obj.params = {k: float(v) for k, v in head.get("params", {}).items()}
        obj._auto_params = bool(head.get("auto_params", True))
        obj._calibrated_at = int(head.get("calibrated_at", 0))
        obj._apply_params()
        return obj
