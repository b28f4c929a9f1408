"""Pruning configs: validation and the versioned JSON round trip."""

from __future__ import annotations

import pytest

from tvmcomp.compress import (
    CompressConfigError,
    FineTune,
    GroupLasso,
    L1,
    MagnitudePruneConfig,
    SensitivityConfig,
    from_dict,
    from_json,
    to_dict,
    to_json,
)


@pytest.mark.parametrize("cfg", [
    MagnitudePruneConfig(0.9),
    MagnitudePruneConfig(0.5, scope="layer", layers=("fc1",), exclude=(), block=(1, 4),
                         finetune=None),
    MagnitudePruneConfig(0.8, regularizer=L1(1e-4), finetune=FineTune(epochs=1, prunes=3)),
    MagnitudePruneConfig(0.8, regularizer=GroupLasso(1e-3, (2, 4))),
    MagnitudePruneConfig(0.5, scope="layer", per_layer={"fc1": 0.97, "conv1": 0.0}),
    SensitivityConfig(max_accuracy_drop=0.01, sparsities=(0.9, 0.5), plot="s.png",
                      exclude=("conv1",)),
])
def test_round_trip(cfg):
    assert from_json(to_json(cfg)) == cfg
    assert from_dict(to_dict(cfg)) == cfg


@pytest.mark.parametrize("s", [-0.1, 1.0, 1.5, float("nan"), True, "0.9", None])
def test_sparsity_outside_range_is_rejected(s):
    with pytest.raises(CompressConfigError, match="sparsity must be a number in"):
        MagnitudePruneConfig(s)


def test_zero_sparsity_is_allowed():
    assert MagnitudePruneConfig(0.0).sparsity == 0.0


@pytest.mark.parametrize("kwargs, msg", [
    (dict(scope="row"), "scope must be one of global, layer"),
    (dict(layers="fc1"), "layers must be a list"),
    (dict(block=(0, 4)), "block size must be an integer >= 1"),
    (dict(finetune=None, regularizer=L1()), "a regularizer needs fine-tuning"),
    (dict(regularizer="l1"), "regularizer must be"),
    (dict(per_layer={"fc1": 0.9}), "per_layer sparsities need scope='layer'"),
    (dict(scope="layer", per_layer={"fc1": 1.0}), "sparsity of fc1 must be a number in"),
])
def test_bad_magnitude_configs(kwargs, msg):
    with pytest.raises(CompressConfigError, match=msg):
        MagnitudePruneConfig(0.9, **kwargs)


def test_bad_sensitivity_and_finetune():
    with pytest.raises(CompressConfigError, match="each swept sparsity"):
        SensitivityConfig(sparsities=(0.5, 1.0))
    with pytest.raises(CompressConfigError, match="sparsities must be a non-empty list"):
        SensitivityConfig(sparsities=())
    with pytest.raises(CompressConfigError, match="epochs must be an integer >= 0"):
        FineTune(epochs=-1)
    with pytest.raises(CompressConfigError, match="GroupLasso strength"):
        GroupLasso(0.0)


def test_unknown_keys_are_named():
    d = to_dict(MagnitudePruneConfig(0.9))
    d["sparsty"] = 0.5
    with pytest.raises(CompressConfigError, match="unknown magnitude config key 'sparsty'"):
        from_dict(d)
    d = to_dict(MagnitudePruneConfig(0.9))
    d["finetune"]["epoch"] = 3
    with pytest.raises(CompressConfigError, match="unknown finetune key 'epoch'"):
        from_dict(d)
    with pytest.raises(CompressConfigError, match="not a tvmcomp.compress v1"):
        from_dict({"format": "x"})
    with pytest.raises(CompressConfigError, match="not valid JSON"):
        from_json("{")
