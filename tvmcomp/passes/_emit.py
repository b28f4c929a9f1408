"""What our rewriting passes share: the loop over a module's functions, look-ups over a
function's bindings, and binding a new expression in place of an old binding."""

from __future__ import annotations

import tvm
from tvm import relax

from ._qdq_match import op_name


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
