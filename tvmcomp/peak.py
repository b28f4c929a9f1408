"""This machine's peak arithmetic rate, measured, and the work of one kernel call.

:func:`measure_peaks` times two microbenchmarks compiled for the profile's target, one thread
per core: independent vector FMAs (fp32, 8 or 16 lanes as the target has AVX2 or AVX-512) and,
on x86, the four-byte step of our int8 kernels (:meth:`tvmcomp.kernels.vnni.Isa.dot`:
``vpdpbusd``, 64 multiply-adds an instruction, with AVX-512 VNNI; ``vpmaddubsw`` +
``vpmaddwd`` + ``vpaddd``, 32, with AVX2 only). Each keeps 12 accumulators in flight, enough
to cover the instructions' latency. :func:`kernel_ops` counts a conv / matmul kernel call's
operations (2 per multiply-add of the dense layer it computes, so a sparse kernel's rate is
its dense-equivalent rate) from its arguments' shapes. Together they give each kernel's
share of the peak (``scripts/bench_lenet5.py``'s kernel table).
"""

from __future__ import annotations

import time

import numpy as np

ACCUMULATORS = 12
STEPS = 20000  # loop iterations a run: ~1-3 ms at peak


def _loop_kernel(dtype: str, lanes: int, cores: int, step):
    """A PrimFunc over one buffer (``cores * ACCUMULATORS * lanes`` of ``dtype``): per core,
    :data:`ACCUMULATORS` vectors loaded, each replaced by ``step(vector)`` :data:`STEPS` times,
    stored back; with its buffer's length."""
    from tvm.script import tirx as T

    size = cores * ACCUMULATORS * lanes
    vec = f"{dtype}x{lanes}"

    @T.prim_func(s_tir=True)
    def peak(a: T.Buffer((T.int64(size),), dtype)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for c in T.parallel(T.int64(cores)):
            acc = T.decl_buffer((T.int64(ACCUMULATORS * lanes),), dtype, scope="local")
            for j in T.unroll(T.int64(ACCUMULATORS)):
                for lane in T.vectorized(T.int64(lanes)):
                    acc[j * lanes + lane] = a[(c * ACCUMULATORS + j) * lanes + lane]
            for _ in range(T.int64(STEPS)):
                for j in T.unroll(T.int64(ACCUMULATORS)):
                    acc[T.ramp(j * lanes, 1, lanes)] = step(acc.vload([j * lanes], vec))
            for j in T.unroll(T.int64(ACCUMULATORS)):
                for lane in T.vectorized(T.int64(lanes)):
                    a[(c * ACCUMULATORS + j) * lanes + lane] = acc[j * lanes + lane]

    return peak, size


def _fma_kernel(lanes: int, cores: int):
    """Vector FMAs (2 operations a lane): ``(func, operations, buffer length)``."""
    from tvm.script import tirx as T

    def fma(v):
        return T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id(f"llvm.fma.v{lanes}f32"), v,
            T.Broadcast(T.float32(0.999), lanes), T.Broadcast(T.float32(1e-3), lanes),
            dtype=f"float32x{lanes}")

    func, size = _loop_kernel("float32", lanes, cores, fma)
    return func, 2 * lanes * ACCUMULATORS * STEPS * cores, size


def _int8_kernel(isa_name: str, cores: int):
    """Our int8 kernels' step on ``isa_name`` (``4 * lanes`` multiply-adds, twice that many
    operations): ``(func, operations, buffer length)``. The activations' bytes are the
    accumulator's own (AVX2: else its products, the same every step, would be hoisted out
    of the loop)."""
    from tvm.script import tirx as T

    from .kernels.vnni import ISAS

    isa = ISAS[isa_name]
    v = isa.lanes

    def dot(acc):
        a = T.Broadcast(T.int32(0x01010101), v) if isa_name == "avx512_vnni" else acc
        return isa.dot(acc, a, T.Broadcast(T.int32(0x01FF01FF), v))

    func, size = _loop_kernel("int32", v, cores, dot)
    return func, 2 * 4 * v * ACCUMULATORS * STEPS * cores, size


