"""Direct sparse convolution: ``y = act(conv2d(x, W) + b)`` over the non-zeros of a pruned ``W``.

For stride 1, no dilation, no groups and no padding (a padded input is padded before the
kernel), output ``(oy, ox)`` of channel ``o`` is a sum over ``W[o]``'s non-zeros ``(c, kh,
kw)``::

    y[n, o, oy, ox] = sum  W[o, c, kh, kw] * x[n, c, oy + kh, ox + kw]

Read on the image's flat ``C*H*W`` plane, with ``p = oy * W + ox``, every non-zero adds a
scalar times the contiguous run ``x_flat[n, off + p]`` (``off = c*H*W + kh*W + kw``), so one
non-zero is one broadcast and a few vector FMAs over ``p``: the positions ``p < P = (OH - 1)
* W + OW`` hold every output, plus ``W - OW`` positions a row that are computed and never
stored (29 % of the work for LeNet-5's second convolution, 5x5 on 14x14). Each run of
:data:`LANES`-wide vectors is kept in registers (at most :data:`MAX_TILE` a tile) while the
channel's non-zeros stream past; the last vector starts at ``P - LANES`` (overlapping the one
before it), so no read passes the end of the image. Bias and ReLU are applied in registers,
and the valid lanes stored.

This is the direct sparse convolution of Park et al. ("Faster CNNs with direct sparse
convolutions", ICLR 2017), there over CSR rows, here for AVX2 registers. Stored per layer:
the non-zero values (float32), their plane offsets (int32) and a row pointer per output
channel (int32): 8 bytes a non-zero.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from . import HAND_SCHEDULED
from .epilogue import Epilogue, channel_value
from .epilogue import tables as epilogue_tables

PREFIX = "sparse_conv_"  # every sparse conv kernel's name starts so (:func:`kernel_name`)
LANES = 8      # float32 lanes of an AVX2 register
MAX_TILE = 9   # vector accumulators a tile keeps in registers (16 ymm: 9 + broadcast + loads)
HAND_SCHEDULED_ATTRS = {"tirx.noalias": True, "tirx.is_scheduled": True,
                        HAND_SCHEDULED: "direct sparse convolution"}


@dataclass(frozen=True)
class SparseConvWeight:
    """A conv weight ``[OC, C, KH, KW]`` as the kernel reads it over ``C x H x W`` inputs:
    ``values[j]`` and ``offsets[j]`` (``c*H*W + kh*W + kw``) of output channel ``o``'s
    non-zeros for ``row_ptr[o] <= j < row_ptr[o + 1]``."""

    values: np.ndarray    # float32 (int8) [nnz] (at least one entry: a buffer is never empty)
    offsets: np.ndarray   # int32 [nnz]
    row_ptr: np.ndarray   # int32 [OC + 1]
    shape: tuple[int, int, int, int]
    in_hw: tuple[int, int]

    @property
    def nnz(self) -> int:
        return int(self.row_ptr[-1])

    def nbytes(self) -> dict[str, int]:
        out = {"values": int(self.values.nbytes), "offsets": int(self.offsets.nbytes),
               "row_ptr": int(self.row_ptr.nbytes)}
        return {**out, "total": sum(out.values())}

    def to_dense(self) -> np.ndarray:
        oc, c, kh, kw = self.shape
        h, w = self.in_hw
        out = np.zeros(self.shape, self.values.dtype)
        for o in range(oc):
            for j in range(self.row_ptr[o], self.row_ptr[o + 1]):
                off = int(self.offsets[j])
                ci, r = divmod(off, h * w)
                out[o, ci, r // w, r % w] = self.values[j]
        return out


def sparse_conv_from_dense(w: np.ndarray, in_hw: tuple[int, int]) -> SparseConvWeight:
    """``w`` (float32 OIHW, or an int8 layer's int8) in the kernel's form for inputs of
    spatial size ``in_hw``."""
    w = np.ascontiguousarray(w, np.int8 if w.dtype == np.int8 else np.float32)
    oc, c, kh, kw = w.shape
    h, wd = in_hw
    o, ci, y, x = np.nonzero(w)  # row-major: grouped by output channel, in plane order
    offsets = (ci * h * wd + y * wd + x).astype(np.int32)
    row_ptr = np.zeros(oc + 1, np.int32)
    np.cumsum(np.bincount(o, minlength=oc), out=row_ptr[1:])
    values = w[o, ci, y, x]
    if values.size == 0:
        values, offsets = np.zeros(1, w.dtype), np.zeros(1, np.int32)
    return SparseConvWeight(values, offsets, row_ptr, (oc, c, kh, kw), (h, wd))


def kernel_name(batch: int, channels: int, in_hw: tuple[int, int], out_channels: int,
                kernel_hw: tuple[int, int], relu: bool, x_dtype: str = "float32",
                pool: int = 1) -> str:
    """The name of a :func:`sparse_conv_kernel` (an integer one's epilogue adds a suffix):
    ``sparse_conv_b{N}_{C}x{H}x{W}_{OC}k{KH}x{KW}[_relu][_pool2][_int8|_uint8]``."""
    (h, w), (kh, kw) = in_hw, kernel_hw
    return (f"{PREFIX}b{batch}_{channels}x{h}x{w}_{out_channels}k{kh}x{kw}"
            + ("_relu" if relu else "") + ("_pool2" if pool == 2 else "")
            + (f"_{x_dtype}" if x_dtype != "float32" else ""))


def call_weight(kernel: str, x_shape, args: list) -> SparseConvWeight | None:
    """The weight of a call of a :func:`sparse_conv_kernel` named ``kernel`` (its name from
    :func:`kernel_name`), ``x_shape`` its (padded) input's, ``args`` its arguments after
    ``x`` (arrays where constant, else None); None if it is not such a call or its arrays
    are not constants."""
    import re

    m = re.match(PREFIX + r"b\d+_\d+x\d+x\d+_(\d+)k(\d+)x(\d+)", kernel)
    if m is None or len(args) < 3 or any(a is None for a in args[:3]):
        return None
    (_, c, h, w), (oc, kh, kw) = (int(d) for d in x_shape), (int(g) for g in m.groups())
    return SparseConvWeight(*args[:3], (oc, c, kh, kw), (h, w))


def supported(in_hw: tuple[int, int], kernel_hw: tuple[int, int], lanes: int = LANES) -> bool:
    """Whether the kernel handles this convolution (after any padding): at least one
    vector of ``lanes`` flat positions holds outputs (the VNNI kernel's vectors hold 16)."""
    (h, w), (kh, kw) = in_hw, kernel_hw
    oh, ow = h - kh + 1, w - kw + 1
    return oh >= 1 and ow >= 1 and (oh - 1) * w + ow >= lanes


def pooled_hw(out_hw: tuple[int, int], pool: int) -> tuple[int, int]:
    """The output size of a ``pool`` x ``pool`` max pool of stride ``pool`` (floor mode)."""
    return out_hw[0] // pool, out_hw[1] // pool


def _pooled_span(w: int, ow: int, row_pairs: int) -> int:
    """Flat positions from a pooling tile's first sum to its last, + 1."""
    return (2 * row_pairs - 1) * w + 2 * (ow // 2)


def pool_fits(in_hw: tuple[int, int], kernel_hw: tuple[int, int]) -> bool:
    """Whether the kernel can also take a 2x2 max pool of the convolution's outputs: a pair of
    output rows fits the registers of a tile."""
    (h, w), (kh, kw) = in_hw, kernel_hw
    oh, ow = h - kh + 1, w - kw + 1
    return (supported(in_hw, kernel_hw) and oh >= 2 and ow >= 2
            and _pooled_span(w, ow, 1) <= MAX_TILE * LANES)


@functools.lru_cache(maxsize=None)  # parsing TVMScript takes ~0.3 s a kernel
def sparse_conv_kernel(batch: int, channels: int, in_hw: tuple[int, int], out_channels: int,
                       kernel_hw: tuple[int, int], relu: bool, x_dtype: str = "float32",
                       pool: int = 1, epilogue: Epilogue | None = None):
    """The PrimFunc ``(x, values, offsets, row_ptr, bias) -> y`` for ``R.call_tir``:
    ``x`` float32 ``[batch, channels, H, W]``, ``y`` ``[batch, out_channels, OH, OW]``; the
    number of non-zeros is symbolic, so one kernel serves every weight of the shape.
    Parallel over images. With an int8 / uint8 ``x`` (``QuantizeInt8``'s), the values are
    int8 and the kernel is ``(x, values, offsets, row_ptr) -> y`` int32, the exact integer
    sums (no bias or ReLU: the requantization that follows does them); with an ``epilogue``
    (:mod:`tvmcomp.kernels.epilogue`) it is ``(x, values, offsets, row_ptr, chan_i, chan_f)
    -> y`` and applies the layer's bias and requantization to each vector of sums before
    it stores the result (the per-channel constants ``[rows, out_channels]``).

    ``pool=2`` (float only) also takes the 2x2 max pool of stride 2 that follows: a tile holds
    whole pairs of output rows, the four sums of a pooled output are taken from registers,
    and only ``y[batch, out_channels, OH // 2, OW // 2]`` is stored (max commutes with the
    bias and the ReLU)."""
    from tvm.script import tirx as T

    (h, w), (kh, kw) = in_hw, kernel_hw
    if not supported(in_hw, kernel_hw):
        raise ValueError(f"sparse conv needs at least {LANES} flat output positions, got "
                         f"input {h}x{w} and kernel {kh}x{kw}")
    integer = x_dtype != "float32"
    if pool not in (1, 2) or pool == 2 and (integer or not pool_fits(in_hw, kernel_hw)):
        raise ValueError(f"sparse conv takes a 2x2 max pool of a float conv's outputs when a "
                         f"pair of output rows fits its registers, not pool={pool} ({x_dtype}, "
                         f"input {h}x{w}, kernel {kh}x{kw})")
    B, C, OC = batch, channels, out_channels  # noqa: N806
    OH, OW = h - kh + 1, w - kw + 1  # noqa: N806
    PLANE, P = C * h * w, (OH - 1) * w + OW  # noqa: N806
    L = LANES  # noqa: N806
    if pool == 1:  # a tile: TILE vectors of consecutive positions
        NV = -(-P // LANES)  # noqa: N806 - vectors covering the positions, the last shifted
        NT = -(-NV // MAX_TILE)  # noqa: N806
        TILE = -(-NV // NT)  # noqa: N806
        YH, YW = OH, OW  # noqa: N806
    else:  # a tile: RP pairs of output rows, as many as MAX_TILE vectors cover
        YH, YW = pooled_hw((OH, OW), 2)  # noqa: N806
        RP = max(r for r in range(1, YH + 1)  # noqa: N806
                 if _pooled_span(w, OW, r) <= MAX_TILE * L)
        NT = -(-YH // RP)  # noqa: N806
        TILE = -(-_pooled_span(w, OW, RP) // L)  # noqa: N806
    acc_t, val_t = ("int32", "int8") if integer else ("float32", "float32")
    if epilogue is not None and not integer:
        raise ValueError("sparse conv takes an epilogue over integer sums only")
    out_t = epilogue.out_dtype if epilogue is not None else acc_t
    int_t = epilogue.int_dtype if epilogue is not None else "int64"
    (IR, WI), (FR, WF) = epilogue_tables(epilogue, OC)  # noqa: N806

    def start(t):  # the flat position of a tile's first vector
        return t * T.int64(TILE * L if pool == 1 else 2 * RP * w)

    def first(t, v):  # the flat position of a tile's v-th vector (shifted back at the end)
        return T.min(start(t) + v * T.int64(L), T.int64(P - L))

    def active(t, v):  # whether a tile has a v-th vector
        if pool == 1:
            return t * T.int64(TILE) + v < T.int64(NV)
        rows = T.min(T.int64(RP), T.int64(YH) - t * T.int64(RP))
        return v * T.int64(L) < (2 * rows - 1) * T.int64(w) + T.int64(2 * YW)

    def at(acc, t, q):  # the sum of flat position q (a tile's, known at compile time)
        v = (q - start(t)) // T.int64(L)
        return acc[v * T.int64(L) + q - first(t, v)]

    def product(value, x):
        return T.Cast(acc_t, value) * T.Cast(acc_t, x) if integer else value * x

    def result(acc, bias, o):
        if integer:
            return acc
        return T.max(acc + bias[o], T.float32(0)) if relu else acc + bias[o]

    @T.macro
    def sums(n, o, t, acc, xf, values, offsets, row_ptr):
        for v in T.unroll(T.int64(TILE)):
            if active(t, v):
                for lane in T.vectorized(T.int64(L)):
                    acc[v * T.int64(L) + lane] = T.Cast(acc_t, 0)
        for j in range(T.Cast("int64", row_ptr[o]), T.Cast("int64", row_ptr[o + 1])):
            for v in T.unroll(T.int64(TILE)):
                if active(t, v):
                    for lane in T.vectorized(T.int64(L)):
                        acc[v * T.int64(L) + lane] = acc[v * T.int64(L) + lane] + product(
                            values[j], xf[n * T.int64(PLANE) + T.Cast("int64", offsets[j])
                                          + first(t, v) + lane])

    def finished(acc, chan_i, chan_f, o, v):  # a vector of sums through the epilogue
        return channel_value(epilogue, acc.vload([v * T.int64(L)], f"int32x{L}"), chan_i,
                             chan_f, o, L)

    @T.macro
    def tile_loops(n, o, t, acc, xf, values, offsets, row_ptr, bias, y):
        sums(n, o, t, acc, xf, values, offsets, row_ptr)
        for v in T.unroll(T.int64(TILE)):  # bias, ReLU, and the lanes that are outputs
            if active(t, v):
                for lane in T.unroll(T.int64(L)):
                    p = first(t, v) + lane
                    if p % T.int64(w) < T.int64(OW):
                        y[n, o, p // T.int64(w), p % T.int64(w)] = result(
                            acc[v * T.int64(L) + lane], bias, o)

    @T.macro
    def epilogue_tile_loops(n, o, t, acc, res, xf, values, offsets, row_ptr, chan_i, chan_f,
                            y):
        sums(n, o, t, acc, xf, values, offsets, row_ptr)
        for v in T.unroll(T.int64(TILE)):  # the epilogue, and the lanes that are outputs
            if active(t, v):
                res[T.ramp(T.int64(0), 1, L)] = finished(acc, chan_i, chan_f, o, v)
                for lane in T.unroll(T.int64(L)):
                    p = first(t, v) + lane
                    if p % T.int64(w) < T.int64(OW):
                        y[n, o, p // T.int64(w), p % T.int64(w)] = res[lane]

    @T.macro
    def pooled_tile_loops(n, o, t, acc, xf, values, offsets, row_ptr, bias, y):
        sums(n, o, t, acc, xf, values, offsets, row_ptr)
        for r in T.unroll(T.int64(RP)):  # each pair of rows: max of 2x2, bias, ReLU
            if t * T.int64(RP) + r < T.int64(YH):
                for px in T.unroll(T.int64(YW)):
                    q = start(t) + r * T.int64(2 * w) + px * T.int64(2)
                    y[n, o, t * T.int64(RP) + r, px] = result(
                        T.max(T.max(at(acc, t, q), at(acc, t, q + T.int64(1))),
                              T.max(at(acc, t, q + T.int64(w)),
                                    at(acc, t, q + T.int64(w + 1)))), bias, o)

    @T.macro
    def image_loops(xf, values, offsets, row_ptr, bias, y):
        for n in T.parallel(T.int64(B)):  # images; at batch 1 one thread (no launch)
            acc = T.decl_buffer((T.int64(TILE * L),), acc_t, scope="local")
            for o in range(T.int64(OC)):
                for t in T.unroll(T.int64(NT)):
                    if pool == 1:
                        tile_loops(n, o, t, acc, xf, values, offsets, row_ptr, bias, y)
                    else:
                        pooled_tile_loops(n, o, t, acc, xf, values, offsets, row_ptr, bias, y)

    if epilogue is not None:
        @T.prim_func(private=True, s_tir=True)
        def sparse_conv_epilogue(
                x: T.Buffer((T.int64(B), T.int64(C), T.int64(h), T.int64(w)), x_dtype),
                values_h: T.handle, offsets_h: T.handle,
                row_ptr: T.Buffer((T.int64(OC + 1),), "int32"),
                chan_i: T.Buffer((T.int64(IR), T.int64(WI)), int_t),
                chan_f: T.Buffer((T.int64(FR), T.int64(WF)), "float32"),
                y: T.Buffer((T.int64(B), T.int64(OC), T.int64(OH), T.int64(OW)), out_t)):
            T.func_attr(HAND_SCHEDULED_ATTRS)
            nnz = T.int64()
            values = T.match_buffer(values_h, (nnz,), val_t)
            offsets = T.match_buffer(offsets_h, (nnz,), "int32")
            xf = T.decl_buffer((T.int64(B * PLANE),), x_dtype, data=x.data)
            for n in T.parallel(T.int64(B)):  # images; at batch 1 one thread (no launch)
                acc = T.decl_buffer((T.int64(TILE * L),), acc_t, scope="local")
                res = T.decl_buffer((T.int64(L),), out_t, scope="local")
                for o in range(T.int64(OC)):
                    for t in T.unroll(T.int64(NT)):
                        epilogue_tile_loops(n, o, t, acc, res, xf, values, offsets, row_ptr,
                                            chan_i, chan_f, y)

        return sparse_conv_epilogue

    if integer:
        @T.prim_func(private=True, s_tir=True)
        def sparse_conv_int(x: T.Buffer((T.int64(B), T.int64(C), T.int64(h), T.int64(w)),
                                        x_dtype),
                            values_h: T.handle, offsets_h: T.handle,
                            row_ptr: T.Buffer((T.int64(OC + 1),), "int32"),
                            y: T.Buffer((T.int64(B), T.int64(OC), T.int64(OH), T.int64(OW)),
                                        "int32")):
            T.func_attr(HAND_SCHEDULED_ATTRS)
            nnz = T.int64()
            values = T.match_buffer(values_h, (nnz,), val_t)
            offsets = T.match_buffer(offsets_h, (nnz,), "int32")
            xf = T.decl_buffer((T.int64(B * PLANE),), x_dtype, data=x.data)
            image_loops(xf, values, offsets, row_ptr, None, y)

        return sparse_conv_int

    @T.prim_func(private=True, s_tir=True)
    def sparse_conv(x: T.Buffer((T.int64(B), T.int64(C), T.int64(h), T.int64(w)), "float32"),
                    values_h: T.handle, offsets_h: T.handle,
                    row_ptr: T.Buffer((T.int64(OC + 1),), "int32"),
                    bias: T.Buffer((T.int64(OC),), "float32"),
                    y: T.Buffer((T.int64(B), T.int64(OC), T.int64(YH), T.int64(YW)), "float32")):
        T.func_attr(HAND_SCHEDULED_ATTRS)
        nnz = T.int64()
        values = T.match_buffer(values_h, (nnz,), "float32")
        offsets = T.match_buffer(offsets_h, (nnz,), "int32")
        xf = T.decl_buffer((T.int64(B * PLANE),), "float32", data=x.data)
        image_loops(xf, values, offsets, row_ptr, bias, y)

    return sparse_conv
