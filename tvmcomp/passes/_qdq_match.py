"""Pattern matching over QDQ Relax (as the ONNX importer emits it) for :mod:`quantize_int8`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

ACT_DTYPES = ("int8", "uint8")
# Ops that commute with an increasing affine map, so they run unchanged on int8 values.
PASSTHROUGH = ("relax.nn.max_pool2d", "relax.reshape", "relax.permute_dims", "relax.squeeze",
               "relax.expand_dims", "relax.flatten")


def op_name(e) -> str | None:
    if isinstance(e, tvm.ir.Call) and isinstance(e.op, tvm.ir.Op):
        return str(e.op.name)
    return None


def const_np(e) -> np.ndarray | None:
    if isinstance(e, tvm.ir.Constant):
        return e.value.numpy()
    return None


def dtype_of(e) -> str:
    return str(e.ty.dtype)


def shape_of(e) -> tuple[int, ...] | None:
    shape = getattr(e.ty, "shape", None)
    if shape is None:
        return None
    try:
        return tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class QParams:
    """Per-tensor int8/uint8 quantization parameters of an activation."""

    scale: float
    zero_point: int
    dtype: str

    def same(self, other: QParams) -> bool:
        return (self.dtype == other.dtype and self.zero_point == other.zero_point
                and np.float32(self.scale) == np.float32(other.scale))


@dataclass
class Chain:
    """``[relu](add(conv2d|matmul(dequantize(x_q), W), bias))`` with constant int8 ``W``.

    ``w`` is int8 OIHW for conv2d, ``[K, N]`` for matmul; ``w_scale`` has one entry per
    output channel; ``bias`` is the real-valued bias per output channel (or None).
    """

    kind: str
    core: tvm.ir.Call
    x_q: relax.Expr
    x: QParams
    w: np.ndarray
    w_scale: np.ndarray
    bias: np.ndarray | None
    relu: bool
    members: list = field(default_factory=list)  # chain vars below the top


class Matcher:
    """Look-ups over one function's bindings (the original, un-rewritten IR)."""

    def __init__(self, func: relax.Function) -> None:
        self.value: dict = {}
        self.users: dict = {}
        for block in func.body.blocks:
            for b in block.bindings:
                if isinstance(b, relax.VarBinding):
                    self.value[b.var] = b.value
        for var, val in self.value.items():
            for u in _vars_in(val):
                self.users.setdefault(u, []).append(var)

    def producer(self, e):
        return self.value.get(e) if isinstance(e, relax.Var) else None

    def dequantize(self, e, want_const: bool = False):
        """``(data, scale[], zp[], axis)`` if ``e`` is bound to ``R.dequantize`` with constant
        scale and zero point (and constant data when ``want_const``)."""
        call = self.producer(e)
        if op_name(call) != "relax.dequantize":
            return None
        data, scale, zp = call.args
        s, z = const_np(scale), const_np(zp)
        if s is None or z is None or (want_const and const_np(data) is None):
            return None
        return data, s.astype(np.float64).ravel(), z.astype(np.int64).ravel(), int(call.attrs.axis)

    def act_qparams(self, e) -> tuple[relax.Expr, QParams] | None:
        """``(x_q, params)`` if ``e`` is a per-tensor dequantize of an int8/uint8 tensor."""
        d = self.dequantize(e)
        if d is None or d[1].size != 1 or d[2].size != 1:
            return None
        data, s, z, _ = d
        if dtype_of(data) not in ACT_DTYPES or not s[0] > 0:
            return None
        return data, QParams(float(s[0]), int(z[0]), dtype_of(data))

    def quantize_params(self, call) -> QParams | None:
        """Output params of an ``R.quantize`` call with per-tensor constant scale/zp."""
        if op_name(call) != "relax.quantize":
            return None
        s, z = const_np(call.args[1]), const_np(call.args[2])
        dtype = str(call.attrs.out_dtype)
        if s is None or z is None or s.size != 1 or z.size != 1 or dtype not in ACT_DTYPES:
            return None
        if not float(s.ravel()[0]) > 0:
            return None
        return QParams(float(s.ravel()[0]), int(z.ravel()[0]), dtype)

    def _weight(self, e, out_axis: int):
        """int8 weight and per-output-channel scales of ``dequantize(W_const)``."""
        d = self.dequantize(e, want_const=True)
        if d is None:
            return None
        data, s, z, axis = d
        w = const_np(data)
        if w.dtype != np.int8 or np.any(z != 0):
            return None
        n = w.shape[out_axis]
        if s.size == 1:
            s = np.full(n, s[0])
        elif s.size != n or axis % w.ndim != out_axis:
            return None
        if not np.all(s > 0):
            return None
        return w, s

    def _bias(self, e, nout: int, chan_shapes) -> np.ndarray | None:
        """Real bias values if ``e`` is a constant (maybe dequantized, maybe reshaped) with one
        value per output channel, broadcast along the channel axis."""
        if shape_of(e) not in chan_shapes:
            return None
        while True:
            c = const_np(e)
            if c is not None:
                return c.astype(np.float64).ravel() if c.dtype.kind == "f" else None
            call = self.producer(e)
            if op_name(call) == "relax.reshape":
                e = call.args[0]
                continue
            d = self.dequantize(e, want_const=True)
            if d is None:
                return None
            data, s, z, _ = d
            vals = (const_np(data).astype(np.int64).ravel() - z) * s
            return vals if vals.size == nout else None

    def chain(self, top) -> Chain | None:
        """Match the compute chain whose result is ``top`` (a var)."""
        members, e, relu = [], top, False
        call = self.producer(e)
        if op_name(call) == "relax.nn.relu":
            relu, e = True, call.args[0]
            members.append(e)
            call = self.producer(e)
        bias_expr = None
        if op_name(call) == "relax.add":
            a, b = call.args
            core_a = op_name(self.producer(a)) in ("relax.nn.conv2d", "relax.matmul")
            e, bias_expr = (a, b) if core_a else (b, a)
            members.append(e)
            call = self.producer(e)
        kind = op_name(call)
        if kind == "relax.nn.conv2d":
            return self._conv(call, bias_expr, relu, members)
        if kind == "relax.matmul":
            return self._matmul(call, bias_expr, relu, members)
        return None

    def _conv(self, call, bias_expr, relu, members) -> Chain | None:
        at = call.attrs
        if (str(at.data_layout), str(at.kernel_layout)) != ("NCHW", "OIHW"):
            return None
        if at.out_layout and str(at.out_layout) != "NCHW":
            return None
        x = self.act_qparams(call.args[0])
        wt = self._weight(call.args[1], 0)
        if x is None or wt is None:
            return None
        w, ws = wt
        bias = None
        if bias_expr is not None:
            n = w.shape[0]
            bias = self._bias(bias_expr, n, {(1, n, 1, 1), (n, 1, 1)})
            if bias is None:
                return None
        return Chain("conv2d", call, x[0], x[1], w, ws, bias, relu, members)

    def _matmul(self, call, bias_expr, relu, members) -> Chain | None:
        x = self.act_qparams(call.args[0])
        if x is None or shape_of(call.args[1]) is None or len(shape_of(call.args[1])) != 2:
            return None
        wexpr, transposed = call.args[1], False
        pc = self.producer(wexpr)
        if op_name(pc) == "relax.permute_dims":
            axes = pc.attrs.axes
            if axes is not None and [int(a) for a in axes] != [1, 0]:
                return None
            wexpr, transposed = pc.args[0], True
        wt = self._weight(wexpr, 0 if transposed else 1)
        if wt is None:
            return None
        w, ws = wt
        w = np.ascontiguousarray(w.T) if transposed else w
        bias = None
        if bias_expr is not None:
            n = w.shape[1]
            bias = self._bias(bias_expr, n, {(n,), (1, n)})
            if bias is None:
                return None
        return Chain("matmul", call, x[0], x[1], w, ws, bias, relu, members)

    def unary(self, e):
        """``(x_q, in_params, passthrough_call | None, relu)`` for
        ``[relu]([passthrough](dequantize(x_q)))`` (in either order)."""
        relu, pt = False, None
        for _ in range(3):
            call = self.producer(e)
            name = op_name(call)
            if name == "relax.nn.relu" and not relu:
                relu, e = True, call.args[0]
            elif name in PASSTHROUGH and pt is None:
                pt, e = call, call.args[0]
            else:
                break
        x = self.act_qparams(e)
        if x is None:
            return None
        return x[0], x[1], pt, relu


def _vars_in(expr) -> list:
    found = []
    relax.analysis.post_order_visit(
        expr, lambda e: found.append(e) if isinstance(e, relax.Var) else None)
    return found