def _timer(func, size: int, target, dtype: str):
    """``run(repeat) -> fastest seconds`` of ``repeat`` calls of ``func`` compiled for
    ``target`` (``size``: its buffer's length)."""
    import tvm

    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                      target=target)
    a = tvm.runtime.tensor(np.zeros(size, dtype))
    lib["main"](a)  # starts the thread pool

    def run(repeat: int) -> float:
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            lib["main"](a)
            best = min(best, time.perf_counter() - t0)
        return best

    return run


def measure_peaks(profile, rounds: int = 3, repeat: int = 15) -> dict[str, float | None]:
    """``{"fp32": GFLOP/s, "int8": GOP/s or None}`` of this machine, for ``profile``'s
    target and cores (int8: where our int8 kernels run, x86 with AVX2 or VNNI): each the
    fastest run of ``rounds`` rounds of ``repeat`` runs, the two microbenchmarks alternating.
    One round of one is not enough on these VMs: a process's first fp32 round came out at
    about half the later ones (147 vs 250-294 GFLOP/s on a 2-vCPU Xeon)."""
    from tvm.target import codegen

    from .passes.int8_vnni import target_int8_isa

    target = profile.tvm_target()
    lanes = 16 if codegen.target_has_features("avx512f", target) else 8
    kernels = {"fp32": (_fma_kernel(lanes, profile.cores), "float32")}
    isa = target_int8_isa(target)
    if isa is not None:
        kernels["int8"] = (_int8_kernel(isa, profile.cores), "int32")
    timers = {k: (ops, _timer(func, size, target, dtype))
              for k, ((func, ops, size), dtype) in kernels.items()}
    best = {k: float("inf") for k in timers}
    for _ in range(rounds):
        for k, (_, run) in timers.items():
            best[k] = min(best[k], run(repeat))
    out: dict[str, float | None] = {"fp32": None, "int8": None}
    out.update({k: timers[k][0] / best[k] / 1e9 for k in timers})
    return out


def kernel_ops(symbol: str, shapes: list[tuple[int, ...]],
               dtypes: list[str]) -> tuple[int, str] | None:
    """``(operations, "int8" | "fp32")`` of one call of a conv / matmul kernel (2 per
    multiply-add of the dense layer it computes), from its arguments' shapes (the output
    last); None for other kernels (pools, elementwise, pads).

    Convolutions (``conv`` in the name): input ``[N, C, H, W]``, output ``[N, OC, OH,
    OW]`` last; the kernel size is the weight's (a 4-D ``[OC, C, KH, KW]`` argument, or its
    codes) or, for our direct kernels over a padded input, ``H - OH + 1`` (their pooled output
    counts the convolution's ``2 OH``). Matmuls (``matmul``, ``dense``, ``sell``): input
    ``[M, K]``, output ``[M, N]`` last. The input is the first argument of the output's rank
    and leading size; its type (int8 / uint8 or not) says which peak applies."""
    if len(shapes) < 2:
        return None
    y = shapes[-1]
    # the input: the first argument of the output's rank and batch (a weight's codes, which
    # may come first, lead with the output channels or the input features)
    i = next((i for i, s in enumerate(shapes[:-1]) if len(s) == len(y) and s[0] == y[0]), None)
    if i is None:
        return None
    x = shapes[i]
    kind = "int8" if dtypes[i] in ("int8", "uint8") else "fp32"
    name = symbol.lower()
    if "conv" in name and len(x) == 4 and len(y) == 4:
        n, c, h, w = x
        oc, oh, ow = y[1], y[2], y[3]
        if "pool2" in name:
            oh, ow = 2 * oh, 2 * ow
        weight = next((s for j, s in enumerate(shapes[:-1])
                       if j != i and len(s) == 4 and s[0] == oc and s[1] == c), None)
        kh, kw = (weight[2], weight[3]) if weight else (h - oh + 1, w - ow + 1)
        return 2 * n * oc * oh * ow * c * kh * kw, kind
    if any(k in name for k in ("matmul", "dense", "sell")) and len(x) == 2 and len(y) == 2:
        return 2 * x[0] * x[1] * y[1], kind
    return None
