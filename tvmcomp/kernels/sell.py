"""Sliced-ELLPACK (SELL-C-σ) sparse × dense kernels for ``y = act(x @ Wᵀ + b)``.

The weight's rows are sorted by their number of non-zeros (longest first) and cut into
slices of :data:`SLICE` rows; inside a slice each row is zero-padded to the slice's longest
row (rounded up to :data:`WIDTH_PAD`) and the entries are stored column-major: entry ``p``
of the slice's lane ``l`` is at ``slice_ptr[s] + p * SLICE + l``. ``row_order[s * SLICE + l]``
is the weight row of that lane (``-1`` for the missing rows of the last slice).

Column indices are stored as one byte each: the distance from the lane's previous entry (the
first entry's from column 0), so a running column per lane is one vector add; a gap over
:data:`MAX_GAP` columns takes filler entries of value 0 (Deep Compression's relative
indices). Codes into a codebook of at most 16 entries are packed 2-8 steps to a byte
(:func:`pack_steps`).

Why this layout and not plain CSR: at batch 1 one vector FMA advances :data:`SLICE` rows at
once, so a row never needs a horizontal sum (the CSR row kernel spent most of its time on
those), and sorting keeps the padding small (LeNet-5 fc1 at 96 % sparsity: 1,920 non-zeros
stored as 2,160 entries; CSR with 8-entry row padding stored 2,280). The batched kernel reads
the same arrays row by row, vectorised over 16 batch rows, so both batch entry points of a
model share one copy of the weight.

All kernels are TVMScript PrimFuncs for ``R.call_tir`` with ``T.int64`` shapes; the number of
stored entries is symbolic (``T.handle`` + ``T.match_buffer``), so one kernel serves any
weight of the same shape.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from . import HAND_SCHEDULED
from .codebook import MAX_CODES, code_bits, codes_per_byte, encode, pack, unpack
from .epilogue import Epilogue, channel_value
from .epilogue import tables as epilogue_tables

MAX_GAP = 255    # the largest column step one uint8 index entry holds
SLICE = 8        # rows per slice = lanes of the batch-1 kernel's vector accumulators
WIDTH_PAD = 2    # slice widths are a multiple of this (two accumulators, no tail loop)
BATCH_TILE = 16  # batched kernels: batch rows per vector accumulator (2 AVX2 registers)
HAND_SCHEDULED_ATTRS = {"tirx.noalias": True, "tirx.is_scheduled": True,
                        HAND_SCHEDULED: "sliced-ELLPACK"}


@dataclass(frozen=True)
class SlicedMatrix:
    """A ``[rows, cols]`` matrix in SELL-:data:`SLICE` with rows sorted by length.

    ``data`` is float32; or int8 with a per-row float32 ``scale`` (``W[r] ≈ scale[r] * q[r]``);
    or codes into a float32 ``codebook`` whose entry 0 is 0.0 (``W = codebook[code]``), uint8,
    packed :func:`~tvmcomp.kernels.codebook.codes_per_byte` to a byte. ``indices``: uint8
    column steps (see the module); ``slice_ptr`` int32; ``row_order`` int16 (int32 past
    32,767 rows). ``nnz`` counts true non-zeros, ``stored`` the entries including padding
    and gap fillers.
    """

    data: np.ndarray
    indices: np.ndarray
    slice_ptr: np.ndarray
    row_order: np.ndarray
    shape: tuple[int, int]
    nnz: int
    scale: np.ndarray | None = None
    codebook: np.ndarray | None = None

    @property
    def stored(self) -> int:
        return int(self.indices.shape[0])

    @property
    def code_bits(self) -> int:
        """Bits per stored code (codebook values), else 0."""
        return code_bits(self.codebook.size) if self.codebook is not None else 0

    def values(self) -> np.ndarray:
        """Each stored entry's float value (int8 values unscaled)."""
        if self.codebook is None:
            return self.data.astype(np.float32)
        return self.codebook[unpack_steps(self.data, self.code_bits, self.stored)]

    def columns(self) -> np.ndarray:
        """Each stored entry's column (int64), from the per-lane running sums of the steps."""
        out = np.zeros(self.stored, np.int64)
        for s in range(self.slices):
            lo, hi = int(self.slice_ptr[s]), int(self.slice_ptr[s + 1])
            for lane in range(SLICE):
                sl = slice(lo + lane, hi, SLICE)
                out[sl] = np.cumsum(self.indices[sl].astype(np.int64))
        return out

    @property
    def slices(self) -> int:
        return int(self.slice_ptr.shape[0] - 1)

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nnz / float(self.shape[0] * self.shape[1])

    def nbytes(self) -> dict[str, int]:
        """Bytes of each stored array (what the artifact carries for this layer)."""
        out = {"values": int(self.data.nbytes), "col_indices": int(self.indices.nbytes),
               "slice_pointers": int(self.slice_ptr.nbytes),
               "row_order": int(self.row_order.nbytes)}
        if self.scale is not None:
            out["row_scales"] = int(self.scale.nbytes)
        if self.codebook is not None:
            out["codebook"] = int(self.codebook.nbytes)
        out["total"] = sum(out.values())
        return out

    def to_dense(self) -> np.ndarray:
        """The matrix this layout stores (int8 values times their row scale; codes looked up)."""
        out = np.zeros(self.shape, np.float32)
        vals, cols = self.values(), self.columns()
        for s in range(self.slices):
            lo, hi = int(self.slice_ptr[s]), int(self.slice_ptr[s + 1])
            for lane in range(SLICE):
                r = int(self.row_order[s * SLICE + lane])
                if r < 0:
                    continue
                sl = slice(lo + lane, hi, SLICE)
                scale = 1.0 if self.scale is None else float(self.scale[r])
                np.add.at(out[r], cols[sl], vals[sl] * scale)
        return out


