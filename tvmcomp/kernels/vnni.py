"""Exact int8 dense and convolution kernels on x86: AVX-512 VNNI (``vpdpbusd``), and AVX2
(``vpmaddubsw`` + ``vpmaddwd``, with ``vpsignb`` for activations of either sign).

``vpdpbusd acc, a, b`` adds to each of the 16 int32 lanes of ``acc`` the four products of
the lane's four unsigned bytes of ``a`` with the four signed bytes of ``b``, in int32 with no
saturation: with ``a`` the activations (uint8) and ``b`` the int8 weights, the sums are the
exact integer sums the int32-accumulating ``R.matmul`` / ``R.nn.conv2d`` compute. An int8
activation ``x`` enters as ``x ^ 0x80 = x + 128`` (uint8), and the kernel starts each sum at
``comp = -128 * sum(W)`` of its output channel, the zero-point compensation oneDNN uses; it
is stored in the packed weight itself, after the weights (one buffer a layer: a weight
decoded at load is one tensor-cache read a call).

On AVX2 (:data:`AVX2`, 8 lanes of a ymm register) the same four-byte step is ``vpmaddwd(
vpmaddubsw(a, b), 1)`` added to ``acc``: ``vpmaddubsw`` sums the products of two byte pairs
into int16 with saturation, exact only while ``|a0*b0 + a1*b1| <= 32767``, which holds for
every int8 ``b`` when ``a <= 127`` (``127 * 128 * 2 = 32512``). So the AVX2 kernels take
int8 activations read as they are (no ``x + 128``, no compensation: it is 0 in their packed
weights), and no uint8 ones: known to be non-negative (a ReLU's output:
``Bindings.value_range``), or of either sign with ``signed=True``: then ``|a|`` (``<= 128``)
meets ``b`` with ``a``'s sign (``vpsignb``), exact for weights in ``[-127, 127]`` (what our
symmetric quantization makes; ``128 * 127 * 2 = 32512``), one more instruction a step. Both
instruction sets read the same packed layouts; an :class:`Isa` names the kernels' vector
width and register budget.

- **Dense** ``y[M, N] = x[M, K] @ W[K, N]`` (``K % 4 == 0``): ``W`` is packed at build as
  ``[N/16][K/4][16][4]`` (``N`` padded to 16 with zero columns), so a 64-byte load is the
  ``b`` of 16 output columns and four ``k`` (two 32-byte loads of 8 columns each on AVX2);
  the four bytes ``x[m, 4kb:4kb+4]`` are broadcast to every lane. A tile keeps ``rows x
  vectors`` accumulators in registers (at most the ISA's ``max_acc``), parallel over tiles
  of rows.
- **Convolution** (stride 1, no dilation or groups; a padded input is padded first) reads the
  image's flat ``C*H*W`` plane as the direct sparse convolution does
  (:mod:`tvmcomp.kernels.sparse_conv`): output ``(oy, ox)`` is flat position ``p = oy*W + ox``
  and tap ``(c, kh, kw)`` adds ``W[o, c, kh, kw] * x_flat[c*H*W + kh*W + kw + p]``. Here the
  lanes are consecutive positions and the taps go four at a time: the ``a`` operand
  interleaves the four taps' runs of bytes (zero-extended, shifted and or-ed as int32), and
  the four weights of output channel ``o`` are one broadcast int32 (``b``). One ``a`` serves
  a block of output channels (all of them where they fit the accumulators); taps are padded
  to a multiple of 4 with zero weights. Where output rows hold at least a vector of columns,
  each vector lies within a row (the last of a row shifted back) and is stored whole; else
  vectors run across rows, positions with ``p % W >= OW`` are computed and not stored, and a
  vector is stored by one masked store per output row it meets. With ``pool=2`` (VNNI) the
  kernel also takes the 2x2 max pool after the layer, on the sums (:func:`_pool_mode`).
  Parallel over images.

With an :class:`Epilogue`, either kernel applies the layer's bias, requantization and clamp
(or float scaling) to the sums in registers and stores only their result (int8 / uint8 /
float32): one pass over the output instead of an int32 tensor written and read again.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from . import HAND_SCHEDULED
from .decode import Placement
from .epilogue import Epilogue, channel_value
from .epilogue import tables as epilogue_tables
from .epilogue import value as epilogue_value
from .sparse_conv import supported

LANES = 16     # columns of a packed dense block; int32 lanes of a zmm register
FLIP = -2139062144  # 0x80808080 as int32: x ^ FLIP turns four int8 into x + 128 as uint8
X_DTYPES = ("int8", "uint8")


@dataclass(frozen=True)
class Isa:
    """An instruction set the kernels are written for: the int32 lanes of its vectors, the
    accumulators a tile keeps in registers (the rest hold operands), the x dtypes it takes,
    and its kernels' name prefix."""

    name: str
    lanes: int
    max_acc: int
    x_dtypes: tuple
    tag: str

    @property
    def dense_name(self) -> str:
        return f"{self.tag}_dense_"

    @property
    def conv_name(self) -> str:
        return f"{self.tag}_conv_"

    def flips(self, x_dtype: str) -> bool:
        """Whether an ``x_dtype`` activation enters as ``x + 128`` (with the compensation)."""
        return self.name == "avx512_vnni" and x_dtype == "int8"

    def dot(self, acc, a, b, signed: bool = False):
        """``acc`` (int32 lanes) plus each lane's four products of the bytes of ``a`` (read
        unsigned; signed with ``signed``) and ``b`` (signed), as TIR.

        ``signed`` (AVX2): ``|a|`` times ``b`` with ``a``'s sign (``vpsignb``), so each
        product is ``a * b`` with ``|a| <= 128`` (``-128``'s absolute value read unsigned)
        and ``|b| <= 127``, a pair's sum at most ``32512``: exact where ``b >= -127``."""
        from tvm.script import tirx as T

        v, nbytes = self.lanes, 4 * self.lanes
        _check_signed(self, signed)
        if signed:
            psign = T.llvm_lookup_intrinsic_id("llvm.x86.avx2.psign.b")
            sa = T.reinterpret(a, dtype=f"int8x{nbytes}")
            b = T.call_llvm_pure_intrin(psign, T.reinterpret(b, dtype=f"int8x{nbytes}"), sa,
                                        dtype=f"int8x{nbytes}")
            a = T.call_llvm_pure_intrin(psign, sa, sa, dtype=f"int8x{nbytes}")
        a, b = (x if str(x.ty) == t else T.reinterpret(x, dtype=t)
                for x, t in ((a, f"uint8x{nbytes}"), (b, f"int8x{nbytes}")))
        if self.name == "avx512_vnni":
            return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(
                "llvm.x86.avx512.vpdpbusd.512"), acc, a, b, dtype=f"int32x{v}")
        pairs = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(
            "llvm.x86.avx2.pmadd.ub.sw"), a, b, dtype=f"int16x{2 * v}")
        return acc + T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(
            "llvm.x86.avx2.pmadd.wd"), pairs, T.Broadcast(T.int16(1), 2 * v),
            dtype=f"int32x{v}")


