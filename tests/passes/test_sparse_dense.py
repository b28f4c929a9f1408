"""SparseDense + the sparse (SELL) kernels: rewritten IR structure, numerics vs NumPy, the latency gate."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402

from tvmcomp.kernels.sell import (  # noqa: E402
    SLICE,
    WIDTH_PAD,
    sell_dense_kernel,
    sell_from_dense,
    sell_int8_from_dense,
    sell_int_kernel,
)
from tvmcomp.passes.sparse_dense import SparseDense, find_layers  # noqa: E402
from tvmcomp.plan.sparse_gate import gate  # noqa: E402

TARGET = {"kind": "llvm", "mcpu": "core-avx2", "num-cores": 1}


def layer_module(w: np.ndarray, bias: np.ndarray | None, relu: bool, batch: int,
                 x_dtype: str = "float32", accumulate: str = "int32"):
    """A one-layer Relax module shaped like the ONNX import of Gemm (+Relu): the dense form.

    With an int8/uint8 ``x_dtype`` it is QuantizeInt8's integer core instead:
    ``matmul(x, W_i8ᵀ, out_dtype="int32")`` (``bias`` and ``relu`` must be None/False), or
    with ``accumulate="float32"`` its exact float32-accumulated form where that is exact.
    """
    from tvmcomp.passes.quantize_int8 import float32_exact

    R = relax.op
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((batch, w.shape[1]), x_dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            if x_dtype != "float32":
                if bias is not None or relu:
                    raise ValueError("the integer layer has no bias or relu")
                wt = np.ascontiguousarray(w.T).astype(np.int8)
                in_float = accumulate == "float32" and float32_exact(wt, x_dtype, 1)
                y = bb.emit(R.matmul(x, relax.const(wt, "int8"),
                                     out_dtype="float32" if in_float else "int32"))
                if in_float:
                    y = bb.emit(R.astype(y, "int32"))
            else:
                y = bb.emit(R.matmul(x, bb.emit(R.permute_dims(relax.const(w), [1, 0]))))
            if bias is not None:
                y = bb.emit(R.add(y, relax.const(bias)))
            if relu:
                y = bb.emit(R.nn.relu(y))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()





def _weight(out_f, in_f, sparsity, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((out_f, in_f)).astype(np.float32)
    w[rng.random(w.shape) < sparsity] = 0
    return w, rng.standard_normal(out_f).astype(np.float32)


def _run(mod, x):
    from tvmcomp.pipeline import compile_fused, fuse

    target = tvm.target.Target(TARGET)
    ex = compile_fused(fuse(mod, target), target)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def _ops(mod) -> list[str]:
    names = []

    def visit(e):
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op):
            names.append(str(e.op.name))

    relax.analysis.post_order_visit(mod["main"], visit)
    return names


def test_sliced_format_round_trips():
    w, _ = _weight(19, 13, 0.6)
    w[3] = 0                                           # an empty row
    w[5] = 1.0                                         # a full row
    c = sell_from_dense(w)
    np.testing.assert_array_equal(c.to_dense(), w)
    assert c.nnz == np.count_nonzero(w) and c.slices == 3
    widths = np.diff(c.slice_ptr) // SLICE
    assert np.all(np.diff(c.slice_ptr) % (SLICE * WIDTH_PAD) == 0)   # slices padded
    assert np.all(np.diff(widths) <= 0)                # rows sorted longest first
    assert c.row_order[0] == 5 and sorted(c.row_order[:19]) == list(range(19))
    assert np.all(c.row_order[19:] == -1)              # the missing rows of the last slice
    assert c.stored == int(c.slice_ptr[-1]) < w.size
    assert c.nbytes()["total"] == (c.data.nbytes + c.indices.nbytes + c.slice_ptr.nbytes
                                   + c.row_order.nbytes)
    q = sell_int8_from_dense(w)
    assert q.data.dtype == np.int8 and np.abs(q.to_dense() - w).max() <= q.scale.max() / 2 + 1e-6
    with pytest.raises(ValueError, match="2-D"):
        sell_from_dense(np.zeros(3))
    with pytest.raises(ValueError, match="rows and columns"):
        sell_from_dense(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="batch must be a positive integer"):
        sell_dense_kernel(0, 4, 4, False)
    with pytest.raises(ValueError, match="x_dtype"):
        sell_int_kernel(1, 4, 4, "float32")


def test_kernels_carry_the_noalias_attribute():
    """``tirx.noalias`` (0.27's name): with the old ``tir.noalias`` key in one kernel, LLVM
    codegen stopped splitting every kernel of the module into a noalias compute function,
    and the whole LeNet-5 ran 1.6-2.3x slower (measured on this project's 2-vCPU Zen 3 VM)."""
    for f in (sell_dense_kernel(1, 8, 8, True), sell_dense_kernel(4, 8, 8, False, "int8"),
              sell_int_kernel(1, 8, 8), sell_int_kernel(3, 8, 8, "uint8")):
        assert bool(f.attrs["tirx.noalias"]) and "tir.noalias" not in f.attrs


def test_rewrite_structure_and_fusion():
    w, b = _weight(24, 40, 0.9)
    mod = layer_module(w, b, relu=True, batch=1)
    assert "relax.matmul" in _ops(mod)
    out = SparseDense(threshold=0.8)(mod)
    assert _ops(out) == ["relax.call_tir"]           # matmul, add and relu all absorbed
    kernels = [gv.name_hint for gv, f in out.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert kernels == ["sell_dense_b1_40x24_relu"]


@pytest.mark.parametrize("batch, relu, bias, sparsity", [
    (1, True, True, 0.9), (64, True, True, 0.9), (5, False, True, 0.5), (3, True, False, 0.95),
])
def test_numerics_vs_numpy(batch, relu, bias, sparsity):
    w, b = _weight(30, 50, sparsity, seed=batch)
    mod = layer_module(w, b if bias else None, relu, batch)
    out = SparseDense(threshold=0.0)(mod)
    assert "relax.matmul" not in _ops(out)
    x = np.random.default_rng(1).standard_normal((batch, 50)).astype(np.float32)
    ref = x @ w.T + (b if bias else 0)
    ref = np.maximum(ref, 0) if relu else ref
    np.testing.assert_allclose(_run(out, x), ref, rtol=1e-5, atol=1e-5)


def test_all_zero_layer_is_correct():
    w = np.zeros((8, 16), np.float32)
    b = np.arange(8, dtype=np.float32) - 4
    for batch in (1, 17):
        out = SparseDense(threshold=0.5)(layer_module(w, b, True, batch))
        assert "relax.call_tir" in _ops(out)
        x = np.ones((batch, 16), np.float32)
        np.testing.assert_array_equal(_run(out, x), np.broadcast_to(np.maximum(b, 0), (batch, 8)))


def test_below_threshold_or_vetoed_is_unchanged():
    w, b = _weight(8, 16, 0.5)
    mod = layer_module(w, b, True, 1)
    assert SparseDense(threshold=0.9)(mod).same_as(mod)
    assert SparseDense(threshold=0.1, keep={"main/matmul0": False})(mod).same_as(mod)
    assert not SparseDense(threshold=0.1, keep={"main/matmul7": False})(mod).same_as(mod)
    with pytest.raises(ValueError, match="sparse threshold must be in"):
        SparseDense(threshold=1.5)
    with pytest.raises(ValueError, match="values must be one of"):
        SparseDense(values="int4")


@pytest.mark.parametrize("batch", [1, 4])
def test_int8_values(batch):
    w, b = _weight(20, 64, 0.8)
    mod = layer_module(w, b, False, batch)
    out = SparseDense(threshold=0.5, values="int8")(mod)
    x = np.random.default_rng(2).standard_normal((batch, 64)).astype(np.float32)
    wq = sell_int8_from_dense(w).to_dense()
    np.testing.assert_allclose(_run(out, x), x @ wq.T + b, rtol=1e-5, atol=1e-4)
    assert np.abs(_run(out, x) - (x @ w.T + b)).max() < 0.1


@pytest.fixture(scope="module")
def pruned_lenet(tmp_path_factory):
    """LeNet-5 (untrained) with conv2 and fc1 pruned to 90 %: the PyTorch model and its ONNX
    import, ``(model, onnx model, import info)``."""
    import torch

    from tvmcomp.frontend import export_onnx
    from tvmcomp.frontend.onnx_import import load_onnx
    from tvmcomp.model import LeNet5

    torch.manual_seed(0)
    m = LeNet5().eval()
    with torch.no_grad():
        for layer in (m.conv2, m.fc1):
            layer.weight[torch.rand_like(layer.weight) < 0.9] = 0
    model, info = load_onnx(export_onnx(m, tmp_path_factory.mktemp("lenet") / "l.onnx"))
    return m, model, info


def test_lenet_layers_and_conv_report(pruned_lenet):
    """LeNet-5 with conv2 and fc1 pruned to 90 %: both take sparse kernels (the direct sparse
    convolution for conv2, at both batch entries), the unpruned layers stay dense, and the
    whole model still computes PyTorch's outputs."""
    import torch

    from tvmcomp.frontend.onnx_import import import_batches

    m, model, info = pruned_lenet
    mod = import_batches(model, info, [1, 4])
    layers = {L.key: L for L in find_layers(mod)}
    assert layers["main_b1/conv1"].kind == "conv" and layers["main_b1/conv1"].sparsity > 0.85
    assert layers["main_b4/matmul2"].candidate and layers["main_b4/matmul2"].batch == 4
    out = SparseDense(threshold=0.8)(mod)
    names = sorted(gv.name_hint for gv, f in out.functions.items()
                   if isinstance(f, tvm.tirx.PrimFunc))
    assert names == ["sell_dense_b1_400x120_relu", "sell_dense_b4_400x120_relu",
                     "sparse_conv_b1_6x14x14_16k5x5_relu_pool2",
                     "sparse_conv_b4_6x14x14_16k5x5_relu_pool2"]
    coded = SparseDense(threshold=0.8, values="codebook")(mod)  # --codebook: convs too
    assert sorted(gv.name_hint for gv, f in coded.functions.items()
                  if isinstance(f, tvm.tirx.PrimFunc)) == names
    from tvmcomp.pipeline import compile_fused, fuse

    target = tvm.target.Target(TARGET)
    vm = relax.VirtualMachine(compile_fused(fuse(out, target), target), tvm.cpu())
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    ref = m(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(vm["main_b4"](tvm.runtime.tensor(x)).numpy(), ref, atol=1e-4)
    np.testing.assert_allclose(vm["main_b1"](tvm.runtime.tensor(x[:1])).numpy(), ref[:1],
                               atol=1e-4)


def test_gate_times_the_layers_real_kernels():
    w, b = _weight(32, 64, 0.95)
    mod = layer_module(w, b, True, 1)
    target = tvm.target.Target(TARGET)
    dec = gate(mod, target, None, threshold=0.9, min_speedup=1.0, progress=False)
    assert len(dec) == 1 and dec[0].key == "main/matmul0"
    d = dec[0].to_dict()
    assert d["dense_us"] > 0 and d["sparse_us"] > 0 and d["dense_tuned"] is False
    assert d["dense_kernels"] == ["fused_matmul_add_relu"]          # matmul + bias + relu
    assert d["sparse_kernels"] == ["sell_dense_b1_64x32_relu"]       # all in the sparse kernel
    assert d["keep_sparse"] == (d["dense_us"] >= d["sparse_us"])
    never = gate(mod, target, None, threshold=0.9, min_speedup=1e9, progress=False)
    assert not never[0].keep_sparse
    low = gate(mod, target, None, threshold=0.99, progress=False)
    assert not low[0].keep_sparse and "sparsity" in low[0].reason


@pytest.mark.parametrize("batch, relu", [(1, True), (5, False), (16, True)])
def test_codebook_values_are_exact(batch, relu):
    """values="codebook": codes into a codebook whose entry 0 is the padding's 0.0 (8 entries:
    3-bit codes, two to a byte); column steps of one byte, with filler entries across a gap
    of more than 255 columns; the kernels compute what NumPy computes."""
    from tvmcomp.kernels.codebook import encode
    from tvmcomp.kernels.sell import sell_codebook_from_dense

    rng = np.random.default_rng(batch)
    levels = np.array([-0.75, -0.5, 0.25, 1.5, 3.0], np.float32)
    w = levels[rng.integers(0, 5, (20, 700))]
    w[rng.random(w.shape) < 0.8] = 0
    w[3] = 0
    w[3, [0, 1, 600, 699]] = 1.5   # a 599-column gap: two fillers
    b = rng.standard_normal(20).astype(np.float32)
    codebook, codes = encode(w, zero_first=True)
    np.testing.assert_array_equal(codebook, [0, -0.75, -0.5, 0.25, 1.5, 3.0, 0, 0])
    np.testing.assert_array_equal(codebook[codes], w)
    c = sell_codebook_from_dense(w)
    np.testing.assert_array_equal(c.to_dense(), w)
    assert c.indices.dtype == np.uint8 and c.indices.max() <= 255
    assert c.data.dtype == np.uint8 and c.data.size == -(-c.stored // 16) * 8  # 2 steps a byte
    assert c.nbytes()["codebook"] == 8 * 4 and "row_scales" not in c.nbytes()
    r3 = list(c.row_order).index(3)   # row 3's lane: steps 0, 1, 255, 255, 89, 99
    lane = slice(c.slice_ptr[r3 // SLICE] + r3 % SLICE, None, SLICE)
    assert list(c.indices[lane][:6]) == [0, 1, 255, 255, 89, 99]
    out = SparseDense(threshold=0.5, values="codebook")(layer_module(w, b, relu, batch))
    names = [gv.name_hint for gv in out.functions if gv.name_hint.startswith("sell_")]
    assert names == [f"sell_dense_b{batch}_700x20{'_relu' if relu else ''}_cb8"]
    x = rng.standard_normal((batch, 700)).astype(np.float32)
    ref = x @ w.T + b
    np.testing.assert_allclose(_run(out, x), np.maximum(ref, 0) if relu else ref,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("nonzero_levels, bits", [(1, 1), (3, 2), (15, 4), (40, 6)])
def test_codebook_codes_packed_by_steps(nonzero_levels, bits):
    """Codes of 1, 2 and 4 bits are packed 8, 4 and 2 steps to a byte (6 bits: one a byte);
    the kernels unpack them (batch 1 and batched)."""
    from tvmcomp.kernels.sell import pack_steps, sell_codebook_from_dense, unpack_steps

    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 1 << bits, 8 * 37).astype(np.uint8)   # 37 steps: ragged
    np.testing.assert_array_equal(unpack_steps(pack_steps(codes, bits), bits, codes.size), codes)
    levels = np.linspace(0.5, 2.0, nonzero_levels).astype(np.float32)
    w = levels[rng.integers(0, nonzero_levels, (13, 90))]
    w[rng.random(w.shape) < 0.7] = 0
    c = sell_codebook_from_dense(w)
    assert c.code_bits == bits
    np.testing.assert_array_equal(c.to_dense(), w)
    for batch in (1, 3):
        out = SparseDense(threshold=0.5, values="codebook")(layer_module(w, None, False, batch))
        x = rng.standard_normal((batch, 90)).astype(np.float32)
        np.testing.assert_allclose(_run(out, x), x @ w.T, rtol=1e-5, atol=1e-5)


def test_codebook_values_fall_back_and_refuse():
    """A layer with more than 255 distinct non-zeros keeps float32 values; a codebook
    length outside 1..256 is refused."""
    w, b = _weight(20, 64, 0.5)
    out = SparseDense(threshold=0.3, values="codebook")(layer_module(w, b, False, 1))
    assert [gv.name_hint for gv in out.functions if gv.name_hint.startswith("sell_")] == [
        "sell_dense_b1_64x20"]
    with pytest.raises(ValueError, match="codebook_len must be in 1..256"):
        sell_dense_kernel(1, 8, 8, False, "codebook", 0)
    with pytest.raises(ValueError, match="do not fit 256 codes"):
        from tvmcomp.kernels.codebook import encode
        encode(np.arange(300, dtype=np.float32))


def test_size_report_counts_every_array():
    from tvmcomp.passes.sparse_dense import size_report

    w, b = _weight(40, 100, 0.9)
    mod = layer_module(w, b, True, 1)
    dense = size_report(mod)
    assert dense["bytes"]["total"] == w.nbytes + b.nbytes and not dense["sparse_layers"]
    rep = size_report(SparseDense(threshold=0.5)(mod))
    c = sell_from_dense(w)
    by = rep["bytes"]
    assert by["values"] == c.data.nbytes and by["col_indices"] == c.indices.nbytes
    assert by["slice_pointers"] == 6 * 4 and by["row_order"] == 40 * 2  # int16 rows
    assert by["bias"] == b.nbytes
    assert by["row_scales"] == 40 * 4 and by["dense_remainder"] == 0
    assert by["total"] == sum(v for k, v in by.items() if k != "total")
    assert by["total"] < dense["bytes"]["total"] / 2
    (layer,) = rep["sparse_layers"].values()
    assert layer["stored_entries"] == c.stored and layer["value_dtype"] == "float32"


@pytest.mark.parametrize("batch, x_dtype, acc", [(1, "int8", "int32"), (19, "uint8", "int32"),
                                                (1, "int8", "float32"), (5, "uint8", "float32")])
def test_integer_matmul_is_exact(batch, x_dtype, acc):
    rng = np.random.default_rng(batch)
    w = rng.integers(-127, 128, (12, 40)).astype(np.int8)
    w[rng.random(w.shape) < 0.85] = 0
    mod = layer_module(w, None, False, batch, x_dtype, acc)
    if acc == "float32":  # QuantizeInt8's exact float32 accumulation: matmul → astype
        assert _ops(mod) == ["relax.matmul", "relax.astype"]
    out = SparseDense(threshold=0.5)(mod)
    assert _ops(out) == ["relax.call_tir"]
    lo, hi = (0, 256) if x_dtype == "uint8" else (-128, 128)
    x = rng.integers(lo, hi, (batch, 40)).astype(x_dtype)
    got = _run(out, x)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, x.astype(np.int64) @ w.T.astype(np.int64))


@pytest.mark.parametrize("batch, accumulate", [(1, "int32"), (2, "int32"), (21, "float32")])
def test_after_quantize_int8(batch, accumulate):
    """QuantizeInt8's int8 Gemm core becomes the integer sparse kernel with the bias and
    requantization in it (the slice kernel at batch 1, the batched one, ragged, above);
    result bit-exact."""
    from test_quantize_int8 import qdq_layer

    from tvmcomp.passes import QuantizeInt8

    rng = np.random.default_rng(0)
    w_q = rng.integers(-127, 128, (16, 48)).astype(np.int8)
    w_q[rng.random(w_q.shape) < 0.9] = 0
    w_scale = np.full(16, 0.02, np.float32)
    b_q = rng.integers(-500, 500, 16).astype(np.int32)
    mod = qdq_layer("matmul", (batch, 48), w_q, w_scale, b_q, 0.05, 0, 0.1, 0, True)
    q = QuantizeInt8(accumulate)(mod)
    s = SparseDense(threshold=0.5)(q)
    assert "relax.matmul" in _ops(q) and "relax.matmul" not in _ops(s)
    assert "relax.right_shift" in _ops(q) and "relax.right_shift" not in _ops(s)
    assert any(gv.name_hint.startswith(f"sell_int_b{batch}_48x16_int8_int8_")
               for gv in s.get_global_vars())
    x = rng.integers(-128, 128, (batch, 48)).astype(np.int8)
    got, ref = _run(s, x), _run(q, x)
    assert np.unique(ref).size > 3  # not all clipped
    np.testing.assert_array_equal(got, ref)


def test_gate_integer_layer():
    rng = np.random.default_rng(3)
    w = rng.integers(-127, 128, (16, 64)).astype(np.int8)
    w[rng.random(w.shape) < 0.9] = 0
    dec = gate(layer_module(w, None, False, 1, "int8"), tvm.target.Target(TARGET), None,
               threshold=0.5, progress=False)
    assert len(dec) == 1 and dec[0].dense_us > 0 and dec[0].sparse_us > 0
    assert dec[0].sparse_kernels == ("sell_int_b1_64x16_int8",)


def test_a_matmul_decoded_at_load_keeps_its_code_stream(pruned_lenet):
    """With --codebook-decode load (``at_load`` names the layer), a pruned matmul is kept
    dense untimed, with the reason (its code stream is smaller than any sparse form, and no
    sparse matmul kernel reads one), while the pruned conv is still timed; where nothing can
    be timed, the static rule keeps it dense too."""
    from tvmcomp.frontend.onnx_import import import_batches
    from tvmcomp.plan import plan_sparse
    from tvmcomp.plan.sparse_gate import _candidates
    from tvmcomp.targets import load_profile

    _, model, info = pruned_lenet
    mod = import_batches(model, info, [1])
    below, timed, _ = _candidates(mod, 0.5, codebook=True, at_load=("matmul2", "conv1"))
    assert [d.key for _, _, d in timed] == ["main_b1/conv1"]
    (fc1,) = [d for d in below if d.key == "main_b1/matmul2"]
    assert not fc1.keep_sparse and "code stream" in fc1.reason
    _, timed, _ = _candidates(mod, 0.5, codebook=True)
    assert [d.key for _, _, d in timed] == ["main_b1/conv1", "main_b1/matmul2"]
    plan, _ = plan_sparse(mod, load_profile("arm_cortex_a72"), None, 0.5, 1.0, progress=False,
                          codebook=True, at_load=("matmul2",))
    assert plan.keep["main_b1/matmul2"] is False


def test_gate_times_a_pruned_convolution(tmp_path, share_weights):
    """The gate times a pruned conv's dense fused kernel against the direct sparse
    convolution (bias, ReLU and the 2x2 max pool inside it: the dense side is timed with its
    pool kernel) on the layer's real weight, a padded conv's with the kernel that pads its
    input; with --codebook (the weights are shared), the dense kernel with codes against
    the sparse one whose arrays are decoded at load (timed on them as decoded: the two
    models' outputs agree first)."""
    import torch

    from tvmcomp.frontend import export_onnx
    from tvmcomp.frontend.onnx_import import import_batches, load_onnx
    from tvmcomp.model import LeNet5

    torch.manual_seed(0)
    m = share_weights(LeNet5().eval(), 32, 16)
    with torch.no_grad():
        m.conv2.weight[torch.rand_like(m.conv2.weight) < 0.8] = 0
        m.conv1.weight[torch.rand_like(m.conv1.weight) < 0.5] = 0
    model, info = load_onnx(export_onnx(m, tmp_path / "l.onnx"))
    mod = import_batches(model, info, [4])
    target = tvm.target.Target(TARGET)
    dec = {d.key: d for d in gate(mod, target, None, threshold=0.3, progress=False)}
    d = dec["main_b4/conv1"]
    assert d.shape == (16, 150) and d.sparsity == pytest.approx(0.8, abs=0.05)
    assert d.dense_kernels[0].startswith("fused_conv2d") and d.dense_us > 0
    assert d.sparse_kernels == ("sparse_conv_b4_6x14x14_16k5x5_relu_pool2",) and d.sparse_us > 0
    assert d.dense_kernels[1].startswith("max_pool2d")  # the pool it takes in, timed dense too
    assert d.keep_sparse == (d.dense_us >= d.sparse_us)
    first = dec["main_b4/conv0"]  # padded by 2: its input padded first, timed with it
    pad, conv = first.sparse_kernels
    assert pad.rstrip("0123456789") == "pad" and first.sparse_us > 0
    assert conv == "sparse_conv_b4_1x32x32_6k5x5_relu_pool2"
    coded = {d.key: d for d in gate(mod, target, None, threshold=0.7, progress=False,
                                    codebook=True)}["main_b4/conv1"]
    assert coded.dense_kernels[0].startswith("fused_relax_astype_relax_take_relax_nn_conv2d")
    assert coded.sparse_kernels == d.sparse_kernels and coded.sparse_us > 0


def test_int8_conv_takes_the_integer_sparse_kernel_exactly(tmp_path):
    """After QuantizeInt8 (either accumulation), a pruned int8 conv becomes the integer
    direct sparse convolution with its bias, requantization and clamp in the kernel (int8
    out; nothing of them left outside): the whole int8 model's outputs are bit for bit the
    dense int8 model's (float32 accumulation, what AVX2 profiles use, compiled; int32
    accumulation rewritten the same way)."""
    import torch

    from tvmcomp.frontend import export_onnx
    from tvmcomp.frontend.onnx_import import import_batches, load_onnx
    from tvmcomp.model import LeNet5
    from tvmcomp.passes import QuantizeInt8
    from tvmcomp.pipeline import compile_fused, fuse
    from tvmcomp.quant import QuantConfig, quantize_onnx

    torch.manual_seed(0)
    m = LeNet5().eval()
    with torch.no_grad():
        m.conv2.weight[torch.rand_like(m.conv2.weight) < 0.8] = 0
    model, info = load_onnx(export_onnx(m, tmp_path / "l.onnx"))
    x = np.random.default_rng(0).random((8, 1, 28, 28)).astype(np.float32)
    qm = quantize_onnx(model, x, QuantConfig(num_calib=8))
    imported = import_batches(qm.model, info, [2])
    for accumulate in ("int32", "float32"):
        mod = QuantizeInt8(accumulate)(imported)
        sparse = SparseDense(threshold=0.7)(mod)
        names = [gv.name_hint for gv, f in sparse.functions.items()
                 if isinstance(f, tvm.tirx.PrimFunc)]
        assert any(n.startswith("sparse_conv_b2_6x14x14_16k5x5_int8_int8_") for n in names), \
            (accumulate, names)
        # conv1's requantization went in: one right_shift fewer than the dense module
        assert sparse.script().count("R.right_shift(") == mod.script().count(
            "R.right_shift(") - 1
    target = tvm.target.Target(TARGET)
    outs = [relax.VirtualMachine(compile_fused(fuse(mm, target), target), tvm.cpu())["main_b2"](
        tvm.runtime.tensor(x[:2])).numpy() for mm in (mod, sparse)]
    np.testing.assert_array_equal(outs[1], outs[0])


def test_static_rule_keeps_unmeasured_convolutions_dense(pruned_lenet, capsys):
    """A profile that cannot run here (ARM) gets the static rule: matmuls at or above the
    threshold go sparse, convolutions, however pruned, stay dense (never measured)."""
    from tvmcomp.frontend.onnx_import import import_batches
    from tvmcomp.plan import plan_sparse
    from tvmcomp.targets import load_profile

    _, model, info = pruned_lenet
    plan, tuned = plan_sparse(import_batches(model, info, [1]), load_profile("arm_cortex_a72"),
                              None, 0.7, 1.0)
    assert plan.decided_by == "static rule" and tuned == {}
    assert plan.keep == {"main_b1/conv0": False, "main_b1/conv1": False,
                         "main_b1/matmul2": True, "main_b1/matmul3": False,
                         "main_b1/matmul4": False}
    assert "1/3 matmul layers at sparsity >= 0.7 go sparse, convolutions stay dense" in \
        capsys.readouterr().out


@pytest.mark.parametrize("pool, strides, fused", [((2, 2), (2, 2), True),
                                                  ((3, 3), (2, 2), False),
                                                  ((2, 2), (1, 1), False)])
def test_only_a_plain_2x2_pool_goes_into_the_sparse_conv(pool, strides, fused):
    """conv2d + bias + ReLU + max pool: a 2x2 pool of stride 2 is taken into the kernel
    (its output pooled), any other pool stays a kernel of its own on the conv's output."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32) * (rng.random((4, 2, 3, 3)) < 0.2)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 2, 12, 12), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(w)))
            y = bb.emit(relax.op.add(y, relax.const(np.ones((1, 4, 1, 1), np.float32))))
            y = bb.emit(relax.op.nn.relu(y))
            y = bb.emit_output(relax.op.nn.max_pool2d(y, pool, strides))
        bb.emit_func_output(y)
    out = SparseDense(threshold=0.5)(bb.get())
    names = [gv.name_hint for gv, f in out.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert names == ["sparse_conv_b1_2x12x12_4k3x3_relu" + ("_pool2" if fused else "")]
    assert ("max_pool2d" in out["main"].script()) == (not fused)
