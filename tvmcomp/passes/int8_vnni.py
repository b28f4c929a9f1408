"""Int8Vnni: int8 matmuls / convolutions → our exact int8 kernels (``call_tir``) on AVX-512 VNNI,
or on AVX2 where the activations are known to lie in [0, 127].

Runs after QuantizeInt8 and the per-layer forms, on the int8 layers still dense:

    acc = R.matmul(x_q, W_i8, out_dtype="int32")          # x_q int8/uint8 [M, K], K % 4 == 0
    acc = R.nn.conv2d(x_q, W_i8, out_dtype="int32", ...)  # NCHW/OIHW, stride 1, no groups

or their float32-accumulating form (``out_dtype="float32"`` then ``astype int32``, which
QuantizeInt8 emits where that is exact: the kernel's int32 sums are the same values).

Each layer's kernel (:mod:`tvmcomp.kernels.vnni`) also takes the elementwise bindings that
follow it (QuantizeInt8's bias, requantization and clamp, or its float scaling: add,
subtract, multiply, astype, less, right_shift, clip, maximum, minimum, relu over scalar or
per-channel constants), as long as nothing else reads their intermediate values, and stores
only the last value:

    y = R.call_tir({isa}_dense_b{M}_{K}x{N}_{x dtype}[_{y dtype}_{hash}],
                   (x_q, packed[, chan_i, chan_f]))
    y = R.call_tir({isa}_conv_b{N}_{C}x{H}x{W}_{OC}k{KH}x{KW}_{x dtype}[_{y dtype}_{hash}],
                   (x_q, quads, offsets[, chan_i, chan_f]))

after an ``R.nn.pad`` with zeros where the conv pads (QuantizeInt8 pads with a non-zero zero
point itself). A conv kernel also takes the 2x2 max pool of stride 2 that follows its last
value (``..._pool2``) where its epilogue never decreases as the sum grows (the max is taken
on the sums; :meth:`EpiloguePlan.non_decreasing`) and a pair of output rows fits its
accumulators (:func:`~tvmcomp.kernels.vnni.conv_pool_fits`).

The pipeline runs the pass where the target's CPU has ``avx512vnni`` (the profile's
``mcpu``: :func:`target_int8_isa`), or ``avx2`` (``Int8Vnni("avx2")``): there it takes the
int8 layers whose input is known to be ``>= 0`` (``vpmaddubsw`` is exact for activations up
to 127: :mod:`tvmcomp.kernels.vnni`), from the bindings that made it
(:meth:`Bindings.value_range`: a ReLU's clip at 0, then pooling, flattening, zero padding),
and those over activations of either sign whose weights are ``>= -127`` (``_signed``
kernels, ``vpsignb``). Layers the kernels do not take are left as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..kernels import vnni
from ._emit import Bindings, rebind, rewrite_functions
from ._epilogue import EpiloguePlan, plan_epilogue
from ._qdq_match import const_np, dtype_of, op_name, shape_of
from .layers import direct_conv

R = relax.op
_TO_INT32 = ("astype", (("acc",),), "int32")  # a float-accumulated layer's first step


def target_has_vnni(target) -> bool:
    """Whether ``target`` is an x86 CPU with AVX-512 VNNI."""
    return target_int8_isa(target) == vnni.VNNI.name


def target_int8_isa(target) -> str | None:
    """The instruction set of our int8 kernels for ``target``: ``"avx512_vnni"``,
    ``"avx2"`` (an x86 CPU with AVX2 and no VNNI), or None."""
    from tvm.target import codegen

    if target.kind.name != "llvm":
        return None
    triple = str(target.attrs.get("mtriple", "x86_64"))
    if not triple.startswith("x86_64"):
        return None
    for isa, feature in ((vnni.VNNI.name, "avx512vnni"), (vnni.AVX2.name, "avx2")):
        if codegen.target_has_features(feature, target):
            return isa
    return None


def _padded_hw(conv: relax.Call) -> tuple[int, int]:
    """The spatial size of a ``conv2d``'s input after its padding."""
    _, _, h, w = shape_of(conv.args[0])
    top, left, bottom, right = (int(p) for p in conv.attrs.padding)
    return h + top + bottom, w + left + right


@tvm.transform.module_pass(opt_level=0, name="Int8Vnni")
class Int8Vnni:
    """Rewrite the int8 layers the kernels of ``isa`` (``"avx512_vnni"`` or ``"avx2"``)
    take; see the module docstring."""

    def __init__(self, isa: str = vnni.VNNI.name) -> None:
        if isa not in vnni.ISAS:
            raise ValueError(f"isa must be one of {', '.join(vnni.ISAS)}, got {isa!r}")
        self.isa = vnni.ISAS[isa]

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return _Rewriter(mod, self.isa).run()


