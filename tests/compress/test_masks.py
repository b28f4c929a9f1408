"""Magnitude masks against a NumPy reference; the polynomial schedule; sparsity accounting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tvmcomp.compress import CompressError, magnitude_masks, poly_sparsity, sparsity_report
from tvmcomp.compress.masks import apply_masks, prunable
from tvmcomp.model import LeNet5


def _model(seed=0):
    torch.manual_seed(seed)
    return LeNet5()


def test_layer_scope_matches_numpy():
    m = _model()
    layers = prunable(m)
    masks = magnitude_masks(layers, 0.7, "layer")
    for n, mod in layers.items():
        w = np.abs(mod.weight.detach().numpy()).ravel()
        k = int(round(0.7 * w.size))
        ref = np.ones(w.size)
        ref[np.argsort(w, kind="stable")[:k]] = 0
        np.testing.assert_array_equal(masks[n].numpy().ravel(), ref)


def test_global_scope_uses_one_threshold():
    m = _model()
    layers = prunable(m)
    masks = magnitude_masks(layers, 0.9, "global")
    allw = np.concatenate([np.abs(x.weight.detach().numpy()).ravel() for x in layers.values()])
    thr = np.sort(allw)[int(round(0.9 * allw.size)) - 1]
    for n, mod in layers.items():
        w = np.abs(mod.weight.detach().numpy())
        np.testing.assert_array_equal(masks[n].numpy() == 0, w <= thr)
    apply_masks(layers, masks)
    rep = sparsity_report(m)
    assert rep["overall_sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert rep["layers"]["fc1"]["sparsity"] > rep["layers"]["conv1"]["sparsity"]


def test_block_masks_zero_whole_blocks():
    lin = nn.Linear(8, 6)
    masks = magnitude_masks({"l": lin}, 0.5, "layer", block=(1, 4))
    mk = masks["l"].numpy().reshape(6, 2, 4)
    assert np.all((mk == mk[..., :1]))          # each block all-kept or all-zero
    assert mk[..., 0].sum() == 6                 # half of the 12 blocks kept
    w = lin.weight.detach().numpy().reshape(6, 2, 4)
    norms = np.sqrt((w ** 2).sum(-1)).ravel()
    kept = mk[..., 0].ravel().astype(bool)
    assert norms[kept].min() >= norms[~kept].max()


def test_unknown_layer_name_raises():
    with pytest.raises(CompressError, match="no prunable layer named 'fc9'; layers: conv1"):
        prunable(_model(), layers=("fc9",))
    with pytest.raises(CompressError, match="no layers left"):
        prunable(_model(), layers=("fc1",), exclude=("fc1",))


def test_all_zero_layer_and_zero_sparsity():
    m = _model()
    with torch.no_grad():
        m.fc2.weight.zero_()
    layers = prunable(m)
    masks = magnitude_masks(layers, 0.0, "layer")
    assert all(bool(v.all()) for v in masks.values())   # sparsity 0 keeps everything
    masks = magnitude_masks(layers, 0.5, "layer")
    assert masks["fc2"].sum() == m.fc2.weight.numel() // 2   # all-zero layer: still exact
    assert sparsity_report(m)["layers"]["fc2"]["sparsity"] == 1.0


def test_poly_schedule():
    assert poly_sparsity(0, 100, 0.9) == 0.0
    assert poly_sparsity(100, 100, 0.9) == pytest.approx(0.9)
    assert poly_sparsity(500, 100, 0.9) == pytest.approx(0.9)
    vals = [poly_sparsity(t, 100, 0.9) for t in range(101)]
    assert all(b >= a for a, b in zip(vals, vals[1:]))
    assert poly_sparsity(50, 100, 0.9, power=3) == pytest.approx(0.9 * (1 - 0.5 ** 3))


def test_sensitivity_choice_stops_at_first_violation():
    from tvmcomp.compress.sensitivity import choose

    curves = {"a": {0.5: 0.99, 0.8: 0.985, 0.9: 0.90, 0.95: 0.99},   # noisy recovery at 0.95
              "b": {0.5: 0.80, 0.9: 0.99},
              "c": {0.5: 0.99, 0.9: 0.99}}
    assert choose(0.99, curves, 0.005) == {"a": 0.8, "b": 0.0, "c": 0.9}
