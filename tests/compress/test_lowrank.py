"""Low-rank factorization: the SVD split, rank choice, checkpoints, ONNX, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tvmcomp.compress import (CompressConfigError, CompressError, LowRankConfig,
                              MagnitudePruneConfig, compress, from_json, to_json)
from tvmcomp.compress.lowrank import energy_rank
from tvmcomp.data.mnist import split_holdout
from tvmcomp.model import evaluate_torch, load_checkpoint
from tvmcomp.model.lowrank import LowRank, factorize


def _with_rank(shape, k, seed=0) -> np.ndarray:
    """A random matrix of shape ``shape`` and rank exactly ``k``."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((shape[0], k)) @ rng.standard_normal((k, shape[1]))


def test_a_layer_of_rank_k_factorized_at_k_computes_the_same():
    """Factorized at its true rank, a Linear and a strided, padded Conv2d give the same
    outputs on random inputs (the bias moved to the second factor)."""
    torch.manual_seed(0)
    fc = nn.Linear(40, 30)
    conv = nn.Conv2d(6, 16, 3, stride=2, padding=1)
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(_with_rank((30, 40), 5)).float())
        conv.weight.copy_(torch.from_numpy(_with_rank((16, 54), 4)).float().reshape(16, 6, 3, 3))
    for layer, k, x in ((fc, 5, torch.randn(8, 40)), (conv, 4, torch.randn(2, 6, 9, 9))):
        lr = factorize(layer, k)
        assert isinstance(lr, LowRank) and lr.rank == k and lr[0].bias is None
        with torch.no_grad():
            torch.testing.assert_close(lr(x), layer(x), rtol=1e-4, atol=1e-4)
    assert factorize(conv, 4)[0].stride == (2, 2) and factorize(conv, 4)[1].kernel_size == (1, 1)


def test_below_its_rank_the_error_is_what_eckart_young_says():
    """At rank r < k the factors' product misses exactly the dropped singular values."""
    fc = nn.Linear(20, 10, bias=False)
    rng = np.random.default_rng(1)
    u, _ = np.linalg.qr(rng.standard_normal((10, 10)))
    v, _ = np.linalg.qr(rng.standard_normal((20, 10)))
    s = np.array([5.0, 3.0, 2.0, 1.0, 0.5] + [0.0] * 5)
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy((u * s) @ v.T).float())
    lr = factorize(fc, 2)
    w2 = (lr[1].weight @ lr[0].weight).detach().double().numpy()
    err = np.linalg.norm(fc.weight.detach().double().numpy() - w2) ** 2
    assert err == pytest.approx(2.0 ** 2 + 1.0 ** 2 + 0.5 ** 2, rel=1e-5)


def test_energy_picks_the_smallest_rank_keeping_that_fraction():
    """Singular values 3, 2, 1: σ² = 9, 4, 1 of 14, so 0.6 → 1, 0.7 → 2, 0.95 → 3, 1 → 3."""
    fc = nn.Linear(20, 10, bias=False)
    rng = np.random.default_rng(2)
    u, _ = np.linalg.qr(rng.standard_normal((10, 3)))
    v, _ = np.linalg.qr(rng.standard_normal((20, 3)))
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy((u * [3.0, 2.0, 1.0]) @ v.T).float())
    assert [energy_rank(fc, e) for e in (0.6, 0.7, 0.95, 1.0)] == [1, 2, 3, 3]


def test_given_ranks_survive_the_checkpoint_and_onnx(lenet_ckpt, small_train, tmp_path):
    """fc1 at 8 and conv2 at 4: the checkpoint reloads as the same two-layer model, the
    summary counts weights and MACs, and the ONNX export runs in ONNX Runtime alike."""
    import onnxruntime as ort

    from tvmcomp.frontend.onnx_export import export_onnx

    cfg = LowRankConfig(ranks={"fc1": 8, "conv2": 4}, finetune=None)
    out, summary = compress(lenet_ckpt, cfg, tmp_path / "lr.pt", data=small_train,
                            progress=False)
    model, meta = load_checkpoint(out)
    assert {n: m.rank for n, m in model.named_modules() if isinstance(m, LowRank)} == \
        {"fc1": 8, "conv2": 4}
    fc1 = summary["layers"]["fc1"]
    assert fc1["params"] == [48000, 8 * (400 + 120)] and fc1["max_rank"] == 120
    # conv2: 16 x 6·5·5 over 10x10 output pixels
    assert summary["layers"]["conv2"]["macs"] == [2400 * 100, 4 * (150 + 16) * 100]
    assert meta["compression"]["config"]["ranks"] == {"fc1": 8, "conv2": 4}
    x = torch.randn(3, 1, 28, 28)
    onnx_path = export_onnx(model, tmp_path / "lr.onnx")
    got = ort.InferenceSession(str(onnx_path)).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-4, atol=1e-4)