@dataclass
class _Layer:
    """A layer the kernels take: its core binding's value, what its kernel computes, and
    whether it takes the 2x2 max pool after that too (conv only)."""

    core: relax.Call
    plan: EpiloguePlan
    pool: int = 1
    signed: bool = False  # (AVX2) int8 input of either sign: Isa.dot(signed=True)


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, isa: vnni.Isa) -> None:
        super().__init__(mod)
        self.mod_ = mod
        self.isa = isa
        self.kernels: dict = {}
        self.final: dict = {}
        self.skip: set = set()

    def run(self) -> tvm.IRModule:
        return rewrite_functions(self, self.mod_, lambda gv, func: self._plan(func))

    def _plan(self, func: relax.Function) -> bool:
        b = Bindings(func)
        self.final, self.skip = {}, set()
        for var in b.order:
            layer = self._layer(b, b.value[var])
            if layer is None:
                continue
            kind, channels, signed = layer
            plan = plan_epilogue(b, var, kind, channels)
            if dtype_of(var) == "float32" and plan.steps[:1] != [_TO_INT32]:
                continue  # the float sums' cast to int32 is read elsewhere too
            pool = self._pool(b, b.value[var], plan)
            if pool is None:
                self.final[plan.final] = _Layer(b.value[var], plan, 1, signed)
                self.skip.update(plan.members[:-1])
            else:  # the pool's binding takes the kernel's call
                self.final[pool] = _Layer(b.value[var], plan, 2, signed)
                self.skip.update(plan.members)
        return bool(self.final)

    def _pool(self, b: Bindings, core, plan: EpiloguePlan):
        """The 2x2 max pool after a conv's last computed value that its kernel can take (the
        epilogue non-decreasing; :func:`~tvmcomp.kernels.vnni.conv_pool_fits`), else None."""
        if plan.kind != "conv" or not plan.non_decreasing():
            return None
        pool = b.pool_2x2(plan.final)
        khw, n = const_np(core.args[1]).shape[2:], shape_of(core.args[0])[0]
        return pool if pool is not None and vnni.conv_pool_fits(
            _padded_hw(core), khw, plan.channels, n, self.isa) else None

    def _layer(self, b: Bindings, val) -> tuple[str, int, bool] | None:
        """(kind, output channels, whether its input is summed as signed: :meth:`_signed`)
        of an int8 layer the kernels take, else None."""
        op = op_name(val)
        if op not in ("relax.matmul", "relax.nn.conv2d") or \
                str(val.attrs.out_dtype) not in ("int32", "float32"):
            return None
        x, w = val.args[0], const_np(val.args[1])
        shape, dtype = shape_of(x), dtype_of(x)
        if w is None or w.dtype != np.int8 or shape is None or dtype not in self.isa.x_dtypes:
            return None
        signed = self._signed(b, val)
        if signed is None:
            return None  # (AVX2) the sums of these activations and weights would saturate
        if op == "relax.matmul":
            ok = w.ndim == 2 and len(shape) == 2 and vnni.dense_supported(w.shape[0])
            return ("dense", int(w.shape[1]), signed) if ok else None
        if (w.ndim != 4 or len(shape) != 4 or not direct_conv(val.attrs)
                or not vnni.conv_supported(_padded_hw(val), w.shape[2:])):
            return None
        return ("conv", int(w.shape[0]), signed)

    def _signed(self, b: Bindings, val) -> bool | None:
        """Whether the layer's int8 input may be negative where the kernels read it as it
        is (AVX2: summed with ``Isa.dot(signed=True)``, exact for weights >= -127, as our
        symmetric quantization makes them); None where neither way is exact."""
        x, w = val.args[0], const_np(val.args[1])
        if self.isa.flips(dtype_of(x)) or dtype_of(x) != "int8" or b.value_range(x)[0] >= 0:
            return False
        return True if int(w.min()) >= -127 else None

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
        call = self._dense(layer) if layer.plan.kind == "dense" else self._conv(layer)
        rebind(self, binding, call, f"{binding.var.name}_vnni")

    def _dense(self, layer: _Layer):
        x, w = layer.core.args[0], const_np(layer.core.args[1])
        (m, k), dtype, n = shape_of(x), dtype_of(x), w.shape[1]
        p = vnni.pack_dense(w, dtype, self.isa)
        epi = layer.plan.epilogue()
        extra = layer.plan.constants(p.comp.size) if epi else []
        gv = self._kernel(f"{self.isa.dense_name}b{m}_{k}x{n}_{dtype}"
                          f"{'_signed' if layer.signed else ''}{layer.plan.suffix()}",
                          lambda: vnni.dense_kernel(m, k, n, dtype, epi, self.isa,
                                                    layer.signed))
        return relax.call_tir(gv, [self.visit_expr(x), relax.const(p.packed), *extra],
                              relax.TensorType((m, n), epi.out_dtype if epi else "int32"))

    def _conv(self, layer: _Layer):
        x, w = layer.core.args[0], const_np(layer.core.args[1])
        top, left, bottom, right = (int(p) for p in layer.core.attrs.padding)
        (n, c, _, _), dtype, hw = shape_of(x), dtype_of(x), _padded_hw(layer.core)
        oc, _, kh, kw = w.shape
        x = self.visit_expr(x)
        if top or left or bottom or right:  # the zero point is 0 here (QuantizeInt8 pads others)
            x = self.builder_.emit(R.nn.pad(x, [0, 0, 0, 0, top, bottom, left, right]),
                                   "vnni_padded")
        p = vnni.pack_conv(w, hw, dtype, self.isa)
        epi = layer.plan.epilogue()
        extra = layer.plan.constants(oc) if epi else []
        gv = self._kernel(f"{self.isa.conv_name}b{n}_{c}x{hw[0]}x{hw[1]}_{oc}k{kh}x{kw}_{dtype}"
                          f"{'_signed' if layer.signed else ''}"
                          f"{'_pool2' if layer.pool == 2 else ''}{layer.plan.suffix()}",
                          lambda: vnni.conv_kernel(n, c, hw, oc, (kh, kw), dtype, epi,
                                                   layer.pool, self.isa, layer.signed))
        out = (n, oc, (hw[0] - kh + 1) // layer.pool, (hw[1] - kw + 1) // layer.pool)
        return relax.call_tir(gv, [x, relax.const(p.quads), relax.const(p.offsets), *extra],
                              relax.TensorType(out, epi.out_dtype if epi else "int32"))