def row_dtype(rows: int) -> str:
    """The type of ``row_order`` for a matrix of ``rows`` rows (it holds -1 too)."""
    return "int16" if rows < 1 << 15 else "int32"


def _row_entries(w: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """(column steps, values) of row ``r``'s stored entries: its non-zeros, with a
    zero-valued filler entry of step :data:`MAX_GAP` for each further :data:`MAX_GAP`
    columns of a longer gap."""
    cols = np.flatnonzero(w[r] != 0)
    gaps = np.diff(cols, prepend=0)
    fill = np.maximum(0, (gaps - 1) // MAX_GAP)       # fillers before each non-zero
    at = np.arange(cols.size) + np.cumsum(fill)        # where each non-zero lands
    steps = np.full(cols.size + int(fill.sum()), MAX_GAP, np.uint8)
    steps[at] = gaps - fill * MAX_GAP
    vals = np.zeros(steps.size, w.dtype)
    vals[at] = w[r, cols]
    return steps, vals


def sell_from_dense(w: np.ndarray) -> SlicedMatrix:
    """The sliced layout of a 2-D ``w`` (``[out_features, in_features]``); exact zeros dropped."""
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"a sparse weight must be 2-D, got shape {w.shape}")
    rows, cols = w.shape
    if rows == 0 or cols == 0:
        raise ValueError(f"a sparse weight needs rows and columns, got shape {w.shape}")
    entries = [_row_entries(w, r) for r in range(rows)]
    counts = np.array([len(st) for st, _ in entries], np.int64)
    order = np.argsort(-counts, kind="stable")
    n_slices = (rows + SLICE - 1) // SLICE
    row_order = np.full(n_slices * SLICE, -1, np.int64)
    row_order[:rows] = order
    widths = np.zeros(n_slices, np.int64)
    for s in range(n_slices):
        width = int(counts[order[s * SLICE:(s + 1) * SLICE]].max())
        widths[s] = width + (-width) % WIDTH_PAD
    slice_ptr = np.zeros(n_slices + 1, np.int64)
    slice_ptr[1:] = np.cumsum(widths * SLICE)
    if slice_ptr[-1] >= 2**31:
        raise ValueError("matrix too large for int32 sparse indices")
    data = np.zeros(int(slice_ptr[-1]), w.dtype)
    indices = np.zeros(int(slice_ptr[-1]), np.uint8)  # padding: step 0, value 0
    for s in range(n_slices):
        for lane in range(SLICE):
            r = row_order[s * SLICE + lane]
            if r < 0:
                continue
            steps, vals = entries[r]
            pos = slice_ptr[s] + np.arange(len(steps)) * SLICE + lane
            data[pos] = vals
            indices[pos] = steps
    return SlicedMatrix(data, indices, slice_ptr.astype(np.int32),
                        row_order.astype(row_dtype(rows)), (rows, cols),
                        int(np.count_nonzero(w)))


def sell_int8_from_dense(w: np.ndarray) -> SlicedMatrix:
    """The sliced layout with int8 values and a symmetric per-row scale (``w ≈ scale[r] * q``)."""
    w = np.asarray(w, np.float32)
    if w.ndim != 2:
        raise ValueError(f"a sparse weight must be 2-D, got shape {w.shape}")
    amax = np.abs(w).max(axis=1) if w.size else np.zeros(w.shape[0], np.float32)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.round(w / scale[:, None]), -127, 127).astype(np.int8)
    m = sell_from_dense(np.where(w != 0, q, 0).astype(np.int8))
    # entries whose value rounded to 0 are not stored; nnz counts the float non-zeros
    return SlicedMatrix(m.data, m.indices, m.slice_ptr, m.row_order, m.shape,
                        int((w != 0).sum()), scale)


