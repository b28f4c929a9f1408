"""k-means weight sharing: the clustering against a NumPy reference, codebooks, fine-tuning."""

from __future__ import annotations

import numpy as np
import pytest

from tvmcomp.compress import (CompressConfigError, CompressError, KMeansShareConfig,
                              MagnitudePruneConfig, compress, from_dict, from_json, to_dict,
                              to_json)
from tvmcomp.compress.kmeans import init_centroids, kmeans_1d, share_weight


def _lloyd_reference(x: np.ndarray, c: np.ndarray, iters: int = 300):
    """Textbook Lloyd iterations: argmin distance, then cluster means (empty: unchanged),
    until no assignment changes."""
    x = x.astype(np.float64)
    c = c.astype(np.float64).copy()
    labels = None
    for _ in range(iters):
        new = np.argmin(np.abs(x[:, None] - c[None, :]), axis=1)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        c = np.array([x[labels == j].mean() if np.any(labels == j) else c[j]
                      for j in range(len(c))])
    return c, np.argmin(np.abs(x[:, None] - c[None, :]), axis=1)


@pytest.mark.parametrize("init", ["linear", "density", "kmeans++"])
def test_kmeans_matches_a_numpy_reference(init):
    x = np.random.default_rng(1).standard_normal(3000) * np.r_[np.ones(2900), 8 * np.ones(100)]
    c, labels = kmeans_1d(x, 16, init, seed=3)
    ref_c, ref_labels = _lloyd_reference(x, np.sort(init_centroids(
        x, 16, init, np.random.default_rng(3))))
    np.testing.assert_allclose(c, np.sort(ref_c), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(c[labels], ref_c[ref_labels], rtol=1e-9, atol=1e-12)
    assert np.all(np.diff(c) >= 0)


def test_linear_init_spans_the_range_and_density_follows_the_mass():
    x = np.r_[np.zeros(990) + 0.01 * np.arange(990) / 990, np.linspace(5, 10, 10)]
    lin = init_centroids(x, 4, "linear", np.random.default_rng(0))
    den = init_centroids(x, 4, "density", np.random.default_rng(0))
    assert lin[0] == x.min() and lin[-1] == x.max()
    assert np.all(den < 0.02)  # quantiles: all where the mass is


def test_shared_weight_keeps_zeros_and_at_most_2_pow_bits_values():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((12, 50)).astype(np.float32)
    w[rng.random(w.shape) < 0.8] = 0
    s = share_weight(w, 3, "linear")
    d = s.dense()
    assert s.zero and s.codebook[0, 0] == 0.0 and s.codebook.shape == (1, 8)
    np.testing.assert_array_equal(d == 0, w == 0)            # sparsity preserved exactly
    assert len(np.unique(d)) <= 8
    # each non-zero went to its nearest non-zero centroid
    cents = s.codebook[0, 1:]
    nz = w != 0
    nearest = cents[np.argmin(np.abs(w[nz][:, None] - cents[None, :]), axis=1)]
    np.testing.assert_allclose(d[nz], nearest)


def test_group_codebooks_and_unique_mode():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((8, 3, 5, 5)).astype(np.float32)
    s = share_weight(w, 4, "density", group_size=2)
    assert s.codebook.shape == (4, 16) and not s.unique
    d = s.dense()
    for g in range(4):
        assert set(np.unique(d[2 * g:2 * g + 2])) <= set(s.codebook[g])
    few = np.repeat(np.array([-0.5, 0.25, 1.0], np.float32), 10).reshape(6, 5)
    u = share_weight(few, 2)
    assert u.unique and np.array_equal(u.dense(), few)       # already <= 4 values: exact


@pytest.mark.parametrize("bits", [0, 9, 2.5, True])
def test_bits_outside_1_to_8_are_rejected(bits):
    with pytest.raises(CompressConfigError, match="1..8"):
        share_weight(np.ones((2, 2), np.float32), bits)
    with pytest.raises(CompressConfigError, match="1..8"):
        KMeansShareConfig(bits={"fc": bits})


def test_more_clusters_than_weights_is_a_clear_error():
    w = np.arange(1, 11, dtype=np.float32).reshape(2, 5)
    with pytest.raises(CompressConfigError, match="fewer than the 16 clusters 4 bits give"):
        share_weight(w, 4, unique=False, name="fc9")


def test_config_round_trips_and_rejects_unknown_keys():
    cfg = KMeansShareConfig(bits={"conv": 8, "fc1": 4}, init="kmeans++", group_size=4)
    assert from_json(to_json(cfg)) == cfg
    with pytest.raises(CompressConfigError, match="unknown kmeans_share config key 'bitz'"):
        from_json(to_json(cfg).replace('"bits"', '"bitz"'))


def test_prune_then_share_keeps_zeros_and_codebooks_through_finetuning(lenet_ckpt, tmp_path,
                                                                      small_train):
    from tvmcomp.model import load_checkpoint

    cfg = [MagnitudePruneConfig(0.8, finetune=None),
           KMeansShareConfig(bits={"conv": 6, "fc": 3}, epochs=1)]
    out, summary = compress(lenet_ckpt, cfg, tmp_path / "s.pt", data=small_train,
                            progress=False)
    pruned_only, _ = compress(lenet_ckpt, cfg[0], tmp_path / "p.pt", data=small_train,
                              progress=False)
    model, meta = load_checkpoint(out)
    before, _ = load_checkpoint(pruned_only)
    share = meta["compression"]["steps"][1]
    assert set(share["layers"]) == {"conv1", "conv2", "fc1", "fc2", "fc3"}
    for name, mod in model.named_modules():
        if name in share["layers"]:
            w = mod.weight.detach().numpy()
            z = dict(before.named_modules())[name].weight.detach().numpy() == 0
            np.testing.assert_array_equal(w == 0, z)          # zeros stayed zeros
            bits = 6 if name.startswith("conv") else 3
            assert len(np.unique(w)) <= 2 ** bits             # still shared after training
            assert share["layers"][name]["max_distinct_per_group"] <= 2 ** bits
            # rounded to float16 by default: a codebook at load stores 2 bytes an entry
            np.testing.assert_array_equal(w.astype(np.float16).astype(np.float32), w)
            assert share["layers"][name]["values_dtype"] == "float16"
    fp32, _ = compress(lenet_ckpt, [cfg[0], KMeansShareConfig(bits={"fc": 3}, epochs=1,
                                                              fp16=False)],
                       tmp_path / "f.pt", data=small_train, progress=False)
    w = load_checkpoint(fp32)[0].fc1.weight.detach().numpy()
    assert not np.array_equal(w.astype(np.float16).astype(np.float32), w)  # kept as trained


def test_unknown_layer_in_bits(lenet_ckpt, tmp_path, small_train):
    with pytest.raises(CompressError, match="'fc9', which is no layer or kind"):
        compress(lenet_ckpt, KMeansShareConfig(bits={"fc9": 4}), tmp_path / "x.pt",
                 data=small_train, progress=False)


def test_cli_share_bits_errors(capsys, lenet_ckpt, tmp_path):
    from tvmcomp import cli

    for bits, expect in (("conv=9", "1..8"), ("conv8", "NAME=BITS")):
        assert cli.main(["compress", lenet_ckpt, "--out", str(tmp_path / "x.pt"),
                         "--share-bits", bits]) == 2
        err = capsys.readouterr().err
        assert err.startswith("tvmcomp compress: error:") and expect in err


@pytest.mark.parametrize("fp16", ["yes", 1, None])
def test_fp16_must_be_a_boolean(fp16):
    """A saved config with ``"fp16": 1`` is refused, not taken as true."""
    with pytest.raises(CompressConfigError, match="fp16 must be true or false"):
        KMeansShareConfig(fp16=fp16)
    d = to_dict(KMeansShareConfig())
    with pytest.raises(CompressConfigError, match="fp16 must be true or false"):
        from_dict({**d, "fp16": fp16})
