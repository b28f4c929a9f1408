"""End to end on LeNet-5: QDQ → Relax → QuantizeInt8 → llvm, against ONNX Runtime and float."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tvmcomp.data import normalize
from tvmcomp.plan.quant_report import LayerReport, format_report, layer_report
from tvmcomp.quant import (Entropy, Percentile, PerTensor, QuantConfig, quantize_onnx,
                           run_qdq_reference)
from tvmcomp.verify import ort_run, ort_session

BATCH = 500


def build_int8(model, target, batch=BATCH):
    """``x -> logits`` of the int8-compiled model, and the rewritten Relax module."""
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from tvmcomp.passes import QuantizeInt8
    from tvmcomp.pipeline import compile_fused, fuse

    mod = QuantizeInt8()(from_onnx(model, shape_dict={"input": [batch, 1, 28, 28]}))
    vm = relax.VirtualMachine(compile_fused(fuse(mod, target), target), tvm.cpu())

    def run(x):
        return np.concatenate([vm["main"](tvm.runtime.tensor(x[i: i + batch])).numpy()
                               for i in range(0, len(x), batch)])

    return run, mod


def call_dtypes(mod):
    import tvm

    out = []
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            v = b.value
            if isinstance(v, tvm.ir.Call) and isinstance(v.op, tvm.ir.Op):
                out.append((str(v.op.name), [str(a.ty.dtype) for a in v.args
                                             if hasattr(a.ty, "dtype")], str(b.var.ty.dtype)))
    return out


def assert_int8_graph(mod, act="int8"):
    calls = call_dtypes(mod)
    names = [c[0] for c in calls]
    cores = [c for c in calls if c[0] in ("relax.nn.conv2d", "relax.matmul")]
    assert len(cores) == 5
    assert all(c[1] == [act, "int8"] and c[2] == "int32" for c in cores), cores
    assert names.count("relax.quantize") == 1 and names[0] == "relax.quantize"  # model input
    assert names.count("relax.dequantize") <= 1  # only at the float output, if at all
    pools = [c for c in calls if c[0] == "relax.nn.max_pool2d"]
    assert len(pools) == 2 and all(c[2] == act for c in pools)


CONFIGS = {
    "minmax-sym-perchannel": (QuantConfig(num_calib=256), 0.01),
    "p99.99-asym-pertensor": (QuantConfig(num_calib=256, calibration=Percentile(99.99),
                                          activations="asymmetric", weights=PerTensor()), 0.01),
    "entropy-sym-perchannel": (QuantConfig(num_calib=128, calibration=Entropy()), 0.03),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_int8_matches_ort_and_float_accuracy(tmp_path, name, lenet_onnx, calib_images,
                                             test_set, target):
    cfg, acc_tol = CONFIGS[name]
    n = len(test_set) if name == "minmax-sym-perchannel" else 2000
    x, y = normalize(test_set.images[:n]), test_set.labels[:n]
    q = quantize_onnx(lenet_onnx, calib_images, cfg)
    run, mod = build_int8(q.model, target)
    assert_int8_graph(mod)
    got = run(x)
    qdq_ref = run_qdq_reference(q.model, x)
    fl = ort_run(ort_session(lenet_onnx), x)
    # same int8 model as ONNX Runtime (QDQ as written): same decisions, logits ~equal
    assert np.mean(got.argmax(1) == qdq_ref.argmax(1)) >= 0.998
    assert np.quantile(np.abs(got - qdq_ref), 0.999) <= 1e-3 * np.abs(qdq_ref).max()
    acc_i8, acc_f = np.mean(got.argmax(1) == y), np.mean(fl.argmax(1) == y)
    print(f"{name}: int8 {acc_i8:.4f} vs float {acc_f:.4f} on {n} test images")
    assert acc_i8 >= acc_f - acc_tol


def test_layer_report(lenet_onnx, calib_images, test_set, profile):
    q = quantize_onnx(lenet_onnx, calib_images, QuantConfig(num_calib=128))
    rows = layer_report(onnx.load(lenet_onnx), q.model, normalize(test_set.images[:128]),
                        profile, batch=64)
    print("\n" + format_report(rows))
    assert [r.node for r in rows] == ["/conv1/Conv", "/conv2/Conv", "/fc1/Gemm", "/fc2/Gemm",
                                      "/fc3/Gemm"]
    assert [r.output for r in rows] == ["int8"] * 4 + ["float32"]
    for r in rows:
        assert isinstance(r, LayerReport) and r.sqnr_db > 25 and r.max_abs_err < 2.0
    for r in rows[:4]:
        assert r.max_lsb_vs_ort <= 1 and r.frac_off_vs_ort <= 0.01
    assert "SQNR" in format_report(rows)


def _ort_reader(images: np.ndarray, batch: int = 16):
    """ONNX Runtime's calibration reader over ``images``, ``batch`` at a time."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter({"input": images[i: i + batch]}
                           for i in range(0, len(images), batch))

        def get_next(self):
            return next(self.it, None)

    return Reader()


