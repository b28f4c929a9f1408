"""The measured-latency gate for SparseDense: keep a sparse layer only where it is faster.

It measures what would ship. The quantized model is fused twice, all candidates dense and all
candidates sparse, each compiled with the tuning database. Then, for each candidate layer, the
kernels that compute it in each build are timed alone with the layer's real arguments (its
constants; random activations of the right shape): the dense fused matmul(+epilogue) kernel
against the sparse kernel (plus, for int8 layers, the fused bias/requantization kernel that
follows it). The two whole models must compute the same outputs (bit for bit on integers).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

import numpy as np

from ..defaults import DEFAULT_SPARSE_THRESHOLD, gate_repeats
from ..kernels.decode import DECODE_FUNCTION
from ..targets import device_for


@dataclass(frozen=True)
class GateDecision:
    """Timings (median µs, kernels alone, same run, interleaved) and the decision for a layer."""

    key: str                 # "<function>/matmul<k>", what SparseDense(keep=...) takes
    batch: int
    shape: tuple[int, int]   # [out, in] (a conv's: [out channels, in channels x kernel])
    sparsity: float
    dense_us: float          # the dense form's kernels of this layer in the real model
    sparse_us: float         # the sparse form's kernels of this layer in the real model
    dense_kernels: tuple[str, ...] = ()
    sparse_kernels: tuple[str, ...] = ()
    dense_tuned: bool = False   # every dense kernel had a (checked or given) tuned schedule
    sparse_tuned: bool = False  # every sparse-form kernel is hand-scheduled or tuned
    keep_sparse: bool = False
    reason: str = ""

    @property
    def speedup(self) -> float:
        return self.dense_us / self.sparse_us if self.sparse_us > 0 else float("nan")

    def to_dict(self) -> dict:
        return {**timed_dict(self), "sparsity": round(self.sparsity, 6),
                "speedup": round(self.speedup, 3)}


def timed_dict(decision, digits: int = 3) -> dict:
    """A gate decision (a dataclass) as JSON: tuples as lists, timings (fields ending in
    ``_us``) rounded to ``digits``."""
    d = asdict(decision)
    for k, v in d.items():
        if isinstance(v, tuple):
            d[k] = list(v)
        elif k.endswith("_us") and isinstance(v, float):
            d[k] = round(v, digits)
    return d


@dataclass(frozen=True)
class _Built:
    fused: object
    ex: object
    kernels: dict  # kernel_table of the lowered module
    dev: object    # the device of the target


def _build(fused, target, database):
    from ..pipeline import compile_lowered, kernel_table, schedule_and_lower

    lowered = schedule_and_lower(fused, target, database)
    return _Built(fused, compile_lowered(lowered, target), kernel_table(lowered, target),
                  device_for(target.kind.name))


def keeps_code_stream(kind: str, name: str, at_load: tuple[str, ...]) -> bool:
    """Whether a sparse candidate (``kind`` ``"conv"`` or a matmul, ``name`` e.g.
    ``matmul2``) stays dense because the build decodes it at load (``at_load``): a matmul,
    whose code stream is smaller than any sparse form and which no sparse matmul kernel
    reads (a conv's stream decodes into the sparse conv's arrays)."""
    return kind != "conv" and name in at_load


def _candidates(quantized, threshold: float, codebook: bool = False,
                at_load: tuple[str, ...] = ()):
    """(decisions of layers kept dense untimed, ``(function, match, decision)`` of those to
    time, every candidate key in layer order): the layers ``SparseDense`` can rewrite, with
    codes where the build keeps them (``codebook``); below ``threshold``, or a matmul named
    in ``at_load`` (decoded at load from its code stream, the smallest form: no sparse
    matmul kernel reads one), a layer is kept dense untimed."""
    from tvm import relax

    from ..passes.layers import layer_key
    from ..passes.sparse_dense import rewritable_layers

    below, timed, order = [], [], []
    for gv, func in quantized.functions.items():
        if not isinstance(func, relax.Function) or func.attrs and "Primitive" in func.attrs:
            continue
        for m in rewritable_layers(func, "codebook" if codebook else "float32"):
            key = layer_key(gv.name_hint, m.name)
            order.append(key)
            sp = 1.0 - np.count_nonzero(m.w) / m.w.size
            d = GateDecision(key, m.batch, (int(m.w.shape[0]), int(m.w[0].size)), sp,
                             float("nan"), float("nan"))
            if sp < threshold:
                below.append(dataclasses.replace(d, reason=f"sparsity {sp:.3f} < {threshold}"))
            elif keeps_code_stream(m.kind, m.name, at_load):
                below.append(dataclasses.replace(d, reason=(
                    "decoded at load from its code stream (no sparse matmul kernel reads "
                    "one)")))
            else:
                timed.append((gv.name_hint, m, d))
    return below, timed, order


def forms(quantized, target, threshold: float = DEFAULT_SPARSE_THRESHOLD,
          codebook: bool = False, at_load: tuple[str, ...] = ()):
    """The two fused modules the gate compares: every candidate at or above ``threshold``
    dense, and every one sparse (None when there is no such candidate). Tune these before
    :func:`gate` so both forms are timed as they would ship. ``codebook`` (``--codebook``):
    both forms as that build makes them, shared weights kept as codes (dense codebook
    kernels against sparse kernels with codes)."""
    from ..pipeline import fuse

    below, timed, _ = _candidates(quantized, threshold, codebook, at_load)
    dense = fuse(quantized, target, start="layer_forms", codebook=codebook, at_load=at_load)
    if not timed:
        return dense, None
    sparse = {"threshold": threshold, "keep": {**{d.key: False for d in below},
                                               **{d.key: True for _, _, d in timed}},
              **({"values": "codebook"} if codebook else {})}
    return dense, fuse(quantized, target, start="layer_forms", sparse=sparse, codebook=codebook,
                       at_load=at_load)


def _calls(func) -> list:
    """``(bound var, call_tir)`` of a fused Relax function, in order."""
    import tvm
    from tvm import relax

    out = []
    for block in func.body.blocks:
        for b in block.bindings:
            v = b.value
            if isinstance(v, tvm.ir.Call) and getattr(v.op, "name", "") == "relax.call_tir":
                out.append((b.var, v))
    return out


def _cache_reads(func) -> dict:
    """``{var: key}`` of ``func``'s weights read from the tensor cache (decoded at load)."""
    import tvm

    out = {}
    for block in func.body.blocks:
        for b in block.bindings:
            v = b.value
            if (isinstance(v, tvm.ir.Call) and getattr(v.op, "name", "") ==
                    "relax.call_pure_packed" and getattr(v.args[0], "global_symbol", "")
                    == "vm.builtin.tensor_cache.get"):
                out[b.var] = str(v.args[1].value)
    return out


