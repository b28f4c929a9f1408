"""CodebookDense: a dense layer whose weight has few distinct values keeps them as a codebook.

Weight sharing (``tvmcomp compress --share-bits``) leaves each layer with at most ``2**bits``
distinct weight values. This pass stores such a float matmul weight as uint8 indices plus a
float32 codebook and fuses the decode into the layer's kernel, so ``model.so`` embeds the
indices and the codebook, not the dense weight (TVM's ``FoldConstant`` would otherwise fold
``take(codebook, indices)`` straight back into a dense constant). An int8 layer's weight
(``QuantizeInt8``'s) is stored as a code stream with an int8 codebook wherever that takes
fewer bytes than the int8 weight itself, and decoded to int8 once at load; where ``Int8Vnni``
(which runs first) packed that weight for its kernel, it is decoded straight into the packed
form, the kernel's compensation term computed into it. A float conv ``SparseDense`` made a
direct sparse convolution is stored as its weight's code stream too, decoded at load straight
into the sparse kernel's arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, wildcard
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..kernels import sparse_conv
from ..kernels.codebook import (MAX_CODES, code_bits, codebook_length, codes_per_byte,
                                distinct_values, encode, pack, stored_code_bytes)
from ..kernels.decode import (DECODE_FUNCTION, cache_key, code_stream, decoded_dtype,
                              sparse_conv_decode_kernel, stream_decode_kernel)
from ..kernels.sell import sell_codebook_from_dense
from ..kernels.vnni import call_weight
from ._emit import Bindings, rebind, rewrite_functions
from ._qdq_match import const_np, dtype_of, op_name, shape_of
from .layers import layer_index, layer_key
from .sparse_dense import goes_sparse, layer_weights, sparse_candidates, sparse_conv_candidates

COMPOSITE = "tvmcomp.codebook_matmul"
COMPOSITE_CONV = "tvmcomp.codebook_conv2d"
COMPOSITES = (COMPOSITE, COMPOSITE_CONV)


@dataclass(frozen=True)
class CodebookLayer:
    """One float matmul layer with at most :data:`MAX_CODES` distinct weight values, in the
    form it takes: ``dense`` (``CodebookDense``: a uint8 index per weight) or ``sparse``
    (``SparseDense(values="codebook")``: a uint8 code per stored SELL entry, plus its column
    indices, slice pointers and row order, counted in ``structure_bytes``); decoded at load,
    ``at load`` or ``at load, sparse`` (a :func:`~tvmcomp.kernels.decode.code_stream` without
    or with zero-run lengths, counted in ``structure_bytes``), or ``sparse conv, at load`` (a
    conv ``SparseDense`` made sparse: its code stream decoded into the direct sparse
    convolution's arrays)."""

    key: str                 # "<function>/matmul<k>" or "<function>/conv<k>"
    shape: tuple[int, ...]   # matmul [out, in]; conv2d OIHW
    codes: int               # codebook entries in use (sparse: non-zero values, plus 0)
    dense_bytes: int         # the weight dense: float32 (an int8 layer's: int8)
    index_bytes: int         # codes: packed 8 / bits per byte (dense), uint8 (sparse)
    codebook_bytes: int      # float32 codebook (in a kernel: padded to a power of two)
    form: str = "dense"
    structure_bytes: int = 0

    @property
    def stored_bytes(self) -> int:
        return self.index_bytes + self.codebook_bytes + self.structure_bytes

    def to_dict(self) -> dict:
        return {"key": self.key, "form": self.form, "shape": list(self.shape),
                "codes": self.codes, "dense_bytes": self.dense_bytes,
                "index_bytes": self.index_bytes, "codebook_bytes": self.codebook_bytes,
                "structure_bytes": self.structure_bytes, "stored_bytes": self.stored_bytes}


def codebook_layers(mod: tvm.IRModule, sparse: dict | None = None,
                    at_load: tuple[str, ...] = ()) -> list[CodebookLayer]:
    """The float matmul layers of ``mod`` (before ``layer_forms``) whose constant weight has
    at most :data:`MAX_CODES` distinct values, in function and layer order. ``sparse``
    (``SparseDense``'s threshold and keep, or None): the layers it rewrites are counted in
    their sparse codebook form; ``at_load``: of the others, those decoded at load, counted
    as their :func:`~tvmcomp.kernels.decode.code_stream` (form ``"at load"``, or ``"at load,
    sparse"`` where it stores zero-run lengths). The :func:`int8_layers` ``SparseDense``
    leaves dense are decoded at load whatever ``at_load`` says (their only codebook form)."""
    out = []
    for gv, func in mod.functions.items():
        if not isinstance(func, relax.Function) or func.attrs and "Primitive" in func.attrs:
            continue
        matches, _, _ = sparse_candidates(func)
        for m in matches:
            key = layer_key(gv.name_hint, m.name)
            if m.x_dtype != "float32":
                continue
            shape = (int(m.w.shape[0]), int(m.w.shape[1]))
            if sparse is not None and goes_sparse(key, m.w, sparse.get("threshold", 0.0),
                                                  sparse.get("keep") or {}):
                if distinct_values(m.w, zero_first=True) <= MAX_CODES:
                    b = sell_codebook_from_dense(m.w).nbytes()
                    out.append(CodebookLayer(key, shape, distinct_values(m.w, True),
                                             m.w.size * 4, b["values"], b["codebook"], "sparse",
                                             b["total"] - b["values"] - b["codebook"]))
                continue
            if distinct_values(m.w) <= MAX_CODES:
                out.append(_dense_layer(key, m.w, m.w.T, m.name in at_load))
        convs = {m.name for m in sparse_conv_candidates(func)} if sparse is not None else set()
        for _, name, w in float_convs(func):
            key = layer_key(gv.name_hint, name)
            if distinct_values(w) > MAX_CODES:
                continue
            if name in convs and goes_sparse(key, w, sparse.get("threshold", 0.0),
                                             sparse.get("keep") or {}):
                out.append(_dense_layer(key, w, w, True, "sparse conv, at load"))
            else:
                out.append(_dense_layer(key, w, w, name in at_load))
        candidates = {m.name: m for m in matches}
        for _, name, kind, w in int8_layers(func):
            key, m = layer_key(gv.name_hint, name), candidates.get(name)
            if sparse is not None and m is not None and goes_sparse(
                    key, m.w, sparse.get("threshold", 0.0), sparse.get("keep") or {}):
                continue
            out.append(_dense_layer(key, w.T if kind == "matmul" else w, w, True))
    return sorted(out, key=lambda L: (L.key.split("/")[0], layer_index(L.key)))


def _dense_layer(key: str, w: np.ndarray, read: np.ndarray, at_load: bool,
                 form: str | None = None) -> CodebookLayer:
    """A layer stored as codes (``w`` as stored, ``read`` as the layer reads it: a matmul's
    ``[in, out]``): a code per weight, or decoded at load from the :func:`code_stream` of
    ``read`` (``form``: what it is decoded into, if not its dense weight)."""
    if at_load:
        s = code_stream(read)
        b = s.nbytes()
        return CodebookLayer(key, tuple(w.shape), s.codebook.size,
                             w.size * np.dtype(decoded_dtype(w)).itemsize, b["codes"],
                             b["codebook"],
                             form or ("at load, sparse" if s.gap_bits else "at load"),
                             b["gaps"])
    codes = distinct_values(w)
    return CodebookLayer(key, tuple(w.shape), codes, w.size * 4,
                         stored_code_bytes(w.size, codebook_length(codes)),
                         codebook_length(codes) * 4, "dense")


def float_convs(func: relax.Function) -> list[tuple[relax.Var, str, np.ndarray]]:
    """``(var, "conv<k>", weight)`` of ``func``'s float32 ``conv2d`` calls with a constant
    weight, numbered like every other layer report (:mod:`tvmcomp.passes.layers`)."""
    _, _, b = sparse_candidates(func)
    out = []
    for var, name, kind, w in layer_weights(func):
        val = b.value[var]
        if (kind == "conv" and str(val.op.name) == "relax.nn.conv2d" and w.dtype == np.float32
                and str(val.args[0].ty.dtype) == "float32"
                and str(val.attrs.out_dtype) in ("", "void", "None", "float32")):
            out.append((var, name, w))
    return out


def int8_layers(func: relax.Function) -> list[tuple[relax.Var, str, str, np.ndarray]]:
    """``(var, "conv<k>" / "matmul<k>", kind, weight as the layer reads it)`` of ``func``'s
    int8 conv2d / matmul calls (``QuantizeInt8``'s, weight a constant int8 OIHW or
    ``[in, out]``) whose weight a :func:`~tvmcomp.kernels.decode.code_stream` stores in fewer
    bytes than the int8 weight itself (a shared or pruned layer): ``CodebookDense`` decodes
    those at load."""
    _, _, b = sparse_candidates(func)
    out = []
    for var, name, kind, _ in layer_weights(func):
        arg = b.value[var].args[1]
        w = arg.value.numpy() if isinstance(arg, tvm.ir.Constant) else None
        if w is not None and w.dtype == np.int8 and _streams_smaller(w):
            out.append((var, name, kind, w))
    return out


def _streams_smaller(w: np.ndarray) -> bool:
    """Whether a :func:`code_stream` stores int8 weight ``w`` in fewer bytes than ``w``."""
    return code_stream(w).nbytes()["total"] < w.nbytes


def packed_int8_layers(func: relax.Function) -> dict:
    """``{var: weight}`` of ``func``'s ``Int8Vnni`` kernel calls whose packed
    int8 weight (:func:`~tvmcomp.kernels.vnni.call_weight`) a :func:`code_stream` of the
    weight as the layer reads it stores in fewer bytes: :func:`int8_layers` after
    ``Int8Vnni``."""
    out = {}
    for var, kernel, x, rest in _kernel_calls(func):
        wt = call_weight(kernel, shape_of(x) or (), dtype_of(x), shape_of(var) or (), rest)
        if wt is not None and _streams_smaller(wt.to_dense()):
            out[var] = wt
    return out


def _kernel_calls(func: relax.Function):
    """``(var, kernel name, x, the other arguments as arrays where constant, else None)`` of
    each ``call_tir`` of ``func``."""
    for var, val in Bindings(func).value.items():
        if op_name(val) == "relax.call_tir":
            x, *rest = val.args[1].fields
            yield var, val.args[0].name_hint, x, [const_np(a) for a in rest]


def sparse_conv_layers(func: relax.Function) -> dict:
    """``{var: (weight, its dense OIHW form)}`` (:class:`~tvmcomp.kernels.sparse_conv.
    SparseConvWeight`) of ``func``'s float direct sparse convolutions (``SparseDense``'s)
    whose constant weight has at most :data:`MAX_CODES` distinct values: ``CodebookDense``
    decodes their arrays at load from the dense weight's :func:`code_stream`."""
    out = {}
    for var, kernel, x, rest in _kernel_calls(func):
        wt = sparse_conv.call_weight(kernel, shape_of(x) or (), rest)
        if wt is None or wt.values.dtype != np.float32:
            continue
        dense = wt.to_dense()
        if distinct_values(dense) <= MAX_CODES:
            out[var] = (wt, dense)
    return out


def decoded_bytes(mod: tvm.IRModule) -> int:
    """Bytes of the values (float32, or int8) :data:`DECODE_FUNCTION` of ``mod`` (if any)
    decodes at load: held in RAM from load on."""
    for gv, f in mod.functions.items():
        if gv.name_hint == DECODE_FUNCTION:
            return sum(np.dtype(str(t.dtype)).itemsize * int(np.prod([int(d) for d in t.shape]))
                       for t in f.ret_ty.fields)
    return 0


@tvm.transform.module_pass(opt_level=0, name="CodebookDense")
class CodebookDense:
    """Rewrite float ``[relu](add(matmul(x, W), b))`` whose constant ``W`` has at most 256
    distinct values into one fused layer that decodes uint8 indices through a codebook.

    Expects Relax as ``relax.frontend.onnx.from_onnx`` emits Gemm/MatMul (the forms
    ``SparseDense`` matches) and Conv, before ``FoldConstant`` and ``LegalizeOps``; layers
    ``SparseDense`` already made sparse, and int8 layers, are left alone. Emits, per layer, a
    ``Primitive`` function (composite ``tvmcomp.codebook_matmul``)::

        w = R.take(codebook, R.astype(indices, "int32"), axis=0)   # [in, out], in-kernel
        y = [relu](add(R.matmul(x, w), b))

    called with the indices (uint8 ``[in, out]``) and the codebook (float32 ``[codes]``) as
    separate constants; ``LegalizeOps`` .. ``FuseTIR`` turn it into one kernel. A float
    ``conv2d`` with such a weight becomes ``conv2d(x, take(codebook, astype(indices)))``
    (indices uint8 OIHW) fused with the bias add and relu that follow (composite
    ``tvmcomp.codebook_conv2d``). A module with no such layer is returned unchanged.

    ``at_load``: names of layers (``conv0``, ``matmul2``, ..., in every function) decoded once
    at load instead (and every :func:`int8_layers` layer: an int8 conv2d / matmul reads its
    int8 weight from the cache, decoded from a code stream with an int8 codebook; a
    :func:`packed_int8_layers` kernel call its packed weight, compensation included; and
    every :func:`sparse_conv_layers` call, a sparse conv ``SparseDense`` made, its values,
    offsets and row pointers, decoded from the dense weight's code stream): the
    module gains a function :data:`DECODE_FUNCTION` that decodes their stored codes (a
    :func:`~tvmcomp.kernels.decode.code_stream` each, by a hand-written kernel) into the TVM
    tensor cache, and the layer reads its dense weight from the cache
    (``vm.builtin.tensor_cache.get``), so it runs the float layer's own kernel. Each read is
    one VM instruction a call (~0.2 µs on a Zen 3; passing the tensor as an argument from
    Python costs as much), so biases stay float32 constants, which cost nothing a call. With
    LeNet-5's fc biases stored in float16 and widened at load (428 B less), its smallest form
    took 2.1 µs more than fp32's 22.3 µs at batch 1; with them as constants, 1.0 µs more.
    Whoever loads the artifact calls that function once first.
    """

    def __init__(self, at_load: tuple[str, ...] = ()) -> None:
        self.at_load = tuple(at_load)

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        rewritten = _Rewriter(mod, self.at_load).run()
        if rewritten is mod:
            return mod
        codes = is_op("relax.astype")(is_const())
        shifted = is_op("relax.right_shift")(is_op("relax.expand_dims")(codes), is_const())
        unpacked = is_op("relax.reshape")(is_op("relax.strided_slice")(
            is_op("relax.reshape")(is_op("relax.bitwise_and")(shifted, is_const()),
                                   varg_default_wildcard=True),
            varg_default_wildcard=True), varg_default_wildcard=True)
        decode = is_op("relax.take")(is_const(), codes | unpacked)
        mm = is_op("relax.matmul")(wildcard(), decode)
        biased = is_op("relax.add")(mm, is_const())
        conv = is_op("relax.nn.conv2d")(wildcard(), decode)
        conv_biased = is_op("relax.add")(conv, wildcard())  # the bias: reshape(const)
        patterns = [(COMPOSITE, is_op("relax.nn.relu")(biased)), (COMPOSITE, biased),
                    (COMPOSITE, mm),
                    (COMPOSITE_CONV, is_op("relax.nn.relu")(conv_biased)),
                    (COMPOSITE_CONV, conv_biased), (COMPOSITE_CONV, conv)]
        return relax.transform.FuseOpsByPattern(patterns, bind_constants=False,
                                                annotate_codegen=False)(rewritten)


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod, at_load: tuple[str, ...] = ()) -> None:
        super().__init__(mod)
        self.mod_ = mod
        self.at_load = set(at_load)
        self.plan: dict = {}
        self.convs: dict = {}
        self.int8: dict = {}
        self.packed: dict = {}
        self.sparse_convs: dict = {}
        # the values' cache keys -> (decode kernel, its arrays, [(cache key, shape, dtype)
        # of each value it decodes])
        self.decoded: dict[tuple, tuple] = {}

    def run(self) -> tvm.IRModule:
        def prepare(gv, func) -> bool:
            matches, _, _ = sparse_candidates(func)
            self.plan = {m.top: m for m in matches
                         if m.x_dtype == "float32" and distinct_values(m.w) <= MAX_CODES}
            self.convs = {var: (name, w) for var, name, w in float_convs(func)
                          if distinct_values(w) <= MAX_CODES}
            self.int8 = {var: (name, w) for var, name, _, w in int8_layers(func)}
            self.packed = packed_int8_layers(func)
            self.sparse_convs = sparse_conv_layers(func)
            return bool(self.plan or self.convs or self.int8 or self.packed or self.sparse_convs)

        out = rewrite_functions(self, self.mod_, prepare)
        return self._add_decoder() if self.decoded else out

    def _add_decoder(self) -> tvm.IRModule:
        """The module with :data:`DECODE_FUNCTION`: each value decoded at load, put in the
        tensor cache under its key. It also returns them: the VM's memory planner does not
        know the cache keeps a tensor, and would reuse a decoded weight's storage for the
        next one's unless it lives to the end of the function."""
        bb, R = self.builder_, relax.op
        decoded = []
        with bb.function(DECODE_FUNCTION, [], pure=False):
            token = bb.emit(R.builtin.alloc_tensor(relax.ShapeExpr([1]), "int32", 0), "token")
            for i, (func, arrays, values) in enumerate(self.decoded.values()):
                gv = bb.add_func(func, f"tvmcomp_decode{i}")
                args = [relax.const(a) for a in arrays] + [token]
                types = [relax.TensorType(list(shape), dtype) for _, shape, dtype in values]
                out = bb.emit(R.call_tir(gv, relax.Tuple(args),
                                         types if len(types) > 1 else types[0]))
                ws = ([bb.emit(relax.TupleGetItem(out, j)) for j in range(len(types))]
                      if len(types) > 1 else [out])
                for (key, _, _), w in zip(values, ws):
                    bb.emit(relax.Call(relax.ExternFunc("vm.builtin.tensor_cache.update"),
                                       [tvm.ir.StringImm(key), w, relax.prim_value(True)],
                                       ty_args=[relax.ObjectType()]))
                decoded += ws
            bb.emit_func_output(relax.Tuple(decoded))
        return bb.get()

    def _cached(self, w: np.ndarray, name: str):
        """``w`` (as the layer reads it), read from the tensor cache where
        :meth:`_add_decoder`'s function puts it at load, decoded from a :func:`code_stream`."""
        s = code_stream(w)
        (read,) = self._from_cache([w], stream_decode_kernel(s), [s.codebook, s.data],
                                   f"{name}_w")
        return read

    def _from_cache(self, values: list[np.ndarray], kernel, arrays: list, name: str) -> list:
        """``values`` read from the tensor cache, where :data:`DECODE_FUNCTION` puts them
        at load by calling ``kernel`` on ``arrays`` (what the artifact stores)."""
        entries = [(cache_key(v), tuple(v.shape), str(v.dtype)) for v in values]
        self.decoded[tuple(k for k, _, _ in entries)] = (kernel, arrays, entries)
        return [self.builder_.emit(relax.op.call_pure_packed(
            "vm.builtin.tensor_cache.get", tvm.ir.StringImm(key),
            ty_args=[relax.TensorType(list(shape), dtype)]), name if len(values) == 1
            else f"{name}{i}") for i, (key, shape, dtype) in enumerate(entries)]

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        if binding.var in self.packed:  # the packed weight (compensation in it) from the cache
            wt = self.packed[binding.var]
            s = code_stream(wt.to_dense())
            val = binding.value
            args = [self.visit_expr(a) for a in val.args[1].fields]
            (args[1],) = self._from_cache([wt.weight],
                                          stream_decode_kernel(s, wt.placement()),
                                          [s.codebook, s.data], f"{binding.var.name}_w")
            call = relax.Call(val.op, [val.args[0], relax.Tuple(args)], val.attrs, val.ty_args)
            rebind(self, binding, call, f"{binding.var.name}_stream")
            return
        if binding.var in self.sparse_convs:  # values, offsets, row_ptr from the cache
            wt, dense = self.sparse_convs[binding.var]
            s = code_stream(dense)
            val = binding.value
            args = [self.visit_expr(a) for a in val.args[1].fields]
            args[1:4] = self._from_cache([wt.values, wt.offsets, wt.row_ptr],
                                         sparse_conv_decode_kernel(s, wt.in_hw),
                                         [s.codebook, s.data], f"{binding.var.name}_w")
            call = relax.Call(val.op, [val.args[0], relax.Tuple(args)], val.attrs, val.ty_args)
            rebind(self, binding, call, f"{binding.var.name}_stream")
            return
        if binding.var in self.convs:
            self._conv(binding, *self.convs[binding.var])
            return
        if binding.var in self.int8:  # its int8 weight from the cache, the call as it was
            name, w = self.int8[binding.var]
            val = binding.value
            call = relax.Call(val.op, [self.visit_expr(val.args[0]), self._cached(w, name)],
                              val.attrs, val.ty_args)
            rebind(self, binding, call, f"{name}_stream")
            return
        m = self.plan.get(binding.var)
        if m is None:
            super().visit_var_binding_(binding)
            return
        bb = self.builder_
        if m.name in self.at_load:  # [in, out], as matmul reads it
            w = self._cached(np.ascontiguousarray(m.w.T), m.name)
        else:
            codebook, codes = encode(m.w)
            w = self._decode(codebook, np.ascontiguousarray(codes.T), m.name)
        y = relax.op.matmul(self.visit_expr(m.x), w)
        if m.bias is not None:
            y = relax.op.add(bb.emit(y, f"{m.name}_mm"), relax.const(m.bias))
        if m.relu:
            y = relax.op.nn.relu(bb.emit(y, f"{m.name}_add"))
        rebind(self, binding, y, f"{m.name}_codebook")

    def _conv(self, binding: relax.VarBinding, name: str, w: np.ndarray) -> None:
        if name in self.at_load:
            w_expr = self._cached(w, name)
        else:
            w_expr = self._decode(*encode(w), name)
        val = binding.value
        call = relax.Call(val.op, [self.visit_expr(val.args[0]), w_expr], val.attrs,
                          val.ty_args)
        rebind(self, binding, call, f"{name}_codebook")

    def _decode(self, codebook: np.ndarray, indices: np.ndarray, name: str):
        """``take(codebook, codes)`` bound in the current block: ``codes`` is
        ``astype(indices, int32)``, or, for a codebook of at most 16 entries, the indices
        packed :func:`~tvmcomp.kernels.codebook.codes_per_byte` to a byte and unpacked with a
        shift and a mask (all of it fused into the layer's kernel)."""
        bb, R = self.builder_, relax.op
        bits = code_bits(codebook.size)
        per = codes_per_byte(bits)
        if per == 1:
            idx = bb.emit(R.astype(relax.const(np.ascontiguousarray(indices)), "int32"),
                          f"{name}_codes")
        else:
            packed = pack(indices, bits)
            p = bb.emit(R.astype(relax.const(packed), "int32"), f"{name}_packed")
            shifts = relax.const((np.arange(per) * bits).astype(np.int32))
            u = bb.emit(R.bitwise_and(R.right_shift(R.expand_dims(p, [1]), shifts),
                                      relax.const(np.int32((1 << bits) - 1))), f"{name}_unpacked")
            flat = R.strided_slice(R.reshape(u, [packed.size * per]), [0], [0], [indices.size])
            idx = bb.emit(R.reshape(flat, list(indices.shape)), f"{name}_codes")
        return bb.emit(R.take(relax.const(codebook), idx, axis=0, mode="clip"), f"{name}_w")
