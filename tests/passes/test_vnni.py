"""AVX-512 VNNI int8 kernels (kernels.vnni): exact against integer references.

The kernels compile anywhere (the target names a VNNI CPU); they run only where the CPU has
``avx512_vnni``, so the runs are skipped on other machines."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from tvmcomp.kernels.vnni import (  # noqa: E402
    AVX2,
    conv_kernel,
    conv_supported,
    dense_kernel,
    holds,
    pack_conv,
    pack_dense,
)
from tvmcomp.targets import cpu_flags  # noqa: E402

TARGET = {"kind": "llvm", "mcpu": "cascadelake", "num-cores": 2}


def _x(rng, dtype, shape):
    lo, hi = (-128, 128) if dtype == "int8" else (0, 256)
    x = rng.integers(lo, hi, shape).astype(dtype)
    x.flat[:2] = (lo, hi - 1)  # both ends of the range
    return x


def _run(func, args, out_shape, target=TARGET, out_dtype="int32"):
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                      target=tvm.target.Target(target))
    out = tvm.runtime.tensor(np.full(out_shape, 7, out_dtype))  # garbage where not written
    lib["main"](*(tvm.runtime.tensor(a) for a in args), out)
    return out.numpy()


@pytest.mark.parametrize("m, k, n, dtype", [
    (1, 400, 120, "int8"),    # LeNet-5's fc1 at batch 1: 8 column blocks, the last half used
    (64, 400, 120, "uint8"),  # at batch 64: 3 rows a tile
    (5, 84, 10, "int8"),      # fc3: one block, 5 rows (a tile of 8 rows, 3 past the end)
    (3, 8, 400, "uint8"),     # 25 blocks: two chunks of columns
])
def test_dense_is_exact(m, k, n, dtype):
    rng = np.random.default_rng(k + n)
    x = _x(rng, dtype, (m, k))
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    w[0, 0], w[1, 0] = -128, 127
    p = pack_dense(w, dtype)
    np.testing.assert_array_equal(p.to_dense(), w)
    # the sparse gate finds the layer's kernel by its weight, given [in, out] or [out, in]
    assert holds([p.packed], w) and holds([p.packed], w.T)
    assert not holds([p.packed], np.roll(w, 1, axis=1))
    if "avx512_vnni" not in cpu_flags():
        dense_kernel(m, k, n, dtype)  # builds its TIR anywhere
        pytest.skip("this CPU has no AVX-512 VNNI")
    got = _run(dense_kernel(m, k, n, dtype), (x, p.packed), (m, n))
    np.testing.assert_array_equal(got, x.astype(np.int64) @ w.astype(np.int64))


@pytest.mark.parametrize("n, c, hw, oc, k, dtype", [
    (2, 6, (14, 14), 16, 5, "int8"),   # LeNet-5's conv2: one vector a tile, 38 tap quads
    (1, 1, (32, 32), 6, 5, "uint8"),   # conv1, padded input: 25 taps -> 7 quads; rows of 28
    (2, 2, (21, 38), 3, 3, "int8"),    # rows of 36: 3 vectors a row, 8 a tile, last one short
    (3, 3, (7, 9), 4, (3, 2), "int8"),  # a non-square kernel, the last vector shifted back
])
def test_conv_is_exact(n, c, hw, oc, k, dtype):
    import torch

    kh, kw = (k, k) if isinstance(k, int) else k
    rng = np.random.default_rng(oc)
    x = _x(rng, dtype, (n, c, *hw))
    w = rng.integers(-128, 128, (oc, c, kh, kw)).astype(np.int8)
    p = pack_conv(w, hw, dtype)
    np.testing.assert_array_equal(p.to_dense(), w)
    assert holds([p.quads, p.offsets], w)
    assert not holds([p.quads, p.offsets], -w)
    ref = torch.nn.functional.conv2d(torch.from_numpy(x.astype(np.float64)),
                                     torch.from_numpy(w.astype(np.float64))).numpy()
    if "avx512_vnni" not in cpu_flags():
        conv_kernel(n, c, hw, oc, (kh, kw), dtype)
        pytest.skip("this CPU has no AVX-512 VNNI")
    got = _run(conv_kernel(n, c, hw, oc, (kh, kw), dtype),
               (x, p.quads, p.offsets), ref.shape)
    np.testing.assert_array_equal(got, ref.astype(np.int64))


def _bias_shift_relu():
    """A conv epilogue: + bias (per channel), >> 10, clip to [0, 127], int8; and its numpy
    reference ``ref(sums, bias)``."""
    from tvmcomp.kernels.epilogue import Epilogue

    epi = Epilogue((("add", (("acc",), ("chan", 0, "int32")), "int32"),
                    ("right_shift", (("step", 0), ("const", 10, "int32")), "int32"),
                    ("clip", (("step", 1), ("const", 0, "int32"), ("const", 127, "int32")),
                     "int32"),
                    ("astype", (("step", 2),), "int8")), 1, 0, "int32")

    def ref(sums, bias):
        return np.clip((sums.astype(np.int64) + bias[None, :, None, None]) >> 10, 0, 127)

    return epi, ref


@pytest.mark.parametrize("n, c, hw, oc, k, dtype, epilogue", [
    (2, 1, (32, 32), 6, 5, "int8", True),  # LeNet-5's conv1 + pool: 4 vectors a row pair
    (1, 2, (11, 13), 4, 3, "uint8", False),  # odd output (9x11): the last row and column go
    (3, 3, (8, 20), 2, 2, "int8", True),     # 7x19 -> 3x9, the last tile's vectors shifted
    (1, 6, (14, 14), 16, 5, "int8", True),   # LeNet-5's conv2 at batch 1: a row a tile, a
    #                                          pair's first kept aside; the last pair's second
    #                                          shifted back
    (1, 2, (9, 12), 16, 3, "uint8", False),  # a row a tile, odd output (7x10): nothing shifted
])
def test_conv_with_pool_is_exact(n, c, hw, oc, k, dtype, epilogue):
    """``pool=2``: the 2x2 max pool of stride 2 after the convolution (and its epilogue, which
    the max commutes with: here bias, clip at 0, int8) is taken in the kernel, exact."""
    import torch

    from tvmcomp.kernels.vnni import conv_pool_fits

    assert conv_pool_fits(hw, (k, k), oc, n) and not conv_pool_fits((14, 40), (5, 5), 16)
    assert conv_pool_fits((14, 14), (5, 5), 16, 1) != conv_pool_fits((14, 14), (5, 5), 16, 2)
    rng = np.random.default_rng(n + c)
    x = _x(rng, dtype, (n, c, *hw))
    w = rng.integers(-128, 128, (oc, c, k, k)).astype(np.int8)
    bias = rng.integers(-30000, 30000, oc).astype(np.int32)
    p = pack_conv(w, hw, dtype)
    ref = torch.nn.functional.conv2d(torch.from_numpy(x.astype(np.float64)),
                                     torch.from_numpy(w.astype(np.float64))).numpy()
    epi, args = None, (x, p.quads, p.offsets)
    if epilogue:
        epi, requant = _bias_shift_relu()
        ref = requant(ref, bias)
        args += (bias[None, :], np.zeros((1, 1), np.float32))
    ref = torch.nn.functional.max_pool2d(torch.from_numpy(ref.astype(np.float64)), 2).numpy()
    func = conv_kernel(n, c, hw, oc, (k, k), dtype, epi, pool=2)
    if "avx512_vnni" not in cpu_flags():
        pytest.skip("this CPU has no AVX-512 VNNI")
    got = _run(func, args, ref.shape, out_dtype="int8" if epilogue else "int32")
    assert np.unique(ref).size > 5
    np.testing.assert_array_equal(got, ref.astype(np.int64))


@pytest.mark.parametrize("kind, x_dtype, density", [
    ("dense", "int8", 1.0), ("dense", "uint8", 0.1), ("conv", "int8", 0.1),
    ("conv", "int8", 1.0)])
def test_code_stream_decodes_into_the_packed_weight(kind, x_dtype, density):
    """A shared int8 weight decoded at load goes straight into the kernel's packed form (from
    the code stream of the weight as its layer reads it: what the artifact stores and the
    size report counts), its compensation summed on the way into its bytes there: what
    ``pack_dense`` / ``pack_conv`` make from the weight, padding zeros included, over a
    buffer full of garbage."""
    from tvmcomp.kernels.decode import code_stream, stream_decode_kernel

    rng = np.random.default_rng(3)
    shape = (84, 10) if kind == "dense" else (16, 6, 5, 5)  # fc3 ([in, out]) / conv2
    levels = np.array([-127, -40, -3, 5, 17, 90, 127], np.int8)
    w = (levels[rng.integers(0, levels.size, shape)] * (rng.random(shape) < density))
    w = w.astype(np.int8)
    p = pack_dense(w, x_dtype) if kind == "dense" else pack_conv(w, (14, 14), x_dtype)
    assert p.weight is (p.packed if kind == "dense" else p.quads)
    s = code_stream(w)
    assert (s.gap_bits > 0) == (density < 1)
    func = stream_decode_kernel(s, p.placement()).with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target="llvm")
    out = tvm.runtime.tensor(np.full(p.weight.shape, 99, np.int8))
    lib["main"](*(tvm.runtime.tensor(a) for a in (s.codebook, s.data, np.zeros(1, np.int32))),
                out)
    np.testing.assert_array_equal(out.numpy(), p.weight)
    assert p.comp.any() == (x_dtype == "int8")
    np.testing.assert_array_equal(p.comp[:w.shape[-1] if kind == "dense" else w.shape[0]],
                                  -128 * w.astype(np.int64).reshape(
                                      (-1, w.shape[-1]) if kind == "dense" else (w.shape[0], -1)
                                  ).sum(0 if kind == "dense" else 1) * (x_dtype == "int8"))


AVX2_TARGET = {"kind": "llvm", "mcpu": "core-avx2", "num-cores": 2}


def _avx2_run(func, args, out_shape, out_dtype="int32"):
    if "avx2" not in cpu_flags():
        pytest.skip("this CPU has no AVX2")
    return _run(func, args, out_shape, AVX2_TARGET, out_dtype)


@pytest.mark.parametrize("m, k, n", [
    (1, 400, 120),   # LeNet-5's fc1 at batch 1: 15 vectors of 8 columns, the last half used
    (64, 400, 120),  # at batch 64
    (5, 84, 10),     # fc3: two vectors, 5 rows
])
def test_avx2_dense_is_exact(m, k, n):
    """The AVX2 dense kernel (``vpmaddubsw`` + ``vpmaddwd``) over int8 activations in [0, 127]
    (a ReLU's output) gives the exact int32 sums, saturating pairs' worst case included; its
    packed weight has no compensation (the activations are read as they are)."""
    rng = np.random.default_rng(k + n)
    x = rng.integers(0, 128, (m, k)).astype(np.int8)
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    x[0, :2], w[:2, 0] = 127, -128  # one byte pair at its extreme: 2 * 127 * -128 = -32512
    p = pack_dense(w, "int8", AVX2)
    assert not p.comp.any() and p.scale == 0
    got = _avx2_run(dense_kernel(m, k, n, "int8", None, AVX2), (x, p.packed), (m, n))
    np.testing.assert_array_equal(got, x.astype(np.int64) @ w.astype(np.int64))


@pytest.mark.parametrize("n, c, hw, oc, k, epilogue", [
    (2, 6, (14, 14), 16, 5, True),   # LeNet-5's conv2: two blocks of 8 output channels
    (3, 1, (32, 32), 6, 5, False),   # conv1, padded input: rows of 28, 4 vectors a row
    (2, 3, (7, 9), 4, (3, 2), True),  # vectors across rows, the last shifted back
    (1, 2, (12, 12), 12, 3, False),  # 12 channels: two blocks of 6, rows of 10 (2 vectors)
])
def test_avx2_conv_is_exact(n, c, hw, oc, k, epilogue):
    import torch

    kh, kw = (k, k) if isinstance(k, int) else k
    rng = np.random.default_rng(oc + c)
    x = rng.integers(0, 128, (n, c, *hw)).astype(np.int8)
    w = rng.integers(-128, 128, (oc, c, kh, kw)).astype(np.int8)
    x[0, 0, 0, :2] = 127
    w[0, 0, 0, :2] = -128  # taps 0 and 1 of channel 0: one byte pair at position 0
    p = pack_conv(w, hw, "int8", AVX2)
    assert not p.comp.any()
    ref = torch.nn.functional.conv2d(torch.from_numpy(x.astype(np.float64)),
                                     torch.from_numpy(w.astype(np.float64))).numpy()
    ref = ref.astype(np.int64)
    args, epi, out_dtype = (x, p.quads, p.offsets), None, "int32"
    if epilogue:
        epi, requant = _bias_shift_relu()
        bias = rng.integers(-30000, 30000, oc).astype(np.int32)
        ref = requant(ref, bias)
        args += (bias[None, :], np.zeros((1, 1), np.float32))
        out_dtype = "int8"
    got = _avx2_run(conv_kernel(n, c, hw, oc, (kh, kw), "int8", epi, 1, AVX2), args,
                    ref.shape, out_dtype)
    assert np.unique(ref).size > 5
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_avx2_signed_kernels_are_exact(kind):
    """``signed``: int8 activations of either sign (-128 included) with weights in
    [-127, 127], as our quantizer makes them, summed exactly by ``vpsignb`` + ``vpmaddubsw``:
    ``|x|`` <= 128 times ``w`` with ``x``'s sign, a pair's sum at most 2 * 128 * 127."""
    import torch

    rng = np.random.default_rng(7)
    if kind == "dense":
        x = rng.integers(-128, 128, (3, 84)).astype(np.int8)
        w = rng.integers(-127, 128, (84, 10)).astype(np.int8)
        x[0, :2], w[:2, 0] = -128, 127   # -32512 by one pair
        x[1, :2], w[:2, 1] = -128, -127  # +32512
        p = pack_dense(w, "int8", AVX2)
        got = _avx2_run(dense_kernel(3, 84, 10, "int8", None, AVX2, True), (x, p.packed),
                        (3, 10))
        np.testing.assert_array_equal(got, x.astype(np.int64) @ w.astype(np.int64))
        return
    x = rng.integers(-128, 128, (2, 1, 32, 32)).astype(np.int8)
    w = rng.integers(-127, 128, (6, 1, 5, 5)).astype(np.int8)
    x[0, 0, 0, :2], w[0, 0, 0, :2] = -128, -127
    p = pack_conv(w, (32, 32), "int8", AVX2)
    ref = torch.nn.functional.conv2d(torch.from_numpy(x.astype(np.float64)),
                                     torch.from_numpy(w.astype(np.float64))).numpy()
    got = _avx2_run(conv_kernel(2, 1, (32, 32), 6, (5, 5), "int8", None, 1, AVX2, True),
                    (x, p.quads, p.offsets), ref.shape)
    np.testing.assert_array_equal(got, ref.astype(np.int64))


def test_avx2_kernels_refuse_what_they_cannot_sum_exactly():
    """uint8 activations may exceed 127 (``vpmaddubsw`` would saturate); no pool on AVX2."""
    from tvmcomp.kernels.vnni import conv_pool_fits

    with pytest.raises(ValueError, match="takes int8 x"):
        dense_kernel(1, 400, 120, "uint8", None, AVX2)
    with pytest.raises(ValueError, match="takes int8 x"):
        conv_kernel(1, 6, (14, 14), 16, (5, 5), "uint8", None, 1, AVX2)
    assert conv_pool_fits((14, 14), (5, 5), 16, 1) and not conv_pool_fits((14, 14), (5, 5),
                                                                           16, 1, AVX2)
    with pytest.raises(ValueError, match="signed activations are for the AVX2"):
        dense_kernel(1, 400, 120, "int8", None, signed=True)  # VNNI


def test_unsupported_shapes_are_refused():
    assert conv_supported((14, 14), (5, 5)) and not conv_supported((4, 4), (3, 3))
    with pytest.raises(ValueError, match="flat output positions"):
        conv_kernel(1, 1, (4, 4), 2, (3, 3), "int8")
    with pytest.raises(ValueError, match="K % 4"):
        pack_dense(np.zeros((6, 3), np.int8), "int8")


def _int8_layers(x_dtype: str, pad: int, leak: bool, pool: bool = False):
    """A Relax module as QuantizeInt8 makes them: an int8 conv (zero padding ``pad``) with
    its bias and requantization (per-channel int32 / int64 constants, scalar ones), flatten,
    an int8 matmul with a float output (``* scale``). ``leak``: the matmul's float value is
    also read by a ``sum`` the kernel cannot take, so only the ``astype`` goes in. ``pool``:
    a 10x10 image and a 2x2 max pool after the conv."""
    from tvm import relax
    from tvm.script import relax as R

    rng = np.random.default_rng(3)
    size = 10 if pool else 8
    side = (size - 2) // (2 if pool else 1)
    wc = rng.integers(-128, 128, (4, 3, 3, 3)).astype(np.int8)
    wd = rng.integers(-128, 128, (4 * side * side, 5)).astype(np.int8)

    def c(a, dtype):
        return relax.const(np.asarray(a, dtype), dtype)

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 3, size - 2 * pad, size - 2 * pad), x_dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(R.nn.conv2d(x, relax.const(wc), padding=[pad] * 4, out_dtype="int32"))
            a = bb.emit(R.add(a, c(np.arange(-2, 2).reshape(1, 4, 1, 1) * 999, "int32")))
            v = bb.emit(R.multiply(bb.emit(R.astype(a, "int64")),
                                   c(np.array([3, 5, 7, 11]).reshape(1, 4, 1, 1) << 26,
                                     "int64")))
            neg = bb.emit(R.astype(R.less(v, c(0, "int64")), "int64"))
            v = bb.emit(R.right_shift(R.subtract(R.add(v, c(1 << 40, "int64")), neg),
                                      c(41, "int64")))
            lo = 0 if x_dtype == "uint8" else -128
            a8 = bb.emit(R.astype(bb.emit(R.clip(v, lo, 127)), x_dtype))
            if pool:
                a8 = bb.emit(R.nn.max_pool2d(a8, (2, 2), (2, 2)))
            f = bb.emit(R.reshape(a8, (2, 4 * side * side)))
            y = bb.emit(R.astype(bb.emit(R.matmul(f, relax.const(wd), out_dtype="int32")),
                                 "float32"))
            out = bb.emit(R.multiply(y, c(np.linspace(0.5, 2, 5), "float32")))
            if leak:
                out = bb.emit(R.add(out, R.sum(y, axis=1, keepdims=True)))
            out = bb.emit_output(out)
        bb.emit_func_output(out)
    return bb.get(), wc, wd


def _kernel_names(mod) -> list[str]:
    return sorted(gv.name_hint for gv, f in mod.functions.items()
                  if isinstance(f, tvm.tirx.PrimFunc))


@pytest.mark.parametrize("x_dtype, pad, leak", [("int8", 1, False), ("uint8", 0, True)])
def test_pass_rewrites_int8_layers_where_the_target_has_vnni(x_dtype, pad, leak):
    """The pipeline runs the pass with the VNNI kernels for a VNNI target (with the AVX2
    ones for an AVX2 target, none for others); there both layers become our kernels (a
    padded conv after a pad with zeros), each with the elementwise ops after it
    that nothing else reads (the conv's whole requantization; the matmul's float scaling, or
    only its ``astype`` when the float value is read elsewhere). On a VNNI CPU the built
    module's outputs equal those of the module without the pass, bit for bit."""
    from tvm import relax

    from tvmcomp.passes import Int8Vnni
    from tvmcomp.passes.int8_vnni import target_has_vnni
    from tvmcomp.pipeline import make_pipeline, pass_names

    mod, wc, wd = _int8_layers(x_dtype, pad, leak)
    target = tvm.target.Target(TARGET)
    arm = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}
    for t, name in ((target, "Int8Vnni"), (AVX2_TARGET, "Int8Vnni(isa=avx2)"),
                    (arm, "Int8Vnni(off)")):
        t = tvm.target.Target(t)
        assert target_has_vnni(t) is (name == "Int8Vnni")
        assert f"layer_forms/{name}" in pass_names(make_pipeline(t))
    with target:
        new = Int8Vnni()(mod)
    conv, dense = _kernel_names(new)
    assert conv.startswith(f"vnni_conv_b2_3x8x8_4k3x3_{x_dtype}_{x_dtype}_")
    assert dense.startswith(f"vnni_dense_b2_144x5_{x_dtype}_float32_")
    text = new.script()
    assert ("R.nn.pad" in text) == bool(pad)
    for op in ("conv2d", "matmul", "right_shift", "clip", "astype"):
        assert f"R.{op}(" not in text and f"R.nn.{op}(" not in text
    assert text.count("R.multiply(") == int(leak)  # the float scaling stays out if leaked
    consts = [[a.value.numpy() for a in b.value.args[1].fields if isinstance(a, tvm.ir.Constant)]
              for b in new["main"].body.blocks[0].bindings
              if getattr(getattr(b.value, "op", None), "name", "") == "relax.call_tir"]
    assert [holds(c, wc) for c in consts] == [True, False]  # how the sparse gate finds them
    assert [holds(c, wd) for c in consts] == [False, True]
    if "avx512_vnni" not in cpu_flags():
        pytest.skip("this CPU has no AVX-512 VNNI")
    rng = np.random.default_rng(0)
    x = _x(rng, x_dtype, (2, 3, 8 - 2 * pad, 8 - 2 * pad))
    outs = []
    for m in (mod, new):
        ex = tvm.compile(m, target=target)
        outs.append(relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy())
    assert np.unique(outs[0]).size > 5  # not all clipped
    np.testing.assert_array_equal(outs[1], outs[0])


