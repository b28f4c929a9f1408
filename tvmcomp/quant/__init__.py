"""Int8 post-training quantization: config, calibration, QDQ insertion.

The int8 kernels themselves come from the :class:`tvmcomp.passes.QuantizeInt8` Relax pass,
which compiles any QDQ model (ours or ONNX Runtime's) into integer conv2d/matmul; the
per-layer error report of the compiled int8 kernels is :mod:`tvmcomp.plan.quant_report`.
"""

from .api import QuantizedModel, quantize_onnx, run_qdq_reference
from .config import Entropy, MinMax, PerChannel, Percentile, PerTensor, QuantConfig
from .errors import CalibrationError, QuantConfigError, QuantError
from .qdq import QuantLayer

__all__ = [
    "CalibrationError", "Entropy", "MinMax", "PerChannel", "PerTensor",
    "Percentile", "QuantConfig", "QuantConfigError", "QuantError", "QuantLayer",
    "QuantizedModel", "quantize_onnx", "run_qdq_reference",
]
