"""The measured-latency gate for SparseDense: keep a sparse kernel only where it is faster."""

from __future__ import annotations

import hashlib
import dataclasses
from dataclasses import asdict, dataclass

import numpy as np

from .sell import sell_from_dense, sell_int8_from_dense


@dataclass(frozen=True)
class GateDecision:
    """Timings (median µs per call of the layer alone, same run) and the decision for a layer."""

    key: str                 # "<function>/matmul<k>", what SparseDense(keep=...) takes
    batch: int
    shape: tuple[int, int]   # [out, in]
    sparsity: float
    dense_us: float          # the one-layer model through the Relax VM (call overhead included)
    sparse_us: float
    dense_tuned: bool        # the dense kernel had a tuned schedule in the database
    keep_sparse: bool
    reason: str
    dense_kernel_us: float = float("nan")   # the compiled TIR kernel alone, same arguments
    sparse_kernel_us: float = float("nan")

    @property
    def speedup(self) -> float:
        """Kernel against kernel where both were timed, else the one-layer models."""
        if self.sparse_kernel_us > 0 and self.dense_kernel_us > 0:
            return self.dense_kernel_us / self.sparse_kernel_us
        return self.dense_us / self.sparse_us if self.sparse_us > 0 else float("inf")

    @property
    def model_speedup(self) -> float:
        return self.dense_us / self.sparse_us if self.sparse_us > 0 else float("inf")

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(shape=list(self.shape), sparsity=round(self.sparsity, 6),
                 dense_us=round(self.dense_us, 3), sparse_us=round(self.sparse_us, 3),
                 dense_kernel_us=round(self.dense_kernel_us, 3),
                 sparse_kernel_us=round(self.sparse_kernel_us, 3),
                 speedup=round(self.speedup, 3), model_speedup=round(self.model_speedup, 3))
        return d