def _module_cache_reads(mod) -> dict:
    """:func:`_cache_reads` of every Relax function of ``mod``."""
    from tvm import relax

    return {v: k for _, f in mod.functions.items() if isinstance(f, relax.Function)
            for v, k in _cache_reads(f).items()}


def _consts(call) -> list[np.ndarray]:
    import tvm

    return [a.value.numpy() for a in call.args[1].fields if isinstance(a, tvm.ir.Constant)]


def _dense_calls(func, w: np.ndarray) -> list:
    """The call whose constants hold weight ``w`` (a matmul's [out, in] or a conv's OIHW, as
    given or transposed), or its codes and codebook (a codebook kernel), or that reads it
    decoded at load from the tensor cache."""
    from ..kernels import vnni
    from ..kernels.codebook import decode
    from ..kernels.decode import cache_key

    cached = _cache_reads(func)
    keys = {cache_key(w), cache_key(w.T)} if cached else set()
    for _, call in _calls(func):
        if any(cached.get(a) in keys for a in call.args[1].fields):
            return [call]
        consts = _consts(call)
        if vnni.holds(consts, w):
            return _finished(func, call)
        for c in consts:
            if (c.shape == w.shape and np.array_equal(c, w)) or \
                    (c.shape == w.T.shape and np.array_equal(c, w.T)):
                return [call]
        books = [c for c in consts if c.dtype == np.float32 and c.ndim == 1]
        for c in consts:
            for cb in books:
                for ref in (w.T, w):  # a matmul's codes are [in, out]; a conv's OIHW
                    got = decode(cb, c, ref.shape)
                    if got is not None and np.array_equal(got, ref):
                        return [call]
    return []


def _consumer(func, call) -> list:
    """The first call of ``func`` that reads the output of ``call`` (none: ``[]``)."""
    calls = _calls(func)
    var = next(v for v, c in calls if c.same_as(call))
    return [c for _, c in calls if any(a.same_as(var) for a in c.args[1].fields)][:1]


def _finished(func, call) -> list:
    """``[call]``, and the kernel that finishes its sums (bias, requantization) where the
    call stores int32 sums of an int8 layer rather than taking those in its epilogue."""
    if str(call.ty_args[0].dtype) != "int32":
        return [call]
    return [call, *_consumer(func, call)]


