"""Nearest-neighbour distances to a memory bank in numpy (torch-free; the PyTorch version for
exportable modules is :mod:`defectscope.ops.knn`)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

#: bank rows prepared at a time (their transposed copy with ``|b|^2``: (D + 1) x chunk floats)
BANK_CHUNK = 4096
#: queries compared with a bank chunk per matrix product: the product's output, block x chunk
#: floats (2 MB), stays in the core's cache for the minimum that reads it. Whole batches of
#: queries (6,400 for 4 images) wrote 52 MB per product, which the minimum then read back from
#: memory: 95 ms against 78 ms a piece on tire's bank, the same bits (benchmarks/README.md,
#: "Scoring pieces side by side")
QUERY_BLOCK = 128


def _partial_distances(
    queries: np.ndarray, bank: np.ndarray, chunk: int, block: int = QUERY_BLOCK
) -> Iterator[tuple[int, slice, np.ndarray]]:
    """``(start, rows, |b|^2 - 2 q.b)`` for each chunk of ``bank`` (from row ``start``) and
    each block of ``block`` queries (``queries[rows]``) in turn: the squared distances without
    ``|q|^2``, which is the same for every bank row, so callers add it to what they keep. One
    matrix product computes them whole: the queries carry -2 and a column of ones, each chunk
    of the bank its rows' ``|b|^2`` as one more column (one pass over the reused buffer per
    block, not two; the yielded array is overwritten by the next one). Each distance is the
    same dot product whatever the chunk and block sizes, so the bits do not depend on them."""
    dim = queries.shape[1]
    scaled = np.empty((len(queries), dim + 1), dtype=np.float32)
    np.multiply(queries, np.float32(-2.0), out=scaled[:, :dim])
    scaled[:, dim] = 1.0
    d2 = np.empty((min(block, len(queries)), min(chunk, len(bank))), dtype=np.float32)
    columns_buffer = np.empty((dim + 1, min(chunk, len(bank))), dtype=np.float32)
    for start in range(0, len(bank), chunk):
        part = bank[start : start + chunk]
        columns = columns_buffer[:, : len(part)]
        columns[:dim] = part.T
        np.einsum("ij,ij->i", part, part, out=columns[dim])
        for first in range(0, len(queries), block):
            rows = slice(first, min(first + block, len(queries)))
            out = d2[: rows.stop - first, : len(part)]
            np.matmul(scaled[rows], columns, out=out)
            yield start, rows, out


def nearest_distance(
    queries: np.ndarray, bank: np.ndarray, *, chunk: int = BANK_CHUNK, block: int = QUERY_BLOCK
) -> np.ndarray:
    """Euclidean distance ``(Q,)`` from every ``queries (Q, D)`` row to its nearest ``bank (M, D)``
    row, chunked as :func:`defectscope.ops.knn.nearest` (squared distances
    ``|q|^2 - 2 q.b + |b|^2`` in one block x chunk buffer, clamped at 0 before the square
    root). No index: the lean path does not need one, and finding it costs a second pass over
    every chunk. ``|q|^2`` is added to each query's minimum and the -2 folded into the queries:
    two passes over the buffer per chunk instead of four (the search is half of PatchCore's
    evaluate time)."""
    if not len(bank):
        raise ValueError("the bank is empty: there is nothing to search")
    best = np.empty(len(queries), dtype=np.float32)
    for start, rows, out in _partial_distances(queries, bank, chunk, block):
        value = out.min(axis=1)
        if start == 0:
            best[rows] = value
        else:
            np.minimum(best[rows], value, out=best[rows])
    best += np.einsum("ij,ij->i", queries, queries)
    return np.sqrt(np.maximum(best, 0.0))


def mean_nearest_distance(
    queries: np.ndarray,
    bank: np.ndarray,
    k: int,
    *,
    chunk: int = BANK_CHUNK,
    block: int = QUERY_BLOCK,
) -> np.ndarray:
    """The mean Euclidean distance ``(Q,)`` from every ``queries (Q, D)`` row to its ``k``
    nearest ``bank (M, D)`` rows (``1 <= k <= M``), what
    :func:`defectscope.ops.knn.k_nearest` followed by a mean computes: each chunk's ``k``
    smallest squared distances are merged with the running ``k`` of the same queries
    (``np.partition``: the mean needs no order), so the largest temporary is block x chunk."""
    if not 1 <= k <= len(bank):
        raise ValueError(f"k must be between 1 and the bank size {len(bank)}, got {k}")
    best: dict[int, np.ndarray] = {}  # the running k smallest of each block, in query order
    for start, rows, out in _partial_distances(queries, bank, chunk, block):
        found = out if start == 0 else np.concatenate([best[rows.start], out], axis=1)
        if found.shape[1] > k:
            found = np.partition(found, k - 1, axis=1)[:, :k]
        best[rows.start] = found.copy() if np.shares_memory(found, out) else found
    kept = np.concatenate(list(best.values())) if best else np.empty((0, k))
    kept += np.einsum("ij,ij->i", queries, queries)[:, None]
    return np.sqrt(np.maximum(kept, 0.0)).mean(axis=1, dtype=np.float32)


#: queries compared with the centroids at a time: queries x lists floats is the largest temporary
QUERY_CHUNK = 4096


def _nearest_index(queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The index ``(Q,)`` of each ``queries (Q, D)`` row's nearest ``rows (R, D)`` row (R is
    small: all of ``rows`` in one product), :data:`QUERY_CHUNK` queries at a time; ``|q|^2``
    changes no query's argmin, so it is left out."""
    found = []
    for s in range(0, len(queries), QUERY_CHUNK):
        chunk = queries[s : s + QUERY_CHUNK]
        _, _, out = next(_partial_distances(chunk, rows, len(rows), len(chunk)))
        found.append(out.argmin(1))
    return np.concatenate(found)


