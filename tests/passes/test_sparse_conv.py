"""Direct sparse convolution kernel (kernels.sparse_conv): exact against PyTorch's conv2d."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from tvmcomp.kernels.sparse_conv import (  # noqa: E402
    pool_fits,
    sparse_conv_from_dense,
    sparse_conv_kernel,
    supported,
)

TARGET = {"kind": "llvm", "mcpu": "core-avx2", "num-cores": 2}


@pytest.mark.parametrize("n, c, hw, oc, k, density, relu, pool", [
    (3, 6, (14, 14), 16, 5, 0.21, True, 1),   # LeNet-5's second conv, pruned: two tiles
    (1, 1, (32, 32), 6, 5, 0.55, True, 1),    # its first, on the padded 28x28 input: 14 tiles
    (2, 4, (5, 6), 5, 3, 0.5, False, 1),      # two vectors, the second shifted back
    (2, 3, (9, 9), 4, 1, 0.0, True, 1),       # an all-zero weight: bias and ReLU only
    (2, 3, (11, 7), 4, (3, 2), 1.0, False, 1),  # dense, a non-square kernel
    (3, 6, (14, 14), 16, 5, 0.21, True, 2),   # + its pool: 2 row pairs a tile, the last 1
    (1, 1, (32, 32), 6, 5, 0.55, True, 2),    # + its pool: a row pair a tile, the last shifted
    (2, 3, (12, 11), 4, 3, 0.5, False, 2),    # 10x9 sums: the pool drops the last column
    (2, 2, (7, 9), 3, 2, 1.0, True, 2)])      # 6x8 sums: one tile, its last vector shifted
def test_sparse_conv_matches_torch(n, c, hw, oc, k, density, relu, pool):
    """Every output of every channel (the lanes of a row's last positions never stored, the
    last vector shifted back so nothing is read past the image), over a buffer that held
    garbage; the weight's form gives back the weight. With ``pool=2`` the kernel's outputs
    are the 2x2 max pool of those (floor mode)."""
    import torch

    kh, kw = (k, k) if isinstance(k, int) else k
    rng = np.random.default_rng(oc)
    w = rng.standard_normal((oc, c, kh, kw)).astype(np.float32)
    w *= rng.random(w.shape) < density
    b = rng.standard_normal(oc).astype(np.float32)
    x = rng.standard_normal((n, c, *hw)).astype(np.float32)
    s = sparse_conv_from_dense(w, hw)
    np.testing.assert_array_equal(s.to_dense(), w)
    assert s.nnz == np.count_nonzero(w) and s.nbytes()["total"] == 8 * max(1, s.nnz) + 4 * (oc + 1)
    func = sparse_conv_kernel(n, c, hw, oc, (kh, kw), relu, pool=pool).with_attr(
        "global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target(TARGET))
    ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                                     torch.from_numpy(b))
    ref = torch.relu(ref) if relu else ref
    ref = (torch.nn.functional.max_pool2d(ref, 2) if pool == 2 else ref).numpy()
    out = tvm.runtime.tensor(np.full(ref.shape, 7, np.float32))
    lib["main"](*(tvm.runtime.tensor(a) for a in (x, s.values, s.offsets, s.row_ptr, b)), out)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-5)


def test_too_few_positions_for_a_vector_is_refused():
    assert supported((14, 14), (5, 5)) and not supported((3, 3), (3, 3))
    with pytest.raises(ValueError, match="flat output positions"):
        sparse_conv_kernel(1, 1, (3, 3), 2, (3, 3), False)


def test_pool_only_where_a_pair_of_rows_fits_the_registers():
    """A pair of output rows 60 positions apart fits 9 vectors; 76 does not: no pooled
    kernel (the pass leaves that pool to its own kernel); nor for integer sums."""
    assert pool_fits((32, 32), (5, 5)) and not pool_fits((40, 40), (5, 5))
    with pytest.raises(ValueError, match="pair of output rows"):
        sparse_conv_kernel(1, 1, (40, 40), 2, (5, 5), False, pool=2)
    with pytest.raises(ValueError, match="pair of output rows"):
        sparse_conv_kernel(1, 1, (32, 32), 2, (5, 5), False, "int8", pool=2)


@pytest.mark.parametrize("x_dtype", ["int8", "uint8"])
def test_integer_sparse_conv_is_exact(x_dtype):
    """QuantizeInt8's operands (int8 / uint8 activations, int8 weights): the int32 sums equal
    an int64 NumPy convolution bit for bit, at the extremes of both ranges."""
    n, c, (h, w), oc, k = 2, 6, (14, 14), 16, 5
    rng = np.random.default_rng(3)
    wq = rng.integers(-127, 128, (oc, c, k, k)).astype(np.int8)
    wq[:, :, 0, 0] = -127  # the largest products
    wq *= (rng.random(wq.shape) < 0.3).astype(np.int8)
    info = np.iinfo(x_dtype)
    x = rng.integers(info.min, info.max + 1, (n, c, h, w)).astype(x_dtype)
    x[..., :3, :3] = info.min
    s = sparse_conv_from_dense(wq, (h, w))
    assert s.values.dtype == np.int8
    np.testing.assert_array_equal(s.to_dense(), wq)
    func = sparse_conv_kernel(n, c, (h, w), oc, (k, k), False, x_dtype).with_attr(
        "global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target(TARGET))
    out = tvm.runtime.tensor(np.full((n, oc, h - k + 1, w - k + 1), 7, np.int32))
    lib["main"](*(tvm.runtime.tensor(a) for a in (x, s.values, s.offsets, s.row_ptr)), out)
    x64, w64 = x.astype(np.int64), wq.astype(np.int64)
    ref = np.zeros(out.shape, np.int64)
    for i in range(k):
        for j in range(k):
            ref += np.einsum("nchw,oc->nohw", x64[:, :, i:i + h - k + 1, j:j + w - k + 1],
                             w64[:, :, i, j])
    np.testing.assert_array_equal(out.numpy(), ref)