def _avx2_layers(lo: int, acc: str, w_min: int = -128):
    """A Relax module as QuantizeInt8 makes them with ``accumulate=acc``: ReLU on an int8
    input, an int8 conv (padding 1) requantized and clipped to ``[lo, 127]``, flatten, an
    int8 matmul (weights from ``w_min``) scaled to float."""
    from tvm import relax
    from tvm.script import relax as R

    rng = np.random.default_rng(5)
    wc = rng.integers(-128, 128, (4, 3, 3, 3)).astype(np.int8)
    wd = rng.integers(w_min, 128, (4 * 8 * 8, 5)).astype(np.int8)
    wd[0, 0] = w_min

    def c(a, dtype):
        return relax.const(np.asarray(a, dtype), dtype)

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 3, 8, 8), "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            r = bb.emit(R.maximum(x, c(0, "int8")))
            a = bb.emit(R.nn.conv2d(r, relax.const(wc), padding=[1] * 4, out_dtype=acc))
            if acc == "float32":
                a = bb.emit(R.astype(a, "int32"))
            a = bb.emit(R.add(a, c(np.arange(-2, 2).reshape(1, 4, 1, 1) * 999, "int32")))
            v = bb.emit(R.right_shift(a, c(9, "int32")))
            a8 = bb.emit(R.astype(bb.emit(R.clip(v, lo, 127)), "int8"))
            f = bb.emit(R.reshape(a8, (2, 4 * 8 * 8)))
            y = bb.emit(R.matmul(f, relax.const(wd), out_dtype=acc))
            y = bb.emit(R.astype(y, "int32" if acc == "float32" else "float32"))
            if acc == "float32":
                y = bb.emit(R.astype(y, "float32"))
            out = bb.emit_output(bb.emit(R.multiply(y, c(np.linspace(0.5, 2, 5), "float32"))))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("lo, acc, w_min", [(0, "float32", -128), (-128, "float32", -128),
                                           (0, "int32", -128), (-128, "int32", -127)])
