"""QuantizeInt8: QDQ Relax → integer conv2d/matmul with fixed-point requantization."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..quant.errors import QuantError
from ..quant.fixed_point import INT_RANGES, quantize_multiplier
from ._emit import rebind, rewrite_functions
from .layers import INDEXED_OPS, layer_name
from ._qdq_match import Chain, Matcher, QParams, op_name

R = relax.op
CORE_OPS = ("relax.nn.conv2d", "relax.matmul")
ACCUMULATE = ("int32", "float32")
FLOAT32_EXACT = 2 ** 24  # every integer of magnitude <= 2**24 is a float32


@tvm.transform.module_pass(opt_level=0, name="QuantizeInt8")
class QuantizeInt8:
    """Rewrite dequantize → conv2d/matmul → quantize into int8 kernels with integer requantize.

    Expects the Relax that ``relax.frontend.onnx.from_onnx`` makes of a QDQ ONNX model (ours
    or ONNX Runtime's ``quantize_static(..., quant_format=QDQ)``), before ``FoldConstant``::

        xf = R.dequantize(x_q, sx, zx)            # per-tensor int8/uint8 activation
        wf = R.dequantize(W_i8, sw, 0, axis=0)    # constant int8 weight, per-tensor/-channel
        y  = R.nn.conv2d(xf, wf)                  # or R.matmul(xf, R.permute_dims(wf))
        y  = R.add(y, bias)                       # optional: dequantize(int32) or float const
        y  = R.nn.relu(y)                         # optional
        y_q = R.quantize(y, sy, zy)               # optional: without it the output is float

    and emits, with ``m0 * 2**-shift = sx * sw / sy`` (Q31 mantissa, per output channel)::

        acc = R.nn.conv2d(x_q, W_i8, out_dtype="int32")   # x_q padded with zx if zx != 0
        acc = acc + (round(bias / (sx * sw)) - zx * sum(W))
        v   = (int64(acc) * m0 + 2**(shift-1) - (acc < 0)) >> shift   # round half away
        y_q = int8(clip(v + zy, max(qmin, zy) if relu else qmin, qmax))

    A float-output chain emits ``float32(acc) * (sx * sw)`` (then ReLU).

    ``accumulate="float32"`` computes a conv2d's / matmul's integer sum in float32 instead
    (``R.nn.conv2d(x_q, W_i8, out_dtype="float32")`` or ``R.matmul(...)``, then
    ``astype int32``) wherever that is provably exact: every product and partial sum is an
    integer no larger than ``max_out(sum|W[out]|) * max|x_q|``, and when that bound is below
    2**24 float32 represents each of them exactly, so the result equals the int32 one bit for
    bit. On CPUs without int8 dot-product instructions (x86 without VNNI) the FMA units run
    this faster than the widening int32 multiply-adds LLVM emits; inputs and weights stay
    int8 in memory. Layers where the bound does not hold keep int32 accumulation. Max-pool, reshape,
    flatten, transpose and (un)squeeze between ``dequantize`` and ``quantize`` run on the
    int8 tensor (followed by an integer requantize when the two scales differ), and
    ``quantize(relu(dequantize(x)))`` becomes ``maximum(x, zx)``. Consecutive quantized ops
    therefore pass int8 tensors directly. Anything else (the float model input, unsupported
    ops, skipped layers) keeps its explicit ``R.quantize`` / ``R.dequantize`` boundary.
    A function with nothing to rewrite is returned unchanged.

    Emitted int8 results are named ``conv<k>_i8`` / ``matmul<k>_f32`` etc., ``k`` counting
    the function's convolution/matmul calls in order (:mod:`tvmcomp.plan.quant_report` maps the
    k-th to the k-th ONNX Conv/Gemm/MatMul node).
    """

    def __init__(self, accumulate: str = "int32") -> None:
        if accumulate not in ACCUMULATE:
            raise ValueError(f"accumulate must be one of {', '.join(ACCUMULATE)}, "
                             f"got {accumulate!r}")
        self.accumulate = accumulate

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return _Rewriter(mod, self.accumulate).run()


def float32_exact(w: np.ndarray, x_dtype: str, axis: int = 0) -> bool:
    """Whether int8 ``w`` over ``x_dtype`` inputs accumulates exactly in float32.

    ``axis`` is the output axis of ``w`` (0 for conv OIHW, 1 for a matmul's ``[in, out]``).
    """
    lo, hi = INT_RANGES[x_dtype]
    xmax = max(abs(lo), abs(hi))
    w64 = np.moveaxis(np.abs(w.astype(np.int64)), axis, 0)
    per_out = w64.reshape(w64.shape[0], -1).sum(1)
    return int(per_out.max(initial=0)) * xmax < FLOAT32_EXACT


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, accumulate: str = "int32") -> None:
        super().__init__(mod)
        self.mod_ = mod
        self.accumulate = accumulate
        self.anchors: dict = {}

    def run(self) -> tvm.IRModule:
        def prepare(gv, func) -> bool:
            self._plan(func)
            return bool(self.anchors)

        return rewrite_functions(self, self.mod_, prepare)

    # ---- planning (on the original IR) -------------------------------------------------

    def _plan(self, func: relax.Function) -> None:
        self.m = m = Matcher(func)
        self.anchors = {}
        cores = [v for v, val in m.value.items() if op_name(val) in INDEXED_OPS]
        self.core_index = {v: k for k, v in enumerate(cores)}
        claimed: set = set()
        for var in reversed(list(m.value)):
            if var in claimed:
                continue
            val = m.value[var]
            out = m.quantize_params(val)
            if out is not None:
                plan = self._compute_plan(m.chain(val.args[0]), out, val.args[0])
                if plan is not None:
                    self.anchors[var] = ("compute", plan)
                    claimed.update(plan[0].members)
                    claimed.add(val.args[0])
                    continue
                un = m.unary(val.args[0])
                if un is not None and self._unary_ok(un, out):
                    self.anchors[var] = ("unary", (un, out))
                continue
            if op_name(val) in ("relax.nn.relu", "relax.add", *CORE_OPS):
                plan = self._compute_plan(m.chain(var), None, var)
                if plan is not None:
                    self.anchors[var] = ("compute", plan)
                    claimed.update(plan[0].members)

    def _compute_plan(self, ch: Chain | None, out: QParams | None, top):
        """Precompute the integer constants; None (stay float) if they do not fit."""
        if ch is None:
            return None
        conv = ch.kind == "conv2d"
        nout = ch.w.shape[0] if conv else ch.w.shape[1]
        acc_scale = ch.x.scale * ch.w_scale.astype(np.float64)
        w64 = ch.w.astype(np.int64)
        wsum = w64.reshape(nout, -1).sum(1) if conv else w64.sum(0)
        bias = np.zeros(nout, np.int64)
        if ch.bias is not None:
            bias = np.round(ch.bias / acc_scale).astype(np.int64)
        bias = bias - ch.x.zero_point * wsum
        lo, hi = INT_RANGES["int32"]
        if np.any(bias < lo) or np.any(bias > hi):
            return None
        mult = None
        if out is not None:
            try:
                mult = quantize_multiplier(acc_scale / out.scale)
            except QuantError:
                return None
        core_var = ch.members[-1] if ch.members else top
        return ch, out, bias.astype(np.int32), acc_scale, mult, core_var

    @staticmethod
    def _unary_ok(un, out: QParams) -> bool:
        _, xin, _, _ = un
        if xin.same(out):
            return True
        try:
            quantize_multiplier(xin.scale / out.scale)
        except QuantError:
            return False
        return True

    # ---- rewriting -----------------------------------------------------------------------

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        anchor = self.anchors.get(binding.var)
        if anchor is None:
            super().visit_var_binding_(binding)
            return
        kind, info = anchor
        if kind == "compute":
            expr, name = self._emit_compute(binding.var, *info)
        else:
            expr, name = self._emit_unary(*info)
        rebind(self, binding, expr, name)

    def _emit_compute(self, top, ch: Chain, out, bias, acc_scale, mult, core_var):
        bb = self.builder_
        x = self.visit_expr(ch.x_q)
        zx = ch.x.zero_point
        if ch.kind == "conv2d":
            at = ch.core.attrs
            pad = [int(p) for p in at.padding]  # top, left, bottom, right
            if zx != 0 and any(pad):
                x = bb.emit(R.nn.pad(x, [0, 0, 0, 0, pad[0], pad[2], pad[1], pad[3]],
                                     pad_value=float(zx)))
                pad = [0, 0, 0, 0]
            in_float = self.accumulate == "float32" and float32_exact(ch.w, ch.x.dtype)
            acc = bb.emit(R.nn.conv2d(
                x, relax.const(ch.w, "int8"), strides=[int(s) for s in at.strides],
                padding=pad, dilation=[int(d) for d in at.dilation], groups=int(at.groups),
                data_layout="NCHW", kernel_layout="OIHW", out_layout="NCHW",
                out_dtype="float32" if in_float else "int32"))
            cshape = (1, ch.w.shape[0], 1, 1)
        else:
            in_float = self.accumulate == "float32" and float32_exact(ch.w, ch.x.dtype, 1)
            acc = bb.emit(R.matmul(x, relax.const(ch.w, "int8"),
                                   out_dtype="float32" if in_float else "int32"))
            cshape = (ch.w.shape[1],)
        if in_float:
            acc = bb.emit(R.astype(acc, "int32"))
        if np.any(bias):
            acc = bb.emit(R.add(acc, relax.const(bias.reshape(cshape), "int32")))
        k = self.core_index.get(core_var)
        base = layer_name(op_name(ch.core), k) if k is not None else "layer"
        if out is None:
            y = R.multiply(bb.emit(R.astype(acc, "float32")),
                           relax.const(acc_scale.astype(np.float32).reshape(cshape), "float32"))
            if ch.relu:
                y = R.nn.relu(bb.emit(y))
            return y, f"{base}_f32"
        m0, shift = mult
        return self._requant(acc, m0, shift, out, cshape, ch.relu), f"{base}_i8"

    def _emit_unary(self, un, out: QParams):
        bb = self.builder_
        x_q, xin, pt, relu = un
        x = self.visit_expr(x_q)
        name = "relu_i8"
        relu = relu and xin.zero_point > INT_RANGES[xin.dtype][0]  # else the clamp does it
        if pt is not None:
            call = relax.Call(pt.op, [x, *pt.args[1:]], pt.attrs, pt.ty_args)
            name = str(pt.op.name).split(".")[-1] + "_i8"
            if xin.same(out) and not relu:
                return call, name
            x = bb.emit(call)
        if xin.same(out):
            if relu:
                return R.maximum(x, relax.const(xin.zero_point, xin.dtype)), name
            return x, name
        acc = bb.emit(R.subtract(bb.emit(R.astype(x, "int32")),
                                 relax.const(xin.zero_point, "int32")))
        m0, shift = quantize_multiplier(xin.scale / out.scale)
        return self._requant(acc, m0, shift, out, (), relu), name

    def _requant(self, acc, m0, shift, out: QParams, cshape, relu: bool):
        """int8/uint8 ``clip(round_half_away(acc * m0 / 2**shift) + zp)`` in int64."""
        bb = self.builder_

        def c64(a):
            a = np.asarray(a, np.int64)
            return relax.const(a.reshape(cshape) if a.size > 1 else a.reshape(()), "int64")

        v = bb.emit(R.multiply(bb.emit(R.astype(acc, "int64")), c64(m0)))
        neg = bb.emit(R.astype(R.less(v, relax.const(0, "int64")), "int64"))
        half = np.left_shift(np.int64(1), shift - 1)
        v = bb.emit(R.right_shift(R.subtract(R.add(v, c64(half)), neg), c64(shift)))
        lo, hi = INT_RANGES[out.dtype]
        if relu:
            lo = max(lo, out.zero_point)
        if out.zero_point:
            v = bb.emit(R.add(v, relax.const(out.zero_point, "int64")))
        return R.astype(bb.emit(R.clip(v, lo, hi)), out.dtype)
