"""What our rewriting passes share: binding a new expression in place of an old binding."""

from __future__ import annotations

from tvm import relax


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
