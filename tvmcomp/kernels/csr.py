"""CSR sparse × dense kernels for ``y = act(x @ Wᵀ + b)``: a batch-1 row kernel and a batched one.

Both are TVMScript PrimFuncs for ``R.call_tir`` with ``T.int64`` shapes; the number of stored
entries (``nnz``) is symbolic (``T.handle`` + ``T.match_buffer``), so one kernel serves any
weight of the same shape. Rows are zero-padded to a multiple of :data:`ROW_PAD` entries, which
lets both kernels keep several independent accumulators without tail loops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ROW_PAD = 8      # entries per row are padded to a multiple of this (zeros, column 0)
BATCH_TILE = 16  # batched kernel: batch rows per vector accumulator (2 AVX2 / 1 AVX-512 reg)


@dataclass(frozen=True)
class CSRMatrix:
    """A ``[rows, cols]`` matrix in padded CSR: ``data[indptr[i]:indptr[i+1]]`` is row ``i``.

    ``data`` is float32 (or int8 with per-row float32 ``scale``), ``indices`` and ``indptr``
    int32. ``nnz`` counts true non-zeros; ``stored`` counts entries including row padding.
    """

    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    shape: tuple[int, int]
    nnz: int
    scale: np.ndarray | None = None

    @property
    def stored(self) -> int:
        return int(self.data.shape[0])

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nnz / float(self.shape[0] * self.shape[1])

    def nbytes(self) -> dict[str, int]:
        """Bytes of each stored array (what the artifact carries for this layer)."""
        out = {"values": int(self.data.nbytes), "col_indices": int(self.indices.nbytes),
               "row_pointers": int(self.indptr.nbytes)}
        if self.scale is not None:
            out["row_scales"] = int(self.scale.nbytes)
        out["total"] = sum(out.values())
        return out

    def to_dense(self) -> np.ndarray:
        out = np.zeros(self.shape, np.float32)
        vals = self.data.astype(np.float32)
        for i in range(self.shape[0]):
            lo, hi = self.indptr[i], self.indptr[i + 1]
            s = 1.0 if self.scale is None else self.scale[i]
            np.add.at(out[i], self.indices[lo:hi], vals[lo:hi] * s)
        return out


def csr_from_dense(w: np.ndarray, pad: int = ROW_PAD) -> CSRMatrix:
    """Padded CSR of a 2-D ``w`` (``[out_features, in_features]``); exact zeros are dropped."""
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"CSR needs a 2-D weight, got shape {w.shape}")
    if pad < 1:
        raise ValueError(f"row padding must be >= 1, got {pad}")
    rows, cols = w.shape
    mask = w != 0
    counts = mask.sum(1)
    padded = counts + (-counts) % pad
    indptr = np.zeros(rows + 1, np.int64)
    indptr[1:] = np.cumsum(padded)
    data = np.zeros(int(indptr[-1]), w.dtype)
    indices = np.zeros(int(indptr[-1]), np.int32)
    for i in range(rows):
        c = np.flatnonzero(mask[i])
        lo = indptr[i]
        data[lo: lo + len(c)] = w[i, c]
        indices[lo: lo + len(c)] = c
    if indptr[-1] >= 2**31:
        raise ValueError("matrix too large for int32 CSR indices")
    return CSRMatrix(data, indices, indptr.astype(np.int32), (rows, cols), int(counts.sum()))


def csr_int8_from_dense(w: np.ndarray, pad: int = ROW_PAD) -> CSRMatrix:
    """Padded CSR with int8 values and a symmetric per-row scale (``w ≈ scale[i] * q``)."""
    w = np.asarray(w, np.float32)
    amax = np.abs(w).max(axis=1) if w.size else np.zeros(w.shape[0], np.float32)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.round(w / scale[:, None]), -127, 127).astype(np.int8)
    q[w == 0] = 0
    c = csr_from_dense(q, pad)
    # entries whose value rounded to 0 are still "stored"; nnz counts float non-zeros
    return CSRMatrix(c.data, c.indices, c.indptr, c.shape, int((w != 0).sum()), scale)


def csr_dense_kernel(batch: int, in_features: int, out_features: int, relu: bool,
                     values: str = "float32"):
    """The PrimFunc ``(x, data, indices, indptr, bias[, scale], y)`` for this layer shape.

    ``batch == 1`` gives the row kernel (8 entries of a row per vector FMA, inputs gathered),
    larger batches
    the batched kernel: x is transposed tile by tile into ``xt[in, 16]`` and each stored entry
    adds ``data[j] * xt[indices[j], :]`` to two 16-wide vector accumulators (vectorised over
    the batch). ``values="int8"`` takes int8 ``data`` and a per-row float32 ``scale``.
    """
    for name, v in (("batch", batch), ("in_features", in_features),
                    ("out_features", out_features)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if values not in ("float32", "int8"):
        raise ValueError(f"values must be float32 or int8, got {values!r}")
    if batch == 1:
        return _row_kernel(in_features, out_features, relu, values)
    return _batched_kernel(batch, in_features, out_features, relu, values)


def _row_kernel(K: int, N: int, relu: bool, values: str):  # noqa: N803
    from tvm.script import tirx as T

    V = ROW_PAD  # noqa: N806 - one 8-wide vector FMA per 8 stored entries of a row
    i8 = values == "int8"

    @T.prim_func
    def csr_dense_b1(x: T.Buffer((T.int64(1), T.int64(K)), "float32"), data_h: T.handle,
                     idx_h: T.handle, indptr: T.Buffer((T.int64(N + 1),), "int32"),
                     bias: T.Buffer((T.int64(N),), "float32"),
                     scale: T.Buffer((T.int64(N),), "float32"),
                     y: T.Buffer((T.int64(1), T.int64(N)), "float32")):
        T.func_attr({"tir.noalias": True})
        nnz = T.int64()
        data = T.match_buffer(data_h, (nnz,), values)
        idx = T.match_buffer(idx_h, (nnz,), "int32")
        acc = T.decl_buffer((1,), f"float32x{V}", scope="local")
        xg = T.decl_buffer((V,), "float32", scope="local")
        s = T.decl_buffer((1,), "float32", scope="local")
        for i in range(T.int64(N)):
            acc[0] = T.broadcast(T.float32(0), V)
            for j in range(T.Cast("int64", indptr[i]) // V, T.Cast("int64", indptr[i + 1]) // V):
                for u in T.vectorized(V):  # gather the inputs this block of entries needs
                    xg[u] = x[T.int64(0), T.Cast("int64", idx[j * V + u])]
                acc[0] = acc[0] + T.Cast(f"float32x{V}", data[T.ramp(j * V, T.int64(1), V)]) \
                    * xg[T.ramp(T.int64(0), T.int64(1), V)]
            xg[T.ramp(T.int64(0), T.int64(1), V)] = acc[0]
            s[0] = T.float32(0)
            for u in range(V):
                s[0] = s[0] + xg[u]
            if i8:
                s[0] = s[0] * scale[i]
            if relu:
                y[T.int64(0), i] = T.max(s[0] + bias[i], T.float32(0))
            else:
                y[T.int64(0), i] = s[0] + bias[i]

    return csr_dense_b1


def _batched_kernel(B: int, K: int, N: int, relu: bool, values: str):  # noqa: N803
    from tvm.script import tirx as T

    TL = BATCH_TILE
    U = 2  # accumulators per tile (ROW_PAD must be a multiple)
    nt = (B + TL - 1) // TL
    ragged = B % TL != 0
    vec = f"float32x{TL}"
    i8 = values == "int8"

    @T.prim_func
    def csr_dense_bn(x: T.Buffer((T.int64(B), T.int64(K)), "float32"), data_h: T.handle,
                     idx_h: T.handle, indptr: T.Buffer((T.int64(N + 1),), "int32"),
                     bias: T.Buffer((T.int64(N),), "float32"),
                     scale: T.Buffer((T.int64(N),), "float32"),
                     y: T.Buffer((T.int64(B), T.int64(N)), "float32")):
        T.func_attr({"tir.noalias": True})
        nnz = T.int64()
        data = T.match_buffer(data_h, (nnz,), values)
        idx = T.match_buffer(idx_h, (nnz,), "int32")
        xt = T.decl_buffer((T.int64(K), T.int64(TL)), "float32")
        acc = T.decl_buffer((U,), vec, scope="local")
        out = T.decl_buffer((T.int64(TL),), "float32", scope="local")
        for bt in range(T.int64(nt)):
            for k in range(T.int64(K)):
                for t in T.vectorized(T.int64(TL)):
                    if ragged:
                        xt[k, t] = T.if_then_else(
                            bt * TL + t < B, x[T.min(bt * TL + t, T.int64(B - 1)), k],
                            T.float32(0))
                    else:
                        xt[k, t] = x[bt * TL + t, k]
            for i in range(T.int64(N)):
                for u in T.unroll(U):
                    acc[u] = T.broadcast(T.float32(0), TL)
                for j in range(T.Cast("int64", indptr[i]) // U,
                               T.Cast("int64", indptr[i + 1]) // U):
                    for u in T.unroll(U):
                        acc[u] = acc[u] + T.broadcast(T.Cast("float32", data[j * U + u]), TL) * xt[
                            T.Cast("int64", idx[j * U + u]), T.ramp(T.int64(0), T.int64(1), TL)]
                acc[0] = acc[0] + acc[1]
                if i8:
                    acc[0] = acc[0] * T.broadcast(scale[i], TL)
                if relu:
                    out[T.ramp(T.int64(0), T.int64(1), TL)] = T.max(
                        acc[0] + T.broadcast(bias[i], TL), T.broadcast(T.float32(0), TL))
                else:
                    out[T.ramp(T.int64(0), T.int64(1), TL)] = acc[0] + T.broadcast(bias[i], TL)
                for t in range(T.int64(TL)):
                    if bt * TL + t < B:
                        y[bt * TL + t, i] = out[t]

    return csr_dense_bn


def csr_int_kernel(batch: int, in_features: int, out_features: int, x_dtype: str = "int8"):
    """Integer CSR kernel ``(x, data, indices, indptr, y)``: ``y = x @ Wᵀ`` exactly, in int32.

    For the int8 graphs :class:`~tvmcomp.passes.QuantizeInt8` emits (``x`` int8/uint8,
    ``W`` int8, int32 accumulator; bias and requantization stay in the following Relax ops).
    Same loop structure as :func:`csr_dense_kernel`: a row kernel at batch 1, the batched
    kernel (int32 x-tile, 16-wide int32 vector accumulators) otherwise.
    """
    if x_dtype not in ("int8", "uint8"):
        raise ValueError(f"x_dtype must be int8 or uint8, got {x_dtype!r}")
    for name, v in (("batch", batch), ("in_features", in_features),
                    ("out_features", out_features)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    from tvm.script import tirx as T

    B, K, N, U = batch, in_features, out_features, ROW_PAD  # noqa: N806
    if B == 1:
        @T.prim_func
        def csr_int_b1(x: T.Buffer((T.int64(1), T.int64(K)), x_dtype), data_h: T.handle,
                       idx_h: T.handle, indptr: T.Buffer((T.int64(N + 1),), "int32"),
                       y: T.Buffer((T.int64(1), T.int64(N)), "int32")):
            T.func_attr({"tir.noalias": True})
            nnz = T.int64()
            data = T.match_buffer(data_h, (nnz,), "int8")
            idx = T.match_buffer(idx_h, (nnz,), "int32")
            acc = T.decl_buffer((U,), "int32", scope="local")
            for i in range(T.int64(N)):
                for u in T.unroll(U):
                    acc[u] = 0
                for j in range(T.Cast("int64", indptr[i]) // U,
                               T.Cast("int64", indptr[i + 1]) // U):
                    for u in T.unroll(U):
                        acc[u] = acc[u] + T.Cast("int32", data[j * U + u]) * T.Cast(
                            "int32", x[T.int64(0), T.Cast("int64", idx[j * U + u])])
                for u in T.unroll(1, U):
                    acc[0] = acc[0] + acc[u]
                y[T.int64(0), i] = acc[0]

        return csr_int_b1

    TL = BATCH_TILE  # noqa: N806
    nt = (B + TL - 1) // TL
    vec = f"int32x{TL}"

    @T.prim_func
    def csr_int_bn(x: T.Buffer((T.int64(B), T.int64(K)), x_dtype), data_h: T.handle,
                   idx_h: T.handle, indptr: T.Buffer((T.int64(N + 1),), "int32"),
                   y: T.Buffer((T.int64(B), T.int64(N)), "int32")):
        T.func_attr({"tir.noalias": True})
        nnz = T.int64()
        data = T.match_buffer(data_h, (nnz,), "int8")
        idx = T.match_buffer(idx_h, (nnz,), "int32")
        xt = T.decl_buffer((T.int64(K), T.int64(TL)), "int32")
        acc = T.decl_buffer((2,), vec, scope="local")
        out = T.decl_buffer((T.int64(TL),), "int32", scope="local")
        for bt in range(T.int64(nt)):
            for k in range(T.int64(K)):
                for t in T.vectorized(T.int64(TL)):
                    xt[k, t] = T.if_then_else(
                        bt * TL + t < B, T.Cast("int32", x[T.min(bt * TL + t, T.int64(B - 1)), k]),
                        0)
            for i in range(T.int64(N)):
                for u in T.unroll(2):
                    acc[u] = T.broadcast(0, TL)
                for j in range(T.Cast("int64", indptr[i]) // 2,
                               T.Cast("int64", indptr[i + 1]) // 2):
                    for u in T.unroll(2):
                        acc[u] = acc[u] + T.broadcast(T.Cast("int32", data[j * 2 + u]), TL) * xt[
                            T.Cast("int64", idx[j * 2 + u]), T.ramp(T.int64(0), T.int64(1), TL)]
                out[T.ramp(T.int64(0), T.int64(1), TL)] = acc[0] + acc[1]
                for t in range(T.int64(TL)):
                    if bt * TL + t < B:
                        y[bt * TL + t, i] = out[t]

    return csr_int_bn