def layer_module(w: np.ndarray, bias: np.ndarray | None, relu: bool, batch: int,
                 x_dtype: str = "float32", accumulate: str = "int32"):
    """A one-layer Relax module shaped like the ONNX import of Gemm (+Relu): the dense form.

    With an int8/uint8 ``x_dtype`` it is QuantizeInt8's integer core instead:
    ``matmul(x, W_i8ᵀ, out_dtype="int32")`` (``bias`` and ``relu`` must be None/False), or
    with ``accumulate="float32"`` its exact float32-accumulated form where that is exact.
    """
    from ..passes.quantize_int8 import float32_exact

    from tvm import relax

    R = relax.op
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((batch, w.shape[1]), x_dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            if x_dtype != "float32":
                if bias is not None or relu:
                    raise ValueError("the integer layer has no bias or relu")
                wt = np.ascontiguousarray(w.T).astype(np.int8)
                in_float = accumulate == "float32" and float32_exact(wt, x_dtype, 1)
                y = bb.emit(R.matmul(x, relax.const(wt, "int8"),
                                     out_dtype="float32" if in_float else "int32"))
                if in_float:
                    y = bb.emit(R.astype(y, "int32"))
            else:
                y = bb.emit(R.matmul(x, bb.emit(R.permute_dims(relax.const(w), [1, 0]))))
            if bias is not None:
                y = bb.emit(R.add(y, relax.const(bias)))
            if relu:
                y = bb.emit(R.nn.relu(y))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def _build(mod, target, database):
    from ..pipeline import compile_fused, fuse

    fused = fuse(mod, target)
    return fused, compile_fused(fused, target, database)


def time_vm_us(exes: list, x: np.ndarray, repeat: int = 21,
               min_repeat_s: float = 0.01) -> list[float]:
    """Median µs per call of each executable's ``main(x)``, measured interleaved.

    Repeats alternate between the executables (so a load change on a shared machine hits
    all of them alike); each repeat runs enough calls to last ``min_repeat_s``. Includes the
    ~1 µs VM call overhead.
    """
    import tvm
    from tvm import relax

    from ..bench import evaluator, interleaved_us

    dev = tvm.cpu()
    arg = tvm.runtime.tensor(x, dev)
    timers = {i: evaluator(relax.VirtualMachine(ex, dev), "main", [arg], min_repeat_s)
              for i, ex in enumerate(exes)}
    us = interleaved_us(timers, repeat)
    return [us[i] for i in range(len(exes))]


def _kernel_call(fused, ex, x: np.ndarray):
    """``(library function, its arguments)`` of the single ``call_tir`` in ``fused``'s main.

    The arguments are the ones the VM passes: ``x``, the constants, a fresh output tensor.
    ``None`` when main does not consist of exactly one kernel call.
    """
    import tvm
    from tvm import relax

    calls = []

    def visit(e):
        if isinstance(e, tvm.ir.Call) and getattr(e.op, "name", "") == "relax.call_tir":
            calls.append(e)

    relax.analysis.post_order_visit(fused["main"].body, visit)
    if len(calls) != 1:
        return None
    call, dev = calls[0], tvm.cpu()
    args = []
    for a in call.args[1].fields:
        if isinstance(a, tvm.ir.Constant):
            args.append(tvm.runtime.tensor(a.value.numpy(), dev))
        elif isinstance(a, relax.Var):
            args.append(tvm.runtime.tensor(x, dev))
        else:
            return None
    out = call.ty_args[0]
    args.append(tvm.runtime.empty([int(v) for v in out.shape.values], out.dtype, dev))
    name = call.args[0].name_hint
    libs = [m for m in ex.mod.imports if m.implements_function(name)]
    return (libs[0], name, args) if libs else None


def time_kernels_us(calls: list, repeat: int = 21, min_repeat_s: float = 0.01) -> list[float]:
    """Median µs per call of each compiled kernel alone (:func:`_kernel_call`), interleaved."""
    from ..bench import evaluator, interleaved_us

    timers = {i: evaluator(lib, name, args, min_repeat_s, max_number=20000)
              for i, (lib, name, args) in enumerate(calls)}
    us = interleaved_us(timers, repeat)
    return [us[i] for i in range(len(calls))]


@dataclass(frozen=True)
class LayerTiming:
    """Median µs of one layer built dense and sparse, same process, interleaved."""

    dense_us: float            # one-layer Relax model through the VM (call overhead included)
    sparse_us: float
    dense_kernel_us: float     # the TIR kernel alone (NaN if the model is not one kernel)
    sparse_kernel_us: float
    dense_tuned: bool


def measure_layer(w: np.ndarray, bias: np.ndarray | None, relu: bool, batch: int, target,
                  database=None, values: str = "float32", check: bool = True,
                  x_dtype: str = "float32") -> LayerTiming:
    """Time one layer built both ways in this process: the model and its kernel alone.

    The dense form goes through our pipeline with ``database`` (MetaSchedule; a record for
    the fused matmul(+bias)(+relu) task is what the full model uses too); the sparse form is
    the same module after :class:`~tvmcomp.passes.sparse_dense.SparseDense`. With ``check``
    the two outputs must agree (else ``ValueError``).
    """
    from ..passes.sparse_dense import SparseDense

    from ..pipeline import int8_accumulate

    dense_mod = layer_module(w, bias, relu, batch, x_dtype, int8_accumulate(target))
    fused, dense_ex = _build(dense_mod, target, database)
    tuned = False
    if database is not None:
        from ..tune import task_status

        tuned = all(t.best_us is not None for t in task_status(fused, target, database))
    sparse_mod = SparseDense(threshold=0.0, values=values)(dense_mod)
    sparse_fused, sparse_ex = _build(sparse_mod, target, None)
    rng = np.random.default_rng(0)
    if x_dtype == "float32":
        x = rng.standard_normal((batch, w.shape[1])).astype(np.float32)
    else:
        x = rng.integers(0 if x_dtype == "uint8" else -128, 128, (batch, w.shape[1]),
                         dtype=np.int64).astype(x_dtype)
    if check:
        _check(dense_ex, sparse_ex, x, w, values if x_dtype == "float32" else "exact")
    dense_us, sparse_us = time_vm_us([dense_ex, sparse_ex], x)
    calls = [_kernel_call(fused, dense_ex, x), _kernel_call(sparse_fused, sparse_ex, x)]
    kernel_us = time_kernels_us(calls) if all(calls) else [float("nan")] * 2
    return LayerTiming(dense_us, sparse_us, kernel_us[0], kernel_us[1], tuned)


def _check(dense_ex, sparse_ex, x, w, values) -> None:
    import tvm
    from tvm import relax

    outs = []
    for ex in (dense_ex, sparse_ex):
        vm = relax.VirtualMachine(ex, tvm.cpu())
        outs.append(vm["main"](tvm.runtime.tensor(x)).numpy())
    if values == "exact":
        if not np.array_equal(outs[0], outs[1]):
            raise ValueError("integer sparse kernel disagrees with the dense one")
        return
    if values == "int8":  # compare against the dequantized weight actually stored
        w = sell_int8_from_dense(w).to_dense()
    else:
        w = sell_from_dense(w).to_dense()
    tol = 1e-4 * max(1.0, float(np.abs(x).sum(1).max() * np.abs(w).max()))
    if values == "float32" and np.abs(outs[0] - outs[1]).max() > tol:
        raise ValueError(f"sparse kernel disagrees with the dense one (max |diff| "
                         f"{np.abs(outs[0] - outs[1]).max():.3g})")


def gate(mod, target, database=None, threshold: float = 0.7, min_speedup: float = 1.0,
         values: str = "float32", progress: bool = True) -> list[GateDecision]:
    """Time dense vs sparse for each SparseDense candidate of ``mod`` (per function/batch).

    Layers below ``threshold`` are not timed (recorded as kept dense). A layer keeps its
    sparse form when its speedup (sparse kernel against the dense kernel, both alone with the
    layer's real arguments; the one-layer models where a kernel cannot be isolated) is at
    least ``min_speedup``. The VM call around either kernel costs the same. Pass
    ``{d.key: d.keep_sparse for d in decisions}`` to ``SparseDense(keep=...)``.
    """
    from tvm import relax

    from ..passes.sparse_dense import _matches

    out, cache = [], {}
    for gv, func in mod.functions.items():
        if not isinstance(func, relax.Function) or func.attrs and "Primitive" in func.attrs:
            continue
        matches, _, _ = _matches(func)
        for m in matches:
            key = f"{gv.name_hint}/{m.name}"
            sp = 1.0 - np.count_nonzero(m.w) / m.w.size
            shape = (int(m.w.shape[0]), int(m.w.shape[1]))
            if sp < threshold:
                out.append(GateDecision(key, m.batch, shape, sp, float("nan"), float("nan"),
                                        False, False, f"sparsity {sp:.3f} < {threshold}"))
                continue
            h = (hashlib.sha256(m.w.tobytes()).hexdigest(), m.batch, m.relu, m.bias is None,
                 m.x_dtype)
            if h not in cache:
                cache[h] = measure_layer(m.w, m.bias, m.relu, m.batch, target, database, values,
                                         x_dtype=m.x_dtype)
            t = cache[h]
            d = GateDecision(key, m.batch, shape, sp, t.dense_us, t.sparse_us, t.dense_tuned,
                             False, "", t.dense_kernel_us, t.sparse_kernel_us)
            keep = d.speedup >= min_speedup
            if d.sparse_kernel_us > 0:
                what = (f"kernel {t.sparse_kernel_us:.2f} µs vs dense {t.dense_kernel_us:.2f} µs"
                        f" (one-layer model {t.sparse_us:.2f} vs {t.dense_us:.2f} µs)")
            else:
                what = f"sparse {t.sparse_us:.2f} µs vs dense {t.dense_us:.2f} µs"
            why = (f"{what}{'' if t.dense_tuned else ' (dense untuned)'}: "
                   + ("sparse kept" if keep else f"below the {min_speedup:g}x gate, dense kept"))
            out.append(dataclasses.replace(d, keep_sparse=keep, reason=why))
            if progress:
                print(f"sparse gate {key} (batch {m.batch}, {shape[1]}→{shape[0]}, sparsity "
                      f"{sp:.3f}): {why}", flush=True)
    return out