def sell_codebook_from_dense(w: np.ndarray) -> SlicedMatrix:
    """The sliced layout with uint8 codes into a float32 codebook (entry 0 is 0.0, what the
    padding entries carry); ``w`` must have at most 255 distinct non-zero values. Exact."""
    w = np.asarray(w, np.float32)
    codebook, codes = encode(w, zero_first=True)
    m = sell_from_dense(codes)  # code 0 is exactly the zeros of w
    return SlicedMatrix(pack_steps(m.data, code_bits(codebook.size)), m.indices, m.slice_ptr,
                        m.row_order, m.shape, m.nnz, codebook=codebook)


def pack_steps(codes: np.ndarray, bits: int) -> np.ndarray:
    """SELL codes (one per stored entry, ``SLICE`` lanes a step) packed
    :func:`~tvmcomp.kernels.codebook.codes_per_byte` steps to a byte, lane by lane: byte
    ``(q // per) * SLICE + lane`` holds step ``q``'s code of that lane at bit
    ``(q % per) * bits``, so one step's codes are ``SLICE`` adjacent bytes with one shift.
    That is :func:`~tvmcomp.kernels.codebook.pack` of the codes ordered (step group, lane,
    step in group)."""
    per = codes_per_byte(bits)
    steps = np.asarray(codes, np.uint8).reshape(-1, SLICE)
    steps = np.concatenate([steps, np.zeros(((-len(steps)) % per, SLICE), np.uint8)])
    return pack(steps.reshape(-1, per, SLICE).transpose(0, 2, 1), bits)


def unpack_steps(packed: np.ndarray, bits: int, stored: int) -> np.ndarray:
    """The ``stored`` codes :func:`pack_steps` packed."""
    per = codes_per_byte(bits)
    grouped = unpack(packed, bits, packed.size * per).reshape(-1, SLICE, per)
    return grouped.transpose(0, 2, 1).reshape(-1)[:stored]