def _sparse_calls(func, index: int, prefix: str = "sell_") -> list:
    """The ``index``-th sparse kernel call of ``func`` whose kernel's name starts with
    ``prefix`` (``sell_``: matmul; ``sparse_conv_``: conv, after the pad of its input if it
    has one) and, where the kernel stores an int8 layer's int32 sums, the fused epilogue
    (bias, requantization) that consumes its output (:func:`_finished`)."""
    calls = _calls(func)
    sparse = [(v, c) for v, c in calls if c.args[0].name_hint.startswith(prefix)]
    if index >= len(sparse):
        return []
    _, call = sparse[index]
    out = [call]
    if prefix == "sparse_conv_":  # a padded conv's input is padded by a kernel of its own
        x = call.args[1].fields[0]  # (fused into its producer, e.g. the input's quantize,
        out[:0] = [c for v, c in calls  # it is not counted: the dense side has that one alone)
                   if v.same_as(x) and c.args[0].name_hint.rstrip("0123456789") == "pad"]
    return out[:-1] + _finished(func, call)


def _timer(built: _Built, call, rng, cached: dict):
    """An :func:`tvmcomp.bench.evaluator` of one kernel call with its real constants, and
    its weights read from the tensor cache (``cached``: :func:`_cache_reads`; decoded there
    by :func:`_check_same_outputs`) as decoded (a sparse conv's offsets must be real)."""
    import tvm
    from tvm import relax

    from ..bench import evaluator

    ex, dev = built.ex, built.dev
    args = []
    for a in call.args[1].fields:
        if isinstance(a, tvm.ir.Constant):
            args.append(tvm.runtime.tensor(a.value.numpy(), dev))
        elif a in cached:
            args.append(tvm.get_global_func("vm.builtin.tensor_cache.get")(cached[a]))
        elif isinstance(a, relax.Var):
            ty = a.ty
            shape, dtype = [int(d) for d in ty.shape.values], str(ty.dtype)
            if dtype.startswith("float"):
                x = rng.standard_normal(shape).astype(dtype)
            else:
                info = np.iinfo(dtype)
                x = rng.integers(max(info.min, -128), min(info.max, 127) + 1, shape).astype(dtype)
            args.append(tvm.runtime.tensor(x, dev))
        else:
            raise ValueError(f"cannot time {call.args[0].name_hint}: argument {a} is not a "
                             "constant or a tensor")
    out = call.ty_args[0]
    args.append(tvm.runtime.empty([int(v) for v in out.shape.values], out.dtype, dev))
    name = call.args[0].name_hint
    lib = next(m for m in ex.mod.imports if m.implements_function(name))
    return evaluator(lib, name, args, max_number=20000)


def time_two_forms(quantized, target, database, fused, what: str, find,
                   repeat: int | None = None) -> dict[str, tuple]:
    """Each layer's kernels in two forms of ``quantized``, timed alone in one interleaved run.

    ``fused``: the two fused modules; both are built with ``database`` and checked to agree
    (``what`` names the second in the error). ``find(function name, function, first built,
    second built)`` yields ``(layer, its calls in the first, its calls in the second)`` for
    each layer of one Relax function of ``quantized``. Returns ``{layer: (µs in the first,
    µs in the second, kernel names in the first, in the second)}`` in layer order, the µs
    summed over the batch entries (a layer's entries share one stored form)."""
    from tvm import relax

    from ..bench import interleaved_us
    from ..passes.layers import layer_index

    built = [_build(m, target, database) for m in fused]
    _check_same_outputs(*built, quantized, False, what)  # (decodes the cached weights)
    cached = [_module_cache_reads(b.fused) for b in built]
    rng = np.random.default_rng(0)
    timers: dict = {}
    calls: dict[str, tuple[list, list]] = {}  # layer -> (first-form names, second-form names)
    for gv, func in quantized.functions.items():
        if not isinstance(func, relax.Function) or func.attrs and "Primitive" in func.attrs:
            continue
        for layer, *found in find(gv.name_hint, func, *built):
            mine = calls.setdefault(layer, ([], []))
            for form, (b, cs) in enumerate(zip(built, found)):
                for c in cs:
                    timers.setdefault((form, c.args[0].name_hint),
                                      _timer(b, c, rng, cached[form]))
                    mine[form].append(c.args[0].name_hint)
    us = interleaved_us(timers, repeat or gate_repeats())
    return {layer: (*(sum(us[(form, n)] for n in names) for form, names in enumerate(both)),
                    *(tuple(names) for names in both))
            for layer, both in sorted(calls.items(), key=lambda kv: layer_index(kv[0]))}


def _check_same_outputs(dense: _Built, sparse: _Built, quantized, integer: bool,
                        what: str = "the sparse build") -> None:
    """Both whole models on the same random inputs: equal (integer layers) or close."""
    import tvm
    from tvm import relax

    rng = np.random.default_rng(0)
    dev = dense.dev
    vms = [relax.VirtualMachine(b.ex, dev) for b in (dense, sparse)]
    for vm in vms:  # layers decoded at load read their weights from the tensor cache
        if vm.module.implements_function(DECODE_FUNCTION):
            vm[DECODE_FUNCTION]()
    for gv, func in quantized.functions.items():
        if not isinstance(func, relax.Function) or not gv.name_hint.startswith("main"):
            continue
        ty = func.params[0].ty
        x = rng.standard_normal([int(d) for d in ty.shape.values]).astype(str(ty.dtype))
        a, b = (vm[gv.name_hint](tvm.runtime.tensor(x, dev)).numpy() for vm in vms)
        tol = 0.0 if integer else 1e-4 * max(1.0, float(np.abs(a).max()))
        if not np.abs(a.astype(np.float64) - b).max() <= tol:
            raise ValueError(f"{gv.name_hint}: {what} disagrees with the dense one "
                             f"(max |diff| {np.abs(a.astype(np.float64) - b).max():.3g})")


