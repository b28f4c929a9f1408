"""Calibration: run the float model in ONNX Runtime and choose activation ranges."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import Entropy, MinMax, Percentile, QuantConfig
from .errors import CalibrationError

QUANT_LEVELS = 128  # positive int8 levels the entropy search quantises to (TensorRT)


@dataclass
class TensorStats:
    """Statistics of one tensor over the calibration set.

    ``hist_abs`` counts |x| over ``[0, absmax]``; ``hist`` counts x over ``[min, max]``
    (each only when the calibration method needs it).
    """

    name: str
    min: float
    max: float
    count: int = 0
    hist_abs: np.ndarray | None = None
    hist: np.ndarray | None = None

    @property
    def absmax(self) -> float:
        return max(abs(self.min), abs(self.max))


def check_images(images, input_shape: tuple, input_name: str = "input") -> np.ndarray:
    """Validate a calibration set against the model input; returns it as float32.

    Raises :class:`CalibrationError` for an empty or single-image set, a wrong shape or
    non-finite values.
    """
    if images is None:
        raise CalibrationError("no calibration images given")
    x = np.asarray(images)
    want = tuple(input_shape[1:])
    if x.ndim == 0 or len(x) == 0:
        raise CalibrationError("calibration set is empty; give at least 2 images")
    if x.shape[1:] != want:
        raise CalibrationError(
            f"calibration images have shape {x.shape}; model input {input_name!r} expects "
            f"(N, {', '.join(map(str, want))})"
        )
    if len(x) < 2:
        raise CalibrationError("calibration set has 1 image; ranges from one image do not "
                               "generalise, give at least 2 (a few hundred is typical)")
    if not np.issubdtype(x.dtype, np.floating):
        raise CalibrationError(f"calibration images must be float (normalised like the model's "
                               f"inputs), got {x.dtype}")
    x = x.astype(np.float32, copy=False)
    if not np.all(np.isfinite(x)):
        raise CalibrationError("calibration images contain NaN or inf")
    return x


def select_images(x: np.ndarray, num: int, seed: int) -> np.ndarray:
    """A seeded random subset of ``num`` images (all of them if there are fewer)."""
    if len(x) <= num:
        return x
    idx = np.sort(np.random.default_rng(seed).choice(len(x), num, replace=False))
    return x[idx]


def ort_session(model, reference: bool = False):
    """An ONNX Runtime CPU session (one thread) for a ModelProto or path.

    ``reference=True`` stops at basic graph optimizations: the QDQ nodes then run as
    written (dequantize → float op → quantize), the exact meaning of a QDQ model. With all
    optimizations ORT fuses them into its own int8 kernels (QGemm, QLinearConv), which are
    not always exact: on LeNet-5 its fused QGemm moved logits by up to ~2.0.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    if reference:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    data = model if isinstance(model, (str, bytes)) else model.SerializeToString()
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def _session_with_outputs(model, names: list[str], reference: bool = False):
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    inferred = {}
    try:
        for vi in onnx.shape_inference.infer_shapes(m).graph.value_info:
            inferred[vi.name] = vi
    except Exception:  # shape inference is best effort; ORT accepts untyped outputs
        pass
    for n in names:
        if n not in have:
            m.graph.output.append(inferred.get(n) or onnx.ValueInfoProto(name=n))
    return ort_session(m, reference)


def run_tensors(model, names: list[str], x: np.ndarray, batch_size: int,
                reference: bool = False):
    """Yield ``{name: array}`` for each batch of ``x`` (the graph's intermediate tensors)."""
    sess = _session_with_outputs(model, names, reference)
    inp = sess.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
    step = fixed or batch_size
    for i in range(0, len(x), step):
        xb = x[i: i + step]
        n = len(xb)
        if fixed and n < fixed:
            xb = np.concatenate([xb, np.repeat(xb[-1:], fixed - n, axis=0)])
        outs = sess.run(names, {inp.name: xb})
        yield {k: v[:n] for k, v in zip(names, outs)}


def collect_stats(model, names: list[str], x: np.ndarray, batch_size: int,
                  bins: int | None = None, signed_hist: bool = False) -> dict[str, TensorStats]:
    """Min/max of each tensor in ``names``; with ``bins``, a second pass builds histograms."""
    stats = {n: TensorStats(n, np.inf, -np.inf) for n in names}
    for batch in run_tensors(model, names, x, batch_size):
        for n, v in batch.items():
            if not np.all(np.isfinite(v)):
                raise CalibrationError(f"float model produced NaN/inf in tensor {n!r} on the "
                                       "calibration images")
            s = stats[n]
            s.min, s.max = min(s.min, float(v.min())), max(s.max, float(v.max()))
            s.count += v.size
    if bins:
        for s in stats.values():
            s.hist_abs = np.zeros(bins, np.int64)
            if signed_hist:
                s.hist = np.zeros(bins, np.int64)
        for batch in run_tensors(model, names, x, batch_size):
            for n, v in batch.items():
                s = stats[n]
                s.hist_abs += np.histogram(np.abs(v), bins, (0.0, s.absmax or 1.0))[0]
                if signed_hist:
                    lo, hi = (s.min, s.max) if s.max > s.min else (s.min - 1, s.min + 1)
                    s.hist += np.histogram(v, bins, (lo, hi))[0]
    return stats


