"""Direct sparse convolution kernel (kernels.sparse_conv): exact against PyTorch's conv2d."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from tvmcomp.kernels.sparse_conv import (  # noqa: E402
    sparse_conv_from_dense,
    sparse_conv_kernel,
    supported,
)

TARGET = {"kind": "llvm", "mcpu": "core-avx2", "num-cores": 2}


@pytest.mark.parametrize("n, c, hw, oc, k, density, relu", [
    (3, 6, (14, 14), 16, 5, 0.21, True),   # LeNet-5's second conv, pruned: two tiles
    (1, 1, (32, 32), 6, 5, 0.55, True),    # its first, on the padded 28x28 input: 14 tiles
    (2, 4, (5, 6), 5, 3, 0.5, False),      # two vectors, the second shifted back
    (2, 3, (9, 9), 4, 1, 0.0, True),       # an all-zero weight: bias and ReLU only
    (2, 3, (11, 7), 4, (3, 2), 1.0, False)])  # dense, a non-square kernel
def test_sparse_conv_matches_torch(n, c, hw, oc, k, density, relu):
    """Every output of every channel (the lanes of a row's last positions never stored, the
    last vector shifted back so nothing is read past the image), over a buffer that held
    garbage; the weight's form gives back the weight."""
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
    func = sparse_conv_kernel(n, c, hw, oc, (kh, kw), relu).with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target(TARGET))
    out = tvm.runtime.tensor(np.full((n, oc, hw[0] - kh + 1, hw[1] - kw + 1), 7, np.float32))
    lib["main"](*(tvm.runtime.tensor(a) for a in (x, s.values, s.offsets, s.row_ptr, b)), out)
    ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                                     torch.from_numpy(b))
    ref = (torch.relu(ref) if relu else ref).numpy()
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-5)


def test_too_few_positions_for_a_vector_is_refused():
    assert supported((14, 14), (5, 5)) and not supported((3, 3), (3, 3))
    with pytest.raises(ValueError, match="flat output positions"):
        sparse_conv_kernel(1, 1, (3, 3), 2, (3, 3), False)