def gate(quantized, target, database=None, threshold: float = DEFAULT_SPARSE_THRESHOLD,
         min_speedup: float = 1.0, progress: bool = True, repeat: int | None = None,
         fused: tuple | None = None, codebook: bool = False,
         at_load: tuple[str, ...] = ()) -> list[GateDecision]:
    """Time dense vs sparse for each SparseDense candidate of ``quantized`` (per function).

    ``quantized`` is the module after the pipeline's ``quantize`` phase. Layers below
    ``threshold`` are not timed (kept dense). A timed layer keeps its sparse form when
    ``dense µs / sparse µs >= min_speedup``. Pass ``{d.key: d.keep_sparse for d in
    decisions}`` to ``SparseDense(keep=...)``. ``fused``: the two modules of :func:`forms`
    (default: made here, with ``codebook`` and ``at_load``).
    """
    from ..bench import interleaved_us

    out, timed, order = _candidates(quantized, threshold, codebook, at_load)
    if not timed:
        return out  # already in layer order
    dense_mod, sparse_mod = fused or forms(quantized, target, threshold, codebook, at_load)
    dense = _build(dense_mod, target, database)
    sparse = _build(sparse_mod, target, database)
    integer = any(m.x_dtype != "float32" for _, m, _ in timed)
    _check_same_outputs(dense, sparse, quantized, integer)  # (decodes the cached weights)
    cached = {"d": _module_cache_reads(dense.fused), "s": _module_cache_reads(sparse.fused)}
    rng = np.random.default_rng(0)
    timers, layer_calls, seen = {}, [], {}
    for fname, m, d in timed:
        prefix = "sparse_conv_" if m.kind == "conv" else "sell_"
        index = seen.get((fname, prefix), 0)
        seen[(fname, prefix)] = index + 1
        dc = _dense_calls(dense.fused[fname], m.w)
        if dc and m.kind == "conv" and m.pool > 1:  # the sparse kernel pools too: so does dense
            dc += _consumer(dense.fused[fname], dc[-1])
        sc = _sparse_calls(sparse.fused[fname], index, prefix)
        if not dc or not sc:
            raise ValueError(f"{d.key}: cannot find its kernels in the fused modules")
        for tag, built, calls in (("d", dense, dc), ("s", sparse, sc)):
            for c in calls:
                timers.setdefault((tag, c.args[0].name_hint),
                                  _timer(built, c, rng, cached[tag]))
        layer_calls.append(([c.args[0].name_hint for c in dc], [c.args[0].name_hint for c in sc]))
    us = interleaved_us(timers, repeat or gate_repeats())
    for (fname, m, d), (dnames, snames) in zip(timed, layer_calls):
        dense_us = sum(us[("d", n)] for n in dnames)
        sparse_us = sum(us[("s", n)] for n in snames)
        scheduled = ("tuned", "hand-scheduled")  # a hand-written kernel needs no record
        tuned = all(dense.kernels.get(n) in scheduled for n in dnames)
        sparse_tuned = all(sparse.kernels.get(n) in scheduled for n in snames)
        keep = dense_us / sparse_us >= min_speedup
        untuned = " and ".join(f for f, ok in (("dense", tuned), ("sparse", sparse_tuned))
                               if not ok)
        why = (f"sparse {'+'.join(snames)} {sparse_us:.2f} µs vs dense {'+'.join(dnames)} "
               f"{dense_us:.2f} µs{f' ({untuned} untuned)' if untuned else ''}: "
               + ("sparse kept" if keep else f"below the {min_speedup:g}x gate, dense kept"))
        out.append(dataclasses.replace(d, dense_us=dense_us, sparse_us=sparse_us,
                                       dense_kernels=tuple(dnames), sparse_kernels=tuple(snames),
                                       dense_tuned=tuned, sparse_tuned=sparse_tuned,
                                       keep_sparse=keep, reason=why))
        if progress:
            print(f"sparse gate {d.key} (batch {m.batch}, {d.shape[1]}→{d.shape[0]}, sparsity "
                  f"{d.sparsity:.3f}): {why}", flush=True)
    return sorted(out, key=lambda d: order.index(d.key))
