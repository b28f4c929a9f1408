"""SparseDense: dense layers with sparse constant weights → our sparse TIR kernels (``call_tir``)."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..defaults import DEFAULT_SPARSE_THRESHOLD
from ..kernels.codebook import MAX_CODES, distinct_values
from ..kernels.sparse_conv import (
    kernel_name,
    pool_fits,
    pooled_hw,
    sparse_conv_from_dense,
    sparse_conv_kernel,
    supported,
)
from ..kernels.sell import (
    SlicedMatrix,
    sell_codebook_from_dense,
    sell_dense_kernel,
    sell_from_dense,
    sell_int8_from_dense,
    sell_int_kernel,
)
from ._emit import Bindings, rebind, rewrite_functions
from ._epilogue import plan_epilogue
from .layers import (INDEXED_OPS, direct_conv, is_layer_kernel, layer_index, layer_key,
                     layer_name)

R = relax.op
# what ONNX Conv/Gemm/MatMul import to: the k-th of these is layer "conv<k>"/"matmul<k>",
# numbered like QuantizeInt8's anchors
VALUE_DTYPES = ("float32", "int8", "codebook")


@dataclass(frozen=True)
class LayerSparsity:
    """One conv/matmul layer with a constant weight, as :func:`find_layers` sees it."""

    function: str
    name: str            # "matmul<k>" / "conv<k>"
    kind: str            # "matmul" | "conv"
    weight_shape: tuple[int, ...]
    batch: int | None    # static batch of the input (matmul only)
    sparsity: float      # fraction of exact zeros in the weight
    candidate: bool      # a float matmul SparseDense can rewrite

    @property
    def key(self) -> str:
        return layer_key(self.function, self.name)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["weight_shape"] = list(self.weight_shape)
        d["sparsity"] = round(self.sparsity, 6)
        return d


@tvm.transform.module_pass(opt_level=0, name="SparseDense")
class SparseDense:
    """Rewrite ``[relu](add(matmul(x, W), b))`` with a sparse constant ``W`` into a sparse kernel.

    Expects Relax as ``relax.frontend.onnx.from_onnx`` emits Gemm/MatMul, before
    ``FoldConstant`` and ``LegalizeOps`` (after ``QuantizeInt8``, which leaves float layers
    as they were)::

        wt = R.permute_dims(W, [1, 0])   # W: constant [out, in]  (or matmul(x, Wt) directly)
        y  = R.matmul(x, wt)             # x: float32 [B, in], B static
        y  = R.add(y, b)                 # optional, b: constant [out]   (fused if y has no
        y  = R.nn.relu(y)                # optional                       other users)

    and emits, for each layer whose weight has ``sparsity >= threshold`` and that ``keep``
    allows (keyed ``"<function>/matmul<k>"``; missing keys mean yes)::

        y = R.call_tir(sell_dense_b{B}_{in}x{out}[_relu],
                       (x, data, indices, slice_ptr, row_order, b, scale),
                       out_ty=R.Tensor((B, out), "float32"))

    with the weight in sliced ELLPACK, rows sorted by length (:mod:`tvmcomp.kernels.sell`):
    the slice kernel at batch 1, the batch-vectorised kernel otherwise; both batch entry
    points of a module share the same arrays. ``values="int8"`` stores the values as int8 with
    a per-row scale (weight-only quantization, 4× smaller values). ``values="codebook"``
    stores a layer whose non-zeros take at most 255 distinct values (weight sharing) as uint8
    codes into a float32 codebook passed in the ``scale`` slot (exact; layers with more
    values keep float32 values). Layers are numbered
    ``k`` over the function's conv/matmul calls in order (fc1 of LeNet-5 is ``matmul2``).
    After ``QuantizeInt8``, an integer ``R.matmul(x_q, W_i8, out_dtype="int32")`` (x int8 or
    uint8, constant int8 ``W`` as ``[in, out]``; or its exact float32-accumulated form
    ``astype(R.matmul(x_q, W_i8, out_dtype="float32"), "int32")``) with a sparse ``W`` becomes
    ``R.call_tir(sell_int_b{B}_..., (x_q, data_i8, indices, slice_ptr, row_order),
    out_ty=int32)``: exact,
    and the bias add / requantization that follow are left as they were.
    With ``values="float32"`` or ``"codebook"`` (float32 values either way: ``CodebookDense``
    then stores a shared weight's arrays as a code stream decoded at load), a float
    ``[relu](add(conv2d(x, W), b))`` (NCHW, constant OIHW
    ``W``, stride 1, no dilation, one group: :func:`sparse_conv_candidates`, keyed
    ``"<function>/conv<k>"``) becomes the direct sparse convolution
    (:mod:`tvmcomp.kernels.sparse_conv`; a padded conv pads its input first)::

        y = R.call_tir(sparse_conv_b{B}_{C}x{H}x{W}_{OC}k{KH}x{KW}[_relu],
                       (x, values, offsets, row_ptr, b), out_ty=R.Tensor((B, OC, OH, OW)))

    taking in the 2x2 max pool of stride 2 that may follow it (``..._pool2``, out_ty
    ``(B, OC, OH // 2, OW // 2)``) where a pair of output rows fits the kernel's registers,

    and ``QuantizeInt8``'s integer conv2d (int32 out, or its exact float32 accumulation cast
    to int32) the integer kernel ``sparse_conv_..._{int8|uint8}(x_q, values_i8, offsets,
    row_ptr)`` with int32 out, bias and requantization left as they were.

    A module with no such layer is returned unchanged.
    """

    def __init__(self, threshold: float = DEFAULT_SPARSE_THRESHOLD, keep: dict[str, bool] | None = None,
                 values: str = "float32") -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
                or not 0.0 <= threshold <= 1.0:
            raise ValueError(f"sparse threshold must be in [0, 1], got {threshold!r}")
        if values not in VALUE_DTYPES:
            raise ValueError(f"values must be one of {', '.join(VALUE_DTYPES)}, got {values!r}")
        self.threshold = float(threshold)
        self.keep = dict(keep or {})
        self.values = values

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return _Rewriter(mod, self.threshold, self.keep, self.values).run()


# ---- analysis --------------------------------------------------------------------------------


def _op(e) -> str | None:
    if isinstance(e, tvm.ir.Call) and isinstance(e.op, tvm.ir.Op):
        return str(e.op.name)
    return None


def _const(e) -> np.ndarray | None:
    return e.value.numpy() if isinstance(e, tvm.ir.Constant) else None


def _static_shape(e) -> tuple[int, ...] | None:
    shape = getattr(e.ty, "shape", None)
    try:
        return tuple(int(s) for s in shape) if shape is not None else None
    except (TypeError, ValueError):
        return None


@dataclass
class _Match:
    top: relax.Var       # the var whose binding becomes the call_tir
    x: relax.Expr
    w: np.ndarray        # [out, in]
    bias: np.ndarray | None
    relu: bool
    batch: int
    name: str
    x_dtype: str = "float32"   # int8/uint8: the integer kernel (QuantizeInt8's int8 matmul)
    kind: str = "matmul"


def _weight_of(b: Bindings, arg) -> np.ndarray | None:
    """``[out, in]`` weight of a matmul's second argument (constant or transposed constant)."""
    w = _const(arg)
    if w is not None:
        return w.T if w.ndim == 2 else None
    if isinstance(arg, relax.Var) and _op(b.value.get(arg)) == "relax.permute_dims":
        val = b.value[arg]
        w = _const(val.args[0])
        axes = val.attrs.axes
        if w is not None and w.ndim == 2 and (axes is None or [int(a) for a in axes] == [1, 0]):
            return w
    return None


def _indexed_calls(b: Bindings):
    """``(var, call, op, k)`` of the conv/matmul calls in binding order: the k-th is layer
    ``conv<k>`` / ``matmul<k>`` (:mod:`tvmcomp.passes.layers`; layers already rewritten
    into our kernels count, and are not given)."""
    k = 0
    for var in b.order:
        val = b.value[var]
        op = _op(val)
        if op in INDEXED_OPS:
            yield var, val, op, k
        elif not is_layer_kernel(val):
            continue
        k += 1


def sparse_candidates(func: relax.Function) -> tuple[list[_Match], list[LayerSparsity],
                                                      Bindings]:
    """(layers SparseDense can rewrite, every conv/matmul layer, bindings) of ``func``."""
    b = Bindings(func)
    fname = ""
    matches, layers = [], []
    for var, val, op, idx in _indexed_calls(b):
        if op != "relax.matmul":
            w = _const(val.args[1])
            if w is not None:
                layers.append(LayerSparsity(fname, layer_name(op, idx), "conv", w.shape, None,
                                            float(np.mean(w == 0)) if w.size else 1.0, False))
            continue
        w = _weight_of(b, val.args[1])
        if w is None:
            continue
        xs = _static_shape(val.args[0])
        xd, od = str(val.args[0].ty.dtype), str(val.attrs.out_dtype)
        shape_ok = xs is not None and len(xs) == 2 and xs[1] == w.shape[1] and xs[0] >= 1
        is_float = xd == "float32" and str(w.dtype) == "float32" and od in (
            "", "void", "None", "float32")
        int_in = xd in ("int8", "uint8") and str(w.dtype) == "int8"
        cast = None  # QuantizeInt8's exact float32 accumulation: matmul(f32) → astype(int32)
        if int_in and od == "float32":
            cast = b.single_user(var, "relax.astype")
            if cast is not None and str(b.value[cast].attrs.dtype) != "int32":
                cast = None
        is_int = int_in and (od == "int32" or cast is not None)
        ok = shape_ok and (is_float or is_int)
        sp = float(np.mean(w == 0)) if w.size else 1.0
        layers.append(LayerSparsity(fname, layer_name(op, idx), "matmul", w.shape,
                                    xs[0] if xs else None, sp, ok))
        if not ok:
            continue
        if is_int:  # bias and requantization stay as QuantizeInt8 emitted them
            top = var if cast is None else cast
            matches.append(_Match(top, val.args[0], w, None, False, xs[0], layer_name(op, idx), xd))
            continue
        top, bias, relu = var, None, False
        add = b.single_user(top, "relax.add")
        if add is not None:
            bv = _const(b.value[add].args[1])
            if bv is not None and bv.dtype == np.float32 and bv.size == w.shape[0] \
                    and bv.shape[-1] == w.shape[0]:
                top, bias = add, bv.reshape(-1)
        relu_v = b.single_user(top, "relax.nn.relu")
        if relu_v is not None:
            top, relu = relu_v, True
        matches.append(_Match(top, val.args[0], w, bias, relu, xs[0], layer_name(op, idx)))
    return matches, layers, b


def layer_weights(func: relax.Function) -> list[tuple[relax.Var, str, str, np.ndarray]]:
    """``(var, name, kind, weight)`` of every conv/matmul call of ``func`` with a constant
    weight, in layer order: ``kind`` "conv" (weight as stored, e.g. OIHW) or "matmul"
    (weight as ``[out, in]``)."""
    b = Bindings(func)
    out = []
    for var, val, op, idx in _indexed_calls(b):
        if op == "relax.matmul":
            w = _weight_of(b, val.args[1])
        else:
            w = _const(val.args[1])
        if w is not None:
            out.append((var, layer_name(op, idx), "matmul" if op == "relax.matmul" else "conv", w))
    return out


def find_layers(mod: tvm.IRModule) -> list[LayerSparsity]:
    """Every conv/matmul layer with a constant weight in ``mod``'s Relax functions."""
    out = []
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function) and not (func.attrs and "Primitive" in func.attrs):
            _, layers, _ = sparse_candidates(func)
            out += [LayerSparsity(**{**asdict(L), "function": gv.name_hint}) for L in layers]
    return out


# ---- rewriting -------------------------------------------------------------------------------


def sliced_layout(w: np.ndarray, values: str = "float32",
                  x_dtype: str = "float32") -> tuple[SlicedMatrix, str]:
    """``(layout, value form)`` SparseDense stores for the ``[out, in]`` weight ``w``: the
    integer kernel's int8 values for an int8/uint8 ``x``; else by ``values``, a codebook layer
    with more than 255 distinct non-zeros keeping float32 values."""
    if x_dtype != "float32":
        return sell_from_dense(w), "int8"
    if values == "codebook" and distinct_values(w, zero_first=True) > MAX_CODES:
        values = "float32"  # not shared: too many values for uint8 codes
    build = {"int8": sell_int8_from_dense, "codebook": sell_codebook_from_dense,
             "float32": sell_from_dense}[values]
    return build(w), values


@dataclass
class _ConvMatch:
    """A float conv2d SparseDense can give the direct sparse convolution kernel."""

    top: relax.Var       # the var whose binding becomes the call_tir (conv, +bias, +relu)
    x: relax.Expr
    w: np.ndarray        # OIHW
    bias: np.ndarray | None
    relu: bool
    batch: int
    name: str
    in_shape: tuple[int, int, int, int]   # NCHW, before padding
    pad: tuple[int, int, int, int]        # top, left, bottom, right
    x_dtype: str = "float32"
    kind: str = "conv"
    pool: int = 1                         # 2: the 2x2 max pool of stride 2 that follows, too

    @property
    def padded_hw(self) -> tuple[int, int]:
        return (self.in_shape[2] + self.pad[0] + self.pad[2],
                self.in_shape[3] + self.pad[1] + self.pad[3])

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        (h, w), (kh, kw) = self.padded_hw, self.w.shape[2:]
        return (self.batch, int(self.w.shape[0]),
                *pooled_hw((h - kh + 1, w - kw + 1), self.pool))


def sparse_conv_candidates(func: relax.Function) -> list[_ConvMatch]:
    """The float ``[relu](add(conv2d(x, W), b))`` layers of ``func`` the direct sparse
    convolution kernel computes (:mod:`tvmcomp.kernels.sparse_conv`): constant OIHW ``W``,
    NCHW, stride 1, no dilation, one group, static shapes; padding becomes a pad before it.
    And ``QuantizeInt8``'s integer convolutions (int8 / uint8 ``x``, int8 ``W``, int32 out,
    or float32 out cast to int32: its exact float accumulation), without their epilogue."""
    b = Bindings(func)
    out = []
    for var, val, op, idx in _indexed_calls(b):
        if op != "relax.nn.conv2d":
            continue
        w, xs, at = _const(val.args[1]), _static_shape(val.args[0]), val.attrs
        xd, od = str(val.args[0].ty.dtype), str(at.out_dtype)
        is_float = xd == "float32" and w is not None and w.dtype == np.float32 and od in (
            "", "void", "None", "float32")
        int_in = xd in ("int8", "uint8") and w is not None and w.dtype == np.int8
        cast = b.single_user(var, "relax.astype") if int_in and od == "float32" else None
        if cast is not None and str(b.value[cast].attrs.dtype) != "int32":
            cast = None
        if (w is None or w.ndim != 4 or xs is None or len(xs) != 4 or xs[1] != w.shape[1]
                or not (is_float or int_in and (od == "int32" or cast is not None))
                or not direct_conv(at)):
            continue
        pad = tuple(int(p) for p in at.padding)
        hw = (xs[2] + pad[0] + pad[2], xs[3] + pad[1] + pad[3])
        khw = (int(w.shape[2]), int(w.shape[3]))
        if not supported(hw, khw):
            continue
        if int_in:  # bias and requantization stay as QuantizeInt8 emitted them
            out.append(_ConvMatch(var if cast is None else cast, val.args[0], w, None, False,
                                  xs[0], layer_name(op, idx), tuple(xs), pad, xd))
            continue
        top, bias, relu = var, None, False
        add = b.single_user(top, "relax.add")
        if add is not None:
            arg = b.value[add].args[1]
            if isinstance(arg, relax.Var) and _op(b.value.get(arg)) == "relax.reshape":
                arg = b.value[arg].args[0]  # the bias as ONNX Conv imports it
            bv = _const(arg)
            if bv is not None and bv.dtype == np.float32 and bv.size == w.shape[0] and (
                    bv.ndim == 1 or bv.shape[-3:] == (w.shape[0], 1, 1)):
                top, bias = add, bv.reshape(-1)
        relu_v = b.single_user(top, "relax.nn.relu")
        if relu_v is not None:
            top, relu = relu_v, True
        pool_v = b.pool_2x2(top) if pool_fits(hw, khw) else None
        out.append(_ConvMatch(top if pool_v is None else pool_v, val.args[0], w, bias, relu,
                              xs[0], layer_name(op, idx), tuple(xs), pad,
                              pool=1 if pool_v is None else 2))
    return out


def rewritable_layers(func: relax.Function, values: str = "float32") -> list:
    """The layers of ``func`` ``SparseDense(values=...)`` can rewrite, in layer order: the
    matmuls of :func:`sparse_candidates` and, with ``values="float32"`` or ``"codebook"``,
    the convolutions of :func:`sparse_conv_candidates` (float values: in a codebook build,
    ``CodebookDense`` then stores a shared one's arrays as its code stream, decoded at
    load)."""
    matches = sparse_candidates(func)[0]
    if values not in ("float32", "codebook"):
        return matches
    return sorted([*matches, *sparse_conv_candidates(func)], key=lambda m: layer_index(m.name))


def goes_sparse(key: str, w: np.ndarray, threshold: float, keep: dict[str, bool]) -> bool:
    """Whether ``SparseDense(threshold, keep)`` rewrites the candidate layer ``key`` with
    weight ``w``: sparse enough, and not vetoed by ``keep``."""
    return 1.0 - np.count_nonzero(w) / w.size >= threshold and keep.get(key, True)


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod, threshold: float, keep: dict, values: str) -> None:
        super().__init__(mod)
        self.mod_ = mod
        self.threshold, self.keep, self.values = threshold, keep, values
        self.plan: dict = {}
        self.epilogues: dict = {}
        self.skip: set = set()
        self.kernels: dict = {}
        self.consts: dict = {}

    def run(self) -> tvm.IRModule:
        def prepare(gv, func) -> bool:
            self.plan, self.epilogues, self.skip = {}, {}, set()
            b = Bindings(func)
            for m in rewritable_layers(func, self.values):
                if not goes_sparse(layer_key(gv.name_hint, m.name), m.w, self.threshold,
                                   self.keep):
                    continue
                if m.x_dtype != "float32":
                    # the integer kernel also takes the bias and requantization after it
                    ep = plan_epilogue(b, m.top, "conv" if isinstance(m, _ConvMatch)
                                       else "dense", int(m.w.shape[0]))
                    self.plan[ep.final], self.epilogues[ep.final] = m, ep
                    self.skip.update(ep.members[:-1])
                else:
                    self.plan[m.top] = m
            return bool(self.plan)

        return rewrite_functions(self, self.mod_, prepare)

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        if binding.var in self.skip:
            return  # computed inside the kernel of the layer it belongs to
        m = self.plan.get(binding.var)
        if m is None:
            super().visit_var_binding_(binding)
            return
        if isinstance(m, _ConvMatch):
            self._emit_conv(binding, m)
            return
        out_f, in_f = m.w.shape
        if m.x_dtype != "float32":
            self._emit_int(binding, m)
            return
        arrays, bias, scale, values = self._consts(m)
        cb_len = int(scale.value.shape[0]) if values == "codebook" else 0
        key = (m.batch, in_f, out_f, m.relu, values, cb_len)
        if key not in self.kernels:
            kern = sell_dense_kernel(m.batch, in_f, out_f, m.relu, values, cb_len)
            name = f"sell_dense_b{m.batch}_{in_f}x{out_f}{'_relu' if m.relu else ''}" + {
                "float32": "", "int8": "_i8", "codebook": f"_cb{cb_len}"}[values]
            self.kernels[key] = self.builder_.add_func(kern.with_attr("global_symbol", name),
                                                        name)
        call = relax.call_tir(self.kernels[key],
                              [self.visit_expr(m.x), *arrays, bias, scale],
                              relax.TensorType((m.batch, out_f), "float32"))
        rebind(self, binding, call, f"{m.name}_sparse")

    def _emit_conv(self, binding, m: _ConvMatch) -> None:
        n, c, _, _ = m.in_shape
        oc, _, kh, kw = m.w.shape
        hw = m.padded_hw
        integer = m.x_dtype != "float32"
        ep = self.epilogues.get(binding.var)
        epi = ep.epilogue() if ep is not None else None
        suffix = ep.suffix() if ep is not None else ""
        key = ("conv", n, c, hw, oc, kh, kw, m.relu, m.x_dtype, m.pool, suffix)
        if key not in self.kernels:
            name = kernel_name(n, c, hw, oc, (kh, kw), m.relu, m.x_dtype, m.pool) + suffix
            kern = sparse_conv_kernel(n, c, hw, oc, (kh, kw), m.relu, m.x_dtype, m.pool, epi)
            self.kernels[key] = self.builder_.add_func(kern.with_attr("global_symbol", name),
                                                        name)
        h = "c" + hashlib.sha256(m.w.tobytes() + repr(hw).encode()).hexdigest()
        if h not in self.consts:
            s = sparse_conv_from_dense(m.w, hw)
            self.consts[h] = (relax.const(s.values), relax.const(s.offsets),
                              relax.const(s.row_ptr))
        x = self.visit_expr(m.x)
        if any(m.pad):  # zeros: for an int8 conv, QuantizeInt8 pads with the zero point itself
            t, left, bottom, right = m.pad
            x = self.builder_.emit(R.nn.pad(x, [0, 0, 0, 0, t, bottom, left, right]),
                                   f"{m.name}_padded")
        if integer:  # the sums through the bias and requantization after them
            call = relax.call_tir(self.kernels[key],
                                  [x, *self.consts[h], *(ep.constants(oc) if epi else [])],
                                  relax.TensorType(m.out_shape, epi.out_dtype if epi
                                                   else "int32"))
            rebind(self, binding, call, f"{m.name}_sparse_{epi.out_dtype if epi else 'i32'}")
            return
        bias = np.ascontiguousarray(m.bias if m.bias is not None else np.zeros(oc, np.float32),
                                    np.float32)
        hb = "b" + hashlib.sha256(bias.tobytes()).hexdigest()
        if hb not in self.consts:
            self.consts[hb] = relax.const(bias)
        call = relax.call_tir(self.kernels[key], [x, *self.consts[h], self.consts[hb]],
                              relax.TensorType(m.out_shape, "float32"))
        rebind(self, binding, call, f"{m.name}_sparse")

    def _emit_int(self, binding, m: _Match) -> None:
        out_f, in_f = m.w.shape
        ep = self.epilogues.get(binding.var)
        epi = ep.epilogue() if ep is not None else None
        suffix = ep.suffix() if ep is not None else ""
        key = (m.batch, in_f, out_f, m.x_dtype, suffix)
        if key not in self.kernels:
            name = f"sell_int_b{m.batch}_{in_f}x{out_f}_{m.x_dtype}{suffix}"
            kern = sell_int_kernel(m.batch, in_f, out_f, m.x_dtype, epi)
            self.kernels[key] = self.builder_.add_func(kern.with_attr("global_symbol", name),
                                                        name)
        h = "i" + hashlib.sha256(m.w.tobytes()).hexdigest()
        if h not in self.consts:
            c, _ = sliced_layout(m.w, x_dtype=m.x_dtype)
            self.consts[h] = (relax.const(c.data), relax.const(c.indices),
                              relax.const(c.slice_ptr), relax.const(c.row_order))
        call = relax.call_tir(self.kernels[key], [self.visit_expr(m.x), *self.consts[h],
                                                  *ep.constants(out_f)],
                              relax.TensorType((m.batch, out_f), epi.out_dtype if epi
                                               else "int32"))
        rebind(self, binding, call, f"{m.name}_sparse_{epi.out_dtype if epi else 'i32'}")

    def _consts(self, m: _Match):
        """``(arrays, bias, scale or codebook, values)``: Relax constants for ``m``'s sparse
        arrays (shared between functions with equal weights) and the value form it took."""
        h = hashlib.sha256(m.w.tobytes()).hexdigest()
        if h not in self.consts:
            c, values = sliced_layout(m.w, self.values)
            scale = next((a for a in (c.scale, c.codebook) if a is not None),
                         np.ones(m.w.shape[0], np.float32))
            self.consts[h] = ((relax.const(c.data), relax.const(c.indices),
                               relax.const(c.slice_ptr), relax.const(c.row_order)),
                              relax.const(scale), values)
        arrays, scale, values = self.consts[h]
        bias = m.bias if m.bias is not None else np.zeros(m.w.shape[0], np.float32)
        bias = np.ascontiguousarray(bias, np.float32)
        hb = "b" + hashlib.sha256(bias.tobytes()).hexdigest()
        if hb not in self.consts:
            self.consts[hb] = relax.const(bias)
        return arrays, self.consts[hb], scale, values


