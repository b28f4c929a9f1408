"""``quantize_onnx``: float ONNX + calibration images → QDQ ONNX (what the int8 pass compiles)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .calibrate import calibrate, check_images, ort_session, select_images
from .config import QuantConfig
from .errors import QuantError
from .qdq import QuantLayer, insert_qdq, plan_nodes

REPORT_FORMAT = "tvmcomp.quant-summary/1"


@dataclass
class QuantizedModel:
    """A QDQ ONNX model and how it was made."""

    model: object  # onnx.ModelProto in QDQ format
    config: QuantConfig
    layers: list[QuantLayer]
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    num_calib: int = 0
    float_nodes: list[str] = field(default_factory=list)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the QDQ model (atomically)."""
        import onnx

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        onnx.save(self.model, str(tmp))
        os.replace(tmp, path)
        return path

    def summary(self) -> dict:
        """JSON-ready record for an artifact manifest."""
        return {
            "format": REPORT_FORMAT,
            "config": self.config.to_dict(),
            "num_calib": self.num_calib,
            "layers": [lay.to_dict() for lay in self.layers],
            "float_nodes": list(self.float_nodes),
            "ranges": {k: [float(a), float(b)] for k, (a, b) in self.ranges.items()},
        }

    def summary_json(self) -> str:
        return json.dumps(self.summary(), indent=2)


def _load(model):
    import onnx

    if isinstance(model, (str, os.PathLike)):
        from ..frontend.onnx_import import load_onnx

        return load_onnx(model)[0]
    if not isinstance(model, onnx.ModelProto):
        raise QuantError(f"expected an ONNX model or path, got {type(model).__name__}")
    return model


def model_input(model) -> tuple[str, tuple]:
    """(name, shape) of the model's one non-initializer input."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise QuantError(f"quantization needs a model with one input, got {len(inputs)}")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = tuple(d.dim_value if d.HasField("dim_value") else "N" for d in dims)
    return inputs[0].name, shape


def quantize_onnx(model, images: np.ndarray, config: QuantConfig = QuantConfig()
                  ) -> QuantizedModel:
    """Calibrate ``model`` on ``images`` and return its int8 QDQ version.

    Parameters
    ----------
    model : onnx.ModelProto | str | os.PathLike
        The float model (one input, NCHW).
    images : np.ndarray
        Calibration inputs, float32 ``[N, *input_shape[1:]]`` normalised like the model's
        inputs; ``config.num_calib`` of them are drawn with ``config.seed``.
    config : QuantConfig
        Calibration method, activation and weight schemes, skipped nodes.

    Returns
    -------
    QuantizedModel
        ``.model`` is the QDQ ONNX model: compile it with ``from_onnx`` + the
        :class:`~tvmcomp.passes.QuantizeInt8` pass, or run it in ONNX Runtime as a reference.

    Raises
    ------
    CalibrationError
        Empty, single-image, wrongly shaped or non-finite calibration set.
    QuantError
        Non-finite weights, unsupported opset, bias overflow.
    QuantConfigError
        A ``skip`` entry that names no node.
    """
    model = _load(model)
    name, shape = model_input(model)
    x = select_images(check_images(images, shape, name), config.num_calib, config.seed)
    plans, _, _, calib = plan_nodes(model, config)
    ranges, _ = calibrate(model, calib, x, config) if calib else ({}, {})
    qmodel, layers = insert_qdq(model, config, ranges)
    quantized = {p[1].name for p in plans}
    float_nodes = [n.name for n in model.graph.node
                   if n.op_type in ("Conv", "Gemm", "MatMul") and n.name not in quantized]
    return QuantizedModel(qmodel, config, layers, ranges, len(x), float_nodes)


def run_qdq_reference(model, x: np.ndarray, batch: int = 500) -> np.ndarray:
    """Output 0 of ONNX Runtime running a QDQ model as written: the reference for int8 builds.

    ORT's fully optimized session swaps QDQ nodes for its own int8 kernels, which are not
    always exact (see :func:`~tvmcomp.quant.calibrate.ort_session`); this one is.
    """
    sess = ort_session(str(model) if isinstance(model, (str, os.PathLike)) else model,
                       reference=True)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i: i + batch]})[0]
                           for i in range(0, len(x), batch)])
