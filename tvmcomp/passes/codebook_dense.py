"""CodebookDense: a dense layer whose weight has few distinct values keeps them as a codebook.

Weight sharing (``tvmcomp compress --share-bits``) leaves each layer with at most ``2**bits``
distinct weight values. This pass stores such a float matmul weight as uint8 indices plus a
float32 codebook and fuses the decode into the layer's kernel, so ``model.so`` embeds the
indices and the codebook, not the dense weight (TVM's ``FoldConstant`` would otherwise fold
``take(codebook, indices)`` straight back into a dense constant).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, wildcard
from tvm.relax.expr_functor import PyExprMutator, mutator

from ._emit import rebind, rewrite_functions
from .layers import layer_key
from .sparse_dense import sparse_candidates

MAX_CODES = 256  # uint8 indices
COMPOSITE = "tvmcomp.codebook_matmul"


def codebook_length(codes: int) -> int:
    """The stored codebook's length: ``codes`` rounded up to a power of two (the unused
    entries are zeros), so layers shared to the same bits give the same kernel workload and
    tuning records carry over between models."""
    return 1 << max(0, int(codes) - 1).bit_length()


@dataclass(frozen=True)
class CodebookLayer:
    """One float matmul layer with at most :data:`MAX_CODES` distinct weight values."""

    key: str                 # "<function>/matmul<k>"
    shape: tuple[int, int]   # [out, in]
    codes: int               # distinct weight values
    dense_bytes: int         # the float32 weight
    index_bytes: int         # uint8 indices
    codebook_bytes: int      # float32 codebook (padded to a power of two)

    def to_dict(self) -> dict:
        return {"key": self.key, "shape": list(self.shape), "codes": self.codes,
                "dense_bytes": self.dense_bytes, "index_bytes": self.index_bytes,
                "codebook_bytes": self.codebook_bytes}


def codebook_layers(mod: tvm.IRModule) -> list[CodebookLayer]:
    """The float matmul layers of ``mod`` (before ``CodebookDense``) whose constant weight has
    at most :data:`MAX_CODES` distinct values, in function and layer order."""
    out = []
    for gv, func in mod.functions.items():
        if not isinstance(func, relax.Function) or func.attrs and "Primitive" in func.attrs:
            continue
        matches, _, _ = sparse_candidates(func)
        for m in matches:
            if m.x_dtype != "float32":
                continue
            codes = np.unique(m.w).size
            if codes <= MAX_CODES:
                out.append(CodebookLayer(layer_key(gv.name_hint, m.name),
                                         (int(m.w.shape[0]), int(m.w.shape[1])), codes,
                                         m.w.size * 4, m.w.size, codebook_length(codes) * 4))
    return out


@tvm.transform.module_pass(opt_level=0, name="CodebookDense")
class CodebookDense:
    """Rewrite float ``[relu](add(matmul(x, W), b))`` whose constant ``W`` has at most 256
    distinct values into one fused layer that decodes uint8 indices through a codebook.

    Expects Relax as ``relax.frontend.onnx.from_onnx`` emits Gemm/MatMul (the forms
    ``SparseDense`` matches), before ``FoldConstant`` and ``LegalizeOps``; layers
    ``SparseDense`` already made sparse, and int8 layers, are left alone. Emits, per layer, a
    ``Primitive`` function (composite ``tvmcomp.codebook_matmul``)::

        w = R.take(codebook, R.astype(indices, "int32"), axis=0)   # [in, out], in-kernel
        y = [relu](add(R.matmul(x, w), b))

    called with the indices (uint8 ``[in, out]``) and the codebook (float32 ``[codes]``) as
    separate constants; ``LegalizeOps`` .. ``FuseTIR`` turn it into one kernel. A module with no
    such layer is returned unchanged.
    """

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        rewritten = _Rewriter(mod).run()
        if rewritten is mod:
            return mod
        decode = is_op("relax.take")(is_const(), is_op("relax.astype")(is_const()))
        mm = is_op("relax.matmul")(wildcard(), decode)
        biased = is_op("relax.add")(mm, is_const())
        patterns = [(COMPOSITE, is_op("relax.nn.relu")(biased)), (COMPOSITE, biased),
                    (COMPOSITE, mm)]
        return relax.transform.FuseOpsByPattern(patterns, bind_constants=False,
                                                annotate_codegen=False)(rewritten)


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod) -> None:
        super().__init__(mod)
        self.mod_ = mod
        self.plan: dict = {}

    def run(self) -> tvm.IRModule:
        def prepare(gv, func) -> bool:
            matches, _, _ = sparse_candidates(func)
            self.plan = {m.top: m for m in matches
                         if m.x_dtype == "float32" and np.unique(m.w).size <= MAX_CODES}
            return bool(self.plan)

        return rewrite_functions(self, self.mod_, prepare)

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        m = self.plan.get(binding.var)
        if m is None:
            super().visit_var_binding_(binding)
            return
        values, inverse = np.unique(m.w, return_inverse=True)
        codebook = np.zeros(codebook_length(values.size), np.float32)
        codebook[: values.size] = values
        indices = inverse.reshape(m.w.shape).T.astype(np.uint8)  # [in, out], as matmul reads
        bb = self.builder_
        idx = bb.emit(relax.op.astype(relax.const(np.ascontiguousarray(indices)), "int32"),
                      f"{m.name}_codes")
        w = bb.emit(relax.op.take(relax.const(codebook), idx, axis=0,
                                  mode="clip"), f"{m.name}_w")
        y = relax.op.matmul(self.visit_expr(m.x), w)
        if m.bias is not None:
            y = relax.op.add(bb.emit(y, f"{m.name}_mm"), relax.const(m.bias))
        if m.relu:
            y = relax.op.nn.relu(bb.emit(y, f"{m.name}_add"))
        rebind(self, binding, y, f"{m.name}_codebook")