def test_avx2_pass_takes_the_layers_it_sums_exactly(lo, acc, w_min):
    """``Int8Vnni("avx2")`` takes an int8 layer where its input is known to be >= 0 (a
    ReLU's ``maximum``; the conv's requantization clipped at 0, then flattened), or where
    its weights are >= -127 (summed as signed, ``vpsignb``), from QuantizeInt8's
    float32-accumulating form as from the int32 one, and no other; the built module's
    outputs equal those of the module without the pass, bit for bit."""
    from tvm import relax

    from tvmcomp.passes import Int8Vnni

    mod = _avx2_layers(lo, acc, w_min)
    target = tvm.target.Target(AVX2_TARGET)
    with target:
        new = Int8Vnni("avx2")(mod)
    names = _kernel_names(new)
    assert names[0].startswith("avx2_conv_b2_3x10x10_4k3x3_int8_int8_")
    dense = ("avx2_dense_b2_256x5_int8_float32_" if lo >= 0
             else "avx2_dense_b2_256x5_int8_signed_float32_" if w_min >= -127 else None)
    assert [n.startswith(dense) for n in names[1:]] == ([True] if dense else [])
    text = new.script()
    assert "R.nn.conv2d(" not in text and ("R.matmul(" in text) == (dense is None)
    if "avx2" not in cpu_flags():
        pytest.skip("this CPU has no AVX2")
    rng = np.random.default_rng(0)
    x = _x(rng, "int8", (2, 3, 8, 8))
    outs = [relax.VirtualMachine(tvm.compile(m, target=target), tvm.cpu())["main"](
        tvm.runtime.tensor(x)).numpy() for m in (mod, new)]
    assert np.unique(outs[0]).size > 5
    np.testing.assert_array_equal(outs[1], outs[0])


