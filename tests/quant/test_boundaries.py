"""A small CNN with a depthwise conv, a residual Add and an AveragePool: int8 where it can be,
float behind explicit dequantize/quantize where it cannot."""

from __future__ import annotations

import numpy as np
import pytest

from tvmcomp.plan.quant_report import layer_report
from tvmcomp.quant import QuantConfig, quantize_onnx, run_qdq_reference


@pytest.fixture(scope="module")
def residual_onnx(tmp_path_factory) -> str:
    import torch
    from torch import nn

    from tvmcomp.frontend import export_onnx

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(1, 8, 3, padding=1)
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.pw = nn.Conv2d(8, 8, 1)
            self.pool = nn.AvgPool2d(2)
            self.fc = nn.Linear(8 * 6 * 6, 10)

        def forward(self, x):
            a = torch.relu(self.c1(x))
            c = self.pw(torch.relu(self.dw(a))) + a
            return self.fc(torch.flatten(self.pool(torch.relu(c)), 1))

    torch.manual_seed(0)
    return str(export_onnx(Net(), tmp_path_factory.mktemp("res") / "res.onnx",
                           input_shape=(1, 1, 12, 12)))


def test_depthwise_int8_and_float_boundaries(residual_onnx, target, profile):
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from tvmcomp.passes import QuantizeInt8
    from tvmcomp.pipeline import compile_fused, fuse

    x = np.random.default_rng(0).standard_normal((32, 1, 12, 12)).astype(np.float32)
    q = quantize_onnx(residual_onnx, x, QuantConfig(activations="asymmetric"))
    mod = QuantizeInt8()(from_onnx(q.model, shape_dict={"input": [32, 1, 12, 12]}))
    calls = [(str(b.value.op.name), str(b.var.ty.dtype))
             for b in mod["main"].body.blocks[0].bindings
             if isinstance(b.value, tvm.ir.Call) and isinstance(b.value.op, tvm.ir.Op)]
    convs = [c for c in calls if c[0] in ("relax.nn.conv2d", "relax.matmul")]
    assert convs == [("relax.nn.conv2d", "int32")] * 3 + [("relax.matmul", "int32")]
    # float islands: the residual Add and the AveragePool, entered through dequantize and
    # left through quantize
    names = [c[0] for c in calls]
    assert ("relax.nn.avg_pool2d", "float32") in calls and names.count("relax.dequantize") == 2
    assert names.count("relax.quantize") == 2  # model input, and before the int8 Gemm
    vm = relax.VirtualMachine(compile_fused(fuse(mod, target), target), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    ref = run_qdq_reference(q.model, x)
    np.testing.assert_allclose(got, ref, atol=1e-3 * np.abs(ref).max())
    rows = layer_report(residual_onnx, q.model, x, profile, batch=32)
    assert [r.node for r in rows] == ["/c1/Conv", "/dw/Conv", "/pw/Conv", "/fc/Gemm"]
    assert all(r.sqnr_db > 25 for r in rows)