# zmm: 32 registers; ymm: 16 (accumulators, the a operand(s), the broadcast b, the ones,
# the pairs)
VNNI = Isa("avx512_vnni", 16, 24, X_DTYPES, "vnni")
AVX2 = Isa("avx2", 8, 10, ("int8",), "avx2")  # int8 x: >= 0, or any with ``signed``
ISAS = {isa.name: isa for isa in (VNNI, AVX2)}
SIGNED = {False: "", True: " (signed activations)"}  # in a kernel's description


def _check_signed(isa: Isa, signed: bool) -> None:
    if signed and isa is not AVX2:
        raise ValueError(f"signed activations are for the AVX2 kernels, not {isa.name}'s "
                         "(VNNI reads int8 as x + 128)")


def _attrs(what: str) -> dict:
    return {"tirx.noalias": True, "tirx.is_scheduled": True, HAND_SCHEDULED: what}


def _scale(x_dtype: str, isa: Isa) -> int:
    """Each weight's factor in its output channel's compensation: -128 where ``x`` enters
    as ``x + 128``, else 0."""
    return -128 if isa.flips(x_dtype) else 0


def compensation(w_sums: np.ndarray, x_dtype: str, isa: Isa = VNNI) -> np.ndarray:
    """The sums' starting values: ``-128 * sum(W)`` per output channel for int8 inputs on
    VNNI, else 0."""
    return (_scale(x_dtype, isa) * w_sums).astype(np.int32)


def call_weight(kernel: str, x_shape, x_dtype: str, out_shape,
                args: list) -> DenseWeight | ConvWeight | None:
    """The weight of a call of one of these kernels: ``kernel`` its name (an ISA's
    ``..._dense_...`` or ``..._conv_...``, as ``Int8Vnni`` names them), ``x_shape`` /
    ``x_dtype`` / ``out_shape`` its input's and output's, ``args`` its arguments after ``x``
    (arrays where constant, else None); None if it is not such a call or its weight is not
    constant."""
    for isa in ISAS.values():
        scale = _scale(x_dtype, isa)
        if kernel.startswith(isa.dense_name) and args and args[0] is not None:
            return DenseWeight(args[0], (int(x_shape[1]), int(out_shape[1])), scale)
        if kernel.startswith(isa.conv_name) and len(args) >= 2 and all(
                a is not None for a in args[:2]):
            # the kernel size from the taps' offsets (strictly increasing from 0; padding
            # taps 0): the output may be pooled
            (_, c, h, w), offsets = (int(d) for d in x_shape), args[1]
            taps = 1 + int(np.count_nonzero(offsets[1:]))
            kh, kw = divmod(int(offsets[taps - 1]) - (c - 1) * h * w, w)
            return ConvWeight(args[0], offsets, (int(out_shape[1]), c, kh + 1, kw + 1),
                              (h, w), scale)
    return None


