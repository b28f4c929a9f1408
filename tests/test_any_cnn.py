"""Any CNN, not only LeNet-5: small PyTorch nets → ONNX → build → compare with ONNX Runtime."""

import numpy as np
import onnx
import pytest
import torch
from onnx import helper
from torch import nn

from tvmcomp import runtime
from tvmcomp.compiler import BuildOptions, build
from tvmcomp.verify import ort_session


class PreActBlock(nn.Module):
    """BN → ReLU → conv, twice, plus the identity (BN follows Add/input, so it is not folded)."""

    def __init__(self, c):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c), nn.Conv2d(c, c, 3, padding=1)
        self.bn2, self.conv2 = nn.BatchNorm2d(c), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        y = self.conv1(torch.relu(self.bn1(x)))
        return self.conv2(torch.relu(self.bn2(y))) + x


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.blocks = nn.Sequential(PreActBlock(8), PreActBlock(8))
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.blocks(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class TinySeparable(nn.Module):
    """MobileNet-style: stride-2 stem, depthwise (groups) + pointwise conv, ReLU6, AvgPool,
    a Concat of two branches, Dropout and Softmax."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 16, 1)
        self.act = nn.ReLU6()
        self.pool = nn.AvgPool2d(2)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(24 * 8 * 8, 10)

    def forward(self, x):
        x = self.act(self.stem(x))
        y = self.act(self.pw(self.act(self.dw(x))))
        x = torch.cat([self.pool(y), self.pool(x)], 1)
        return torch.softmax(self.fc(self.drop(torch.flatten(x, 1))), 1)


def _randomize_batchnorm(model):
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)


def _insert_dropout(path):
    """The TorchScript exporter drops eval-mode Dropout; other exporters keep an inference
    Dropout node, so put one back in front of the classifier (Gemm)."""
    m = onnx.load(str(path))
    gemm = next(n for n in m.graph.node if n.op_type == "Gemm")
    src = gemm.input[0]
    gemm.input[0] = src + "_dropout"
    idx = list(m.graph.node).index(gemm)
    m.graph.node.insert(idx, helper.make_node("Dropout", [src], [src + "_dropout"],
                                              name="dropout0"))
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


CASES = {
    "resnet": (TinyResNet, {"Conv", "BatchNormalization", "Relu", "Add", "GlobalAveragePool",
                            "Gemm"}),
    "separable": (TinySeparable, {"Conv", "Clip", "AveragePool", "Concat", "Dropout",
                                  "Softmax", "Gemm"}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_build_matches_onnxruntime(name, tmp_path, x86_host, profile_with_db):
    cls, expect_ops = CASES[name]
    torch.manual_seed(0)
    model = cls()
    _randomize_batchnorm(model)
    model.eval()
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(path), input_names=["input"],
                      output_names=["out"], opset_version=17, dynamo=False,
                      dynamic_axes={"input": {0: "N"}, "out": {0: "N"}})
    if name == "separable":
        _insert_dropout(path)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert expect_ops <= ops, f"the export lacks {expect_ops - ops}"
    if name == "separable":
        conv_groups = [a.i for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"
                       for a in n.attribute if a.name == "group"]
        assert 8 in conv_groups

    out, man = build(path, profile_with_db(tmp_path / "db"), tmp_path / "art",
                     BuildOptions(batches=(1, 4), tune_budget_s=0, progress=False))
    assert man["verification"]["passed"] is True
    assert man["inputs"][0]["shape"] == ["N", 3, 32, 32]
    assert man["outputs"][0]["shape"] == ["N", 10]

    x = np.random.default_rng(1).standard_normal((6, 3, 32, 32)).astype(np.float32)
    ref = ort_session(str(path)).run(None, {"input": x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(model(torch.from_numpy(x)).numpy(), ref, atol=1e-4)
    got = runtime.load(out)(x)  # 6 = 4 + 1 + 1
    assert got.shape == ref.shape == (6, 10)
    scale = max(1.0, float(np.abs(ref).max()))
    assert float(np.abs(got - ref).max()) < 1e-4 * scale
    assert np.ptp(ref, axis=0).max() > 1e-3  # outputs depend on the input (not degenerate)
    if name == "separable":
        np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)  # softmax rows