def _check_shape(batch: int, in_features: int, out_features: int) -> None:
    for name, v in (("batch", batch), ("in_features", in_features),
                    ("out_features", out_features)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")


def sell_dense_kernel(batch: int, in_features: int, out_features: int, relu: bool,
                      values: str = "float32", codebook_len: int = 0):
    """The PrimFunc ``(x, data, indices, slice_ptr, row_order, bias, scale, y)`` for a layer.

    ``batch == 1``: the slice kernel — per slice, two ``float32x8`` accumulators (one lane per
    row) each take one FMA of 8 stored values with the 8 inputs they index; no horizontal
    sums. Larger batches: x is transposed tile by tile into ``xt[in, 16]`` and each stored
    entry of a row adds ``data[j] * xt[indices[j], :]`` to 16-wide vector accumulators.
    ``values="int8"``: int8 ``data`` times a per-row float32 ``scale``.
    ``values="codebook"``: uint8 ``data`` are codes; the ``scale`` argument is the float32
    codebook of ``codebook_len`` entries, looked up in the kernel (the slice kernel gathers
    8 values per vector FMA as it gathers the inputs).
    """
    _check_shape(batch, in_features, out_features)
    if values not in ("float32", "int8", "codebook"):
        raise ValueError(f"values must be float32, int8 or codebook, got {values!r}")
    if values == "codebook" and not (isinstance(codebook_len, int)
                                     and 1 <= codebook_len <= MAX_CODES):
        raise ValueError(f"codebook_len must be in 1..{MAX_CODES}, got {codebook_len!r}")
    return _kernel(batch, in_features, out_features, "float32", values, relu, codebook_len)


def sell_int_kernel(batch: int, in_features: int, out_features: int, x_dtype: str = "int8",
                    epilogue: Epilogue | None = None):
    """Integer kernel ``(x, data, indices, slice_ptr, row_order, chan_i, chan_f, y)``: ``y =
    x @ Wᵀ`` in int32.

    For the int8 graphs :class:`~tvmcomp.passes.QuantizeInt8` emits (``x`` int8/uint8,
    ``W`` int8, exact int32 accumulation). With an ``epilogue``
    (:mod:`tvmcomp.kernels.epilogue`) each output row's sums go through the layer's bias and
    requantization before they are stored (``chan_i, chan_f``: its per-row constants
    ``[rows, out_features]``; ``y`` of its ``out_dtype``); without one (the tables unread, one
    row of zeros), ``y`` is the int32 sums. The same loops as :func:`sell_dense_kernel` (one
    template): the slice kernel (``int32x8`` accumulators) at batch 1, the batched kernel
    (int32 x-tile, 16-wide) otherwise.
    """
    if x_dtype not in ("int8", "uint8"):
        raise ValueError(f"x_dtype must be int8 or uint8, got {x_dtype!r}")
    _check_shape(batch, in_features, out_features)
    return _kernel(batch, in_features, out_features, x_dtype, "int8", False, epilogue=epilogue)


@functools.lru_cache(maxsize=None)  # parsing TVMScript takes ~0.3 s a kernel
def _kernel(B: int, K: int, N: int, x_dtype: str, values: str, relu: bool,  # noqa: N803
            codebook_len: int = 0, epilogue: Epilogue | None = None):
    """The one template of every SELL kernel: float (``x_dtype`` float32; ``values`` float32,
    int8 with a per-row scale, or codes into a codebook; bias, optional relu) or integer
    (``x_dtype`` int8/uint8, int32 result). The loop nests are shared macros; only the
    signatures, the value load and the per-row epilogue differ."""
    import tvm
    from tvm.script import tirx as T

    C, U, TL = SLICE, WIDTH_PAD, BATCH_TILE  # noqa: N806
    NS = (N + C - 1) // C  # noqa: N806
    integer = x_dtype != "float32"
    acc_t = "int32" if integer else "float32"
    zero = tvm.tirx.const(0, acc_t)
    scaled = values == "int8" and not integer
    coded = values == "codebook"
    bits = code_bits(codebook_len) if coded else 8
    per = codes_per_byte(bits)
    packed = per > 1           # codes of at most 4 bits, several to a byte
    mask = (1 << bits) - 1
    row_t = row_dtype(N)
    data_t = "uint8" if coded else values
    S = codebook_len if coded else N  # noqa: N806  (length of the scale / codebook argument)
    nt = (B + TL - 1) // TL
    ragged = B % TL != 0
    vec1, vecb = f"{acc_t}x{C}", f"{acc_t}x{TL}"

    @T.macro
    def slice_loops(x, data, idx, slice_ptr, row_order, acc, xg, vg, cv, y, bias, scale,
                    store):
        for s in range(T.int64(NS)):
            for u in T.unroll(U):
                acc[u] = T.broadcast(zero, C)
            for lane in T.vectorized(C):
                cv[lane] = 0  # each lane's running column
            for p in range(T.Cast("int64", slice_ptr[s]) // (C * U),
                           T.Cast("int64", slice_ptr[s + 1]) // (C * U)):
                for u in T.unroll(U):
                    for lane in T.vectorized(C):  # gather the inputs these entries index
                        cv[lane] = cv[lane] + T.Cast("int32", idx[(p * U + u) * C + lane])
                        if integer:
                            xg[lane] = T.Cast(acc_t, x[T.int64(0), T.Cast("int64", cv[lane])])
                        else:
                            xg[lane] = x[T.int64(0), T.Cast("int64", cv[lane])]
                        if packed:  # look the values up as the inputs are gathered
                            vg[lane] = scale[T.Cast("int64", T.bitwise_and(T.shift_right(
                                data[(p * U + u) // per * C + lane],
                                T.Cast("uint8", (p * U + u) % per * bits)), T.uint8(mask)))]
                        elif coded:
                            vg[lane] = scale[T.Cast("int64", data[(p * U + u) * C + lane])]
                    if coded:
                        acc[u] = acc[u] + vg[T.ramp(T.int64(0), T.int64(1), C)] \
                            * xg[T.ramp(T.int64(0), T.int64(1), C)]
                    else:
                        acc[u] = acc[u] + T.Cast(
                            vec1, data[T.ramp((p * U + u) * C, T.int64(1), C)]) \
                            * xg[T.ramp(T.int64(0), T.int64(1), C)]
            xg[T.ramp(T.int64(0), T.int64(1), C)] = acc[0] + acc[1]
            for lane in range(C):
                if row_order[s * C + lane] >= 0:
                    r = T.Cast("int64", row_order[s * C + lane])
                    store(y, bias, scale, xg, lane, r)

    @T.macro
    def batched_loops(x, data, idx, slice_ptr, row_order, xt, acc, out, col, y, bias, scale,
                      finish):
        for bt in range(T.int64(nt)):
            for k in range(T.int64(K)):
                for t in T.vectorized(T.int64(TL)):
                    if integer:
                        xt[k, t] = T.if_then_else(
                            bt * TL + t < B, T.Cast(acc_t, x[T.min(bt * TL + t, T.int64(B - 1)), k]),
                            zero)
                    elif ragged:
                        xt[k, t] = T.if_then_else(
                            bt * TL + t < B, x[T.min(bt * TL + t, T.int64(B - 1)), k], zero)
                    else:
                        xt[k, t] = x[bt * TL + t, k]
            for s in range(T.int64(NS)):
                for lane in range(T.int64(C)):
                    if row_order[s * C + lane] >= 0:
                        r = T.Cast("int64", row_order[s * C + lane])
                        for u in T.unroll(U):
                            acc[u] = T.broadcast(zero, TL)
                        col[0] = 0
                        for p in range(T.Cast("int64", slice_ptr[s]) // (C * U),
                                       T.Cast("int64", slice_ptr[s + 1]) // (C * U)):
                            for u in T.unroll(U):
                                col[0] = col[0] + T.Cast("int32", idx[(p * U + u) * C + lane])
                                if packed:
                                    acc[u] = acc[u] + T.broadcast(scale[T.Cast(
                                        "int64", T.bitwise_and(T.shift_right(
                                            data[(p * U + u) // per * C + lane],
                                            T.Cast("uint8", (p * U + u) % per * bits)),
                                            T.uint8(mask)))], TL) * xt[
                                        T.Cast("int64", col[0]),
                                        T.ramp(T.int64(0), T.int64(1), TL)]
                                elif coded:
                                    acc[u] = acc[u] + T.broadcast(scale[T.Cast(
                                        "int64", data[(p * U + u) * C + lane])], TL) * xt[
                                        T.Cast("int64", col[0]),
                                        T.ramp(T.int64(0), T.int64(1), TL)]
                                else:
                                    acc[u] = acc[u] + T.broadcast(
                                        T.Cast(acc_t, data[(p * U + u) * C + lane]), TL) * xt[
                                        T.Cast("int64", col[0]),
                                        T.ramp(T.int64(0), T.int64(1), TL)]
                        finish(bias, scale, acc, out, r)
                        for t in range(T.int64(TL)):
                            if bt * TL + t < B:
                                y[bt * TL + t, r] = out[t]

    out_t = epilogue.out_dtype if epilogue is not None else "int32"
    int_t = epilogue.int_dtype if epilogue is not None else "int64"
    (IR, WI), (FR, WF) = epilogue_tables(epilogue, N)  # noqa: N806

    if integer:  # (x, data, indices, slice_ptr, row_order, chan_i, chan_f) -> y
        @T.macro
        def store_int(y, chan_i, chan_f, xg, lane, r):
            y[T.int64(0), r] = channel_value(epilogue, xg[lane], chan_i, chan_f, r, 1)

        @T.macro
        def finish_int(chan_i, chan_f, acc, out, r):
            out[T.ramp(T.int64(0), T.int64(1), TL)] = channel_value(
                epilogue, acc[0] + acc[1], chan_i, chan_f, r, TL)

        if B == 1:
            @T.prim_func
            def sell_int_b1(x: T.Buffer((T.int64(1), T.int64(K)), x_dtype), data_h: T.handle,
                            idx_h: T.handle, slice_ptr: T.Buffer((T.int64(NS + 1),), "int32"),
                            row_order: T.Buffer((T.int64(NS * C),), row_t),
                            chan_i: T.Buffer((T.int64(IR), T.int64(WI)), int_t),
                            chan_f: T.Buffer((T.int64(FR), T.int64(WF)), "float32"),
                            y: T.Buffer((T.int64(1), T.int64(N)), out_t)):
                T.func_attr(HAND_SCHEDULED_ATTRS)
                nnz = T.int64()
                data = T.match_buffer(data_h, (nnz,), "int8")
                idx = T.match_buffer(idx_h, (nnz,), "uint8")
                acc = T.decl_buffer((U,), vec1, scope="local")
                xg = T.decl_buffer((C,), "int32", scope="local")
                cv = T.decl_buffer((C,), "int32", scope="local")
                slice_loops(x, data, idx, slice_ptr, row_order, acc, xg, xg, cv, y, chan_i,
                            chan_f, store_int)

            return sell_int_b1

        @T.prim_func
        def sell_int_bn(x: T.Buffer((T.int64(B), T.int64(K)), x_dtype), data_h: T.handle,
                        idx_h: T.handle, slice_ptr: T.Buffer((T.int64(NS + 1),), "int32"),
                        row_order: T.Buffer((T.int64(NS * C),), row_t),
                        chan_i: T.Buffer((T.int64(IR), T.int64(WI)), int_t),
                        chan_f: T.Buffer((T.int64(FR), T.int64(WF)), "float32"),
                        y: T.Buffer((T.int64(B), T.int64(N)), out_t)):
            T.func_attr(HAND_SCHEDULED_ATTRS)
            nnz = T.int64()
            data = T.match_buffer(data_h, (nnz,), "int8")
            idx = T.match_buffer(idx_h, (nnz,), "uint8")
            xt = T.decl_buffer((T.int64(K), T.int64(TL)), "int32")
            acc = T.decl_buffer((U,), vecb, scope="local")
            out = T.decl_buffer((T.int64(TL),), out_t, scope="local")
            col = T.decl_buffer((1,), "int32", scope="local")
            batched_loops(x, data, idx, slice_ptr, row_order, xt, acc, out, col, y, chan_i,
                          chan_f, finish_int)

        return sell_int_bn

    @T.macro
    def store_float(y, bias, scale, xg, lane, r):
        if scaled:
            xg[lane] = xg[lane] * scale[r]
        if relu:
            y[T.int64(0), r] = T.max(xg[lane] + bias[r], T.float32(0))
        else:
            y[T.int64(0), r] = xg[lane] + bias[r]

    @T.macro
    def finish_float(bias, scale, acc, out, r):
        acc[0] = acc[0] + acc[1]
        if scaled:
            acc[0] = acc[0] * T.broadcast(scale[r], TL)
        if relu:
            out[T.ramp(T.int64(0), T.int64(1), TL)] = T.max(
                acc[0] + T.broadcast(bias[r], TL), T.broadcast(T.float32(0), TL))
        else:
            out[T.ramp(T.int64(0), T.int64(1), TL)] = acc[0] + T.broadcast(bias[r], TL)

    if B == 1:
        @T.prim_func
        def sell_dense_b1(x: T.Buffer((T.int64(1), T.int64(K)), "float32"), data_h: T.handle,
                          idx_h: T.handle, slice_ptr: T.Buffer((T.int64(NS + 1),), "int32"),
                          row_order: T.Buffer((T.int64(NS * C),), row_t),
                          bias: T.Buffer((T.int64(N),), "float32"),
                          scale: T.Buffer((T.int64(S),), "float32"),
                          y: T.Buffer((T.int64(1), T.int64(N)), "float32")):
            T.func_attr(HAND_SCHEDULED_ATTRS)
            nnz, nbytes = T.int64(), T.int64()
            data = T.match_buffer(data_h, (nbytes,), data_t)
            idx = T.match_buffer(idx_h, (nnz,), "uint8")
            acc = T.decl_buffer((U,), vec1, scope="local")
            xg = T.decl_buffer((C,), "float32", scope="local")
            vg = T.decl_buffer((C,), "float32", scope="local")
            cv = T.decl_buffer((C,), "int32", scope="local")
            slice_loops(x, data, idx, slice_ptr, row_order, acc, xg, vg, cv, y, bias, scale,
                        store_float)

        return sell_dense_b1

    @T.prim_func
    def sell_dense_bn(x: T.Buffer((T.int64(B), T.int64(K)), "float32"), data_h: T.handle,
                      idx_h: T.handle, slice_ptr: T.Buffer((T.int64(NS + 1),), "int32"),
                      row_order: T.Buffer((T.int64(NS * C),), row_t),
                      bias: T.Buffer((T.int64(N),), "float32"),
                      scale: T.Buffer((T.int64(S),), "float32"),
                      y: T.Buffer((T.int64(B), T.int64(N)), "float32")):
        T.func_attr(HAND_SCHEDULED_ATTRS)
        nnz, nbytes = T.int64(), T.int64()
        data = T.match_buffer(data_h, (nbytes,), data_t)
        idx = T.match_buffer(idx_h, (nnz,), "uint8")
        xt = T.decl_buffer((T.int64(K), T.int64(TL)), "float32")
        acc = T.decl_buffer((U,), vecb, scope="local")
        out = T.decl_buffer((T.int64(TL),), "float32", scope="local")
        col = T.decl_buffer((1,), "int32", scope="local")
        batched_loops(x, data, idx, slice_ptr, row_order, xt, acc, out, col, y, bias, scale,
                      finish_float)

    return sell_dense_bn
