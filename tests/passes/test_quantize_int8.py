"""QuantizeInt8: structure of the rewritten IR and bit-exactness against a NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402

from tvmcomp.passes import QuantizeInt8  # noqa: E402
from tvmcomp.quant.fixed_point import INT_RANGES, quantize_multiplier, requantize_ref  # noqa: E402

R = relax.op
TARGET = {"kind": "llvm", "mcpu": "core-avx2", "num-cores": 1}


def _c(a, dtype):
    return relax.const(np.asarray(a, dtype), dtype)


def qdq_layer(kind, x_shape, w_q, w_scale, b_q, sx, zx, sy, zy, relu, padding=0,
              x_dtype="int8", y_dtype="int8", quantize_out=True):
    """Relax as from_onnx emits it for DQ(x), DQ(W) → conv2d/Gemm (+DQ(bias)) (+relu) → Q."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(x_shape, x_dtype))
    nout = w_q.shape[0]
    with bb.function("main", [x]):
        with bb.dataflow():
            xf = bb.emit(R.dequantize(x, _c(sx, "float32"), _c(zx, x_dtype)))
            wf = bb.emit(R.dequantize(relax.const(w_q, "int8"), _c(w_scale, "float32"),
                                      _c(np.zeros(nout), "int8"), axis=0))
            if kind == "conv2d":
                y = bb.emit(R.nn.conv2d(xf, wf, padding=[padding] * 4))
            else:
                y = bb.emit(R.matmul(xf, bb.emit(R.permute_dims(wf, [1, 0]))))
            bscale = (np.float32(sx) * w_scale.astype(np.float32)).astype(np.float32)
            bf = bb.emit(R.dequantize(relax.const(b_q, "int32"), _c(bscale, "float32"),
                                      _c(np.zeros(nout), "int32"), axis=0))
            if kind == "conv2d":
                bf = bb.emit(R.reshape(bf, [1, nout, 1, 1]))
            y = bb.emit(R.add(y, bf))
            if relu:
                y = bb.emit(R.nn.relu(y))
            if quantize_out:
                y = bb.emit(R.quantize(y, _c(sy, "float32"), _c(zy, y_dtype), out_dtype=y_dtype))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def conv_ref(x, zx, w, pad):
    """Integer conv2d of (x - zx) with zero padding in the real domain (int64)."""
    from numpy.lib.stride_tricks import sliding_window_view

    xs = np.pad(x.astype(np.int64) - zx, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = sliding_window_view(xs, w.shape[2:], axis=(2, 3))
    return np.einsum("nchwij,ocij->nohw", win, w.astype(np.int64))


def build_run(mod, x):
    ex = tvm.compile(mod, target=tvm.target.Target(TARGET))
    return relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


def ops_in(mod) -> list[tuple[str, list[str], str]]:
    """(op name, arg dtypes, result dtype) of every call in main, in order."""
    found = []
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            v = b.value
            if isinstance(v, tvm.ir.Call) and isinstance(v.op, tvm.ir.Op):
                args = [str(a.ty.dtype) if hasattr(a.ty, "dtype") else "" for a in v.args]
                found.append((str(v.op.name), args, str(b.var.ty.dtype)))
    return found


def _layer(rng, kind, per_channel, zx, x_dtype="int8", pad=1, nout=8):
    cin = 3
    w_q = rng.integers(-127, 128, (nout, cin, 3, 3) if kind == "conv2d" else (nout, 24),
                       dtype=np.int64).astype(np.int8)
    ws = rng.uniform(0.002, 0.02, nout) if per_channel else np.full(nout, 0.01)
    b_q = rng.integers(-3000, 3000, nout).astype(np.int32)
    lo, hi = INT_RANGES[x_dtype]
    shape = (2, cin, 7, 7) if kind == "conv2d" else (5, 24)
    x = rng.integers(lo, hi + 1, shape).astype(x_dtype)
    return x, w_q, ws.astype(np.float32), b_q


CASES = [  # kind, per-channel weights, input zero point, input dtype, relu, output zero point
    ("conv2d", True, 0, "int8", True, 0),
    ("conv2d", False, -21, "int8", False, 13),
    ("conv2d", True, 128, "uint8", True, -128),
    ("matmul", True, 0, "int8", True, 0),
    ("matmul", False, 37, "int8", False, -5),
]


@pytest.mark.parametrize("acc", ["int32", "float32"])
@pytest.mark.parametrize("kind,per_channel,zx,x_dtype,relu,zy", CASES)
def test_requantize_matches_numpy_exactly(kind, per_channel, zx, x_dtype, relu, zy, acc):
    rng = np.random.default_rng(abs(zx) + len(kind))
    x, w_q, ws, b_q = _layer(rng, kind, per_channel, zx, x_dtype)
    sx, sy = np.float32(0.05), np.float32(2.5 if kind == "conv2d" else 0.9)
    mod = qdq_layer(kind, x.shape, w_q, ws, b_q, sx, zx, sy, zy, relu, padding=1,
                    x_dtype=x_dtype)
    qmod = QuantizeInt8(acc)(mod)
    got = build_run(qmod, x)

    if kind == "conv2d":
        acc = conv_ref(x, zx, w_q, 1) + b_q.reshape(1, -1, 1, 1)
        chan = (1, -1, 1, 1)
    else:
        acc = (x.astype(np.int64) - zx) @ w_q.T.astype(np.int64) + b_q
        chan = (1, -1)
    m0, shift = quantize_multiplier(np.float64(sx) * ws.astype(np.float64) / np.float64(sy))
    lo, hi = INT_RANGES["int8"]
    ref = requantize_ref(acc, m0.reshape(chan), shift.reshape(chan), zy,
                         max(lo, zy) if relu else lo, hi)
    assert got.dtype == np.int8
    np.testing.assert_array_equal(got.astype(np.int64), ref)
    # and the float model (dequantize → float op → quantize, TVM's own lowering) agrees to 1 LSB
    fl = build_run(mod, x).astype(np.int64)
    assert np.abs(fl - ref).max() <= 1


def test_structure_int8_in_int32_out():
    rng = np.random.default_rng(0)
    x, w_q, ws, b_q = _layer(rng, "conv2d", True, 0)
    mod = qdq_layer("conv2d", x.shape, w_q, ws, b_q, 0.05, 0, 2.5, 0, relu=True)
    before = {op for op, _, _ in ops_in(mod)}
    assert {"relax.dequantize", "relax.quantize", "relax.nn.relu"} <= before
    ops = ops_in(QuantizeInt8()(mod))
    names = [op for op, _, _ in ops]
    assert "relax.dequantize" not in names and "relax.quantize" not in names
    assert "relax.nn.relu" not in names  # folded into the clamp
    conv = [o for o in ops if o[0] == "relax.nn.conv2d"]
    assert conv == [("relax.nn.conv2d", ["int8", "int8"], "int32")]
    assert "relax.right_shift" in names and ops[-1][2] == "int8"


def test_float_output_and_unchanged_module():
    rng = np.random.default_rng(1)
    x, w_q, ws, b_q = _layer(rng, "matmul", True, 0)
    mod = qdq_layer("matmul", x.shape, w_q, ws, b_q, 0.05, 0, 1.0, 0, relu=False,
                    quantize_out=False)
    qmod = QuantizeInt8()(mod)
    ops = ops_in(qmod)
    assert ("relax.matmul", ["int8", "int8"], "int32") in ops
    assert ops[-1][2] == "float32"
    got = build_run(qmod, x)
    acc = x.astype(np.int64) @ w_q.T.astype(np.int64) + b_q
    ref = acc * (np.float32(0.05) * ws.astype(np.float64))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)
    # a float module has nothing to rewrite: returned as is
    fmod = tvm.IRModule({"main": qmod["main"]})
    assert QuantizeInt8()(fmod).same_as(fmod)


