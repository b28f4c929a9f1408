"""Calibration statistics and range methods against NumPy references and known distributions."""

from __future__ import annotations

import numpy as np
import pytest

from tvmcomp.quant import Entropy, MinMax, Percentile, QuantConfig
from tvmcomp.quant.calibrate import (TensorStats, activation_range, collect_stats,
                                     entropy_threshold, kl_for_threshold, percentile_abs,
                                     percentile_range)


def _tiny_model():
    """x[N,4] → y = 2x (Mul) → z = relu(y) (output)."""
    import onnx
    from onnx import TensorProto, helper

    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    g = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"]), helper.make_node("Relu", ["y"], ["z"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4])], [two])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)],
                             ir_version=onnx.IR_VERSION_2023_5_5)


def test_minmax_and_histograms_match_numpy():
    x = np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32)
    st = collect_stats(_tiny_model(), ["y", "z"], x, batch_size=7, bins=64, signed_hist=True)
    y, z = 2 * x, np.maximum(2 * x, 0)
    for name, ref in (("y", y), ("z", z)):
        s = st[name]
        assert (s.min, s.max) == (float(ref.min()), float(ref.max()))
        assert s.count == ref.size
        want = np.histogram(np.abs(ref), 64, (0, np.abs(ref).max()))[0]
        np.testing.assert_array_equal(s.hist_abs, want)
        assert s.hist.sum() == ref.size


def test_percentile_matches_numpy_within_one_bin():
    x = np.random.default_rng(1).standard_normal(200_000)
    bins = 2048
    a = np.abs(x)
    hist = np.histogram(a, bins, (0, a.max()))[0]
    for p in (99.0, 99.9, 99.99):
        got = percentile_abs(hist, a.max(), p)
        assert abs(got - np.percentile(a, p)) <= a.max() / bins
    sh = np.histogram(x, bins, (x.min(), x.max()))[0]
    lo, hi = percentile_range(sh, x.min(), x.max(), 99.9)
    width = (x.max() - x.min()) / bins
    assert abs(lo - np.percentile(x, 0.1)) <= width
    assert abs(hi - np.percentile(x, 99.9)) <= width


def _kl_naive(hist, i, levels):
    """TensorRT's entropy calibration pseudo-code, loop by loop."""
    p = [float(v) for v in hist[:i]]
    p[-1] += float(hist[i:].sum())
    merged = i // levels
    q = [0.0] * i
    for j in range(levels):
        start = j * merged
        stop = i if j == levels - 1 else start + merged
        total = float(sum(hist[start:stop]))
        nonzero = sum(1 for v in hist[start:stop] if v != 0)
        for k in range(start, stop):
            q[k] = total / nonzero if hist[k] != 0 else 0.0
    ps, qs = sum(p), sum(q)
    kl = 0.0
    for a, b in zip(p, q):
        if a > 0:
            kl += a / ps * np.log((a / ps) / max(b / qs, 1e-12))
    return kl


def test_kl_matches_naive_reference():
    hist = np.random.default_rng(2).integers(0, 50, 700)
    hist[::7] = 0
    for i in (128, 200, 333, 512, 700):
        assert kl_for_threshold(hist, i, 128) == pytest.approx(_kl_naive(hist, i, 128), rel=1e-9)


def test_entropy_threshold_on_known_distributions():
    rng = np.random.default_rng(3)
    u = rng.uniform(-1, 1, 200_000)
    h = np.histogram(np.abs(u), 2048, (0, 1))[0]
    assert entropy_threshold(h, 1.0) >= 0.95  # nothing to clip: keep (almost) the full range
    g = np.concatenate([rng.standard_normal(200_000), [100.0, -100.0]])  # rare huge outliers
    a = np.abs(g)
    h = np.histogram(a, 2048, (0, a.max()))[0]
    t = entropy_threshold(h, a.max())
    assert 2.5 <= t <= 12.0  # clips the outliers, keeps the bulk of the Gaussian


def test_activation_ranges():
    s = TensorStats("t", -1.0, 3.0, hist_abs=np.ones(2048, np.int64),
                    hist=np.ones(2048, np.int64))
    assert activation_range(s, QuantConfig(calibration=MinMax())) == (-3.0, 3.0)
    assert activation_range(s, QuantConfig(activations="asymmetric")) == (-1.0, 3.0)
    lo, hi = activation_range(s, QuantConfig(calibration=Percentile(99.0)))
    assert lo == -hi and hi == pytest.approx(0.99 * 3.0, abs=3.0 / 2048)
    lo, hi = activation_range(s, QuantConfig(calibration=Percentile(99.0),
                                             activations="asymmetric"))
    assert lo == pytest.approx(-0.96, abs=0.01) and hi == pytest.approx(2.96, abs=0.01)
    lo, hi = activation_range(s, QuantConfig(calibration=Entropy()))
    assert lo == -hi and 0 < hi <= 3.0