# ---- dense -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DenseWeight:
    """``W[K, N]`` as the dense kernel reads it: ``packed[N/16, K/4 + 1, 64]``, each block's
    last 64 bytes its 16 columns' compensation (int32, ``scale * sum(W[:, n])``)."""

    packed: np.ndarray  # int8 [NB, K/4 + 1, 64]
    shape: tuple[int, int]
    scale: int  # -128 or 0: :func:`_scale`

    @property
    def weight(self) -> np.ndarray:
        return self.packed

    @property
    def comp(self) -> np.ndarray:
        """int32 ``[NB * 16]``."""
        return np.ascontiguousarray(self.packed[:, -1]).view(np.int32).reshape(-1)

    def to_dense(self) -> np.ndarray:
        k, n = self.shape
        nb = self.packed.shape[0]
        w = self.packed[:, :k // 4].reshape(nb, k // 4, LANES, 4).transpose(1, 3, 0, 2)
        return np.ascontiguousarray(w.reshape(k, nb * LANES)[:, :n])

    def placement(self) -> Placement:
        """Where ``W[k, n]`` (flat ``k*N + n``) is in ``packed``, for a decoder at load."""
        k, n = self.shape
        kb = k // 4

        def index(pos):
            col, row = pos % n, pos // n
            return ((col // LANES * (kb + 1) + row // 4) * LANES + col % LANES) * 4 + row % 4

        def comp_at(c):  # column c's compensation, in its block's last 64 bytes
            return (c // LANES * (kb + 1) + kb) * 64 + c % LANES * 4

        return Placement(tuple(self.packed.shape), self.comp.size, self.scale, index,
                         lambda pos: pos % n, comp_at)


def dense_supported(k: int) -> bool:
    return k % 4 == 0


def pack_dense(w: np.ndarray, x_dtype: str, isa: Isa = VNNI) -> DenseWeight:
    """``w`` int8 ``[K, N]`` (a matmul's right operand) in the dense kernel's form for
    ``x_dtype`` inputs on ``isa``."""
    k, n = w.shape
    if not dense_supported(k):
        raise ValueError(f"the int8 dense kernel needs K % 4 == 0, got K = {k}")
    nb = -(-n // LANES)
    wp = np.zeros((k, nb * LANES), np.int8)
    wp[:, :n] = w
    packed = np.zeros((nb, k // 4 + 1, 64), np.int8)
    packed[:, :k // 4] = wp.reshape(k // 4, 4, nb, LANES).transpose(2, 0, 3, 1).reshape(
        nb, k // 4, 64)
    sums = np.zeros(nb * LANES, np.int64)
    sums[:n] = w.astype(np.int64).sum(0)
    packed[:, k // 4] = compensation(sums, x_dtype, isa).view(np.int8).reshape(nb, 64)
    return DenseWeight(packed, (k, n), _scale(x_dtype, isa))


def _dense_tile(m: int, vectors: int, max_acc: int) -> tuple[int, int]:
    """(rows, column vectors) of a register tile."""
    cols = min(vectors, max_acc)
    return max(1, min(8, m, max_acc // cols)), cols


@functools.lru_cache(maxsize=None)  # parsing TVMScript takes ~0.3 s a kernel
def dense_kernel(m: int, k: int, n: int, x_dtype: str, epilogue: Epilogue | None = None,
                 isa: Isa = VNNI, signed: bool = False):
    """The PrimFunc ``(x[m, k], packed) -> y[m, n]`` int32 for ``R.call_tir``; with an
    ``epilogue``, ``(x, packed, chan_i, chan_f) -> y`` of its ``out_dtype`` (the
    per-channel constants ``[rows, N/16 * 16]``, padded). ``signed`` (AVX2): int8 ``x`` of
    either sign, exact for weights in ``[-127, 127]`` (:meth:`Isa.dot`)."""
    from tvm.script import tirx as T

    if x_dtype not in isa.x_dtypes or not dense_supported(k):
        raise ValueError(f"the {isa.name} int8 dense kernel takes {'/'.join(isa.x_dtypes)} x "
                         f"with K % 4 == 0, got {x_dtype} and K = {k}")
    _check_signed(isa, signed)
    V, H = isa.lanes, LANES // isa.lanes  # noqa: N806 - lanes; vectors a packed block
    NB, KB = -(-n // LANES), k // 4  # noqa: N806
    MR, BT = _dense_tile(m, NB * H, isa.max_acc)  # noqa: N806
    NCH, MT = -(-(NB * H) // BT), -(-m // MR)  # noqa: N806

    def a_operand(xf, row, kb):  # x[row, 4kb:4kb+4] (as uint8 on VNNI), in every lane
        v = T.reinterpret(xf.vload([row * T.int64(k) + kb * T.int64(4)], x_dtype + "x4"),
                          dtype="int32")
        if isa.flips(x_dtype):
            v = T.bitwise_xor(v, T.int32(FLIP))
        return T.broadcast(v, V)

    def row(mt, r):
        return T.min(mt * T.int64(MR) + r, T.int64(m - 1))

    def vector(c, b):  # the index of a tile's b-th vector of V columns
        return T.min(c * T.int64(BT) + b, T.int64(NB * H - 1))

    def w_load(packed, c, b, kb):  # the vector's columns' four k (or compensation) from kb
        if H == 1:
            return packed.vload([vector(c, b), kb, T.int64(0)], "int8x64")
        return packed.vload([vector(c, b) // T.int64(H), kb,
                             vector(c, b) % T.int64(H) * T.int64(4 * V)], f"int8x{4 * V}")

    def slot(r, b):
        return (r * T.int64(BT) + b) * T.int64(V)

    out_t = epilogue.out_dtype if epilogue is not None else "int32"
    int_t = epilogue.int_dtype if epilogue is not None else "int64"
    (IR, WI), (FR, WF) = epilogue_tables(epilogue, NB * LANES)  # noqa: N806

    def result(acc, chan_i, chan_f, c, r, b):
        def chan(row, dtype, is_int):
            src = chan_i if is_int else chan_f
            src_t = int_t if is_int else "float32"
            vec = src.vload([T.int64(row), vector(c, b) * T.int64(V)], f"{src_t}x{V}")
            return T.Cast(f"{dtype}x{V}", vec) if dtype != src_t else vec

        return epilogue_value(epilogue, acc.vload([slot(r, b)], f"int32x{V}"), chan, V)

    @T.macro
    def body(xf, packed, chan_i, chan_f, y):
        for mt in T.parallel(T.int64(MT)):
            acc = T.decl_buffer((T.int64(MR * BT * V),), "int32", scope="local")
            res = T.decl_buffer((T.int64(V),), out_t, scope="local")
            for c in range(T.int64(NCH)):
                for r in T.unroll(T.int64(MR)):
                    for b in T.unroll(T.int64(BT)):
                        acc[T.ramp(slot(r, b), 1, V)] = T.reinterpret(
                            w_load(packed, c, b, T.int64(KB)), dtype=f"int32x{V}")
                for kb in range(T.int64(KB)):
                    for r in T.unroll(T.int64(MR)):
                        for b in T.unroll(T.int64(BT)):
                            acc[T.ramp(slot(r, b), 1, V)] = isa.dot(
                                acc.vload([slot(r, b)], f"int32x{V}"),
                                a_operand(xf, row(mt, r), kb), w_load(packed, c, b, kb),
                                signed)
                for r in T.unroll(T.int64(MR)):
                    for b in T.unroll(T.int64(BT)):
                        res[T.ramp(T.int64(0), 1, V)] = result(acc, chan_i, chan_f, c, r, b)
                        for lane in T.unroll(T.int64(V)):
                            if (mt * T.int64(MR) + r < T.int64(m)
                                    and (c * T.int64(BT) + b) * T.int64(V) + lane
                                    < T.int64(n)):
                                y[mt * T.int64(MR) + r,
                                  (c * T.int64(BT) + b) * T.int64(V) + lane] = res[lane]

    if epilogue is None:
        @T.prim_func(private=True, s_tir=True)
        def vnni_dense(x: T.Buffer((T.int64(m), T.int64(k)), x_dtype),
                       packed: T.Buffer((T.int64(NB), T.int64(KB + 1), T.int64(64)), "int8"),
                       y: T.Buffer((T.int64(m), T.int64(n)), "int32")):
            T.func_attr(_attrs(f"{isa.tag.upper()} int8 dense{SIGNED[signed]}"))
            xf = T.decl_buffer((T.int64(m * k),), x_dtype, data=x.data)
            body(xf, packed, None, None, y)

        return vnni_dense

    @T.prim_func(private=True, s_tir=True)
    def vnni_dense_epilogue(x: T.Buffer((T.int64(m), T.int64(k)), x_dtype),
                            packed: T.Buffer((T.int64(NB), T.int64(KB + 1), T.int64(64)),
                                             "int8"),
                            chan_i: T.Buffer((T.int64(IR), T.int64(WI)), int_t),
                            chan_f: T.Buffer((T.int64(FR), T.int64(WF)), "float32"),
                            y: T.Buffer((T.int64(m), T.int64(n)), out_t)):
        T.func_attr(_attrs(f"{isa.tag.upper()} int8 dense{SIGNED[signed]} + requantization"))
        xf = T.decl_buffer((T.int64(m * k),), x_dtype, data=x.data)
        body(xf, packed, chan_i, chan_f, y)

    return vnni_dense_epilogue


# ---- convolution -------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvWeight:
    """A conv weight ``[OC, C, KH, KW]`` as the kernel reads it over ``C x H x W`` inputs:
    ``quads[o, 4g:4g+4]`` the four int8 weights of taps ``4g .. 4g+3`` (read as one int32),
    ``offsets`` each tap's plane offset ``c*H*W + kh*W + kw`` (0 for padding taps); a row's
    last 4 bytes its output channel's compensation (int32, ``scale * sum(W[o])``)."""

    quads: np.ndarray    # int8 [OC, 4G + 4]
    offsets: np.ndarray  # int32 [4G]
    shape: tuple[int, int, int, int]
    in_hw: tuple[int, int]
    scale: int  # -128 or 0: :func:`_scale`

    @property
    def weight(self) -> np.ndarray:
        return self.quads

    @property
    def comp(self) -> np.ndarray:
        """int32 ``[OC]``."""
        return np.ascontiguousarray(self.quads[:, -4:]).view(np.int32).reshape(-1)

    def to_dense(self) -> np.ndarray:
        oc, c, kh, kw = self.shape
        taps = c * kh * kw
        return self.quads[:, :taps].reshape(self.shape).copy()

    def placement(self) -> Placement:
        """Where ``W[o, c, kh, kw]`` (flat OIHW) is in ``quads``, for a decoder at load."""
        taps, row = int(np.prod(self.shape[1:])), int(self.quads.shape[1])
        return Placement(tuple(self.quads.shape), self.comp.size, self.scale,
                         lambda pos: pos // taps * row + pos % taps, lambda pos: pos // taps,
                         lambda c: c * row + row - 4)


def conv_supported(in_hw: tuple[int, int], kernel_hw: tuple[int, int]) -> bool:
    """Whether the kernel handles this convolution (after padding): a vector of flat
    positions holds outputs (the direct sparse convolution's rule, 16 lanes)."""
    return supported(in_hw, kernel_hw, LANES)


def pack_conv(w: np.ndarray, in_hw: tuple[int, int], x_dtype: str,
              isa: Isa = VNNI) -> ConvWeight:
    """``w`` int8 OIHW in the conv kernel's form for ``x_dtype`` inputs of spatial size
    ``in_hw`` on ``isa``."""
    oc, c, kh, kw = w.shape
    h, wd = in_hw
    taps = c * kh * kw
    g = -(-taps // 4)
    flat = np.zeros((oc, 4 * g + 4), np.int8)
    flat[:, :taps] = w.reshape(oc, taps)
    ci, y, x = np.unravel_index(np.arange(taps), (c, kh, kw))
    offsets = np.zeros(4 * g, np.int32)
    offsets[:taps] = ci * h * wd + y * wd + x
    flat[:, 4 * g:] = compensation(w.reshape(oc, -1).astype(np.int64).sum(1),
                                   x_dtype, isa).view(np.int8).reshape(oc, 4)
    return ConvWeight(flat, offsets, (oc, c, kh, kw), (h, wd), _scale(x_dtype, isa))


def _pool_mode(in_hw: tuple[int, int], kernel_hw: tuple[int, int], out_channels: int,
               batch: int = 1, isa: Isa = VNNI) -> tuple[str, int, int] | None:
    """How the conv kernel takes the 2x2 max pool that follows, if it can: ``(mode, vectors
    a tile, positions its last tile is shifted back)``, or None. Mode ``"block"``: a tile the
    vectors that cover a pair of output rows (from the first row's first sum to the second
    row's last pooled one), every output channel's in the accumulators; ``"rows"`` (at batch
    1 only): a tile one output row (one vector: rows of at most 16 outputs), the first of a
    pair kept aside while the second is summed. Only the last tile (or pair) is shifted back,
    so no read passes the plane; the kernel builds its pooling for that one alone.

    A row a vector computes more lanes than vectors across rows do (LeNet-5's conv2: 10
    vectors an image instead of 9), which the pool kernel and the epilogues it saves pay for
    only where a kernel's call costs count: LeNet-5 int8 on a 2-vCPU Xeon, 4 interleaved
    bench runs, 13.2-13.3 -> 11.2-11.5 µs at batch 1 but 182-184 -> 186-192 µs at batch 64.

    VNNI only: on AVX2 a row pair of LeNet-5's convolutions does not fit 8-lane
    accumulators (conv1's pooled rows are 14 wide; conv2's pair is 3 vectors x 16 channels)."""
    if isa is not VNNI:
        return None
    (h, w), (kh, kw) = in_hw, kernel_hw
    max_acc = VNNI.max_acc
    oh, ow = h - kh + 1, w - kw + 1
    if not (conv_supported(in_hw, kernel_hw) and oh >= 2 and 2 <= ow <= 2 * LANES):
        return None
    p, yh = (oh - 1) * w + ow, oh // 2
    tile = -(-(w + 2 * (ow // 2)) // LANES)
    last = p - tile * LANES  # where the last tile's vectors must start
    if out_channels * tile <= max_acc and last >= 0 and 2 * w * max(0, yh - 2) <= last:
        return "block", tile, max(0, 2 * w * (yh - 1) - last)
    shift = max(0, (2 * yh - 1) * w + LANES - p)  # the last pair's second row's
    if (batch == 1 and out_channels <= max_acc and ow <= LANES and ow + shift <= LANES
            and 2 * (yh - 1) * w + LANES <= p and (yh < 2 or (2 * yh - 3) * w + LANES <= p)):
        return "rows", 1, shift
    return None


def conv_pool_fits(in_hw: tuple[int, int], kernel_hw: tuple[int, int], out_channels: int,
                   batch: int = 1, isa: Isa = VNNI) -> bool:
    """Whether the conv kernel can also take the 2x2 max pool of stride 2 that follows
    (:func:`_pool_mode`)."""
    return _pool_mode(in_hw, kernel_hw, out_channels, batch, isa) is not None


def _channel_block(out_channels: int, max_acc: int) -> int:
    """Output channels whose sums a conv tile keeps: all where they fit the accumulators,
    else the largest divisor of ``out_channels`` that does (the ``a`` operands are built
    once for each block)."""
    if out_channels <= max_acc:
        return out_channels
    return max(d for d in range(1, max_acc + 1) if out_channels % d == 0)


@functools.lru_cache(maxsize=None)
def conv_kernel(batch: int, channels: int, in_hw: tuple[int, int], out_channels: int,
                kernel_hw: tuple[int, int], x_dtype: str, epilogue: Epilogue | None = None,
                pool: int = 1, isa: Isa = VNNI, signed: bool = False):
    """The PrimFunc ``(x, quads, offsets) -> y`` int32 ``[batch, out_channels, OH, OW]``
    for ``R.call_tir``; with an ``epilogue``, ``(x, quads, offsets, chan_i, chan_f) ->
    y`` of its ``out_dtype`` (the per-channel constants ``[rows, out_channels]``).

    ``pool=2`` (where :func:`conv_pool_fits`) also takes the 2x2 max pool of stride 2 that
    follows: a tile is a pair of output rows (or one row, the pair's first kept aside:
    :func:`_pool_mode`), the max of each 2x2 block of sums is taken before the epilogue
    (which must be non-decreasing: the max commutes with it), and ``y`` is ``[batch,
    out_channels, OH // 2, OW // 2]``: a quarter of the epilogues and stores. ``signed``
    (AVX2): int8 ``x`` of either sign, exact for weights in ``[-127, 127]``
    (:meth:`Isa.dot`)."""
    from tvm.script import tirx as T

    (h, w), (kh, kw) = in_hw, kernel_hw
    V = isa.lanes  # noqa: N806
    if x_dtype not in isa.x_dtypes or not conv_supported(in_hw, kernel_hw):
        raise ValueError(f"the {isa.name} int8 conv kernel takes {'/'.join(isa.x_dtypes)} x "
                         f"and at least {LANES} flat output positions, got {x_dtype}, input "
                         f"{h}x{w}, kernel {kh}x{kw}")
    _check_signed(isa, signed)
    if pool not in (1, 2) or pool == 2 and not conv_pool_fits(in_hw, kernel_hw, out_channels,
                                                              batch, isa):
        raise ValueError(f"the {isa.name} int8 conv kernel takes a 2x2 max pool where a pair "
                         f"of output rows fits its accumulators, or one row a vector at batch "
                         f"1 (VNNI only), not pool={pool} (input {h}x{w}, kernel {kh}x{kw}, "
                         f"{out_channels} output channels, batch {batch})")
    B, C, OC = batch, channels, out_channels  # noqa: N806
    OH, OW = h - kh + 1, w - kw + 1  # noqa: N806
    PLANE, P = C * h * w, (OH - 1) * w + OW  # noqa: N806
    G = -(-(C * kh * kw) // 4)  # noqa: N806
    pooled = pool == 2
    # TILE: vectors a tile; S_LAST: positions the last tile is shifted back
    mode, TILE, S_LAST = (_pool_mode(in_hw, kernel_hw, OC, B, isa) if pooled  # noqa: N806
                          else (None, 0, 0))
    OB = OC if pooled else _channel_block(OC, isa.max_acc)  # noqa: N806 - channels a block
    NOB = OC // OB  # noqa: N806
    pairs = mode == "rows"  # a tile one output row, a pair's first kept in ``prev``
    rows = OW >= V and not pooled  # vectors within output rows (all lanes stored)
    NR = -(-OW // V)  # noqa: N806 - vectors a row, the last shifted back
    YH, YW = (OH // 2, OW // 2) if pooled else (OH, OW)  # noqa: N806
    if pooled:  # "block": a tile a pair of rows; "rows": a tile a row
        NT = 2 * YH if pairs else YH  # noqa: N806
        NV = NT * TILE  # noqa: N806
    else:
        NV = OH * NR if rows else -(-P // V)  # noqa: N806
        TILE = max(1, min(NV, isa.max_acc // OB))  # noqa: N806 - vectors a tile (x OB accs)
        NT = -(-NV // TILE)  # noqa: N806

    def index(t, v):  # a tile's v-th vector's index (the last tile repeats the last vector)
        return T.min(t * T.int64(TILE) + v, T.int64(NV - 1))

    def column(i):  # the first output column of vector i (rows)
        return T.min(i % T.int64(NR) * T.int64(V), T.int64(OW - V))

    def first(t, v):  # a tile's v-th vector's first position
        if pairs:  # output row t's first (the last row's shifted back S_LAST)
            return T.min(t * T.int64(w), T.int64(P - V))
        if pooled:  # the last tile shifted back whole (S_LAST), so no read passes the plane
            return (T.min(t * T.int64(2 * w), T.int64(P - TILE * V))
                    + v * T.int64(V))
        i = index(t, v)
        if rows:
            return i // T.int64(NR) * T.int64(w) + column(i)
        return T.min(i * T.int64(V), T.int64(P - V))

    def run(xf, base):  # V bytes from base, zero-extended to int32 lanes
        return T.Cast(f"int32x{V}", T.reinterpret(xf.vload([base], f"{x_dtype}x{V}"),
                                                dtype=f"uint8x{V}"))

    def a_operand(xf, offsets, n, g, p):  # taps 4g..4g+3 at positions p..p+V-1, interleaved
        base = n * T.int64(PLANE) + p
        v = run(xf, base + T.Cast("int64", offsets[g * T.int64(4)]))
        for j in range(1, 4):
            v = T.bitwise_or(v, T.shift_left(
                run(xf, base + T.Cast("int64", offsets[g * T.int64(4) + T.int64(j)])),
                T.Broadcast(T.int32(8 * j), V)))
        if isa.flips(x_dtype):
            v = T.bitwise_xor(v, T.Broadcast(T.int32(FLIP), V))
        return v

    def slot(o, v):
        return (o * T.int64(TILE) + v) * T.int64(V)

    SPAN = -(-(V - 1) // w) + 1  # noqa: N806 - output rows a vector across rows meets

    def segment(n, o, p, r):  # where the lanes of vector p in row r go (and the others would)
        return T.Ramp(((n * T.int64(OC) + o) * T.int64(OH) + r) * T.int64(OW) + p
                      - r * T.int64(w), T.int64(1), V)

    def in_row(p, r):  # the lanes of the vector at p that are outputs of row r
        pos = T.Ramp(p, T.int64(1), V)
        return T.And(pos >= T.Broadcast(r * T.int64(w), V),
                     pos < T.Broadcast(r * T.int64(w) + T.int64(OW), V))

    def quad(quads, o, g):  # output channel o's weights of taps 4g..4g+3, as one int32
        return T.reinterpret(quads.vload([o, g * T.int64(4)], "int8x4"), dtype="int32")

    out_t = epilogue.out_dtype if epilogue is not None else "int32"
    int_t = epilogue.int_dtype if epilogue is not None else "int64"
    (IR, WI), (FR, WF) = epilogue_tables(epilogue, OC)  # noqa: N806

    def operand(g, v, built):  # where the a operand of quad g, vector v is in ``a``
        return (g * T.int64(TILE) + v) * T.int64(V) if built else v * T.int64(V)

    def channel(ob, o):  # the output channel of block ob's o-th sums
        return o if NOB == 1 else ob * T.int64(OB) + o

    def result(acc, chan_i, chan_f, ob, o, v):
        return channel_value(epilogue, acc.vload([slot(o, v)], f"int32x{V}"), chan_i, chan_f,
                             channel(ob, o), V)

    def pair_max(prev, acc, o, shift):  # the 2x2 maxima of a pair of rows, lanes < YW
        top = prev.vload([o * T.int64(V)], f"int32x{V}")
        bottom = T.Shuffle([acc.vload([slot(o, 0)], f"int32x{V}")],
                           [min(c + shift, V - 1) for c in range(V)])
        both = T.max(top, bottom)
        return T.max(T.Shuffle([both], [2 * min(i, YW - 1) for i in range(V)]),
                     T.Shuffle([both], [2 * min(i, YW - 1) + 1 for i in range(V)]))

    def pooled_row(n, o, r):  # where output channel o's pooled row r goes (YW lanes)
        return T.Ramp(((n * T.int64(OC) + o) * T.int64(YH) + r) * T.int64(YW), T.int64(1),
                      V)

    def first_lanes():
        return T.Ramp(T.int64(0), T.int64(1), V) < T.Broadcast(T.int64(YW), V)

    def corner(acc, o, shift, d):  # sums d + 2i of a pooling tile's pair of rows, i < 16
        return T.Shuffle([acc.vload([slot(o, v)], f"int32x{V}") for v in range(TILE)],
                         [shift + d + 2 * min(i, YW - 1) for i in range(V)])

    @T.macro
    def pool_row(acc, chan_i, chan_f, yf, n, o, t, shift):
        # the max of each 2x2 block of output channel o's sums, taken from the accumulators
        # (the tile's first row starts ``shift`` positions into them; lanes past YW are not
        # stored), the epilogue, one masked store
        T.evaluate(T.masked_store(
            yf, channel_value(epilogue, T.max(
                T.max(corner(acc, o, shift, 0), corner(acc, o, shift, 1)),
                T.max(corner(acc, o, shift, w), corner(acc, o, shift, w + 1))),
                chan_i, chan_f, o, V),
            pooled_row(n, o, t), first_lanes()))

    @T.macro
    def store_tile(acc, res, chan_i, chan_f, y, yf, n, ob, o, t):
        for v in T.unroll(T.int64(TILE)):
            if rows:  # V outputs of one row: one store
                y[n, channel(ob, o), index(t, v) // T.int64(NR),
                  T.ramp(column(index(t, v)), 1, V)] = result(acc, chan_i, chan_f, ob, o, v)
            else:  # one masked store for each output row the vector meets
                res[T.ramp(T.int64(0), 1, V)] = result(acc, chan_i, chan_f, ob, o, v)
                for j in T.unroll(T.int64(SPAN)):
                    if (t * T.int64(TILE) + v < T.int64(NV)
                            and first(t, v) // T.int64(w) + j < T.int64(OH)):
                        T.evaluate(T.masked_store(
                            yf, res.vload([T.int64(0)], f"{out_t}x{V}"),
                            segment(n, channel(ob, o), first(t, v),
                                    first(t, v) // T.int64(w) + j),
                            in_row(first(t, v), first(t, v) // T.int64(w) + j)))

    @T.macro
    def quad_operands(xf, offsets, a, n, t, g, built):  # quad g's a operands of tile t
        for v in T.unroll(T.int64(TILE)):
            a[T.ramp(operand(g, v, built), 1, V)] = a_operand(xf, offsets, n, g, first(t, v))

    @T.macro
    def operands(xf, offsets, a, n, t):  # every quad's a operands of tile t (channel blocks)
        for g in range(T.int64(G)):
            quad_operands(xf, offsets, a, n, t, g, True)

    @T.macro
    def accumulate(xf, quads, offsets, acc, a, n, t, ob, built):
        # built: the tile's operands are in ``a`` already (:func:`operands`), else each quad's
        # are built in turn
        for o in T.unroll(T.int64(OB)):
            for v in T.unroll(T.int64(TILE)):
                for lane in T.vectorized(T.int64(V)):
                    acc[slot(o, v) + lane] = quad(quads, channel(ob, o), T.int64(G))
        for g in range(T.int64(G)):
            if not built:
                quad_operands(xf, offsets, a, n, t, g, False)
            for o in T.unroll(T.int64(OB)):
                for v in T.unroll(T.int64(TILE)):
                    acc[T.ramp(slot(o, v), 1, V)] = isa.dot(
                        acc.vload([slot(o, v)], f"int32x{V}"),
                        a.vload([operand(g, v, built)], f"int32x{V}"),
                        T.Broadcast(quad(quads, channel(ob, o), g), V), signed)

    @T.macro
    def tile(xf, quads, offsets, chan_i, chan_f, y, yf, acc, a, res, n, t, ob, shift,
             built=False):
        accumulate(xf, quads, offsets, acc, a, n, t, ob, built)
        for o in T.unroll(T.int64(OB)):
            if pooled:
                pool_row(acc, chan_i, chan_f, yf, n, o, t, shift)
            else:
                store_tile(acc, res, chan_i, chan_f, y, yf, n, ob, o, t)

    @T.macro
    def row_pair(xf, quads, offsets, chan_i, chan_f, yf, acc, a, prev, n, r, shift):
        accumulate(xf, quads, offsets, acc, a, n, r * T.int64(2), 0, False)
        for o in T.unroll(T.int64(OC)):
            prev[T.ramp(o * T.int64(V), 1, V)] = acc.vload([slot(o, 0)], f"int32x{V}")
        accumulate(xf, quads, offsets, acc, a, n, r * T.int64(2) + T.int64(1), 0, False)
        for o in T.unroll(T.int64(OC)):
            T.evaluate(T.masked_store(
                yf, channel_value(epilogue, pair_max(prev, acc, o, shift), chan_i, chan_f, o,
                                  V),
                pooled_row(n, o, r), first_lanes()))

    @T.macro
    def body(xf, quads, offsets, chan_i, chan_f, y, yf):
        for n in T.parallel(T.int64(B)):  # images; at batch 1 one thread (no launch)
            acc = T.decl_buffer((T.int64(OB * TILE * V),), "int32", scope="local")
            a = T.decl_buffer((T.int64(TILE * V),), "int32", scope="local")
            res = T.decl_buffer((T.int64(V),), out_t, scope="local")
            prev = T.decl_buffer((T.int64(OC * V),), "int32", scope="local")
            # a pooling kernel's last tile or pair (shifted back S_LAST) on its own: its 2x2
            # blocks then lie at positions known when the kernel is built
            if pairs:
                for r in range(T.int64(YH - 1)):
                    row_pair(xf, quads, offsets, chan_i, chan_f, yf, acc, a, prev, n, r,
                             0)
                row_pair(xf, quads, offsets, chan_i, chan_f, yf, acc, a, prev, n,
                         T.int64(YH - 1), S_LAST)
            elif NOB > 1:  # channel blocks (not pooled): a tile's operands built once
                ops = T.decl_buffer((T.int64(G * TILE * V),), "int32", scope="local")
                for t in range(T.int64(NT)):
                    operands(xf, offsets, ops, n, t)
                    for ob in range(T.int64(NOB)):
                        tile(xf, quads, offsets, chan_i, chan_f, y, yf, acc, ops, res, n, t,
                             ob, 0, True)
            else:
                for t in range(T.int64(NT - 1 if pooled else NT)):
                    tile(xf, quads, offsets, chan_i, chan_f, y, yf, acc, a, res, n, t,
                         0, 0)
                if pooled:
                    tile(xf, quads, offsets, chan_i, chan_f, y, yf, acc, a, res, n,
                         T.int64(NT - 1), 0, S_LAST)

    x_shape = (T.int64(B), T.int64(C), T.int64(h), T.int64(w))
    y_shape = (T.int64(B), T.int64(OC), T.int64(YH), T.int64(YW))
    if epilogue is None:
        @T.prim_func(private=True, s_tir=True)
        def vnni_conv(x: T.Buffer(x_shape, x_dtype),
                      quads: T.Buffer((T.int64(OC), T.int64(4 * G + 4)), "int8"),
                      offsets: T.Buffer((T.int64(4 * G),), "int32"),
                      y: T.Buffer(y_shape, "int32")):
            T.func_attr(_attrs(f"{isa.tag.upper()} int8 convolution{SIGNED[signed]}"))
            xf = T.decl_buffer((T.int64(B * PLANE),), x_dtype, data=x.data)
            yf = T.decl_buffer((T.int64(B * OC * YH * YW),), "int32", data=y.data)
            body(xf, quads, offsets, None, None, y, yf)

        return vnni_conv

    @T.prim_func(private=True, s_tir=True)
    def vnni_conv_epilogue(x: T.Buffer(x_shape, x_dtype),
                           quads: T.Buffer((T.int64(OC), T.int64(4 * G + 4)), "int8"),
                           offsets: T.Buffer((T.int64(4 * G),), "int32"),
                           chan_i: T.Buffer((T.int64(IR), T.int64(WI)), int_t),
                           chan_f: T.Buffer((T.int64(FR), T.int64(WF)), "float32"),
                           y: T.Buffer(y_shape, out_t)):
        T.func_attr(_attrs(f"{isa.tag.upper()} int8 convolution{SIGNED[signed]} + "
                           "requantization"))
        xf = T.decl_buffer((T.int64(B * PLANE),), x_dtype, data=x.data)
        yf = T.decl_buffer((T.int64(B * OC * YH * YW),), out_t, data=y.data)
        body(xf, quads, offsets, chan_i, chan_f, y, yf)

    return vnni_conv_epilogue


def holds(consts: list[np.ndarray], w: np.ndarray) -> bool:
    """Whether the constants of a VNNI kernel's call (in order) hold the int8 weight ``w``: a
    dense kernel's ``W[K, N]`` (``w`` as given or transposed; ``packed``, then ``chan_i,
    chan_f`` with an epilogue), a conv kernel's OIHW ``w`` (``quads, offsets``, then the
    tables)."""
    if w.dtype != np.int8 or not consts:
        return False
    first = consts[0]
    if first.dtype == np.int8 and first.ndim == 3 and first.shape[2] == 64 and w.ndim == 2:
        nb, kb = first.shape[0], first.shape[1] - 1
        got = first[:, :kb].reshape(nb, kb, LANES, 4).transpose(1, 3, 0, 2).reshape(
            4 * kb, nb * LANES)
        for ref in (w, w.T):
            k, n = ref.shape
            if k == 4 * kb and -(-n // LANES) == nb:
                if np.array_equal(got[:, :n], ref) and not got[:, n:].any():
                    return True
        return False
    if first.dtype == np.int8 and first.ndim == 2 and w.ndim == 4 and len(consts) in (2, 4):
        oc, taps = w.shape[0], int(np.prod(w.shape[1:]))
        return (first.shape[0] == oc and first.shape[1] - 4 >= taps
                and np.array_equal(first[:, :taps], w.reshape(oc, taps)))
    return False
