"""Int8 post-training quantization: config, calibration, QDQ insertion, per-layer report.

The int8 kernels themselves come from the :class:`tvmcomp.passes.QuantizeInt8` Relax pass,
which compiles any QDQ model (ours or ONNX Runtime's) into integer conv2d/matmul.
"""

from .api import QuantizedModel, quantize_onnx, run_qdq_reference
from .config import Entropy, MinMax, PerChannel, Percentile, PerTensor, QuantConfig
from .errors import CalibrationError, QuantConfigError, QuantError
from .qdq import QuantLayer
from .report import LayerReport, format_report, layer_report

__all__ = [
    "CalibrationError", "Entropy", "LayerReport", "MinMax", "PerChannel", "PerTensor",
    "Percentile", "QuantConfig", "QuantConfigError", "QuantError", "QuantLayer",
    "QuantizedModel", "format_report", "layer_report", "quantize_onnx", "run_qdq_reference",
]
