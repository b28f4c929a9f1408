"""AVX-512 VNNI int8 kernels (kernels.vnni): exact against integer references.

The kernels compile anywhere (the target names a VNNI CPU); they run only where the CPU has
``avx512_vnni``, so the runs are skipped on other machines."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from tvmcomp.kernels.vnni import (  # noqa: E402
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


def _run(func, args, out_shape):
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                      target=tvm.target.Target(TARGET))
    out = tvm.runtime.tensor(np.full(out_shape, 7, np.int32))  # garbage where not written
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
    assert holds([p.packed, p.comp], w) and holds([p.packed, p.comp], w.T)
    assert not holds([p.packed, p.comp], np.roll(w, 1, axis=1))
    if "avx512_vnni" not in cpu_flags():
        dense_kernel(m, k, n, dtype)  # builds its TIR anywhere
        pytest.skip("this CPU has no AVX-512 VNNI")
    got = _run(dense_kernel(m, k, n, dtype), (x, p.packed, p.comp), (m, n))
    np.testing.assert_array_equal(got, x.astype(np.int64) @ w.astype(np.int64))


@pytest.mark.parametrize("n, c, hw, oc, k, dtype", [
    (2, 6, (14, 14), 16, 5, "int8"),   # LeNet-5's conv2: one vector a tile, 38 tap quads
    (1, 1, (32, 32), 6, 5, "uint8"),   # conv1 on the padded input: 25 taps -> 7 quads
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
    assert holds([p.quads, p.offsets, p.comp], w)
    assert not holds([p.quads, p.offsets, p.comp], -w)
    ref = torch.nn.functional.conv2d(torch.from_numpy(x.astype(np.float64)),
                                     torch.from_numpy(w.astype(np.float64))).numpy()
    if "avx512_vnni" not in cpu_flags():
        conv_kernel(n, c, hw, oc, (kh, kw), dtype)
        pytest.skip("this CPU has no AVX-512 VNNI")
    got = _run(conv_kernel(n, c, hw, oc, (kh, kw), dtype),
               (x, p.quads, p.offsets, p.comp), ref.shape)
    np.testing.assert_array_equal(got, ref.astype(np.int64))


def test_unsupported_shapes_are_refused():
    assert conv_supported((14, 14), (5, 5)) and not conv_supported((4, 4), (3, 3))
    with pytest.raises(ValueError, match="flat output positions"):
        conv_kernel(1, 1, (4, 4), 2, (3, 3), "int8")
    with pytest.raises(ValueError, match="K % 4"):
        pack_dense(np.zeros((6, 3), np.int8), "int8")


def _int8_layers(x_dtype: str, pad: int):
    """A Relax module: int8 conv (zero padding ``pad``) → flatten → int8 matmul, int32 sums,
    with an int32 bias add after the conv (left as it is)."""
    from tvm import relax
    from tvm.script import relax as R

    rng = np.random.default_rng(3)
    wc = rng.integers(-128, 128, (4, 3, 3, 3)).astype(np.int8)
    wd = rng.integers(-128, 128, (4 * 6 * 6, 5)).astype(np.int8)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 3, 8 - 2 * pad, 8 - 2 * pad), x_dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            c = bb.emit(R.nn.conv2d(x, relax.const(wc), padding=[pad] * 4, out_dtype="int32"))
            c = bb.emit(R.add(c, relax.const(np.arange(4, dtype=np.int32).reshape(1, 4, 1, 1))))
            c = bb.emit(R.astype(R.clip(R.right_shift(c, relax.const(10, "int32")), -128, 127),
                                 x_dtype))
            f = bb.emit(R.reshape(c, (2, 4 * 6 * 6)))
            y = bb.emit_output(R.matmul(f, relax.const(wd), out_dtype="int32"))
        bb.emit_func_output(y)
    return bb.get()


def _kernel_names(mod) -> list[str]:
    return sorted(gv.name_hint for gv, f in mod.functions.items()
                  if isinstance(f, tvm.tirx.PrimFunc))


@pytest.mark.parametrize("x_dtype, pad", [("int8", 1), ("uint8", 0)])
def test_pass_rewrites_int8_layers_where_the_target_has_vnni(x_dtype, pad):
    """The pipeline runs the pass for a VNNI target only; there both layers become our
    kernels (a padded conv after a pad with zeros). On a VNNI CPU the built
    module's outputs equal those of the module without the pass, bit for bit."""
    from tvm import relax

    from tvmcomp.passes import Int8Vnni
    from tvmcomp.passes.int8_vnni import target_has_vnni
    from tvmcomp.pipeline import make_pipeline, pass_names

    mod = _int8_layers(x_dtype, pad)
    target = tvm.target.Target(TARGET)
    for t, on in ((target, True), (tvm.target.Target({"kind": "llvm", "mcpu": "core-avx2"}),
                                   False)):
        assert target_has_vnni(t) is on
        assert any(n == f"layer_forms/Int8Vnni{'' if on else '(off)'}"
                   for n in pass_names(make_pipeline(t)))
    with target:
        new = Int8Vnni()(mod)
    assert _kernel_names(new) == [f"vnni_conv_b2_3x8x8_4k3x3_{x_dtype}",
                                  f"vnni_dense_b2_144x5_{x_dtype}"]
    text = new.script()
    assert ("R.nn.pad" in text) == bool(pad) and "R.nn.conv2d" not in text
    if "avx512_vnni" not in cpu_flags():
        pytest.skip("this CPU has no AVX-512 VNNI")
    rng = np.random.default_rng(0)
    x = _x(rng, x_dtype, (2, 3, 8 - 2 * pad, 8 - 2 * pad))
    outs = []
    for m in (mod, new):
        ex = tvm.compile(m, target=target)
        outs.append(relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy())
    np.testing.assert_array_equal(outs[1], outs[0])
