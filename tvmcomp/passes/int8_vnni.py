"""Int8Vnni: int8 matmuls / convolutions with int32 sums → our AVX-512 VNNI kernels (``call_tir``).

Runs after QuantizeInt8 and the per-layer forms, on the int8 layers still dense:

    acc = R.matmul(x_q, W_i8, out_dtype="int32")          # x_q int8/uint8 [M, K], K % 4 == 0
    acc = R.nn.conv2d(x_q, W_i8, out_dtype="int32", ...)  # NCHW/OIHW, stride 1, no groups

become ``R.call_tir(vnni_dense_b{M}_{K}x{N}_{dtype}, (x_q, packed, comp))`` and, after an
``R.nn.pad`` with zeros where the conv pads (QuantizeInt8 pads with a non-zero zero point
itself), ``R.call_tir(vnni_conv_b{N}_{C}x{H}x{W}_{OC}k{KH}x{KW}_{dtype}, (x_q, quads,
offsets, comp))`` (:mod:`tvmcomp.kernels.vnni`). The bias and requantization that follow
stay as they are. The pipeline runs it where the target's CPU has ``avx512vnni`` (the
profile's ``mcpu``: :func:`target_has_vnni`); layers the kernels do not take are left as
they are.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..kernels import vnni
from ._emit import rebind, rewrite_functions

R = relax.op


def target_has_vnni(target) -> bool:
    """Whether ``target`` is an x86 CPU with AVX-512 VNNI."""
    from tvm.target import codegen

    if target.kind.name != "llvm":
        return False
    triple = str(target.attrs.get("mtriple", "x86_64"))
    return triple.startswith("x86_64") and bool(codegen.target_has_features("avx512vnni",
                                                                            target))


@tvm.transform.module_pass(opt_level=0, name="Int8Vnni")
class Int8Vnni:
    """Rewrite the int8 layers the VNNI kernels take; see the module docstring."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return _Rewriter(mod).run()


def _static(ty) -> tuple[int, ...] | None:
    shape = getattr(ty, "shape", None)
    if not isinstance(shape, relax.ShapeExpr):
        return None
    dims = [d.value if isinstance(d, tvm.tirx.IntImm) else None for d in shape.values]
    return None if None in dims else tuple(int(d) for d in dims)


def _const_int8(e) -> np.ndarray | None:
    if isinstance(e, tvm.ir.Constant) and str(e.value.dtype) == "int8":
        return e.value.numpy()
    return None


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.mod_ = mod
        self.kernels: dict = {}

    def run(self) -> tvm.IRModule:
        return rewrite_functions(self, self.mod_, lambda gv, func: True)

    def _kernel(self, name: str, make):
        if name not in self.kernels:
            self.kernels[name] = self.builder_.add_func(
                make().with_attr("global_symbol", name), name)
        return self.kernels[name]

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        val = binding.value
        op = getattr(getattr(val, "op", None), "name", "")
        call = None
        if op == "relax.matmul" and str(val.attrs.out_dtype) == "int32":
            call = self._dense(val)
        elif op == "relax.nn.conv2d" and str(val.attrs.out_dtype) == "int32":
            call = self._conv(val)
        if call is None:
            super().visit_var_binding_(binding)
            return
        rebind(self, binding, call, f"{binding.var.name}_vnni")

    def _dense(self, val):
        x, w = val.args
        shape, dtype = _static(x.ty), str(x.ty.dtype)
        w = _const_int8(w)
        if (w is None or w.ndim != 2 or shape is None or len(shape) != 2
                or dtype not in vnni.X_DTYPES or not vnni.dense_supported(w.shape[0])):
            return None
        (m, k), n = shape, w.shape[1]
        p = vnni.pack_dense(w, dtype)
        gv = self._kernel(f"vnni_dense_b{m}_{k}x{n}_{dtype}",
                          lambda: vnni.dense_kernel(m, k, n, dtype))
        return relax.call_tir(gv, [self.visit_expr(x), relax.const(p.packed),
                                   relax.const(p.comp)], relax.TensorType((m, n), "int32"))

    def _conv(self, val):
        x, w = val.args
        at = val.attrs
        shape, dtype = _static(x.ty), str(x.ty.dtype)
        w = _const_int8(w)
        plain = (w is not None and w.ndim == 4 and shape is not None and len(shape) == 4
                 and dtype in vnni.X_DTYPES and int(at.groups) == 1
                 and all(int(s) == 1 for s in at.strides)
                 and all(int(d) == 1 for d in at.dilation)
                 and (str(at.data_layout), str(at.kernel_layout), str(at.out_layout))
                 == ("NCHW", "OIHW", "NCHW"))
        if not plain:
            return None
        top, left, bottom, right = (int(p) for p in at.padding)
        n, c, h, wd = shape
        hw = (h + top + bottom, wd + left + right)
        oc, _, kh, kw = w.shape
        if not vnni.conv_supported(hw, (kh, kw)):
            return None
        x = self.visit_expr(x)
        if top or left or bottom or right:  # the zero point is 0 here (QuantizeInt8 pads others)
            x = self.builder_.emit(R.nn.pad(x, [0, 0, 0, 0, top, bottom, left, right]),
                                   "vnni_padded")
        p = vnni.pack_conv(w, hw, dtype)
        gv = self._kernel(f"vnni_conv_b{n}_{c}x{hw[0]}x{hw[1]}_{oc}k{kh}x{kw}_{dtype}",
                          lambda: vnni.conv_kernel(n, c, hw, oc, (kh, kw), dtype))
        out = (n, oc, hw[0] - kh + 1, hw[1] - kw + 1)
        return relax.call_tir(gv, [x, relax.const(p.quads), relax.const(p.offsets),
                                   relax.const(p.comp)], relax.TensorType(out, "int32"))