def percentile_abs(hist: np.ndarray, absmax: float, percentile: float) -> float:
    """Upper edge of the bin holding the ``percentile`` of |x|."""
    total = hist.sum()
    if total == 0 or absmax == 0:
        return absmax
    cdf = np.cumsum(hist) / total
    idx = int(np.searchsorted(cdf, percentile / 100.0 - 1e-12))
    return min(absmax, (idx + 1) * absmax / len(hist))


def percentile_range(hist: np.ndarray, lo: float, hi: float, percentile: float):
    """(lower, upper) tails of x at ``100 - percentile`` and ``percentile``."""
    total = hist.sum()
    if total == 0 or hi <= lo:
        return lo, hi
    edges = np.linspace(lo, hi, len(hist) + 1)
    cdf = np.cumsum(hist) / total
    q = percentile / 100.0
    i_lo = int(np.searchsorted(cdf, 1.0 - q + 1e-12, side="right"))
    i_hi = int(np.searchsorted(cdf, q - 1e-12))
    return float(edges[min(i_lo, len(hist) - 1)]), float(edges[min(i_hi + 1, len(hist))])


def kl_for_threshold(hist: np.ndarray, i: int, levels: int = QUANT_LEVELS) -> float:
    """KL(P ‖ Q) of clipping ``hist`` at bin ``i`` and quantising ``hist[:i]`` to ``levels``.

    P is ``hist[:i]`` with the clipped outliers added to its last bin; Q merges ``hist[:i]``
    into ``levels`` groups and spreads each group's count evenly over its non-empty bins
    (TensorRT's entropy calibrator). Where P > 0 but Q = 0, Q takes ``1e-12`` (a large
    finite penalty) instead of TensorRT's smoothing, which can turn Q negative.
    """
    sliced = hist[:i].astype(np.float64)
    p = sliced.copy()
    p[-1] += hist[i:].sum()
    merged = i // levels
    nonzero = (sliced != 0).astype(np.float64)
    head = levels * merged
    qsum = sliced[:head].reshape(levels, merged).sum(1)
    qcnt = nonzero[:head].reshape(levels, merged).sum(1)
    qsum[-1] += sliced[head:].sum()
    qcnt[-1] += nonzero[head:].sum()
    per = np.divide(qsum, qcnt, out=np.zeros_like(qsum), where=qcnt > 0)
    q = np.concatenate([np.repeat(per, merged), np.full(i - head, per[-1])]) * nonzero
    if p.sum() == 0 or q.sum() == 0:
        return np.inf
    p, q = p / p.sum(), q / q.sum()
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))


def entropy_threshold(hist: np.ndarray, absmax: float, levels: int = QUANT_LEVELS) -> float:
    """The |x| clipping threshold that minimises KL divergence (TensorRT's calibrator).

    As in NVIDIA's pytorch-quantization, the first bin takes the count of the second: the
    spike of exact zeros after a ReLU otherwise dominates the divergence and drives the
    threshold far too low.
    """
    if absmax == 0 or hist.sum() == 0:
        return absmax
    hist = hist.copy()
    if len(hist) > 1:
        hist[0] = hist[1]
    if len(hist) < levels:
        raise ValueError(f"entropy calibration needs at least {levels} bins, got {len(hist)}")
    width = absmax / len(hist)
    best_i, best_kl = len(hist), np.inf
    for i in range(levels, len(hist) + 1):
        kl = kl_for_threshold(hist, i, levels)
        if kl < best_kl:
            best_i, best_kl = i, kl
    return best_i * width


def activation_range(s: TensorStats, cfg: QuantConfig) -> tuple[float, float]:
    """The (lo, hi) real range an activation is quantised over; always contains 0."""
    cal = cfg.calibration
    lo, hi = min(s.min, 0.0), max(s.max, 0.0)
    if isinstance(cal, MinMax):
        pass
    elif isinstance(cal, Percentile):
        if cfg.symmetric:
            t = percentile_abs(s.hist_abs, s.absmax, cal.percentile)
            lo, hi = max(lo, -t), min(hi, t)
        else:
            a, b = percentile_range(s.hist, s.min, s.max, cal.percentile)
            lo, hi = min(a, 0.0), max(b, 0.0)
    elif isinstance(cal, Entropy):
        # a non-negative tensor under asymmetric int8 uses all 256 levels
        levels = 2 * QUANT_LEVELS if not cfg.symmetric and s.min >= 0 else QUANT_LEVELS
        t = entropy_threshold(s.hist_abs, s.absmax, levels)
        lo, hi = max(lo, -t), min(hi, t)
    if cfg.symmetric:
        t = max(-lo, hi)
        return -t, t
    return lo, hi


def calibrate(model, names: list[str], x: np.ndarray, cfg: QuantConfig
              ) -> tuple[dict[str, tuple[float, float]], dict[str, TensorStats]]:
    """Ranges of the tensors in ``names`` on images ``x`` (already validated and selected)."""
    cal = cfg.calibration
    bins = None if isinstance(cal, MinMax) else cal.bins
    signed = isinstance(cal, Percentile) and not cfg.symmetric
    stats = collect_stats(model, names, x, cfg.batch_size, bins, signed)
    return {n: activation_range(s, cfg) for n, s in stats.items()}, stats