def kmeans(
    x: np.ndarray, k: int, *, iterations: int = 10, seed: int = 0, per_centroid: int = 64
) -> np.ndarray:
    """``k`` centroids ``(k, D)`` of ``x (N, D)`` by Lloyd's iterations on a seeded sample of at
    most ``per_centroid * k`` rows (enough for a coarse quantizer; faiss samples 256 per
    centroid for the same job). A centroid left without rows restarts at a random sample row."""
    rng = np.random.default_rng(seed)
    sample = x[np.sort(rng.choice(len(x), min(len(x), per_centroid * k), replace=False))]
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    centroids = sample[rng.choice(len(sample), k, replace=False)].copy()
    for _ in range(iterations):
        assign = _nearest_index(sample, centroids)
        counts = np.bincount(assign, minlength=k)
        order = np.argsort(assign, kind="stable")
        filled = np.flatnonzero(counts)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[filled]
        sums = np.add.reduceat(sample[order].astype(np.float64), starts, axis=0)
        centroids[filled] = (sums / counts[filled, None]).astype(np.float32)
        empty = np.flatnonzero(counts == 0)
        if len(empty):
            centroids[empty] = sample[rng.choice(len(sample), len(empty), replace=False)]
    return centroids


class InvertedIndex:
    """An inverted-file index of a memory bank (IVF-Flat): the bank's rows grouped by their
    nearest of ``nlist`` k-means centroids; a query is compared exactly with every row of the
    ``nprobe`` groups whose centroids are nearest to it.

    A row in an unprobed group can be missed, so a distance is never below the exact one and
    overestimates only where the true nearest row sits in a far group: whole groups are
    searched, so the misses are rows near a group's border (``benchmarks/README.md``, "Search":
    IVF-Flat kept the image AUROC where HNSW at the same recall lost up to 0.39).
    ``nprobe >= nlist`` is the exact search.
    """

    def __init__(self, bank: np.ndarray, *, nlist: int | None = None, seed: int = 0) -> None:
        bank = np.ascontiguousarray(bank, dtype=np.float32)
        if bank.ndim != 2 or not len(bank):
            raise ValueError(f"bank must be (M, D) with M >= 1, got {bank.shape}")
        self.nlist = int(min(len(bank), nlist or max(1, round(4 * np.sqrt(len(bank))))))
        self.centroids = kmeans(bank, self.nlist, seed=seed)
        assign = _nearest_index(bank, self.centroids)
        order = np.argsort(assign, kind="stable")
        #: the bank's rows grouped list by list; list l is rows[bounds[l]:bounds[l + 1]]
        self.rows = bank[order]
        self.norms = np.einsum("ij,ij->i", self.rows, self.rows)
        self.bounds = np.searchsorted(assign[order], np.arange(self.nlist + 1))

    def __len__(self) -> int:
        return len(self.rows)

    def nearest_distance(self, queries: np.ndarray, nprobe: int) -> np.ndarray:
        """Euclidean distance ``(Q,)`` from each ``queries (Q, D)`` row to the nearest bank row
        of its ``nprobe`` nearest lists (>= the exact distance; equal where that row is in
        them). A query whose probed lists are all empty is searched exactly."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        nprobe = int(min(max(nprobe, 1), self.nlist))
        out = np.empty(len(queries), dtype=np.float32)
        for s in range(0, len(queries), QUERY_CHUNK):
            q = queries[s : s + QUERY_CHUNK]
            q2 = np.einsum("ij,ij->i", q, q)
            scaled = np.multiply(q, np.float32(-2.0), dtype=np.float32)
            to_lists = scaled @ self.centroids.T  # ranked by -2 q.c + |c|^2 (|q|^2 is common)
            to_lists += np.einsum("ij,ij->i", self.centroids, self.centroids)
            if nprobe < self.nlist:
                probe = np.argpartition(to_lists, nprobe - 1, axis=1)[:, :nprobe]
            else:
                probe = np.broadcast_to(np.arange(self.nlist), (len(q), self.nlist))
            lists = probe.ravel()
            order = np.argsort(lists, kind="stable")
            who = np.repeat(np.arange(len(q)), nprobe)[order]
            edges = np.searchsorted(lists[order], np.arange(self.nlist + 1))
            best = np.full(len(q), np.inf, dtype=np.float32)
            for group in np.flatnonzero(np.diff(edges)):
                lo, hi = self.bounds[group], self.bounds[group + 1]
                if lo == hi:
                    continue
                idx = who[edges[group] : edges[group + 1]]  # each query once per list
                d2 = scaled[idx] @ self.rows[lo:hi].T
                d2 += self.norms[lo:hi]
                best[idx] = np.minimum(best[idx], d2.min(axis=1))
            best += q2
            lost = ~np.isfinite(best)
            if lost.any():
                best[lost] = nearest_distance(q[lost], self.rows) ** 2
            out[s : s + len(q)] = np.sqrt(np.maximum(best, 0.0))
        return out
