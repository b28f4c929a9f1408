"""Kernels that decode a compressed weight once, at load, into the TVM tensor cache.

``CodebookDense(at_load=...)`` stores such a layer's codes (a code per weight, or
sliced-ELLPACK codes for a pruned one) and gives the artifact a function,
:data:`DECODE_FUNCTION`, that runs these kernels once and puts each dense weight in TVM's
tensor cache (``vm.builtin.tensor_cache``) under :func:`cache_key`; the layer's kernel reads
it from there. The kernels are naive loops, scheduled by hand (never tuned): they run once.
"""

from __future__ import annotations

import numpy as np

from . import HAND_SCHEDULED
from .codebook import codes_per_byte
from .sell import SLICE, SlicedMatrix

# the artifact's function that decodes the weights at load (manifest runtime.on_load)
DECODE_FUNCTION = "decode_weights"
CACHE_PREFIX = "tvmcomp.decoded."


def cache_key(w: np.ndarray) -> str:
    """The tensor-cache key of weight ``w`` (as its layer reads it) decoded at load: a hash
    of its values and shape, so two artifacts in one process never read each other's
    weights (and identical ones share one)."""
    import hashlib

    w = np.ascontiguousarray(w, np.float32)
    h = hashlib.sha256(np.asarray(w.shape, np.int64).tobytes())
    h.update(w.tobytes())
    return CACHE_PREFIX + h.hexdigest()[:20]


def decode_prim_func(codebook_len: int, stored_len: int, shape, bits: int):
    """A TIR function ``(codebook f32[codebook_len], stored u8[stored_len], token i32[1]) ->
    w f32[shape]``: ``w`` (row-major) is ``codebook[code]`` of the codes
    :func:`~tvmcomp.kernels.codebook.pack` stored (one a byte past 4 bits). Naive loops,
    marked scheduled: it runs once, at load.
    ``token`` is not read: called with a tensor allocated at run time, the call has an
    argument that is not a constant, so Relax's ``FoldConstant`` cannot evaluate it at
    compile time (it would put the decoded weight back into the artifact)."""
    from tvm import te, tirx

    per = codes_per_byte(bits)
    cb = te.placeholder((int(codebook_len),), "float32", name="codebook")
    codes = te.placeholder((int(stored_len),), "uint8", name="stored")
    token = te.placeholder((1,), "int32", name="token")
    strides = [int(np.prod(shape[i + 1:])) for i in range(len(shape))]

    def value(*idx):
        flat = sum((i * s for i, s in zip(idx, strides)), tirx.const(0, "int32"))
        if per == 1:
            return cb[codes[flat].astype("int32")]
        byte = codes[flat // per].astype("int32")
        return cb[(byte >> ((flat % per) * bits)) & ((1 << bits) - 1)]

    out = te.compute([int(d) for d in shape], value, name="decoded")
    func = te.create_prim_func([cb, codes, token, out]).without_attr("global_symbol")
    return func.with_attrs({"tirx.is_scheduled": True, HAND_SCHEDULED: "codebook decode"})


def sell_decode_kernel(m: SlicedMatrix, out_shape: tuple[int, ...], transpose: bool = False):
    """The PrimFunc ``(codebook, data, indices, slice_ptr, row_order, token) -> w`` that
    decodes ``m`` (codes into a codebook: ``sell_codebook_from_dense``) into the dense
    float32 ``w`` of ``out_shape``: ``m``'s ``[rows, cols]`` matrix row-major (e.g. a conv
    weight ``[O, I, kh, kw]`` from ``[O, I*kh*kw]``), or with ``transpose`` its ``[cols,
    rows]`` transpose (a matmul weight as the layer reads it). Zero-fills ``w``, then walks
    each row's stored entries, its column a running sum of the steps. Serial loops: it runs
    once, at load. ``token`` is not read (see :func:`decode_prim_func`)."""
    import tvm
    from tvm.script import tirx as T

    if m.codebook is None:
        raise ValueError("sell_decode_kernel decodes a layout of codes (a codebook layer)")
    rows, cols = m.shape
    if int(np.prod(out_shape)) != rows * cols:
        raise ValueError(f"out_shape {out_shape} does not hold a {rows}x{cols} matrix")
    C = SLICE  # noqa: N806
    NS, NE, ND, CB = m.slices, m.stored, int(m.data.size), int(m.codebook.size)  # noqa: N806
    bits = m.code_bits
    per = codes_per_byte(bits)
    mask = (1 << bits) - 1
    row_t = str(m.row_order.dtype)
    total = rows * cols
    shape = [T.int64(int(d)) for d in out_shape]

    @T.prim_func(private=True, s_tir=True)
    def decode(codebook: T.Buffer((T.int64(CB),), "float32"),
               data: T.Buffer((T.int64(ND),), "uint8"),
               idx: T.Buffer((T.int64(NE),), "uint8"),
               slice_ptr: T.Buffer((T.int64(NS + 1),), "int32"),
               row_order: T.Buffer((T.int64(NS * C),), row_t),
               token: T.Buffer((T.int64(1),), "int32"),
               w: T.Buffer(shape, "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True,
                     HAND_SCHEDULED: "sliced-ELLPACK decode"})
        flat = T.decl_buffer((T.int64(total),), "float32", data=w.data)
        col = T.decl_buffer((1,), "int32", scope="local")
        for i in range(T.int64(total)):
            flat[i] = T.float32(0)
        for s in range(T.int64(NS)):
            for lane in range(T.int64(C)):
                if row_order[s * C + lane] >= T.Cast(row_t, 0):
                    col[0] = 0
                    for j in range(T.Cast("int64", slice_ptr[s]) // C,
                                   T.Cast("int64", slice_ptr[s + 1]) // C):
                        col[0] = col[0] + T.Cast("int32", idx[j * C + lane])
                        code = T.bitwise_and(T.shift_right(
                            data[j // per * C + lane], T.Cast("uint8", j % per * bits)),
                            T.uint8(mask))
                        if code != T.uint8(0):
                            r = T.Cast("int64", row_order[s * C + lane])
                            c = T.Cast("int64", col[0])
                            if transpose:
                                flat[c * rows + r] = codebook[T.Cast("int64", code)]
                            else:
                                flat[r * cols + c] = codebook[T.Cast("int64", code)]

    return decode