def test_chain_int8_between_ops_and_pool_on_int8():
    """DQ → conv → Q → DQ → maxpool → Q → DQ → reshape → Q → DQ → matmul: int8 all the way."""
    rng = np.random.default_rng(2)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 3, 6, 6), "int8"))
    w1 = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    w2 = rng.integers(-127, 128, (5, 16)).astype(np.int8)
    s1, s2, s3 = _c(0.05, "float32"), _c(0.4, "float32"), _c(1.5, "float32")
    z = _c(0, "int8")
    with bb.function("main", [x]):
        with bb.dataflow():
            xf = bb.emit(R.dequantize(x, s1, z))
            wf = bb.emit(R.dequantize(relax.const(w1, "int8"), _c(0.01, "float32"), z))
            y = bb.emit(R.quantize(bb.emit(R.nn.relu(bb.emit(R.nn.conv2d(xf, wf)))), s2, z))
            y = bb.emit(R.nn.max_pool2d(bb.emit(R.dequantize(y, s2, z)), [2, 2], [2, 2]))
            y = bb.emit(R.quantize(y, s2, z))
            y = bb.emit(R.reshape(bb.emit(R.dequantize(y, s2, z)), [2, 16]))
            y = bb.emit(R.dequantize(bb.emit(R.quantize(y, s2, z)), s2, z))
            w2f = bb.emit(R.dequantize(relax.const(w2, "int8"), _c(0.02, "float32"), z))
            y = bb.emit(R.quantize(bb.emit(R.matmul(y, bb.emit(R.permute_dims(w2f)))), s3, z))
            out = bb.emit_output(R.dequantize(y, s3, z))
        bb.emit_func_output(out)
    mod = bb.get()
    qmod = QuantizeInt8()(mod)
    ops = ops_in(qmod)
    names = [o[0] for o in ops]
    assert names.count("relax.dequantize") == 1 and names[-1] == "relax.dequantize"
    assert "relax.quantize" not in names
    assert ("relax.nn.max_pool2d", ["int8"], "int8") in ops
    assert ("relax.reshape", ["int8", ""], "int8") in ops
    assert ("relax.matmul", ["int8", "int8"], "int32") in ops
    xv = rng.integers(-128, 128, (2, 3, 6, 6)).astype(np.int8)
    got, ref = build_run(qmod, xv), build_run(mod, xv)
    assert np.abs(got - ref).max() <= 1.5 + 1e-6  # at most 1 LSB (scale 1.5) apart


