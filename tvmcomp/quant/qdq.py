"""Insert QuantizeLinear/DequantizeLinear pairs into a float ONNX graph (ORT's QDQ format)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .config import QuantConfig
from .errors import QuantConfigError, QuantError
from .fixed_point import INT_RANGES

COMPUTE_OPS = ("Conv", "Gemm", "MatMul")
# Ops that commute with an (increasing) affine int8 map: they run on int8 with the input's
# scale and zero point; the QuantizeInt8 pass rewrites exactly these.
PASSTHROUGH_OPS = ("MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze")
MIN_OPSET = 13  # per-axis DequantizeLinear


@dataclass(frozen=True)
class QuantLayer:
    """One quantized compute node: its tensors and int8 parameters."""

    node: str
    op_type: str
    input: str
    output: str  # the tensor the int8 result stands for (after a folded Relu)
    relu_folded: bool
    input_scale: float
    input_zero_point: int
    output_scale: float | None  # None: the output stays float (int32 accumulator dequantized)
    output_zero_point: int | None
    weight_scales: tuple[float, ...]

    def to_dict(self) -> dict:
        return asdict(self)


def activation_qparams(lo: float, hi: float, symmetric: bool) -> tuple[float, int]:
    """int8 (scale, zero point) covering ``[lo, hi]`` (which contains 0)."""
    qmin, qmax = INT_RANGES["int8"]
    if symmetric:
        t = max(-lo, hi)
        return (t / qmax if t > 0 else 1.0), 0
    if hi <= lo:
        return 1.0, 0
    scale = (hi - lo) / (qmax - qmin)
    zp = int(np.clip(np.round(qmin - lo / scale), qmin, qmax))
    return float(np.float32(scale)), zp


def weight_qparams(w: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 weights in [-127, 127]: (int8 weights, float32 scales)."""
    if axis is None:
        amax = np.array(np.abs(w).max(), np.float64)
    else:
        red = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.abs(w).max(axis=red).astype(np.float64)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    if axis is not None:
        shape[axis] = -1
    wq = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return wq, scale


def _attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _weight_axis(node, w: np.ndarray) -> int | None:
    """Output-channel axis of the weight, or None when the node cannot be quantized."""
    a = _attrs(node)
    if node.op_type == "Conv":
        return 0 if w.ndim == 4 else None
    if w.ndim != 2:
        return None
    if node.op_type == "Gemm":
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            return None
        return 0 if a.get("transB", 0) else 1
    return 1  # MatMul: [K, N]


class _Graph:
    """Name lookups over an ONNX graph."""

    def __init__(self, model) -> None:
        from onnx import numpy_helper

        g = model.graph
        self.g = g
        self.inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        self.outputs = {o.name for o in g.output}
        self.consumers: dict[str, list] = {}
        for n in g.node:
            for t in n.input:
                self.consumers.setdefault(t, []).append(n)
        self.names = {n.name for n in g.node if n.name}


def plan_nodes(model, cfg: QuantConfig):
    """The compute nodes to quantize (with weight axis and folded Relu) and the tensors to
    calibrate; raises :class:`QuantConfigError` for a ``skip`` name not in the graph."""
    G = _Graph(model)
    unknown = [s for s in cfg.skip if s not in G.names]
    if unknown:
        cands = [n.name for n in G.g.node if n.op_type in COMPUTE_OPS]
        raise QuantConfigError(f"skip: no node named {unknown[0]!r}; quantizable nodes: "
                               f"{', '.join(cands) or '(none)'}")
    plans, quantized, inherit, calib = [], {}, {}, []

    def mark(t: str, src: str | None = None) -> None:
        if t in quantized:
            return
        quantized[t] = True
        if src is None:
            calib.append(t)
        else:
            inherit[t] = src

    for idx, node in enumerate(G.g.node):
        if node.op_type in COMPUTE_OPS and node.name not in cfg.skip:
            w = G.inits.get(node.input[1]) if len(node.input) > 1 else None
            b = G.inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            axis = None if w is None or w.dtype != np.float32 else _weight_axis(node, w)
            nout = w.shape[axis] if axis is not None else 0
            if axis is None or (len(node.input) > 2 and node.input[2] and
                                (b is None or b.shape != (nout,))):
                continue
            for name, arr in ((node.input[1], w), (node.input[2] if b is not None else "", b)):
                if arr is not None and not np.all(np.isfinite(arr)):
                    raise QuantError(f"node {node.name!r}: initializer {name!r} contains NaN or "
                                     "inf; cannot quantize a model with non-finite weights")
            out, relu = node.output[0], False
            users = G.consumers.get(out, [])
            if out not in G.outputs and len(users) == 1 and users[0].op_type == "Relu":
                out, relu = users[0].output[0], True
            mark(node.input[0])
            if out not in G.outputs:
                mark(out)
            plans.append((idx, node, axis, out, relu))
        elif (node.op_type in PASSTHROUGH_OPS and node.input[0] in quantized
              and len(node.output) == 1 and node.output[0] not in G.outputs):
            mark(node.output[0], node.input[0])
    return plans, quantized, inherit, calib


