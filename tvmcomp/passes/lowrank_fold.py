"""Factorized layers (``tvmcomp compress --lowrank``) found in a Relax module, and the pass that
folds chosen ones back into one layer.

A layer factorized by truncated SVD imports as two calls with constant weights, the first's
result used only by the second:

- ``matmul(matmul(x, A), B)``: a Linear into rank ``r`` (no bias), then ``r → out``;
- ``conv2d(conv2d(x, A), B)``: a k×k conv into ``r`` channels (no bias), then a 1×1 conv
  (stride 1, no padding, ungrouped).

:func:`lowrank_pairs` lists them; :class:`LowRankFold` replaces the named ones by a single
layer with the product weight (the first's strides and padding), whose bias and activation
stay where they were. The build keeps a factorization only where its two kernels measure
faster than the whole layer's (:mod:`tvmcomp.plan.lowrank_gate`). Only float layers: an int8
pair is two quantized layers, and stays two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ._emit import Bindings, rebind, rewrite_functions
from .sparse_dense import _const, _indexed_calls, _static_shape, _weight_of


@dataclass(frozen=True)
class LowRankPair:
    """Two calls standing for one factorized layer, named by their layer names (``"matmul2"``,
    ``"matmul3"``: the first names the pair)."""

    kind: str                 # "matmul" or "conv"
    first: str
    second: str
    rank: int
    a: np.ndarray             # matmul: [r, in]; conv: [r, in, kh, kw]
    b: np.ndarray             # matmul: [out, r]; conv: [out, r, 1, 1]
    pixels: int = 1           # output pixels of a conv per image (1: a matmul's row)

    def whole(self) -> np.ndarray:
        """The one layer's weight: matmul ``[out, in]``; conv OIHW."""
        if self.kind == "matmul":
            return self.b @ self.a
        return np.einsum("or,rikl->oikl", self.b[:, :, 0, 0], self.a).astype(self.a.dtype)

    def weights(self) -> tuple[int, int]:
        """(weights factorized, weights whole)."""
        return int(self.a.size + self.b.size), int(self.b.shape[0] * self.a[0].size)

    def macs(self) -> tuple[int, int]:
        """(multiply-accumulates per image (per row of a matmul), factorized and whole)."""
        return tuple(n * self.pixels for n in self.weights())


def _is_pointwise(call) -> bool:
    a = call.attrs
    return ([int(v) for v in a.strides] == [1, 1] and all(int(v) == 0 for v in a.padding)
            and [int(v) for v in a.dilation] == [1, 1] and int(a.groups) == 1
            and str(a.data_layout) == "NCHW" and str(a.kernel_layout) == "OIHW")


def _pairs_with_calls(func: relax.Function):
    """``(pair, first call, second var)`` of every float factorized layer of ``func``."""
    b = Bindings(func)
    calls = list(_indexed_calls(b))
    index = {var: k for var, _, _, k in calls}
    out = []
    for var, val, op, k in calls:
        if op not in ("relax.matmul", "relax.nn.conv2d") or b.uses.get(var, 0) != 1:
            continue
        nxt = next((v for v, c, o, _ in calls if o == op and c.args[0].same_as(var)), None)
        if nxt is None:
            continue
        second = b.value[nxt]
        if op == "relax.matmul":
            a, w2 = _weight_of(b, val.args[1]), _weight_of(b, second.args[1])
            ok = a is not None and w2 is not None and a.dtype == w2.dtype == np.float32
        else:
            a, w2 = _const(val.args[1]), _const(second.args[1])
            ok = (a is not None and w2 is not None and a.dtype == w2.dtype == np.float32
                  and int(val.attrs.groups) == 1 and _is_pointwise(second)
                  and str(val.attrs.data_layout) == "NCHW"
                  and str(val.attrs.kernel_layout) == "OIHW")
        if not ok or a.shape[0] != w2.shape[1]:
            continue
        kind = "matmul" if op == "relax.matmul" else "conv"
        shape = _static_shape(var) or ()
        pixels = int(np.prod(shape[2:])) if kind == "conv" and len(shape) == 4 else 1
        out.append((LowRankPair(kind, f"{kind}{k}", f"{kind}{index[nxt]}", int(a.shape[0]),
                                a, w2, pixels), val, nxt))
    return out


def lowrank_pairs(func: relax.Function) -> list[LowRankPair]:
    """The float factorized layers of ``func``, in layer order."""
    return [p for p, *_ in _pairs_with_calls(func)]


@tvm.transform.module_pass(opt_level=0, name="LowRankFold")
class LowRankFold:
    """Fold the factorized layers named in ``fold`` (by their first call's layer name, in
    every function) into one layer each; others are left as two."""

    def __init__(self, fold: tuple[str, ...] = ()) -> None:
        self.fold = tuple(fold)

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        if not self.fold:
            return mod
        return _Folder(mod, set(self.fold)).run()


@mutator
class _Folder(PyExprMutator):
    def __init__(self, mod, fold: set[str]) -> None:
        super().__init__(mod)
        self.mod_ = mod
        self.fold = fold
        self.plan: dict = {}  # second var -> (pair, first call)

    def run(self) -> tvm.IRModule:
        def prepare(_gv, func) -> bool:
            self.plan = {second: (p, first) for p, first, second in _pairs_with_calls(func)
                         if p.first in self.fold}
            return bool(self.plan)

        return rewrite_functions(self, self.mod_, prepare)

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        if binding.var not in self.plan:
            super().visit_var_binding_(binding)
            return
        p, first = self.plan[binding.var]
        x = self.visit_expr(first.args[0])
        if p.kind == "matmul":  # [in, out], as matmul reads it
            y = relax.op.matmul(x, relax.const(np.ascontiguousarray(p.whole().T)))
        else:
            y = relax.Call(first.op, [x, relax.const(p.whole())], first.attrs, first.ty_args)
        rebind(self, binding, y, f"{p.first}_whole")


__all__ = ["LowRankFold", "LowRankPair", "lowrank_pairs"]