def test_float32_accumulation_only_where_exact():
    """accumulate="float32": conv2d(int8, int8) → float32 → int32 while
    max_oc(sum|W|) * max|x| < 2**24, int32 accumulation beyond; results equal bit for bit."""
    from tvmcomp.passes.quantize_int8 import float32_exact

    rng = np.random.default_rng(3)
    x, w_q, ws, b_q = _layer(rng, "conv2d", True, 0)
    mod = qdq_layer("conv2d", x.shape, w_q, ws, b_q, 0.05, 0, 2.5, 0, relu=True, padding=1)
    ops = ops_in(QuantizeInt8("float32")(mod))
    conv = [o for o in ops if o[0] == "relax.nn.conv2d"]
    assert conv == [("relax.nn.conv2d", ["int8", "int8"], "float32")]
    assert ("relax.astype", ["float32"], "int32") in ops
    np.testing.assert_array_equal(build_run(QuantizeInt8("float32")(mod), x),
                                  build_run(QuantizeInt8("int32")(mod), x))
    # the bound: 1033 input channels of +-127 weights over int8 inputs reach 2**24
    assert float32_exact(np.full((2, 1032, 1, 1), 127, np.int8), "int8")
    assert not float32_exact(np.full((2, 1033, 1, 1), -127, np.int8), "int8")
    assert not float32_exact(np.full((2, 600, 1, 1), 127, np.int8), "uint8")
    # a layer past the bound keeps int32 accumulation
    big = np.full((4, 1100, 1, 1), 127, np.int8)
    xb = rng.integers(-128, 128, (1, 1100, 2, 2)).astype(np.int8)
    mod = qdq_layer("conv2d", xb.shape, big, np.full(4, 1e-4, np.float32),
                    np.zeros(4, np.int32), 0.05, 0, 2.5, 0, relu=False)
    ops = ops_in(QuantizeInt8("float32")(mod))
    assert [o for o in ops if o[0] == "relax.nn.conv2d"] == [
        ("relax.nn.conv2d", ["int8", "int8"], "int32")]
    with pytest.raises(ValueError, match="accumulate"):
        QuantizeInt8("int16")