# ---- size accounting -------------------------------------------------------------------------

_SPARSE_ARGS = ("values", "col_indices", "slice_pointers", "row_order", "bias", "row_scales")


def size_report(mod: tvm.IRModule) -> dict:
    """Bytes of the constants ``mod`` carries, split into the sparse layers' arrays and the rest.

    Distinct constants are counted once (weights shared between batch entry points are stored
    once). ``sparse_layers`` maps each sparse kernel call (``"<function>/<var>"``) to its arrays'
    bytes and stored entries; ``dense_remainder`` is every other constant (dense weights,
    biases of dense layers, ...). Compare ``total`` with the same report of the dense module.
    """
    import hashlib as _h

    seen: dict[str, tuple[str, int]] = {}
    layers: dict[str, dict] = {}

    def key(c) -> str:
        a = c.value.numpy()
        return _h.sha256(a.tobytes() + str(a.dtype).encode() + str(a.shape).encode()).hexdigest()

    for gv, func in mod.functions.items():
        if not isinstance(func, relax.Function):
            continue
        sparse_calls = []

        def visit(e, calls=sparse_calls):
            if isinstance(e, tvm.ir.Call) and _op(e) == "relax.call_tir":
                callee = e.args[0]
                if isinstance(callee, tvm.ir.GlobalVar) and callee.name_hint.startswith(
                        ("sell_", "sparse_conv_")):
                    calls.append(e)

        relax.analysis.post_order_visit(func, visit)
        for i, call in enumerate(sparse_calls):
            args = list(call.args[1].fields)
            entry = {"kernel": call.args[0].name_hint}
            vals = args[1].value.numpy() if isinstance(args[1], tvm.ir.Constant) else None
            coded = vals is not None and vals.dtype == np.uint8  # the last slot is a codebook
            roles = (*_SPARSE_ARGS[:-1], "codebook") if coded else _SPARSE_ARGS
            if entry["kernel"].startswith("sparse_conv_"):  # values, offsets, row_ptr, bias
                roles = ("values", "col_indices", "slice_pointers", "bias")
            for role, a in zip(roles, args[1:]):
                if isinstance(a, tvm.ir.Constant):
                    k = key(a)
                    nbytes = int(a.value.numpy().nbytes)
                    entry[role] = nbytes
                    seen.setdefault(k, (role, nbytes))
            if vals is not None:
                entry["stored_entries"] = int(vals.size)
                entry["value_dtype"] = str(vals.dtype)
            layers[f"{gv.name_hint}/sparse{i}"] = entry

        def visit_const(e):
            if isinstance(e, tvm.ir.Constant) and hasattr(e.value, "numpy"):
                seen.setdefault(key(e), ("dense_remainder", int(e.value.numpy().nbytes)))

        relax.analysis.post_order_visit(func, visit_const)
    totals = {r: 0 for r in (*_SPARSE_ARGS, "codebook", "dense_remainder")}
    for role, nbytes in seen.values():
        totals[role] += nbytes
    totals["total"] = sum(totals.values())
    return {"sparse_layers": layers, "bytes": totals}
