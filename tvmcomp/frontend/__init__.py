"""Frontends: PyTorch → ONNX export and ONNX → Relax import."""

from .onnx_export import export_onnx
from .onnx_import import ModelInfo, import_onnx, load_onnx

__all__ = ["ModelInfo", "export_onnx", "import_onnx", "load_onnx"]
