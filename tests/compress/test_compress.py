"""compress(): pruning + fine-tuning end to end on a small LeNet-5, ONNX export, sensitivity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tvmcomp.compress import (
    CompressError,
    FineTune,
    GroupLasso,
    L1,
    MagnitudePruneConfig,
    SensitivityConfig,
    compress,
)
from tvmcomp.compress.finetune import prune_finetune
from tvmcomp.compress.masks import prunable
from tvmcomp.compress.regularize import penalty
from tvmcomp.model import LeNet5, evaluate_torch, load_checkpoint

FT = FineTune(epochs=1, batch_size=50, prunes=4, ramp=0.5, lr=1e-3)


def test_global_prune_with_finetune(lenet_ckpt, small_train, tmp_path):
    out, summary = compress(lenet_ckpt, MagnitudePruneConfig(0.9, finetune=FT),
                            tmp_path / "p.pt", data=small_train, progress=False)
    model, meta = load_checkpoint(out)
    rep = meta["compression"]["sparsity"]
    zeros = sum(int((m.weight == 0).sum()) for m in prunable(model).values())
    total = sum(m.weight.numel() for m in prunable(model).values())
    assert zeros / total == pytest.approx(0.9, abs=1e-4)
    assert rep["overall_sparsity"] == pytest.approx(zeros / total, abs=1e-6)
    assert meta["compression"]["config"]["sparsity"] == 0.9
    assert evaluate_torch(model, small_train) > 0.5   # still a classifier after fine-tuning


def test_masks_hold_through_finetuning(lenet_ckpt, small_train):
    """After the ramp, every training step sees fc1 at >= the final sparsity (no regrowth)."""
    model, _ = load_checkpoint(lenet_ckpt)
    seen = []
    model.fc1.register_forward_pre_hook(
        lambda mod, _: seen.append(float((mod.weight == 0).float().mean())))
    layers = prunable(model, layers=("fc1",))
    ft = FineTune(epochs=2, batch_size=50, prunes=2, ramp=0.25, lr=5e-3)
    prune_finetune(model, layers, small_train, 0.8, "layer", (1, 1), ft, None, False)
    steps = len(seen)
    after = seen[int(0.25 * steps) + 2:]
    assert after and min(after) >= 0.8 - 1e-6
    assert seen[0] < 0.5              # the schedule starts dense and ramps up
    assert float((model.fc1.weight == 0).float().mean()) == pytest.approx(0.8, abs=1e-3)


def test_layer_scope_one_shot_and_zeros_survive_onnx(lenet_ckpt, tmp_path):
    import onnx
    from onnx import numpy_helper

    from tvmcomp.frontend import export_onnx

    cfg = MagnitudePruneConfig(0.75, scope="layer", layers=("fc1", "fc2"),
                               per_layer={"fc2": 0.5}, finetune=None)
    out, _ = compress(lenet_ckpt, cfg,
                      tmp_path / "p.pt", progress=False)
    model, _ = load_checkpoint(out)
    assert float((model.fc1.weight == 0).float().mean()) == pytest.approx(0.75, abs=1e-3)
    assert float((model.fc2.weight == 0).float().mean()) == pytest.approx(0.5, abs=1e-3)
    assert float((model.conv1.weight == 0).float().mean()) == 0.0
    path = export_onnx(model, tmp_path / "p.onnx")
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    fc1 = inits["fc1.weight"]
    np.testing.assert_array_equal(fc1 == 0, model.fc1.weight.detach().numpy() == 0)


def test_unknown_layer_and_all_zero_layer(lenet_ckpt, tmp_path):
    with pytest.raises(CompressError, match="no prunable layer named 'fc7'"):
        compress(lenet_ckpt, MagnitudePruneConfig(0.5, layers=("fc7",), finetune=None),
                 tmp_path / "x.pt", progress=False)
    assert not (tmp_path / "x.pt").exists()
    with pytest.raises(CompressError, match="per_layer names 'fc9'"):
        compress(lenet_ckpt, MagnitudePruneConfig(0.5, scope="layer", per_layer={"fc9": 0.5},
                                                  finetune=None), tmp_path / "x.pt",
                 progress=False)
    from tvmcomp.model import save_checkpoint

    model, _ = load_checkpoint(lenet_ckpt)
    with torch.no_grad():
        model.fc2.weight.zero_()
    save_checkpoint(model, tmp_path / "z.pt")
    out, summary = compress(tmp_path / "z.pt", MagnitudePruneConfig(0.5, finetune=None),
                            tmp_path / "zp.pt", progress=False)
    rep = summary["sparsity"]
    assert rep["layers"]["fc2"]["sparsity"] == 1.0
    assert rep["overall_sparsity"] == pytest.approx(0.5, abs=1e-4)


def test_sensitivity_picks_under_budget_and_plots(lenet_ckpt, small_train, tmp_path):
    png = tmp_path / "sens.png"
    cfg = SensitivityConfig(max_accuracy_drop=0.02, sparsities=(0.5, 0.9, 0.99),
                            finetune=None, plot=str(png))
    _, summary = compress(lenet_ckpt, cfg, tmp_path / "s.pt", data=small_train, progress=False)
    base = summary["validation_accuracy_dense"]
    for layer, s in summary["chosen_sparsity"].items():
        curve = summary["curves"][layer]
        swept = sorted(float(k) for k in curve)
        assert all(base - curve[f"{x:g}"] <= 0.02 + 1e-9 for x in swept if x <= s)
        above = [x for x in swept if x > s]
        assert not above or base - curve[f"{above[0]:g}"] > 0.02
        got = summary["sparsity"]["layers"][layer]["sparsity"]
        assert got == pytest.approx(s, abs=2e-3)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_regularizers_match_numpy():
    torch.manual_seed(0)
    m = LeNet5()
    layers = prunable(m, layers=("fc2", "fc3"))
    ws = [mod.weight.detach().numpy() for mod in layers.values()]
    with torch.no_grad():
        l1 = float(penalty(L1(1e-3), layers))
        gl = float(penalty(GroupLasso(1e-3, (2, 4)), layers))
    assert l1 == pytest.approx(1e-3 * sum(np.abs(w).sum() for w in ws), rel=1e-5)
    ref = 0.0
    for w in ws:   # blocks of (2, 4); fc3 is 10x84 (rows and cols divide)
        r, c = w.shape
        b = w.reshape(r // 2, 2, c // 4, 4)
        ref += np.sqrt((b ** 2).sum(axis=(1, 3))).sum() * np.sqrt(8)
    assert gl == pytest.approx(1e-3 * ref, rel=1e-4)


def test_group_lasso_finetune_prunes_blocks(lenet_ckpt, small_train, tmp_path):
    cfg = MagnitudePruneConfig(0.8, scope="layer", layers=("fc1",), block=(1, 4),
                               finetune=FT, regularizer=GroupLasso(1e-4, (1, 4)))
    out, _ = compress(lenet_ckpt, cfg, tmp_path / "g.pt", data=small_train, progress=False)
    model, _ = load_checkpoint(out)
    w = model.fc1.weight.detach().numpy().reshape(120, 100, 4)
    zero_blocks = np.all(w == 0, axis=-1)
    assert zero_blocks.mean() == pytest.approx(0.8, abs=1e-3)
    assert (w[~zero_blocks] != 0).mean() > 0.99   # kept blocks are (almost all) dense