@pytest.mark.parametrize("x_dtype", ["uint8", "int8"])
def test_pass_takes_the_pool_after_a_non_decreasing_epilogue(x_dtype):
    """A 2x2 max pool after the conv's requantization goes into its kernel where the
    requantization never decreases as the sum grows (clipped at 0: its sign correction
    dropped); clipped at -128 the correction stays, and so does the pool. On a VNNI CPU the
    outputs equal those of the module without the pass, bit for bit."""
    from tvm import relax

    from tvmcomp.passes import Int8Vnni

    mod, _, _ = _int8_layers(x_dtype, 0, False, pool=True)
    target = tvm.target.Target(TARGET)
    with target:
        new = Int8Vnni()(mod)
    conv, _ = _kernel_names(new)
    taken = x_dtype == "uint8"
    assert ("_pool2_" in conv) == taken
    assert ("max_pool2d" in new.script()) != taken
    if "avx512_vnni" not in cpu_flags():
        pytest.skip("this CPU has no AVX-512 VNNI")
    x = _x(np.random.default_rng(1), x_dtype, (2, 3, 10, 10))
    outs = [relax.VirtualMachine(tvm.compile(m, target=target), tvm.cpu())["main"](
        tvm.runtime.tensor(x)).numpy() for m in (mod, new)]
    assert np.unique(outs[0]).size > 5
    np.testing.assert_array_equal(outs[1], outs[0])