@pytest.mark.parametrize("act", ["int8", "uint8"])
def test_onnxruntime_quantize_static_interop(tmp_path, act, lenet_onnx, calib_images, test_set,
                                             target, profile):
    """A QDQ model from ORT's own quantizer compiles into the same int8 kernels."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    path = str(tmp_path / f"ort_{act}.onnx")
    qtype = QuantType.QInt8 if act == "int8" else QuantType.QUInt8
    quantize_static(lenet_onnx, path, _ort_reader(calib_images[:64]),
                    quant_format=QuantFormat.QDQ, activation_type=qtype,
                    weight_type=QuantType.QInt8, per_channel=True)
    model = onnx.load(path)
    run, mod = build_int8(model, target)
    assert_int8_graph(mod, act)
    x = normalize(test_set.images[:1000])
    got, ref = run(x), run_qdq_reference(path, x)
    assert np.mean(got.argmax(1) == ref.argmax(1)) >= 0.995
    scale = float(next(onnx.numpy_helper.to_array(t) for t in model.graph.initializer
                       if t.name == "logits_scale"))
    assert np.quantile(np.abs(got - ref), 0.99) <= 2 * scale + 1e-6  # ≤ 2 output LSBs
    rows = layer_report(onnx.load(lenet_onnx), model, x[:64], profile, batch=64)
    assert all(r.max_lsb_vs_ort <= 1 and r.frac_off_vs_ort <= 0.01 for r in rows)


def test_skipped_layer_stays_float_behind_explicit_boundary(lenet_onnx, calib_images, test_set,
                                                           target):
    q = quantize_onnx(lenet_onnx, calib_images, QuantConfig(num_calib=64,
                                                            skip=("/conv2/Conv",)))
    run, mod = build_int8(q.model, target, batch=200)
    calls = call_dtypes(mod)
    convs = [c for c in calls if c[0] == "relax.nn.conv2d"]
    assert convs == [("relax.nn.conv2d", ["int8", "int8"], "int32"),
                     ("relax.nn.conv2d", ["float32", "float32"], "float32")]
    i = calls.index(convs[1])
    assert calls[i - 1][0] == "relax.dequantize" and calls[i - 1][1][0] == "int8"
    assert len([c for c in calls if c[0] == "relax.matmul" and c[1] == ["int8", "int8"]]) == 3
    x = normalize(test_set.images[:400])
    got, ref = run(x), run_qdq_reference(q.model, x)
    assert np.mean(got.argmax(1) == ref.argmax(1)) >= 0.995


def _numpy_int8_lenet(q, x):
    """LeNet-5 from the QDQ model's integers alone: the arithmetic QuantizeInt8 promises."""
    from numpy.lib.stride_tricks import sliding_window_view
    from onnx import numpy_helper

    from tvmcomp.quant.fixed_point import quantize_multiplier, requantize_ref

    m = q.model
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    nodes = {n.name: n for n in m.graph.node}

    def dq_const(t):
        n = producer[t]
        return inits[n.input[0]].astype(np.int64), inits[n.input[1]].astype(np.float64)

    lay0 = q.layers[0]
    v = np.clip(np.round(x / np.float32(lay0.input_scale)) + lay0.input_zero_point, -128, 127)
    v = v.astype(np.int64)
    for lay in q.layers:
        node = nodes[lay.node]
        w, ws = dq_const(node.input[1])
        b, _ = dq_const(node.input[2])
        zx = lay.input_zero_point
        if lay.op_type == "Conv":
            pad = int(next(a.ints[0] for a in node.attribute if a.name == "pads"))
            xs = np.pad(v - zx, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
            win = sliding_window_view(xs, w.shape[2:], axis=(2, 3))
            acc = np.einsum("nchwij,ocij->nohw", win, w) + b.reshape(1, -1, 1, 1)
            chan = (1, -1, 1, 1)
        else:
            acc = v.reshape(len(v), -1) - zx
            acc = acc @ w.T + b
            chan = (1, -1)
        scale = np.float64(np.float32(lay.input_scale)) * ws
        if lay.output_scale is None:
            return acc * scale.reshape(chan)
        m0, sh = quantize_multiplier(scale / np.float64(np.float32(lay.output_scale)))
        zy = lay.output_zero_point
        v = requantize_ref(acc, m0.reshape(chan), sh.reshape(chan), zy,
                           max(-128, zy) if lay.relu_folded else -128, 127)
        if lay.op_type == "Conv":  # 2×2 max-pool, stride 2, on int8
            n, c, h, w_ = v.shape
            v = v.reshape(n, c, h // 2, 2, w_ // 2, 2).max(axis=(3, 5))
    raise AssertionError("the last layer should have a float output")


@pytest.mark.parametrize("cfg", [QuantConfig(num_calib=64),
                                 QuantConfig(num_calib=64, activations="asymmetric",
                                             weights=PerTensor())])
def test_whole_network_matches_numpy_integer_reference(cfg, lenet_onnx, calib_images, test_set,
                                                       target):
    q = quantize_onnx(lenet_onnx, calib_images, cfg)
    x = normalize(test_set.images[:100])
    run, _ = build_int8(q.model, target, batch=100)
    got, ref = run(x), _numpy_int8_lenet(q, x)
    # every int8 layer bit-exact; only the final float32 scaling rounds
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_ort_quantizer_given_our_ranges_makes_our_scales(tmp_path, lenet_onnx, calib_images):
    """Our calibrated ranges fed to ONNX Runtime's own quantizer (``TensorQuantOverrides``:
    each tensor's rmin / rmax, symmetric int8 activations, per-channel symmetric int8
    weights) give the QDQ parameters ours has: each activation's scale and zero point, each
    weight's per-channel scales (ORT computes them from the weights itself)."""
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    q = quantize_onnx(lenet_onnx, calib_images, QuantConfig(num_calib=64))
    overrides = {name: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}]
                 for name, (lo, hi) in q.ranges.items()}
    path = str(tmp_path / "ort_overrides.onnx")
    quantize_static(lenet_onnx, path, _ort_reader(calib_images[:64]),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=True,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                   "TensorQuantOverrides": overrides})

    def qparams(model) -> dict:
        """{quantized tensor: (scale, zero point)} of a QDQ model's QuantizeLinear nodes
        (activations) and weight DequantizeLinear nodes (their int8 initializer)."""
        inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        out = {}
        for n in model.graph.node:
            if n.op_type == "QuantizeLinear" or (n.op_type == "DequantizeLinear"
                                                 and inits.get(n.input[0]) is not None
                                                 and inits[n.input[0]].ndim > 1):
                out[n.input[0] if n.op_type == "QuantizeLinear" else n.output[0]] = (
                    inits[n.input[1]].astype(np.float64), inits[n.input[2]].astype(np.int64))
        return out

    ours, theirs = qparams(q.model), qparams(onnx.load(path))
    acts = [t for t in q.ranges if t in ours]
    assert len(acts) >= 5 and set(acts) <= set(theirs)
    for t in acts:
        np.testing.assert_allclose(theirs[t][0], ours[t][0], rtol=1e-6, err_msg=t)
        np.testing.assert_array_equal(theirs[t][1], ours[t][1], err_msg=t)
    ours_w = sorted(s.tolist() for s, _ in ours.values() if s.ndim == 1 and s.size > 1)
    theirs_w = sorted(s.tolist() for s, _ in theirs.values() if s.ndim == 1 and s.size > 1)
    assert len(ours_w) == 5 and len(theirs_w) == 5
    for a, b in zip(ours_w, theirs_w):
        np.testing.assert_allclose(b, a, rtol=1e-6)
