"""What our rewriting passes share: the loop over a module's functions, look-ups over a
function's bindings, and binding a new expression in place of an old binding."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ._qdq_match import const_np, dtype_of, op_name

# ops whose integer output values are some of their first argument's
_SAME_VALUES = ("relax.nn.max_pool2d", "relax.reshape", "relax.flatten", "relax.permute_dims",
                "relax.squeeze", "relax.expand_dims")
# the ops whose output bounds Bindings.value_range derives from their first argument's
_RANGE_OPS = (*_SAME_VALUES, "relax.astype", "relax.clip", "relax.nn.relu", "relax.maximum",
              "relax.minimum", "relax.nn.pad")


def rewrite_functions(mutator, mod: tvm.IRModule, prepare) -> tvm.IRModule:
    """Rewrite every Relax function of ``mod`` with ``mutator`` (a ``PyExprMutator`` made on
    ``mod``), skipping fused ``Primitive`` ones and those for which ``prepare(gv, func)`` (which
    plans the rewrite of that function) returns False. Returns ``mod`` itself when no function
    was rewritten, so a pass whose preconditions fail leaves its input unchanged.
    """
    changed = False
    for gv, func in mod.functions.items():
        if not isinstance(func, relax.Function) or func.attrs and "Primitive" in func.attrs:
            continue
        if not prepare(gv, func):
            continue
        new = relax.analysis.remove_all_unused(mutator.visit_expr(func))
        mutator.builder_.update_func(gv, new)
        changed = True
    return mutator.builder_.get() if changed else mod


def rebind(mutator, binding: relax.VarBinding, expr, name: str) -> None:
    """Emit ``expr`` as ``name`` in ``mutator``'s block in place of ``binding``'s var.

    A dataflow output (a non-``DataflowVar`` bound inside a dataflow block) stays an output;
    later uses of the old var refer to the new one.
    """
    bb = mutator.builder_
    if isinstance(binding.var, relax.DataflowVar) or not bb.current_block_is_dataflow():
        new = bb.emit(expr, name)
    else:
        new = bb.emit_output(expr, name)
    mutator.set_var_remap(binding.var, new)


class Bindings:
    """Value and use-count look-ups over one function's bindings, in order."""

    def __init__(self, func: relax.Function) -> None:
        self.value: dict = {}
        self.uses: dict = {}
        self.order: list = []

        def visit(e):
            if isinstance(e, relax.Var):
                self.uses[e] = self.uses.get(e, 0) + 1

        for block in func.body.blocks:
            for b in block.bindings:
                if isinstance(b, relax.VarBinding):
                    self.value[b.var] = b.value
                    self.order.append(b.var)
                    relax.analysis.post_order_visit(b.value, visit)
        relax.analysis.post_order_visit(func.body.body, visit)

    def pool_2x2(self, var):
        """The single user of ``var`` when it is a 2x2 max pool of stride 2 (NCHW, no padding
        or dilation, floor mode): what our direct convolutions can take in, else None."""
        v = self.single_user(var, "relax.nn.max_pool2d")
        if v is None:
            return None
        at = self.value[v].attrs
        plain = ([int(i) for i in at.pool_size] == [2, 2]
                 and [int(i) for i in at.strides] == [2, 2]
                 and all(int(i) == 0 for i in at.padding)
                 and all(int(i) == 1 for i in at.dilation) and not bool(at.ceil_mode)
                 and str(at.layout) == "NCHW" and str(at.out_layout) in ("NCHW", ""))
        return v if plain else None

    def single_user(self, var, op: str):
        """The var bound to ``op(var, ...)`` if that is ``var``'s only use, else None."""
        if self.uses.get(var, 0) != 1:
            return None
        for v in self.order:
            val = self.value[v]
            if op_name(val) == op and len(val.args) >= 1 and val.args[0].same_as(var):
                return v
        return None

    def value_range(self, var) -> tuple[int, int] | None:
        """Bounds ``(lo, hi)`` of the values of the integer tensor ``var``, from the bindings
        that made it (a clip, a ReLU or a ``maximum`` with a constant, a cast that keeps
        them, zero padding, pooling and reshapes of such values); its dtype's range where
        nothing tighter is known; None for a non-integer tensor."""
        if not isinstance(getattr(var, "ty", None), relax.TensorType) or \
                not dtype_of(var).startswith(("int", "uint")):
            return None
        info = np.iinfo(dtype_of(var))
        full = int(info.min), int(info.max)
        val = self.value.get(var)
        op = op_name(val) if val is not None else None
        inner = self.value_range(val.args[0]) if op in _RANGE_OPS else None
        got = None
        if op in _SAME_VALUES:
            got = inner
        elif op == "relax.astype":
            got = inner if inner is not None and full[0] <= inner[0] and inner[1] <= full[1] \
                else None
        elif op == "relax.clip":
            lo, hi = (int(getattr(p, "value", p)) for p in val.args[1:3])
            got = (lo, hi) if inner is None else (max(lo, inner[0]), min(hi, inner[1]))
        elif op == "relax.nn.relu" and inner is not None:
            got = (max(inner[0], 0), max(inner[1], 0))
        elif op in ("relax.maximum", "relax.minimum") and inner is not None:
            c = const_np(val.args[1])
            if c is not None and c.size == 1:
                f = max if op == "relax.maximum" else min
                got = (f(inner[0], int(c.item())), f(inner[1], int(c.item())))
        elif op == "relax.nn.pad" and inner is not None:
            fill = int(float(getattr(val.attrs, "pad_value", 0) or 0))
            got = (min(inner[0], fill), max(inner[1], fill))
        if got is None:
            return full
        return max(got[0], full[0]), min(got[1], full[1])
