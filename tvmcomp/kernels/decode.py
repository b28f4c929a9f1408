"""Kernels that decode a compressed weight once, at load, into the TVM tensor cache.

``CodebookDense(at_load=...)`` stores such a layer's codes as a :class:`CodeStream` (a code
per weight, or for a pruned layer a code and a zero-run length per non-zero) and gives the
artifact a function, :data:`DECODE_FUNCTION`, that runs these kernels once and puts each dense
weight in TVM's tensor cache (``vm.builtin.tensor_cache``) under :func:`cache_key`; the
layer's kernel reads it from there. The kernels are naive loops, scheduled by hand (never
tuned): they run once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import HAND_SCHEDULED

# the artifact's function that decodes the weights at load (manifest runtime.on_load)
DECODE_FUNCTION = "decode_weights"
CACHE_PREFIX = "tvmcomp.decoded."


def cache_key(w: np.ndarray) -> str:
    """The tensor-cache key of weight ``w`` (as its layer reads it) decoded at load: a hash
    of its values, shape and type (float32, or an integer type: an int8 layer's int8, a
    sparse conv's int32 offsets), so two artifacts in one process never read each other's
    weights (and identical ones share one)."""
    import hashlib

    w = np.asarray(w)
    w = np.ascontiguousarray(w, w.dtype if np.issubdtype(w.dtype, np.integer) else np.float32)
    h = hashlib.sha256(np.asarray(w.shape, np.int64).tobytes())
    if w.dtype != np.float32:
        h.update(str(w.dtype).encode())
    h.update(w.tobytes())
    return CACHE_PREFIX + h.hexdigest()[:20]


@dataclass(frozen=True)
class CodeStream:
    """A weight decoded at load, stored as Deep Compression stores a pruned layer: a stream of
    entries, each a gap (how many zeros to skip, ``gap_bits``) and a code into ``codebook``
    (``code_bits``), packed ``gap_bits + code_bits`` bits each, least significant bit first.

    Decoding walks the weight in row-major order: each entry moves the position on by its gap
    plus one and writes ``codebook[code]`` there. A run of more zeros than a gap holds takes
    filler entries (the largest gap, code 0, and ``codebook[0]`` is 0.0). With ``gap_bits``
    0 the stream is a code per weight (a dense layer; the codebook need not hold 0.0).
    The codebook is float16 where that holds every value exactly (``tvmcomp compress
    --share-bits`` rounds centroids to float16), else float32; an int8 layer's
    (``QuantizeInt8``'s weight) is int8, and decodes to int8.
    """

    codebook: np.ndarray   # float16 or float32, exactly as long as the codes need
    data: np.ndarray       # uint8
    entries: int
    gap_bits: int
    code_bits: int
    shape: tuple[int, ...]

    def nbytes(self) -> dict[str, int]:
        """Stored bytes by role: ``codes`` (the codes' share of the stream), ``gaps`` (the
        rest of it) and ``codebook``; ``total``."""
        codes = -(-self.entries * self.code_bits // 8)
        out = {"codes": codes, "gaps": int(self.data.size) - codes,
               "codebook": int(self.codebook.nbytes)}
        return {**out, "total": sum(out.values())}

    @property
    def dtype(self) -> str:
        """What the stream decodes to: ``"int8"`` (an int8 codebook) or ``"float32"``."""
        return "int8" if self.codebook.dtype == np.int8 else "float32"

    def to_dense(self) -> np.ndarray:
        """The weight (NumPy; what :func:`stream_decode_kernel` computes)."""
        bits = np.unpackbits(self.data, bitorder="little")
        e = self.gap_bits + self.code_bits
        fields = bits[: self.entries * e].reshape(self.entries, e).astype(np.int64)
        v = fields @ (1 << np.arange(e, dtype=np.int64))
        pos = np.cumsum((v & ((1 << self.gap_bits) - 1)) + 1) - 1
        out = np.zeros(int(np.prod(self.shape)), self.dtype)
        out[pos] = self.codebook.astype(self.dtype)[v >> self.gap_bits]
        return out.reshape(self.shape)


MAX_GAP_BITS = 8


def decoded_dtype(w: np.ndarray):
    """The type a weight decodes to at load: int8 for an int8 layer's, else float32."""
    return np.int8 if np.asarray(w).dtype == np.int8 else np.float32


def code_stream(w: np.ndarray, gap_bits: int | None = None) -> CodeStream:
    """``w`` (float32 with at most 256 distinct values, or int8; the shape and order its
    layer reads it in) as a :class:`CodeStream`, with ``gap_bits`` (0..8) or, by default,
    whichever stores it in the fewest bytes."""
    w = np.ascontiguousarray(w, decoded_dtype(w))
    if gap_bits is None:
        gap_bits = min(range(MAX_GAP_BITS + 1), key=lambda g: _stream_bytes(w, g))
    values = _values(w, gap_bits)
    bits = max(1, (values.size - 1).bit_length())
    if gap_bits:  # 0.0 first, then the sorted non-zero values
        codes = np.where(w.ravel() != 0, np.searchsorted(values[1:], w.ravel()) + 1, 0)
        pos = np.flatnonzero(codes)
        run = np.diff(pos, prepend=-1) - 1  # zeros skipped before each non-zero
        fill = run >> gap_bits
        at = np.cumsum(fill + 1) - 1  # where each non-zero's entry lands among all entries
        n = int(pos.size + fill.sum())
        gaps = np.full(n, (1 << gap_bits) - 1, np.int64)
        gaps[at] = run - (fill << gap_bits)
        entry_codes = np.zeros(n, np.int64)
        entry_codes[at] = codes[pos]
    else:
        codes = np.searchsorted(values, w.ravel()).astype(np.int64)
        n, gaps, entry_codes = codes.size, np.zeros(codes.size, np.int64), codes
    e = gap_bits + bits
    v = gaps | (entry_codes << gap_bits)
    stream = np.packbits(((v[:, None] >> np.arange(e)) & 1).astype(np.uint8).ravel(),
                         bitorder="little")
    data = stream if stream.size else np.zeros(1, np.uint8)  # a buffer is never empty
    return CodeStream(_narrowed(values), data, n, gap_bits, bits, tuple(w.shape))


def _narrowed(values: np.ndarray) -> np.ndarray:
    """``values`` (float32) as float16 if that holds each of them exactly (int8 as is)."""
    if values.dtype == np.int8:
        return values
    half = values.astype(np.float16)
    return half if np.array_equal(half.astype(np.float32), values) else values


def _values(w: np.ndarray, gap_bits: int) -> np.ndarray:
    """The codebook: ``w``'s distinct values; with gaps, 0.0 first and the non-zero ones."""
    if not gap_bits:
        return np.unique(w)
    return np.concatenate([np.zeros(1, w.dtype), np.unique(w[w != 0])])


def _stream_bytes(w: np.ndarray, gap_bits: int) -> int:
    """Bytes :func:`code_stream` stores ``w`` in with ``gap_bits``, without building it."""
    values = _values(w, gap_bits)
    bits = max(1, (values.size - 1).bit_length())
    if gap_bits:
        run = np.diff(np.flatnonzero(w.ravel()), prepend=-1) - 1
        n = int(run.size + (run >> gap_bits).sum())
    else:
        n = w.size
    return max(1, -(-n * (gap_bits + bits) // 8)) + _narrowed(values).nbytes


@dataclass(frozen=True)
class Placement:
    """Where a kernel that reads its weight packed (:mod:`tvmcomp.kernels.vnni`) has each
    weight, so the decoder writes the packed weight straight from the code stream of the
    weight as its layer reads it (what the artifact stores and the size report counts), and
    the kernel's per-channel compensation ``scale * sum(w)`` into it too. ``index`` and
    ``channel`` map a flat position in the layer's weight (a TIR int64 expression) to its
    flat index in the packed weight and to its output channel; ``comp_at`` a channel to the
    byte where its int32 compensation starts in the packed weight."""

    shape: tuple[int, ...]   # the packed weight's (the rest of it is zeros)
    channels: int            # the compensation's length
    scale: int               # per weight: -128 (int8 inputs) or 0
    index: Callable
    channel: Callable
    comp_at: Callable


def _entry(data, k, bits: int, size: int):
    """Entry ``k`` of a stream (``data``, ``size`` bytes) of ``bits``-bit entries, as int32:
    read from the (at most) three bytes it spans (a byte past the end holds none of its
    bits: the last one is read instead)."""
    from tvm.script import tirx as T

    b = k * bits // 8
    word = T.bitwise_or(T.bitwise_or(
        T.Cast("int32", data[b]), T.shift_left(T.Cast("int32", data[T.min(b + 1, size - 1)]), 8)),
        T.shift_left(T.Cast("int32", data[T.min(b + 2, size - 1)]), 16))
    return T.bitwise_and(T.shift_right(word, T.Cast("int32", k * bits % 8)), (1 << bits) - 1)


def stream_decode_kernel(s: CodeStream, place: Placement | None = None):
    """The PrimFunc ``(codebook, data, token) -> w`` that decodes ``s`` into its dense
    weight (float32, or int8 from an int8 codebook): zero-fills ``w``, then walks the
    entries, each read from the (at most) three bytes of the stream it spans. With a
    ``place``: ``w`` packed as ``place`` says, each channel's compensation summed in a local
    int32 array and written into its 4 bytes (little-endian) at the end. A serial loop: it
    runs once, at load. ``token`` is not read: called with a tensor allocated at run time,
    the call has an argument that is not a constant, so Relax's ``FoldConstant`` cannot
    evaluate it at compile time (it would put the decoded weight back into the artifact)."""
    from tvm.script import tirx as T

    NE, ND, CB = s.entries, int(s.data.size), int(s.codebook.size)  # noqa: N806
    cb_t, out_t = str(s.codebook.dtype), s.dtype
    G, E = s.gap_bits, s.gap_bits + s.code_bits  # noqa: N806
    stored = place.shape if place is not None else s.shape
    total = int(np.prod(stored))
    shape = [T.int64(int(d)) for d in stored]
    NC = place.channels if place is not None else 1  # noqa: N806

    def index(pos):
        return place.index(pos) if place is not None else pos

    @T.prim_func(private=True, s_tir=True)
    def decode(codebook: T.Buffer((T.int64(CB),), cb_t),
               data: T.Buffer((T.int64(ND),), "uint8"),
               token: T.Buffer((T.int64(1),), "int32"),
               w: T.Buffer(shape, out_t)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True,
                     HAND_SCHEDULED: "codebook stream decode"})
        flat = T.decl_buffer((T.int64(total),), out_t, data=w.data)
        pos = T.decl_buffer((1,), "int64", scope="local")
        comp = T.decl_buffer((T.int64(NC),), "int32", scope="local")
        for i in range(T.int64(total)):
            flat[i] = T.Cast(out_t, 0)
        if place is not None:
            for c in range(T.int64(NC)):
                comp[c] = 0
        pos[0] = T.int64(-1)
        for k in range(T.int64(NE)):
            v = _entry(data, k, E, ND)
            pos[0] = pos[0] + T.Cast("int64", T.bitwise_and(v, (1 << G) - 1)) + T.int64(1)
            value = codebook[T.Cast("int64", T.shift_right(v, G))]
            flat[index(pos[0])] = T.Cast(out_t, value)
            if place is not None:
                comp[place.channel(pos[0])] = (comp[place.channel(pos[0])]
                                               + T.Cast("int32", value) * place.scale)
        if place is not None:
            for c in range(T.int64(NC)):
                for b in range(T.int64(4)):
                    flat[place.comp_at(c) + b] = T.Cast(out_t, T.bitwise_and(
                        T.shift_right(comp[c], T.Cast("int32", b * 8)), 255))

    return decode


def sparse_conv_decode_kernel(s: CodeStream, in_hw: tuple[int, int]):
    """The PrimFunc ``(codebook, data, token) -> (values, offsets, row_ptr)`` that decodes
    ``s`` (a conv weight's, OIHW) straight into the direct sparse convolution's arrays for
    inputs of ``in_hw`` (:class:`~tvmcomp.kernels.sparse_conv.SparseConvWeight`, as
    ``sparse_conv_from_dense`` makes them): its non-zeros in row-major order, their values,
    their offsets in the input plane, and a row pointer per output channel (counted, then
    summed). A serial loop, run once at load; ``token`` as in :func:`stream_decode_kernel`."""
    from tvm.script import tirx as T

    NE, ND, CB = s.entries, int(s.data.size), int(s.codebook.size)  # noqa: N806
    cb_t, out_t = str(s.codebook.dtype), s.dtype
    G, E = s.gap_bits, s.gap_bits + s.code_bits  # noqa: N806
    OC, C, KH, KW = (int(d) for d in s.shape)  # noqa: N806
    H, W = in_hw  # noqa: N806
    NNZ = max(1, int(np.count_nonzero(s.to_dense())))  # noqa: N806 - a buffer is never empty

    @T.prim_func(private=True, s_tir=True)
    def decode(codebook: T.Buffer((T.int64(CB),), cb_t),
               data: T.Buffer((T.int64(ND),), "uint8"),
               token: T.Buffer((T.int64(1),), "int32"),
               values: T.Buffer((T.int64(NNZ),), out_t),
               offsets: T.Buffer((T.int64(NNZ),), "int32"),
               row_ptr: T.Buffer((T.int64(OC + 1),), "int32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True,
                     HAND_SCHEDULED: "codebook stream decode into a sparse conv"})
        pos = T.decl_buffer((1,), "int64", scope="local")
        j = T.decl_buffer((1,), "int64", scope="local")
        values[0] = T.Cast(out_t, 0)
        offsets[0] = 0
        for o in range(T.int64(OC + 1)):
            row_ptr[o] = 0
        pos[0] = T.int64(-1)
        j[0] = T.int64(0)
        for k in range(T.int64(NE)):
            v = _entry(data, k, E, ND)
            pos[0] = pos[0] + T.Cast("int64", T.bitwise_and(v, (1 << G) - 1)) + T.int64(1)
            value = codebook[T.Cast("int64", T.shift_right(v, G))]
            if value != T.Cast(cb_t, 0):  # a filler (or, with no gaps, a zero weight)
                p = pos[0]
                values[j[0]] = T.Cast(out_t, value)
                offsets[j[0]] = T.Cast("int32", p % (C * KH * KW) // (KH * KW) * (H * W)
                                       + p % (KH * KW) // KW * W + p % KW)
                row_ptr[p // (C * KH * KW) + 1] = row_ptr[p // (C * KH * KW) + 1] + 1
                j[0] = j[0] + T.int64(1)
        for o in range(T.int64(OC)):
            row_ptr[o + 1] = row_ptr[o + 1] + row_ptr[o]

    return decode
