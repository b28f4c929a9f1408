"""The layer index every pass, report and script shares: ``conv<k>`` / ``matmul<k>``.

``k`` counts a Relax function's convolution and matmul calls in binding order (what ONNX
Conv / Gemm / MatMul import to), so the k-th is the k-th such ONNX node. Keys across a module
are ``"<function>/<name>"``, e.g. ``main_b1/matmul2`` (fc1 of LeNet-5).
"""

from __future__ import annotations

INDEXED_OPS = ("relax.nn.conv1d", "relax.nn.conv2d", "relax.nn.conv3d", "relax.matmul")


def layer_name(op: str, k: int) -> str:
    """``matmul<k>`` for a matmul, ``conv<k>`` for a convolution (``op``: the Relax op name)."""
    if op not in INDEXED_OPS:
        raise ValueError(f"{op} is not an indexed layer op ({', '.join(INDEXED_OPS)})")
    return f"{'matmul' if op == 'relax.matmul' else 'conv'}{k}"


def layer_index(name: str) -> int:
    """``k`` of a layer name or key (``"matmul2"``, ``"main_b1/conv0"``)."""
    return int(name[len(name.rstrip("0123456789")):])


def layer_key(function: str, name: str) -> str:
    """``"<function>/<layer name>"``: the key of a layer across a module."""
    return f"{function}/{name}"