def insert_qdq(model, cfg: QuantConfig, ranges: dict[str, tuple[float, float]]):
    """A QDQ copy of ``model``: int8 weights + DequantizeLinear, int32 bias, activation Q/DQ.

    ``ranges`` maps each tensor :func:`plan_nodes` asked to calibrate to its (lo, hi).
    Returns ``(qdq_model, layers)``.
    """
    import onnx
    from onnx import helper, numpy_helper

    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < MIN_OPSET:
        raise QuantError(f"model opset {opset} < {MIN_OPSET}: per-channel DequantizeLinear needs "
                         f"opset >= {MIN_OPSET}; re-export the model with a newer opset")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    G = _Graph(m)
    plans, quantized, inherit, calib = plan_nodes(m, cfg)
    missing = [t for t in calib if t not in ranges]
    if missing:
        raise QuantError(f"no calibrated range for tensor {missing[0]!r}")
    qp: dict[str, tuple[float, int]] = {}
    for t in quantized:
        qp[t] = qp[inherit[t]] if t in inherit else activation_qparams(*ranges[t], cfg.symmetric)

    taken = set(G.inits) | {t for n in g.node for t in (*n.input, *n.output)}
    taken |= {i.name for i in g.input}

    def uniq(base: str) -> str:
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        return name

    new_inits, head, layers = [], [], []

    def const(base: str, arr: np.ndarray) -> str:
        name = uniq(base)
        new_inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def dq(src: str, scale: str, zp: str, axis: int | None, base: str) -> tuple[str, object]:
        out = uniq(base)
        kw = {} if axis is None else {"axis": axis}
        return out, helper.make_node("DequantizeLinear", [src, scale, zp], [out],
                                     name=uniq(out + "_node"), **kw)

    per_channel = cfg.weights.granularity == "per_channel"
    rewire: dict[int, dict[str, str]] = {}
    for idx, node, axis, out, relu in plans:
        wname, w = node.input[1], G.inits[node.input[1]]
        wq, ws = weight_qparams(w, axis if per_channel else None)
        sx, zx = qp[node.input[0]]
        tag = node.name or wname
        sc = const(f"{wname}_scale", ws)
        wdq, n1 = dq(const(f"{wname}_quantized", wq), sc,
                     const(f"{wname}_zero_point", np.zeros_like(ws, np.int8)),
                     axis if per_channel else None, f"{wname}_dq")
        head.append(n1)
        swap = {wname: wdq}
        if len(node.input) > 2 and node.input[2]:
            bname = node.input[2]
            bscale = (np.float64(sx) * ws.astype(np.float64)).astype(np.float32)
            bq = np.round(G.inits[bname].astype(np.float64) / bscale.astype(np.float64))
            if np.any(np.abs(bq) > 2**31 - 1):
                raise QuantError(f"node {tag!r}: bias {bname!r} overflows int32 at scale "
                                 f"{float(bscale.min()):.3g}; the input or weight scale is "
                                 "degenerate")
            bdq, n2 = dq(const(f"{bname}_quantized", bq.astype(np.int32)),
                         const(f"{bname}_scale", bscale),
                         const(f"{bname}_zero_point", np.zeros_like(bscale, np.int32)),
                         0 if bscale.ndim else None, f"{bname}_dq")
            head.append(n2)
            swap[bname] = bdq
        rewire[idx] = swap
        so, zo = qp.get(out, (None, None))
        layers.append(QuantLayer(tag, node.op_type, node.input[0], out, relu, float(sx), int(zx),
                                 None if so is None else float(so),
                                 None if zo is None else int(zo),
                                 tuple(float(v) for v in np.atleast_1d(ws))))

    qdq_out: dict[str, str] = {}
    qp_names: dict[str, tuple[str, str]] = {}

    def param_names(t: str) -> tuple[str, str]:
        if t in inherit:  # pass-through ops share their input's initializers, like ORT
            return param_names(inherit[t])
        if t not in qp_names:
            s, z = qp[t]
            qp_names[t] = (const(f"{t}_scale", np.array(s, np.float32)),
                           const(f"{t}_zero_point", np.array(z, np.int8)))
        return qp_names[t]

    def qdq_nodes(t: str) -> list:
        sn, zn = param_names(t)
        qn = uniq(f"{t}_QuantizeLinear_Output")
        dn = uniq(f"{t}_DequantizeLinear_Output")
        qdq_out[t] = dn
        return [helper.make_node("QuantizeLinear", [t, sn, zn], [qn], name=uniq(f"{t}_Q")),
                helper.make_node("DequantizeLinear", [qn, sn, zn], [dn], name=uniq(f"{t}_DQ"))]

    body = []
    for i in g.input:
        if i.name in quantized:
            body += qdq_nodes(i.name)
    for idx, node in enumerate(g.node):
        swap = {t: qdq_out[t] for t in node.input if t in qdq_out}
        swap.update(rewire.get(idx, {}))
        new = onnx.NodeProto()
        new.CopyFrom(node)
        del new.input[:]
        new.input.extend(swap.get(t, t) for t in node.input)
        body.append(new)
        for t in node.output:
            if t in quantized:
                body += qdq_nodes(t)

    del g.node[:]
    g.node.extend(head + body)
    g.initializer.extend(new_inits)
    used = {t for n in g.node for t in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    kept = {t.name for t in keep}
    drop = {i.name for i in g.input if i.name in G.inits and i.name not in kept}
    inputs = [i for i in g.input if i.name not in drop]
    del g.input[:]
    g.input.extend(inputs)
    onnx.checker.check_model(m)
    return m, layers
