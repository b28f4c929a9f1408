"""Frontends: PyTorch → ONNX export and ONNX → Relax import."""

from .onnx_import import ModelInfo, import_onnx, load_onnx

__all__ = ["ModelInfo", "export_onnx", "import_onnx", "load_onnx"]


def __getattr__(name: str):
    if name == "export_onnx":  # PyTorch is imported by what exports, not by what compiles
        from .onnx_export import export_onnx

        return export_onnx
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
