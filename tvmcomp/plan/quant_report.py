"""Per-layer quantization report: each int8 op's output vs the float model's tensor."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass

import numpy as np

from ..quant.errors import QuantError

ANCHOR_RE = re.compile(r"(conv|matmul)(\d+)_(i8|f32)")
COMPUTE_OPS = ("Conv", "Gemm", "MatMul")


@dataclass
class LayerReport:
    """One quantized conv/matmul: error of its compiled int8 output against float.

    ``sqnr_db`` and ``max_abs_err`` compare the dequantized output of the TVM int8 kernel
    with the float model's tensor; ``max_lsb_vs_ort`` and ``frac_off_vs_ort`` compare the
    int8 values with ONNX Runtime running the same QDQ model as written (basic graph
    optimizations, see :func:`~tvmcomp.quant.calibrate.ort_session`; None for float outputs).
    """

    index: int
    node: str
    op_type: str
    tensor: str
    output: str  # "int8" or "float32"
    sqnr_db: float | None
    max_abs_err: float | None
    max_lsb_vs_ort: int | None = None
    frac_off_vs_ort: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def expose_anchors(mod, func_name: str = "main"):
    """Copy of ``mod`` (after :class:`QuantizeInt8`) whose ``func_name`` returns
    ``(output, *anchors)``; returns ``(module, [anchor index k, ...])``."""
    import tvm
    from tvm import relax

    flat = relax.transform.ToNonDataflow()(tvm.IRModule({func_name: mod[func_name]}))
    func = flat[func_name]
    found = []
    for block in func.body.blocks:
        for b in block.bindings:
            m = ANCHOR_RE.fullmatch(str(b.var.name))
            if m:
                found.append((int(m.group(2)), b.var))
    body = relax.BlockBuilder().normalize(relax.SeqExpr(
        func.body.blocks, relax.Tuple([func.body.body, *[v for _, v in found]])))
    new = relax.Function(func.params, body, None, True, func.attrs)
    out = tvm.IRModule({func_name: new})
    return out, [k for k, _ in found]


def _graph_tables(model):
    from onnx import numpy_helper

    g = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    consumers: dict[str, list] = {}
    for n in g.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    return inits, consumers


def _anchor_tensors(qdq_model):
    """For each compute node of the QDQ model, in order: (node, tensor, Q node or None)."""
    inits, consumers = _graph_tables(qdq_model)
    out = []
    for n in qdq_model.graph.node:
        if n.op_type not in COMPUTE_OPS:
            continue
        t = n.output[0]
        users = consumers.get(t, [])
        if len(users) == 1 and users[0].op_type == "Relu":
            t = users[0].output[0]
            users = consumers.get(t, [])
        q = next((u for u in users if u.op_type == "QuantizeLinear"), None)
        out.append((n, t, q))
    return out, inits


def _as_model(m):
    import onnx

    return onnx.load(str(m)) if isinstance(m, (str, os.PathLike)) else m


def _float_name(t: str, names: set[str]) -> str | None:
    if t in names:
        return t
    for suffix in ("_QuantizeLinear_Input",):
        if t.endswith(suffix) and t[: -len(suffix)] in names:
            return t[: -len(suffix)]
    return None


def _run(model, names: list[str], x: np.ndarray, batch: int,
         reference: bool = False) -> dict[str, np.ndarray]:
    from ..quant.calibrate import run_tensors

    parts: dict[str, list] = {n: [] for n in names}
    for outs in run_tensors(model, names, x, batch, reference):
        for n in names:
            parts[n].append(outs[n])
    return {n: np.concatenate(v) for n, v in parts.items()}


def layer_report(float_model, qdq_model, images: np.ndarray, profile,
                 batch: int = 64) -> list[LayerReport]:
    """SQNR (dB) and max |error| of every quantized conv/matmul, compiled by TVM.

    Parameters
    ----------
    float_model, qdq_model : onnx.ModelProto | str | os.PathLike
        The float model and its QDQ version (from :func:`quantize_onnx` or ONNX Runtime).
    images : np.ndarray
        Inputs, float32 ``[N, ...]`` (a few hundred are plenty).
    profile : tvmcomp.targets.Profile
        The profile whose kernels are compiled (its target, int8 accumulation and device).
    batch : int
        Batch size of the compiled probe module (images are padded to a multiple).
    """
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from ..passes import QuantizeInt8
    from ..pipeline import compile_fused, fuse
    from ..quant.api import model_input
    from ..quant.calibrate import check_images

    float_model, qdq_model = _as_model(float_model), _as_model(qdq_model)
    target = profile.tvm_target()
    name, in_shape = model_input(qdq_model)
    x = check_images(images, in_shape, name)
    # the kernels the target ships: float32 accumulation where build uses it (x86 without VNNI)
    mod = QuantizeInt8(profile.int8_accumulate)(
        from_onnx(qdq_model, shape_dict={name: [batch, *x.shape[1:]]}))
    probe, ks = expose_anchors(mod)
    dev = profile.device()
    vm = relax.VirtualMachine(compile_fused(fuse(probe, target, int8_acc=profile.int8_accumulate),
                                            target), dev)
    n = len(x)
    pad = np.concatenate([x, np.repeat(x[-1:], (-n) % batch, axis=0)])
    got: list[list] = [[] for _ in ks]
    for i in range(0, len(pad), batch):
        res = vm["main"](tvm.runtime.tensor(pad[i: i + batch], dev))
        for j in range(len(ks)):
            got[j].append(res[j + 1].numpy())
    got = [np.concatenate(g)[:n] for g in got]

    anchors, inits = _anchor_tensors(qdq_model)
    float_names = {t for nd in float_model.graph.node for t in nd.output}
    float_names |= {i.name for i in float_model.graph.input}
    want_f, want_q = {}, {}
    for k in ks:
        if k >= len(anchors):
            raise QuantError(f"int8 op #{k} has no matching compute node in the QDQ model")
        node, t, q = anchors[k]
        fname = _float_name(t, float_names)
        if fname:
            want_f[k] = fname
        if q is not None:
            want_q[k] = q.output[0]
    ref = _run(float_model, sorted(set(want_f.values())), x, batch) if want_f else {}
    ort_q = _run(qdq_model, sorted(set(want_q.values())), x, batch, reference=True) \
        if want_q else {}

    rows = []
    for j, k in enumerate(ks):
        node, t, q = anchors[k]
        val = got[j]
        row = LayerReport(k, node.name, node.op_type, t, str(val.dtype), None, None)
        if val.dtype != np.float32:
            if q is None:
                raise QuantError(f"int8 op #{k} ({node.name}) has no QuantizeLinear in the model")
            s = float(inits[q.input[1]].ravel()[0])
            z = int(inits[q.input[2]].ravel()[0]) if len(q.input) > 2 else 0
            lsb = np.abs(val.astype(np.int64) - ort_q[q.output[0]].astype(np.int64))
            row.max_lsb_vs_ort = int(lsb.max())
            row.frac_off_vs_ort = float(np.mean(lsb > 0))
            val = (val.astype(np.float64) - z) * s
            row.output = "int8"
        if k in want_f:
            r = ref[want_f[k]].astype(np.float64)
            err = r - val.reshape(r.shape)
            noise = float(np.sum(err**2))
            row.sqnr_db = float("inf") if noise == 0 else float(
                10 * np.log10(max(float(np.sum(r**2)), 1e-30) / noise))
            row.max_abs_err = float(np.abs(err).max())
        rows.append(row)
    return rows


def format_report(rows: list[LayerReport]) -> str:
    """A fixed-width table, one line per quantized op."""
    lines = [f"{'#':>2}  {'node':<16} {'op':<6} {'out':<7} {'SQNR dB':>8} {'max|err|':>9} "
             f"{'LSB vs ORT':>10} {'off vs ORT':>10}"]
    for r in rows:
        sq = "-" if r.sqnr_db is None else f"{r.sqnr_db:8.2f}"
        me = "-" if r.max_abs_err is None else f"{r.max_abs_err:9.4f}"
        lsb = "-" if r.max_lsb_vs_ort is None else str(r.max_lsb_vs_ort)
        off = "-" if r.frac_off_vs_ort is None else f"{r.frac_off_vs_ort:.2%}"
        lines.append(f"{r.index:>2}  {r.node[:16]:<16} {r.op_type:<6} {r.output:<7} {sq:>8} "
                     f"{me:>9} {lsb:>10} {off:>10}")
    return "\n".join(lines)