def test_budget_greedy_stays_within_it_and_plots(lenet_ckpt, small_train, tmp_path):
    """Under a 2-point budget the greedy factorizes something; the chosen ranks, applied
    to the original model without fine-tuning, lose at most 2 points on the held-out split."""
    from tvmcomp.model.lowrank import factorize_layers

    cfg = LowRankConfig(max_accuracy_drop=0.02, finetune=None, plot=str(tmp_path / "r.png"))
    _, summary = compress(lenet_ckpt, cfg, tmp_path / "b.pt", data=small_train,
                          progress=False)
    ranks = {n: L["rank"] for n, L in summary["layers"].items()}
    assert ranks and (tmp_path / "r.png").stat().st_size > 0
    model, _ = load_checkpoint(lenet_ckpt)
    _, val = split_holdout(small_train, cfg.val_fraction, seed=0)
    base = evaluate_torch(model, val)
    factorize_layers(model, ranks)
    assert base - evaluate_torch(model, val) <= 0.02 + 1e-9
    assert set(summary["curves"]) == {"conv1", "conv2", "fc1", "fc2", "fc3"}


@pytest.mark.parametrize("cfg, msg", [
    (dict(ranks={"fc3": 0}), "integer >= 1"),
    (dict(ranks={"fc3": 10}), "rank of fc3 must be an integer in 1..9"),
    (dict(ranks={"fc9": 4}), "no prunable layer named 'fc9'"),
    (dict(energy=0.0), r"energy must be a number in \(0.0, 1.0\]"),
    (dict(energy=1.5), r"energy must be a number in \(0.0, 1.0\]"),
    (dict(), "exactly one of ranks, energy or max_accuracy_drop"),
    (dict(energy=0.9, max_accuracy_drop=0.01), "exactly one of"),
])
def test_bad_ranks_and_energies_are_one_clear_error(cfg, msg, lenet_ckpt, small_train,
                                                    tmp_path):
    with pytest.raises((CompressConfigError, CompressError), match=msg):
        compress(lenet_ckpt, LowRankConfig(**cfg), tmp_path / "x.pt", data=small_train,
                 progress=False)


def test_config_round_trips_and_order_is_checked(lenet_ckpt, small_train, tmp_path):
    cfg = LowRankConfig(energy=0.9, layers=("fc1", "fc2"))
    assert from_json(to_json(cfg)) == cfg
    with pytest.raises(CompressConfigError, match="low-rank factorization comes first"):
        compress(lenet_ckpt, [MagnitudePruneConfig(0.5, finetune=None), cfg],
                 tmp_path / "x.pt", data=small_train, progress=False)
    once, _ = compress(lenet_ckpt, LowRankConfig(ranks={"fc1": 8}, finetune=None),
                       tmp_path / "once.pt", data=small_train, progress=False)
    with pytest.raises(CompressError, match="already has factorized layers"):
        compress(once, cfg, tmp_path / "twice.pt", data=small_train, progress=False)


def test_cli_lowrank_errors(capsys, lenet_ckpt, tmp_path):
    from tvmcomp import cli

    for args, expect in ((["--lowrank", "fc1"], "NAME=RANK"),
                         (["--lowrank", "fc1=120"], "1..119"),
                         (["--lowrank-energy", "2"], "energy must be"),
                         (["--lowrank", "fc1=8", "--lowrank-energy", "0.9"], "give one of"),
                         (["--lowrank-plot", "x.png"], "need --lowrank-energy")):
        try:
            code = cli.main(["compress", lenet_ckpt, "--out", str(tmp_path / "x.pt"), *args])
        except SystemExit as e:  # argparse's own usage errors
            code = e.code
        assert code == 2, args
        err = capsys.readouterr().err
        assert err.startswith("tvmcomp compress: error:") and expect in err, (args, err)
        assert len(err.strip().splitlines()) == 1


def test_plot_adds_a_latency_panel_when_timings_are_given(tmp_path):
    """The rank plot: accuracy loss alone, or with the measured two-kernels / whole-layer
    panel below it (``scripts/bench_lowrank.py``'s sweep); ranks without both timings are
    left out of that panel rather than plotted as zero."""
    import matplotlib.image

    from tvmcomp.compress.lowrank import plot

    curves = {"fc1": {4: 0.90, 16: 0.97, 32: 0.98}, "conv2": {4: 0.95, 8: 0.975}}
    one = plot(0.98, curves, {"fc1": 32}, 0.003, tmp_path / "one.png")
    two = plot(0.98, curves, {"fc1": 32}, 0.003, tmp_path / "two.png",
               {"fc1": {4: (5.0, 50.0), 16: (20.0, 50.0), 32: (None, 50.0)},
                "conv2": {4: (300.0, 370.0)}})
    h1, h2 = (matplotlib.image.imread(p).shape[0] for p in (one, two))
    assert h1 == pytest.approx(4.5 * 110, abs=2) and h2 == pytest.approx(2 * h1, abs=2)
