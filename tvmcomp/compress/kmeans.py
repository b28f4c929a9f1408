"""1-D k-means for weight sharing (NumPy): codebooks and indices of one weight tensor."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import SHARE_INITS as INITS
from .errors import CompressConfigError


def init_centroids(x: np.ndarray, k: int, init: str, rng: np.random.Generator) -> np.ndarray:
    """``k`` starting centroids for the values ``x``.

    ``linear`` spaces them evenly between min and max (Deep Compression's choice: large
    weights keep a centroid of their own); ``density`` puts them at evenly spaced quantiles
    (most centroids where most weights are); ``kmeans++`` draws them with probability
    proportional to the squared distance to the nearest chosen one.
    """
    x = np.asarray(x, np.float64)
    if init == "linear":
        return np.linspace(x.min(), x.max(), k)
    if init == "density":
        return np.quantile(x, (np.arange(k) + 0.5) / k)
    if init == "kmeans++":
        c = [x[rng.integers(len(x))]]
        for _ in range(1, k):
            d = np.min((x[:, None] - np.asarray(c)[None, :]) ** 2, axis=1)
            total = d.sum()
            c.append(x[rng.integers(len(x))] if total == 0 else x[rng.choice(len(x), p=d / total)])
        return np.sort(np.asarray(c))
    raise CompressConfigError(f"init must be one of {', '.join(INITS)}, got {init!r}")


def _nearest(c: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Index of the nearest of the sorted centroids ``c`` for each value of ``x``."""
    return np.searchsorted((c[1:] + c[:-1]) / 2, x)


def kmeans_1d(x: np.ndarray, k: int, init: str = "linear", iters: int = 300,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(centroids [k] sorted, labels [len(x)]): Lloyd's algorithm on scalars.

    Empty clusters keep their centroid; iteration stops when no label changes (or after
    ``iters``); the labels returned are the nearest of the centroids returned.
    """
    x = np.asarray(x, np.float64).ravel()
    c = np.sort(init_centroids(x, k, init, np.random.default_rng(seed)))
    labels = np.full(len(x), -1)
    for _ in range(iters):
        new = _nearest(c, x)
        if np.array_equal(new, labels):
            break
        labels = new
        sums = np.bincount(labels, weights=x, minlength=k)
        counts = np.bincount(labels, minlength=k)
        c = np.where(counts > 0, sums / np.maximum(counts, 1), c)
        order = np.argsort(c, kind="stable")
        c, labels = c[order], np.argsort(order)[labels]
    return c, _nearest(c, x)


@dataclass(frozen=True)
class SharedWeight:
    """A weight as codebook entries: ``w == codebook[group(i), index[i]]`` for every element.

    ``codebook`` is ``[groups, 2**bits]`` (unused entries repeat the last one); the groups
    are runs of ``group_size`` output channels (``group_size = out`` for one per tensor).
    ``zero`` is True when entry 0 of every codebook is the reserved exact zero of a pruned
    weight.
    """

    codebook: np.ndarray
    index: np.ndarray
    bits: int
    group_size: int
    zero: bool
    unique: bool  # the weight already had <= 2**bits distinct values: used as it is

    def groups(self) -> np.ndarray:
        """The codebook (group) of each element, shaped like ``index``."""
        g = np.arange(self.index.shape[0]) // self.group_size
        return np.broadcast_to(g.reshape(-1, *([1] * (self.index.ndim - 1))), self.index.shape)

    def dense(self) -> np.ndarray:
        return self.codebook[self.groups(), self.index]


def share_weight(w: np.ndarray, bits: int, init: str = "linear", group_size: int = 0,
                 unique: bool = True, seed: int = 0, name: str = "weight") -> SharedWeight:
    """Cluster a weight ``[out, ...]`` into ``2**bits`` shared values per group of outputs.

    Exact zeros (a pruned weight) keep a reserved entry 0.0 and stay zero; the non-zeros are
    clustered into the remaining entries. With ``unique``, a group that already has at most
    ``2**bits`` distinct values keeps them exactly.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise CompressConfigError(f"{name}: bits must be an integer in 1..8, got {bits!r}")
    w = np.asarray(w, np.float32)
    out = w.shape[0]
    gs = out if group_size in (0, None) else int(group_size)
    if gs < 1:
        raise CompressConfigError(f"{name}: group size must be >= 1, got {group_size!r}")
    k = 2 ** bits
    zero = bool(np.any(w == 0))
    books, index = [], np.zeros(w.shape, np.int64)
    all_unique = True
    for g0 in range(0, out, gs):
        part = w[g0:g0 + gs]
        nz = part[part != 0] if zero else part.ravel()
        avail = k - 1 if zero else k
        distinct = np.unique(nz)
        book = np.zeros(k, np.float32)
        idx = np.zeros(part.shape, np.int64)
        start = 1 if zero else 0
        if unique and len(distinct) <= avail:
            cents = distinct
        else:
            all_unique = False
            if avail < 1 or len(nz) < avail:
                raise CompressConfigError(
                    f"{name}: {len(nz)} {'non-zero ' if zero else ''}weights in a group of "
                    f"{len(part)} outputs, fewer than the {avail} clusters {bits} bits give; "
                    "use fewer bits or larger groups")
            cents, _ = kmeans_1d(nz, avail, init, seed=seed)
        book[start:start + len(cents)] = cents
        book[start + len(cents):] = cents[-1] if len(cents) else 0.0
        mask = part != 0 if zero else np.ones(part.shape, bool)
        if len(cents):
            c = book[start:start + len(cents)].astype(np.float64)
            idx[mask] = start + _nearest(c, part[mask].astype(np.float64))
        books.append(book)
        index[g0:g0 + gs] = idx
    return SharedWeight(np.stack(books), index, bits, gs, zero, all_unique)
