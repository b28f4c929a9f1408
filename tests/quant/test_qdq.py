"""quantize_onnx: the QDQ graph it writes, ONNX Runtime sanity, and errors on bad input."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tvmcomp.errors import TvmcompError
from tvmcomp.quant import (CalibrationError, PerTensor, QuantConfig, QuantConfigError, QuantError,
                           quantize_onnx)
from tvmcomp.verify import ort_run, ort_session


def _nodes(model, op):
    return [n for n in model.graph.node if n.op_type == op]


def _producer(model, tensor):
    return next((n for n in model.graph.node if tensor in n.output), None)


def test_qdq_structure(lenet_onnx, calib_images):
    q = quantize_onnx(lenet_onnx, calib_images, QuantConfig(num_calib=64))
    m = q.model
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    assert q.num_calib == 64 and len(q.layers) == 5 and q.float_nodes == []
    for node in _nodes(m, "Conv") + _nodes(m, "Gemm"):
        x, w, b = (_producer(m, t) for t in node.input)
        assert x.op_type == "DequantizeLinear" and _producer(m, x.input[0]).op_type == \
            "QuantizeLinear"
        assert w.op_type == "DequantizeLinear" and inits[w.input[0]].dtype == np.int8
        nout = inits[w.input[0]].shape[0]
        assert inits[w.input[1]].shape == (nout,)  # per-channel scale
        assert np.abs(inits[w.input[0]]).max() <= 127
        assert b.op_type == "DequantizeLinear" and inits[b.input[0]].dtype == np.int32
    # ReLU folded: the quantized tensor is the Relu output; the logits stay float
    relu_outs = {n.output[0] for n in _nodes(m, "Relu")}
    assert {n.input[0] for n in _nodes(m, "QuantizeLinear")} - {"input"} >= relu_outs
    assert _producer(m, "logits").op_type == "Gemm"
    assert [lay.output_scale is None for lay in q.layers] == [False] * 4 + [True]
    # pooling and flatten reuse their input's scale
    for n in _nodes(m, "MaxPool") + _nodes(m, "Flatten"):
        dq = _producer(m, n.input[0])
        qout = next(c for c in m.graph.node if c.op_type == "QuantizeLinear"
                    and c.input[0] == n.output[0])
        assert qout.input[1] == dq.input[1]


@pytest.mark.parametrize("cfg", [QuantConfig(num_calib=64),
                                 QuantConfig(num_calib=64, activations="asymmetric",
                                             weights=PerTensor())])
def test_qdq_runs_in_onnxruntime_close_to_float(tmp_path, lenet_onnx, calib_images, test_set,
                                                cfg):
    from tvmcomp.data import normalize

    q = quantize_onnx(lenet_onnx, calib_images, cfg)
    path = q.save(tmp_path / "q.onnx")
    x, y = normalize(test_set.images[:1000]), test_set.labels[:1000]
    ref = ort_run(ort_session(lenet_onnx), x)
    got = ort_run(ort_session(str(path)), x)
    assert np.mean(got.argmax(1) == ref.argmax(1)) >= 0.98
    assert abs(np.mean(got.argmax(1) == y) - np.mean(ref.argmax(1) == y)) <= 0.02
    if cfg.activations == "asymmetric":
        zps = [numpy_helper.to_array(t) for t in q.model.graph.initializer
               if t.name.endswith("_zero_point") and t.data_type == onnx.TensorProto.INT8]
        assert any(int(z.ravel()[0]) != 0 for z in zps)
    d = q.summary()
    assert d["config"] == cfg.to_dict() and len(d["layers"]) == 5


@pytest.mark.parametrize("images,match", [
    (np.zeros((0, 1, 28, 28), np.float32), "calibration set is empty"),
    (np.zeros((1, 1, 28, 28), np.float32), "calibration set has 1 image"),
    (np.zeros((8, 28, 28), np.float32), r"shape \(8, 28, 28\).*expects \(N, 1, 28, 28\)"),
    (np.zeros((8, 3, 28, 28), np.float32), "expects"),
    (np.full((4, 1, 28, 28), np.nan, np.float32), "NaN or inf"),
    (np.zeros((4, 1, 28, 28), np.uint8), "must be float"),
])
def test_bad_calibration_sets(lenet_onnx, images, match):
    with pytest.raises(CalibrationError, match=match) as e:
        quantize_onnx(lenet_onnx, images)
    assert isinstance(e.value, TvmcompError) and "\n" not in str(e.value)


def test_nan_weights_and_unknown_skip(lenet_onnx, calib_images):
    m = onnx.load(lenet_onnx)
    w = next(t for t in m.graph.initializer if t.name == "conv2.weight")
    arr = numpy_helper.to_array(w).copy()
    arr[0, 0, 0, 0] = np.nan
    w.CopyFrom(numpy_helper.from_array(arr, w.name))
    with pytest.raises(QuantError, match="'/conv2/Conv'.*'conv2.weight' contains NaN") as e:
        quantize_onnx(m, calib_images[:8])
    assert isinstance(e.value, TvmcompError)
    with pytest.raises(QuantConfigError, match="no node named '/conv9/Conv'.*/conv1/Conv"):
        quantize_onnx(lenet_onnx, calib_images[:8], QuantConfig(skip=("/conv9/Conv",)))


def test_skip_keeps_layer_float(lenet_onnx, calib_images):
    q = quantize_onnx(lenet_onnx, calib_images, QuantConfig(num_calib=32, skip=("/conv2/Conv",)))
    assert q.float_nodes == ["/conv2/Conv"]
    assert [lay.node for lay in q.layers] == ["/conv1/Conv", "/fc1/Gemm", "/fc2/Gemm",
                                              "/fc3/Gemm"]
    conv2 = next(n for n in q.model.graph.node if n.name == "/conv2/Conv")
    assert "conv2.weight" in conv2.input  # float weight initializer untouched
