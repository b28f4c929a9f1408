"""QuantConfig: validation by raising, versioned JSON round trip."""

from __future__ import annotations

import json

import pytest

from tvmcomp.errors import TvmcompError
from tvmcomp.quant import (Entropy, MinMax, PerChannel, Percentile, PerTensor, QuantConfig,
                           QuantConfigError)

CONFIGS = [
    QuantConfig(),
    QuantConfig(calibration=Percentile(99.9, bins=1024), activations="asymmetric",
                weights=PerTensor(), num_calib=32, batch_size=8, skip=("/fc3/Gemm",), seed=3),
    QuantConfig(calibration=Entropy(bins=512), weights=PerChannel(axis=0)),
]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_json_round_trip(cfg):
    text = cfg.to_json()
    d = json.loads(text)
    assert d["format"] == "tvmcomp.quant" and d["version"] == 1
    assert QuantConfig.from_json(text) == cfg


def test_defaults():
    cfg = QuantConfig()
    assert cfg.calibration == MinMax() and cfg.weights == PerChannel() and cfg.symmetric
    assert cfg.skip == () and cfg.num_calib >= 2


@pytest.mark.parametrize("make,match", [
    (lambda: QuantConfig(activations="sym"), "activations must be one of"),
    (lambda: QuantConfig(num_calib=1), "num_calib must be an integer >= 2"),
    (lambda: QuantConfig(calibration="minmax"), "calibration must be"),
    (lambda: QuantConfig(weights="per_channel"), "weights must be"),
    (lambda: QuantConfig(skip="/conv1/Conv"), "skip must be a list"),
    (lambda: Percentile(40), "percentile must be in"),
    (lambda: Percentile(100.5), "percentile must be in"),
    (lambda: Entropy(bins=100), "bins must be an integer >= 256"),
    (lambda: PerChannel(axis=1), "PerChannel axis must be 0"),
])
def test_invalid_values_raise(make, match):
    with pytest.raises(QuantConfigError, match=match) as e:
        make()
    assert isinstance(e.value, TvmcompError) and isinstance(e.value, ValueError)
    assert "\n" not in str(e.value)


def test_unknown_keys_and_versions_rejected():
    d = QuantConfig().to_dict()
    with pytest.raises(QuantConfigError, match="unknown quant config key 'num_calibs'.*valid"):
        QuantConfig.from_dict({**d, "num_calibs": 5})
    with pytest.raises(QuantConfigError, match="unknown calibration \\(percentile\\) key 'pct'"):
        QuantConfig.from_dict({**d, "calibration": {"method": "percentile", "pct": 99}})
    with pytest.raises(QuantConfigError, match="'method' one of minmax, percentile, entropy"):
        QuantConfig.from_dict({**d, "calibration": {"method": "kl"}})
    with pytest.raises(QuantConfigError, match="v1 config"):
        QuantConfig.from_dict({**d, "version": 2})
    with pytest.raises(QuantConfigError, match="not valid JSON"):
        QuantConfig.from_json("{")


def test_cli_strings():
    from tvmcomp.quant.config import calibration_from_str, weights_from_str

    assert calibration_from_str("minmax") == MinMax()
    assert calibration_from_str("percentile") == Percentile()
    assert calibration_from_str("Percentile:99.9") == Percentile(99.9)
    assert calibration_from_str("entropy:4096") == Entropy(4096)
    assert weights_from_str("per-tensor") == PerTensor()
    assert weights_from_str("per_channel") == PerChannel()
    for bad in ("kl", "percentile:x", "percentile:30", "minmax:3", "entropy:10"):
        with pytest.raises(QuantConfigError):
            calibration_from_str(bad)
    with pytest.raises(QuantConfigError, match="per-tensor or per-channel"):
        weights_from_str("per-axis")
