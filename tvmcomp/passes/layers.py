"""The layer index every pass, report and script shares: ``conv<k>`` / ``matmul<k>``.

``k`` counts a Relax function's convolution and matmul calls in binding order (what ONNX
Conv / Gemm / MatMul import to), so the k-th is the k-th such ONNX node. Keys across a module
are ``"<function>/<name>"``, e.g. ``main_b1/matmul2`` (fc1 of LeNet-5). A layer a pass has
already turned into one of our kernels (:data:`LAYER_KERNELS`) still counts, so the layers
after it keep their names in the passes that follow.
"""

from __future__ import annotations

import tvm
from tvm import relax

from ..kernels.vnni import ISAS

INDEXED_OPS = ("relax.nn.conv1d", "relax.nn.conv2d", "relax.nn.conv3d", "relax.matmul")
# name prefixes of the kernels the per-layer passes call in a layer's place (``R.call_tir``):
# SparseDense's SELL matmuls and direct sparse convolutions, Int8Vnni's dense and convolution
# (each instruction set's)
LAYER_KERNELS = ("sell_", "sparse_conv_",
                 *(name for isa in ISAS.values() for name in (isa.dense_name, isa.conv_name)))


def is_layer_kernel(call) -> bool:
    """Whether ``call`` is an ``R.call_tir`` of a :data:`LAYER_KERNELS` kernel: a layer."""
    return (isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op)
            and str(call.op.name) == "relax.call_tir"
            and isinstance(call.args[0], tvm.ir.GlobalVar)
            and call.args[0].name_hint.startswith(LAYER_KERNELS))


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


def direct_conv(attrs) -> bool:
    """Whether a ``relax.nn.conv2d``'s attributes are those our direct convolution kernels
    (sparse, VNNI) take: NCHW data, OIHW weight, NCHW out, stride 1, no dilation, one group
    (padding becomes a pad before the kernel)."""
    return (int(attrs.groups) == 1
            and all(int(v) == 1 for v in (*attrs.strides, *attrs.dilation))
            and (str(attrs.data_layout), str(attrs.kernel_layout)) == ("NCHW", "OIHW")
            and str(attrs.out_layout) in ("NCHW", ""))
