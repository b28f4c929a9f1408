"""Int8Vnni: int8 matmuls / convolutions with int32 sums → our AVX-512 VNNI kernels (``call_tir``).

Runs after QuantizeInt8 and the per-layer forms, on the int8 layers still dense:

    acc = R.matmul(x_q, W_i8, out_dtype="int32")          # x_q int8/uint8 [M, K], K % 4 == 0
    acc = R.nn.conv2d(x_q, W_i8, out_dtype="int32", ...)  # NCHW/OIHW, stride 1, no groups

Each layer's kernel (:mod:`tvmcomp.kernels.vnni`) also takes the elementwise bindings that
follow it (QuantizeInt8's bias, requantization and clamp, or its float scaling: add,
subtract, multiply, astype, less, right_shift, clip, maximum, minimum, relu over scalar or
per-channel constants), as long as nothing else reads their intermediate values, and stores
only the last value:

    y = R.call_tir(vnni_dense_b{M}_{K}x{N}_{x dtype}[_{y dtype}_{hash}],
                   (x_q, packed, comp[, chan_i, chan_f]))
    y = R.call_tir(vnni_conv_b{N}_{C}x{H}x{W}_{OC}k{KH}x{KW}_{x dtype}[_{y dtype}_{hash}],
                   (x_q, quads, offsets, comp[, chan_i, chan_f]))

after an ``R.nn.pad`` with zeros where the conv pads (QuantizeInt8 pads with a non-zero zero
point itself). The pipeline runs the pass where the target's CPU has ``avx512vnni`` (the
profile's ``mcpu``: :func:`target_has_vnni`); layers the kernels do not take are left as
they are.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..kernels import vnni
from ._emit import rebind, rewrite_functions
from ._qdq_match import const_np, dtype_of, op_name, shape_of
from .layers import direct_conv

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


# the Relax op of each step a kernel's epilogue computes
EPILOGUE_OPS = {f"relax.{'nn.' if op == 'relu' else ''}{op}": op for op in vnni.EPILOGUE_OPS}


@dataclass
class _Layer:
    """A layer the kernels take: its core binding's value, kind and output channels, and the
    elementwise bindings after it that go into the kernel (their values, in order)."""

    core: relax.Call
    kind: str  # "dense" | "conv"
    channels: int
    steps: list = field(default_factory=list)      # Epilogue steps
    members: list = field(default_factory=list)    # the vars the kernel computes, core first
    int_rows: list = field(default_factory=list)   # per-channel integer constants
    float_rows: list = field(default_factory=list)  # per-channel float constants


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.mod_ = mod
        self.kernels: dict = {}
        self.final: dict = {}
        self.skip: set = set()

    def run(self) -> tvm.IRModule:
        return rewrite_functions(self, self.mod_, lambda gv, func: self._plan(func))

    # ---- planning: the layers, and the epilogue each takes ------------------------------

    def _plan(self, func: relax.Function) -> bool:
        bindings = [b for block in func.body.blocks for b in block.bindings]
        uses: dict = {}

        def count(e):
            if isinstance(e, relax.Var):
                uses[e] = uses.get(e, 0) + 1

        for b in bindings:
            relax.analysis.post_order_visit(b.value, count)
        relax.analysis.post_order_visit(func.body.body, count)
        self.final, self.skip = {}, set()
        for i, b in enumerate(bindings):
            layer = self._layer(b.value)
            if layer is None:
                continue
            layer.members.append(b.var)
            chain = {b.var: ("acc",)}
            for nxt in bindings[i + 1:]:
                step = self._step(nxt.value, chain, layer)
                if step is None:
                    break
                layer.steps.append(step)
                chain[nxt.var] = ("step", len(layer.steps) - 1)
                layer.members.append(nxt.var)
            self._trim(layer, uses)
            self.final[layer.members[-1]] = layer
            self.skip.update(layer.members[:-1])
        return bool(self.final)

    @staticmethod
    def _trim(layer: _Layer, uses: dict) -> None:
        """Keep the longest prefix of the epilogue whose values, but the last, are used
        nowhere else (the kernel stores only the last)."""
        while layer.steps:
            inner: dict = {}
            for _, args, _ in layer.steps:
                for a in args:
                    if a[0] in ("acc", "step"):
                        v = layer.members[0 if a[0] == "acc" else a[1] + 1]
                        inner[v] = inner.get(v, 0) + 1
            if all(uses.get(v, 0) == inner.get(v, 0) for v in layer.members[:-1]):
                return
            layer.steps.pop()
            layer.members.pop()

    def _step(self, val, chain: dict, layer: _Layer):
        op = EPILOGUE_OPS.get(op_name(val))
        if op is None:
            return None
        dtype = str(val.ty.dtype)
        args = []
        tensors = val.args[:1] if op in ("astype", "relu", "clip") else val.args
        for a in tensors:
            if isinstance(a, relax.Var) and a in chain:
                args.append(chain[a])
                continue
            c = const_np(a)
            if c is None:
                return None
            enc = self._constant(c, layer)
            if enc is None:
                return None
            args.append(enc)
        if not any(a[0] in ("acc", "step") for a in args):
            return None
        if op == "clip":
            bounds = [getattr(p.value, "value", p.value) for p in val.args[1:]]
            args += [("const", int(b), dtype) for b in bounds]
        return (op, tuple(args), dtype)

    @staticmethod
    def _constant(c: np.ndarray, layer: _Layer):
        dtype = str(c.dtype)
        if c.size == 1:
            return ("const", c.item(), dtype)
        oc = layer.channels
        per_channel = ((1, oc, 1, 1), (oc, 1, 1)) if layer.kind == "conv" else ((oc,), (1, oc))
        if c.shape not in per_channel or dtype not in ("int32", "int64", "float32"):
            return None
        rows = layer.float_rows if dtype == "float32" else layer.int_rows
        rows.append(c.reshape(-1))
        return ("chan", len(rows) - 1, dtype)

    @staticmethod
    def _layer(val) -> _Layer | None:
        op = op_name(val)
        if op not in ("relax.matmul", "relax.nn.conv2d") or str(val.attrs.out_dtype) != "int32":
            return None
        x, w = val.args[0], const_np(val.args[1])
        shape, dtype = shape_of(x), dtype_of(x)
        if w is None or w.dtype != np.int8 or shape is None or dtype not in vnni.X_DTYPES:
            return None
        if op == "relax.matmul":
            ok = w.ndim == 2 and len(shape) == 2 and vnni.dense_supported(w.shape[0])
            return _Layer(val, "dense", int(w.shape[1])) if ok else None
        top, left, bottom, right = (int(p) for p in val.attrs.padding)
        if (w.ndim != 4 or len(shape) != 4 or not direct_conv(val.attrs) or not
                vnni.conv_supported((shape[2] + top + bottom, shape[3] + left + right),
                                    w.shape[2:])):
            return None
        return _Layer(val, "conv", int(w.shape[0]))

    # ---- rewriting -----------------------------------------------------------------------

    def _kernel(self, name: str, make):
        if name not in self.kernels:
            self.kernels[name] = self.builder_.add_func(
                make().with_attr("global_symbol", name), name)
        return self.kernels[name]

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        if binding.var in self.skip:
            return  # computed inside the kernel of the layer it belongs to
        layer = self.final.get(binding.var)
        if layer is None:
            super().visit_var_binding_(binding)
            return
        call = self._dense(layer) if layer.kind == "dense" else self._conv(layer)
        rebind(self, binding, call, f"{binding.var.name}_vnni")

    def _epilogue(self, layer: _Layer, width: int):
        """(the Epilogue or None, its constants as call arguments, a name suffix)."""
        if not layer.steps:
            return None, [], ""
        lo, hi = np.iinfo(np.int32).min, np.iinfo(np.int32).max
        narrow = all(r.min() >= lo and r.max() <= hi for r in layer.int_rows)
        epi = vnni.Epilogue(tuple(layer.steps), len(layer.int_rows), len(layer.float_rows),
                            "int32" if narrow else "int64")

        def rows(arrays, dtype):
            out = np.zeros((max(1, len(arrays)), width), dtype)
            for r, a in enumerate(arrays):
                out[r, :a.size] = a
            return relax.const(out, str(out.dtype))  # (int64 is kept only when named)

        tag = hashlib.sha256(repr((epi.steps, epi.int_dtype)).encode()).hexdigest()[:8]
        return epi, [rows(layer.int_rows, epi.int_dtype), rows(layer.float_rows, np.float32)], \
            f"_{epi.out_dtype}_{tag}"

    def _dense(self, layer: _Layer):
        x, w = layer.core.args[0], const_np(layer.core.args[1])
        (m, k), dtype, n = shape_of(x), dtype_of(x), w.shape[1]
        p = vnni.pack_dense(w, dtype)
        epi, extra, suffix = self._epilogue(layer, p.comp.size)
        gv = self._kernel(f"vnni_dense_b{m}_{k}x{n}_{dtype}{suffix}",
                          lambda: vnni.dense_kernel(m, k, n, dtype, epi))
        return relax.call_tir(gv, [self.visit_expr(x), relax.const(p.packed),
                                   relax.const(p.comp), *extra],
                              relax.TensorType((m, n), epi.out_dtype if epi else "int32"))

    def _conv(self, layer: _Layer):
        x, w = layer.core.args[0], const_np(layer.core.args[1])
        top, left, bottom, right = (int(p) for p in layer.core.attrs.padding)
        (n, c, h, wd), dtype = shape_of(x), dtype_of(x)
        hw = (h + top + bottom, wd + left + right)
        oc, _, kh, kw = w.shape
        x = self.visit_expr(x)
        if top or left or bottom or right:  # the zero point is 0 here (QuantizeInt8 pads others)
            x = self.builder_.emit(R.nn.pad(x, [0, 0, 0, 0, top, bottom, left, right]),
                                   "vnni_padded")
        p = vnni.pack_conv(w, hw, dtype)
        epi, extra, suffix = self._epilogue(layer, oc)
        gv = self._kernel(f"vnni_conv_b{n}_{c}x{hw[0]}x{hw[1]}_{oc}k{kh}x{kw}_{dtype}{suffix}",
                          lambda: vnni.conv_kernel(n, c, hw, oc, (kh, kw), dtype, epi))
        out = (n, oc, hw[0] - kh + 1, hw[1] - kw + 1)
        return relax.call_tir(gv, [x, relax.const(p.quads), relax.const(p.offsets),
                                   relax.const(p.comp), *extra],
                              relax.TensorType(out, epi.out_dtype if epi else "int32"))
