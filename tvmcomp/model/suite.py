"""Embedded CNNs of the kinds users deploy (MLPerf Tiny's four tasks), for the model suite
(``scripts/bench_models.py``): architectures only, built with seeded random weights.

- ``resnet8``: image classification, CIFAR-10 (3x32x32): a 16-channel stem and three
  residual stacks of 16, 32 and 64 channels (MLPerf Tiny IC).
- ``mobilenet_v1_025``: visual wake words (3x96x96): MobileNetV1 at width 0.25, 2 classes
  (MLPerf Tiny VWW).
- ``ds_cnn``: keyword spotting on 49x10 MFCC features: a 10x4 stride-2 convolution and four
  depthwise-separable blocks of 64 channels, 12 classes (MLPerf Tiny KWS, DS-CNN small).
- ``fc_autoencoder``: anomaly detection on 640 log-mel features: 640-128-128-128-128-8 and
  back, batch norm and ReLU between (MLPerf Tiny AD).

Batch norms get seeded random statistics (so they are not identities), as a trained model's.
"""

from __future__ import annotations

import torch
from torch import nn


def _bn_act(c: int, dims: int = 2) -> list[nn.Module]:
    return [nn.BatchNorm2d(c) if dims == 2 else nn.BatchNorm1d(c), nn.ReLU()]


class _Residual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), *_bn_act(cout),
                                  nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout))
        self.skip = (nn.Conv2d(cin, cout, 1, stride) if stride != 1 or cin != cout
                     else nn.Identity())

    def forward(self, x):
        return torch.relu(self.body(x) + self.skip(x))


class _PooledClassifier(nn.Module):
    """``features``, global average pooling, then the linear classifier ``fc``."""

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1),
                                     1))


class ResNet8(_PooledClassifier):
    input_shape = (1, 3, 32, 32)

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), *_bn_act(16),
                                      _Residual(16, 16, 1), _Residual(16, 32, 2),
                                      _Residual(32, 64, 2))
        self.fc = nn.Linear(64, classes)


def _separable(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), *_bn_act(cin),
            nn.Conv2d(cin, cout, 1, bias=False), *_bn_act(cout)]


class MobileNetV1(_PooledClassifier):
    input_shape = (1, 3, 96, 96)

    def __init__(self, alpha: float = 0.25, classes: int = 2) -> None:
        super().__init__()

        def c(n: int) -> int:
            return max(8, int(n * alpha))

        plan = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5,
                (1024, 2), (1024, 1)]
        layers = [nn.Conv2d(3, c(32), 3, 2, 1, bias=False), *_bn_act(c(32))]
        cin = c(32)
        for cout, stride in plan:
            layers += _separable(cin, c(cout), stride)
            cin = c(cout)
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)


class DSCNN(_PooledClassifier):
    input_shape = (1, 1, 49, 10)

    def __init__(self, channels: int = 64, classes: int = 12) -> None:
        super().__init__()
        layers = [nn.Conv2d(1, channels, (10, 4), 2, (5, 1)), *_bn_act(channels)]
        for _ in range(4):
            layers += _separable(channels, channels, 1)
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, classes)


class FCAutoencoder(nn.Module):
    input_shape = (1, 640)

    def __init__(self, width: int = 128, code: int = 8, features: int = 640) -> None:
        super().__init__()
        sizes = [features, width, width, width, width, code, width, width, width, width]
        layers: list[nn.Module] = []
        for a, b in zip(sizes, sizes[1:]):
            layers += [nn.Linear(a, b), *_bn_act(b, dims=1)]
        self.net = nn.Sequential(*layers, nn.Linear(width, features))

    def forward(self, x):
        return self.net(x)


SUITE = {"resnet8": ResNet8, "mobilenet_v1_025": MobileNetV1, "ds_cnn": DSCNN,
         "fc_autoencoder": FCAutoencoder}


def seeded(cls, seed: int = 0) -> nn.Module:
    """``cls()`` in eval mode with seeded random weights and batch-norm statistics."""
    torch.manual_seed(seed)
    model = cls().eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                m.weight.copy_(0.8 + 0.4 * torch.rand(n, generator=gen))
                m.bias.copy_(0.1 * torch.randn(n, generator=gen))
    return model
