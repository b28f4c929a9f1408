"""CodebookDense: shared weights stay uint8 indices + a codebook through fusion; numerics exact."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402

from tvmcomp.frontend.onnx_import import import_batches, load_onnx  # noqa: E402
from tvmcomp.passes.codebook_dense import (COMPOSITE, CodebookDense,  # noqa: E402
                                           codebook_layers)

TARGET = {"kind": "llvm", "mcpu": "core-avx2", "num-cores": 1}


def _shared_gemm(tmp_path, gemm_onnx, codes: int | None, batch="N"):
    """A one-Gemm ONNX model whose weight takes ``codes`` distinct values (None: random)."""
    import onnx
    from onnx import numpy_helper

    path, w, b = gemm_onnx(tmp_path / "g.onnx", k=64, n=24, batch=batch)
    if codes is not None:
        levels = np.linspace(-1, 1, codes).astype(np.float32)
        w = levels[np.random.default_rng(1).integers(0, codes, w.shape)]
        m = onnx.load(str(path))
        m.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "W"))
        onnx.save(m, str(path))
    return path, w, b


def _constants(mod) -> list[tuple[str, tuple]]:
    out = []

    def visit(e):
        if isinstance(e, tvm.ir.Constant) and hasattr(e.value, "numpy"):
            a = e.value.numpy()
            out.append((str(a.dtype), tuple(a.shape)))

    for _, f in mod.functions.items():
        if isinstance(f, relax.Function):
            relax.analysis.post_order_visit(f, visit)
    return out


def test_rewrite_keeps_indices_and_codebook_through_fusion(tmp_path, gemm_onnx):
    from tvmcomp.pipeline import compile_fused, fuse

    path, w, b = _shared_gemm(tmp_path, gemm_onnx, codes=16)
    model, info = load_onnx(path)
    mod = import_batches(model, info, [3])
    assert [(L.key, L.codes, L.index_bytes) for L in codebook_layers(mod)] == [
        ("main_b3/matmul0", 16, 64 * 24 // 2)]  # 4-bit codes, two to a byte
    out = CodebookDense()(mod)
    composites = [f.attrs["Composite"] for _, f in out.functions.items()
                  if f.attrs is not None and "Composite" in f.attrs]
    assert composites == [COMPOSITE]
    target = tvm.target.Target(TARGET)
    fused = fuse(out, target)  # FoldConstant runs here: the weight must stay compressed
    consts = _constants(fused)
    assert ("uint8", (64 * 24 // 2,)) in consts and ("float32", (16,)) in consts
    assert ("float32", (64, 24)) not in consts and ("float32", (24, 64)) not in consts
    vm = relax.VirtualMachine(compile_fused(fused, target), tvm.cpu())
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    got = vm["main_b3"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(got, x @ w + b, rtol=1e-5, atol=1e-5)


def test_pack_round_trips():
    from tvmcomp.kernels.codebook import codes_per_byte, pack, stored_code_bytes, unpack

    rng = np.random.default_rng(0)
    assert [codes_per_byte(b) for b in range(1, 9)] == [8, 4, 2, 2, 1, 1, 1, 1]
    for bits in range(1, 9):
        codes = rng.integers(0, 1 << bits, 1001).astype(np.uint8)
        packed = pack(codes, bits)
        assert packed.size == stored_code_bytes(1001, 1 << bits) == -(-1001 // (8 // bits))
        np.testing.assert_array_equal(unpack(packed, bits, 1001), codes)
    np.testing.assert_array_equal(pack(np.array([1, 2, 3], np.uint8), 2), [0b111001])
    with pytest.raises(ValueError, match="does not fit 2 bits"):
        pack(np.array([4], np.uint8), 2)


@pytest.mark.parametrize("entries", [4, 16, 32])
def test_decode_reads_stored_codes_packed_or_not(entries):
    """kernels.codebook.decode gives back the weight from codes stored as the pass stores
    them (packed below 5 bits), and None from an array that cannot hold them."""
    from tvmcomp.kernels.codebook import code_bits, decode, encode, pack

    w = np.linspace(-1, 1, entries, dtype=np.float32)[
        np.random.default_rng(0).integers(0, entries, (7, 9))]
    cb, codes = encode(w)
    stored = codes if entries > 16 else pack(codes, code_bits(cb.size))
    assert stored.ndim == (2 if entries > 16 else 1)
    np.testing.assert_array_equal(decode(cb, stored, w.shape), w)
    assert decode(cb, stored[:-1], w.shape) is None
    assert decode(cb, stored.astype(np.int32), w.shape) is None


@pytest.mark.parametrize("codes, batch", [(2, 1), (3, 2), (16, 3)])
def test_packed_codes_are_exact(tmp_path, gemm_onnx, codes, batch):
    """1-, 2- and 4-bit codes (8, 4, 2 to a byte; 63x10 weights leave a ragged last byte)
    are unpacked in the kernel: the artifact stores only the packed bytes; output exact."""
    import onnx
    from onnx import numpy_helper

    from tvmcomp.pipeline import compile_fused, fuse

    path, w, b = gemm_onnx(tmp_path / "g.onnx", k=63, n=10)
    levels = np.linspace(-1, 1, codes).astype(np.float32)
    w = levels[np.random.default_rng(codes).integers(0, codes, w.shape)]
    m = onnx.load(str(path))
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "W"))
    onnx.save(m, str(path))
    model, info = load_onnx(path)
    mod = import_batches(model, info, [batch])
    (layer,) = codebook_layers(mod)
    length = 1 << max(0, codes - 1).bit_length()
    assert layer.index_bytes == -(-630 // (8 // max(1, (length - 1).bit_length())))
    target = tvm.target.Target(TARGET)
    fused = fuse(CodebookDense()(mod), target)
    assert ("uint8", (layer.index_bytes,)) in _constants(fused)
    vm = relax.VirtualMachine(compile_fused(fused, target), tvm.cpu())
    x = np.random.default_rng(0).standard_normal((batch, 63)).astype(np.float32)
    np.testing.assert_allclose(vm[f"main_b{batch}"](tvm.runtime.tensor(x)).numpy(), x @ w + b,
                               rtol=1e-5, atol=1e-5)


def test_layer_with_too_many_values_is_left_alone(tmp_path, gemm_onnx):
    path, _, _ = _shared_gemm(tmp_path, gemm_onnx, codes=None)  # 1536 distinct values
    model, info = load_onnx(path)
    mod = import_batches(model, info, [1])
    assert codebook_layers(mod) == []
    assert CodebookDense()(mod).same_as(mod)


def test_build_codebook_artifact(tmp_path, gemm_onnx, x86_host, profile_with_db, capsys):
    """`build --codebook`: the artifact stores indices + codebook, says so, and computes the
    same as the dense build; without a shared layer it says so and builds dense."""
    from tvmcomp import runtime
    from tvmcomp.compiler import BuildOptions, build

    path, w, b = _shared_gemm(tmp_path, gemm_onnx, codes=20)  # stored padded to 32 entries
    prof = profile_with_db(tmp_path / "db")
    opts = dict(batches=(1, 4), tune_budget_s=0, progress=False)
    out, man = build(path, prof, tmp_path / "cb", BuildOptions(codebook=True, **opts))
    _, dense = build(path, prof, tmp_path / "dense", BuildOptions(**opts))
    cb = man["codebook"]
    assert [L["key"] for L in cb["layers"]] == ["matmul0"]
    assert cb["layers"][0]["entries"] == ["main_b1", "main_b4"] and cb["kernels"] == 2
    assert cb["stored_bytes"] == 64 * 24 + 32 * 4 and cb["dense_bytes"] == 64 * 24 * 4
    # indices (shared by both entries) + codebook + bias, against the float weight + bias
    assert man["weight_bytes"] == 64 * 24 + 32 * 4 + 24 * 4
    assert dense["weight_bytes"] == 64 * 24 * 4 + 24 * 4 and dense["codebook"] is None
    # the per-layer table: what each layer stores; the bias is the only other constant
    (row,) = man["layers"]
    assert (row["layer"], row["form"], row["value_bits"]) == ("matmul0", "codebook", 5)
    assert row["bytes"] == {"values": 64 * 24, "col_indices": 0, "structure": 0,
                            "codebook": 32 * 4}
    assert row["stored_bytes"] + 24 * 4 == man["weight_bytes"]
    (row,) = dense["layers"]
    assert row["form"] == "dense float32" and row["stored_bytes"] + 24 * 4 == dense["weight_bytes"]
    assert "layer_forms/CodebookDense" in man["passes"]
    # RAM a call holds: the untuned codebook kernel decodes its weight once per call into a
    # scratch buffer of the dense weight's size; the dense build decodes nothing
    for m, decoded in ((man, 64 * 24 * 4), (dense, 0)):
        mem = m["memory"]
        assert mem["weights"] == m["weight_bytes"] and set(mem["entries"]) == {"main_b1",
                                                                                "main_b4"}
        for e in mem["entries"].values():
            assert e["decoded"] == decoded and e["kernel_scratch"] >= decoded
            assert e["planned"] > 0 and e["total"] == (mem["weights"] + e["planned"]
                                                       + e["kernel_scratch"])
    assert man["memory"]["entries"]["main_b4"]["planned"] \
        > man["memory"]["entries"]["main_b1"]["planned"]
    x = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)
    np.testing.assert_allclose(runtime.load(out)(x), x @ w + b, rtol=1e-5, atol=1e-5)
    # nothing to fold: one line, a dense build
    plain, _, _ = gemm_onnx(tmp_path / "plain.onnx", k=64, n=24)
    capsys.readouterr()
    _, man = build(plain, prof, tmp_path / "plain", BuildOptions(
        codebook=True, batches=(1,), tune_budget_s=0))
    assert "--codebook: no float matmul or conv2d layer of plain.onnx" in capsys.readouterr().out
    assert man["codebook"] is None and "layer_forms/CodebookDense" not in man["passes"]


def test_sparse_layer_keeps_codes(tmp_path, gemm_onnx, x86_host, profile_with_db):
    """`build --sparse --codebook` on a pruned, shared layer: the sparse kernel reads uint8
    codes (+ narrow column indices) and a codebook, exactly as the float sparse build."""
    import onnx
    from onnx import numpy_helper

    from tvmcomp import runtime
    from tvmcomp.compiler import BuildOptions, build
    from tvmcomp.kernels.sell import sell_codebook_from_dense, sell_from_dense

    path, w, b = _shared_gemm(tmp_path, gemm_onnx, codes=16)
    w = np.where(np.random.default_rng(3).random(w.shape) < 0.85, 0, w).astype(np.float32)
    m = onnx.load(str(path))
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "W"))  # [k, n] as Gemm reads
    onnx.save(m, str(path))
    prof = profile_with_db(tmp_path / "db")
    opts = dict(batches=(1, 4), tune_budget_s=0, progress=False, sparse=True,
                sparse_min_speedup=0.0)
    out, man = build(path, prof, tmp_path / "cb", BuildOptions(codebook=True, **opts))
    _, plain = build(path, prof, tmp_path / "sp", BuildOptions(**opts))
    (layer,) = man["codebook"]["layers"]
    c = sell_codebook_from_dense(w.T)
    assert layer["form"] == "sparse" and layer["entries"] == ["main_b1", "main_b4"]
    assert c.data.dtype == np.uint8 and c.indices.dtype == np.uint8  # 64 columns
    assert layer["index_bytes"] == c.data.nbytes and layer["codebook_bytes"] == 32 * 4
    by = man["sparse"]["size"]["bytes"]
    assert by["values"] == c.data.nbytes and by["codebook"] == 32 * 4 and by["row_scales"] == 0
    # float values (4 B) became codes (1 B); nothing else changed
    assert plain["weight_bytes"] - man["weight_bytes"] == \
        sell_from_dense(w.T).data.nbytes - c.data.nbytes + 24 * 4 - 32 * 4
    (row,) = man["layers"]
    assert (row["form"], row["value_bits"], row["nonzeros"]) == (
        "sparse codebook", 5, np.count_nonzero(w))
    assert row["bytes"]["values"] == c.data.nbytes and row["bytes"]["col_indices"] == c.stored
    assert row["stored_bytes"] + 24 * 4 == man["weight_bytes"]   # + the bias
    assert man["codebook"]["kernels"] == 2 and all(
        "_cb32" in k for k in man["kernels"] if k.startswith("sell_"))
    # the gate timed the forms this build makes: the dense codebook kernel (decoding codes)
    # against the sparse kernel with codes, not the float ones of the plain sparse build
    for g, p in zip(man["sparse"]["gate"], plain["sparse"]["gate"]):
        (dk,), (sk,) = g["dense_kernels"], g["sparse_kernels"]
        assert "take" in dk and sk.endswith("_cb32"), g
        assert "take" not in p["dense_kernels"][0] and "_cb" not in p["sparse_kernels"][0]
    x = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)
    np.testing.assert_allclose(runtime.load(out)(x), x @ w + b, rtol=1e-5, atol=1e-5)


def test_conv_layers_keep_indices(tmp_path, share_weights):
    """LeNet-5 with every weight shared (conv 8 bits, fc 5): conv2d layers too keep uint8
    indices + a codebook through FoldConstant, fused with their bias and relu; the output
    equals PyTorch's."""
    import torch

    from tvmcomp.frontend.onnx_export import export_onnx
    from tvmcomp.model.lenet import LeNet5
    from tvmcomp.passes.codebook_dense import COMPOSITE_CONV
    from tvmcomp.pipeline import compile_fused, fuse

    torch.manual_seed(0)
    net = share_weights(LeNet5().eval(), 256, 32)
    model, info = load_onnx(export_onnx(net, tmp_path / "lenet.onnx"))
    mod = import_batches(model, info, [2])
    layers = codebook_layers(mod)
    assert [(L.key, L.shape, L.index_bytes) for L in layers[:2]] == [
        ("main_b2/conv0", (6, 1, 5, 5), 150), ("main_b2/conv1", (16, 6, 5, 5), 2400)]
    assert [L.key for L in layers[2:]] == [f"main_b2/matmul{k}" for k in (2, 3, 4)]
    out = CodebookDense()(mod)
    composites = sorted(f.attrs["Composite"] for _, f in out.functions.items()
                        if f.attrs is not None and "Composite" in f.attrs)
    assert composites == sorted([COMPOSITE] * 3 + [COMPOSITE_CONV] * 2)
    target = tvm.target.Target(TARGET)
    fused = fuse(out, target)
    consts = _constants(fused)
    assert ("uint8", (16, 6, 5, 5)) in consts and ("float32", (16, 6, 5, 5)) not in consts
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    vm = relax.VirtualMachine(compile_fused(fused, target), tvm.cpu())
    got = vm["main_b2"](tvm.runtime.tensor(x)).numpy()
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def _shared_lenet(tmp_path, batch: int, share_weights):
    """A LeNet-5 whose weights are shared (conv 256, fc 16 levels) and its imported module."""
    import torch

    from tvmcomp.frontend.onnx_export import export_onnx
    from tvmcomp.model.lenet import LeNet5

    torch.manual_seed(0)
    net = share_weights(LeNet5().eval(), 256, 16)
    model, info = load_onnx(export_onnx(net, tmp_path / "lenet.onnx"))
    return net, import_batches(model, info, [batch])


def test_layers_decoded_at_load_run_the_float_kernels(tmp_path, share_weights):
    """CodebookDense(at_load=...): conv1 (8-bit codes), fc1 and fc3 (4-bit, packed) are
    decoded once by the artifact's decode function into the tensor cache (each weight kept
    alive: a planner reusing one's storage for the next gave wrong outputs); the artifact
    stores only their codes; their kernels are the float model's own (same workloads, so the
    same tuning records); the output equals PyTorch's; without the decode call the model
    refuses to run rather than computing with a missing weight."""
    import torch
    from tvm_ffi import structural_hash

    from tvmcomp.kernels.decode import DECODE_FUNCTION
    from tvmcomp.pipeline import compile_fused, fuse

    net, mod = _shared_lenet(tmp_path, 2, share_weights)
    target = tvm.target.Target(TARGET)
    fused = fuse(CodebookDense(at_load=("conv1", "matmul2", "matmul4"))(mod), target)
    consts = _constants(fused)
    assert {("uint8", (2400,)), ("uint8", (24000,)), ("uint8", (420,))} <= set(consts)
    assert not [c for c in consts if c[0] == "float32" and c[1] in ((16, 6, 5, 5), (400, 120),
                                                                     (84, 10))]

    def workloads(m):
        return {structural_hash(f) for _, f in m.functions.items()
                if isinstance(f, tvm.tirx.PrimFunc)}

    float_kernels = workloads(fuse(mod, target))
    ours = workloads(fused)
    # conv1, fc1 and fc3 run float kernels; conv0 and fc2 decode in their kernels
    assert len(ours & float_kernels) >= 3 and not ours <= float_kernels
    vm = relax.VirtualMachine(compile_fused(fused, target), tvm.cpu())
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    tvm.get_global_func("vm.builtin.tensor_cache.clear")()
    with pytest.raises(Exception):  # noqa: B017 - a bare TVM error: the weight is not there
        vm["main_b2"](tvm.runtime.tensor(x))
    vm[DECODE_FUNCTION]()
    got = vm["main_b2"](tvm.runtime.tensor(x)).numpy()
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(vm["main_b2"](tvm.runtime.tensor(x)).numpy(), got)


def test_pruned_layers_decoded_at_load_store_sparse_codes(tmp_path, share_weights):
    """A pruned, shared layer decoded at load is stored as a code stream with zero-run lengths
    (an entry per non-zero, plus fillers) where that is smaller than a code per weight, and
    decoded from it into the dense weight: conv1 and fc1 at 90 % sparsity; biases stay float32
    constants (one read from the tensor cache costs a VM instruction a call), even one that
    float16 holds exactly; the output equals PyTorch's, and the per-layer table counts what
    is stored."""
    import torch

    from tvmcomp.frontend.onnx_export import export_onnx
    from tvmcomp.kernels.decode import DECODE_FUNCTION
    from tvmcomp.model.lenet import LeNet5
    from tvmcomp.passes.sizes import layer_sizes
    from tvmcomp.pipeline import compile_fused, fuse

    torch.manual_seed(0)
    net = share_weights(LeNet5().eval(), 256, 16)
    with torch.no_grad():  # then pruned: the survivors keep their shared values
        for p in (net.conv2.weight, net.fc1.weight):
            p.mul_((torch.rand_like(p) < 0.1).float())
        net.fc1.bias.copy_(net.fc1.bias.half().float())
    model, info = load_onnx(export_onnx(net, tmp_path / "lenet.onnx"))
    mod = import_batches(model, info, [2])
    at_load = ("conv0", "conv1", "matmul2", "matmul3")
    rows = {r["layer"]: r for r in layer_sizes(mod, codebook=True, at_load=at_load)}
    assert rows["conv1"]["form"] == rows["matmul2"]["form"] == "sparse codebook, decoded at load"
    assert rows["conv0"]["form"] == "codebook, decoded at load"  # dense: a code per weight
    assert rows["matmul2"]["stored_bytes"] < 48000 * 5 // 8 // 2  # far below dense codes
    target = tvm.target.Target(TARGET)
    fused = fuse(CodebookDense(at_load=at_load)(mod), target)
    consts = _constants(fused)
    assert ("uint8", (24000,)) not in consts and ("uint8", (2400,)) not in consts
    r = rows["matmul2"]["bytes"]
    assert r["col_indices"] > 0  # zero-run lengths, in one stream with the codes
    assert ("uint8", (r["values"] + r["col_indices"],)) in consts
    assert ("float32", (120,)) in consts and ("float16", (120,)) not in consts  # fc1's bias
    vm = relax.VirtualMachine(compile_fused(fused, target), tvm.cpu())
    vm[DECODE_FUNCTION]()
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(vm["main_b2"](tvm.runtime.tensor(x)).numpy(), ref,
                               rtol=1e-4, atol=1e-4)


def test_layers_keep_their_names_after_an_earlier_one_went_sparse(tmp_path, share_weights):
    """Layer names count the layers SparseDense already rewrote: with fc1 (matmul2) sparse,
    ``at_load=("matmul3",)`` decodes fc2 at load, not fc3 (which was named ``matmul3`` once
    fc1's matmul was gone, and the manifest then said a different layer took that form)."""
    import torch

    from tvmcomp.frontend.onnx_export import export_onnx
    from tvmcomp.model.lenet import LeNet5
    from tvmcomp.passes import SparseDense
    from tvmcomp.passes.codebook_dense import decoded_bytes
    from tvmcomp.pipeline import fuse

    torch.manual_seed(0)
    net = share_weights(LeNet5().eval(), 256, 16)
    with torch.no_grad():
        net.fc1.weight.mul_((torch.rand_like(net.fc1.weight) < 0.1).float())
    model, info = load_onnx(export_onnx(net, tmp_path / "lenet.onnx"))
    mod = SparseDense(threshold=0.5, values="codebook")(import_batches(model, info, [2]))
    fused = fuse(CodebookDense(at_load=("matmul3",))(mod), tvm.target.Target(TARGET))
    assert decoded_bytes(fused) == 120 * 84 * 4


def test_sparse_convs_decode_their_arrays_at_load_from_a_code_stream(tmp_path, share_weights):
    """With --sparse --codebook, a pruned, shared conv runs the direct sparse convolution and
    stores only its weight's code stream: the decode function writes the kernel's values,
    offsets and row pointers (float32 / int32 arrays in RAM, none in the artifact) from it;
    the per-layer table counts the stream; the output equals PyTorch's, at both batches."""
    import torch

    from tvmcomp.frontend.onnx_export import export_onnx
    from tvmcomp.kernels.decode import DECODE_FUNCTION, code_stream
    from tvmcomp.kernels.sparse_conv import sparse_conv_from_dense
    from tvmcomp.model.lenet import LeNet5
    from tvmcomp.passes import SparseDense
    from tvmcomp.passes.codebook_dense import decoded_bytes
    from tvmcomp.passes.sizes import layer_sizes
    from tvmcomp.pipeline import compile_fused, fuse

    torch.manual_seed(0)
    net = share_weights(LeNet5().eval(), 32, 16)
    with torch.no_grad():
        net.conv2.weight.mul_((torch.rand_like(net.conv2.weight) < 0.2).float())
    model, info = load_onnx(export_onnx(net, tmp_path / "lenet.onnx"))
    mod = import_batches(model, info, [1, 3])
    sparse = {"threshold": 0.5, "values": "codebook"}
    rows = {r["layer"]: r for r in layer_sizes(mod, sparse, codebook=True)}
    w = net.conv2.weight.detach().numpy()
    s = code_stream(w)
    assert rows["conv1"]["form"] == "sparse conv, codebook decoded at load"
    assert rows["conv1"]["stored_bytes"] == s.nbytes()["total"]
    assert rows["conv0"]["form"] == "codebook"  # dense: codes decoded in its kernel
    info = {L.key.split("/")[1]: L.form for L in codebook_layers(mod, sparse)}
    assert info["conv1"] == "sparse conv, at load"
    target = tvm.target.Target(TARGET)
    fused = fuse(CodebookDense()(SparseDense(**sparse)(mod)), target)
    ref = sparse_conv_from_dense(w, (14, 14))
    consts = _constants(fused)
    assert ("uint8", s.data.shape) in consts
    assert ("float32", ref.values.shape) not in consts and ("int32", ref.offsets.shape) \
        not in consts
    assert decoded_bytes(fused) == ref.nbytes()["total"]
    names = [gv.name_hint for gv, f in fused.functions.items()
             if isinstance(f, tvm.tirx.PrimFunc)]
    assert any(n.startswith("sparse_conv_b3_6x14x14_16k5x5") for n in names)
    vm = relax.VirtualMachine(compile_fused(fused, target), tvm.cpu())
    vm[DECODE_FUNCTION]()
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 1, 28, 28)).astype(np.float32)
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(vm[f"main_b{batch}"](tvm.runtime.tensor(x)).numpy(), want,
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape, density, levels, in_hw, gap_bits", [
    ((16, 6, 5, 5), 0.2, 16, (14, 14), None), ((6, 1, 5, 5), 0.7, 32, (32, 32), None),
    ((8, 2, 3, 3), 1.0, 7, (6, 6), 0), ((4, 3, 3, 3), 0.0, 3, (9, 9), None)])
def test_code_stream_decodes_into_a_sparse_convs_arrays(shape, density, levels, in_hw,
                                                         gap_bits):
    """kernels.decode.sparse_conv_decode_kernel: a conv weight's code stream (with zero-run
    lengths, or a code per weight with zeros among the values; an all-zero weight) decoded
    over buffers full of garbage into exactly ``sparse_conv_from_dense``'s arrays."""
    from tvmcomp.kernels.decode import code_stream, sparse_conv_decode_kernel
    from tvmcomp.kernels.sparse_conv import sparse_conv_from_dense

    rng = np.random.default_rng(levels)
    w = np.linspace(-1, 1, levels).astype(np.float32)[rng.integers(0, levels, shape)]
    w *= rng.random(shape) < density
    s = code_stream(w, gap_bits)
    ref = sparse_conv_from_dense(w, in_hw)
    func = sparse_conv_decode_kernel(s, in_hw).with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target="llvm")
    want = (ref.values, ref.offsets, ref.row_ptr)
    outs = [tvm.runtime.tensor(np.full(a.shape, 7, a.dtype)) for a in want]
    lib["main"](*(tvm.runtime.tensor(a) for a in (s.codebook, s.data, np.zeros(1, np.int32))),
                *outs)
    for got, a in zip(outs, want):
        np.testing.assert_array_equal(got.numpy(), a)


@pytest.mark.parametrize("levels, density, shape, gap_bits", [
    (3, 0.15, (84, 10), None), (15, 1.0, (16, 6, 5, 5), None), (200, 0.03, (400, 120), None),
    (16, 0.02, (400, 120), 3), (5, 0.5, (7,), 1), (4, 0.0, (10, 10), None)])
def test_code_stream_decode_kernel_gives_back_the_weight(levels, density, shape, gap_bits):
    """kernels.decode: a weight as a code stream (2-, 4-, 8-bit codes; a code per weight, or
    zero-run lengths with fillers for runs longer than they hold; an all-zero weight) decoded
    by the TIR kernel over a buffer that held garbage, and by NumPy: exact. The gap width
    chosen stores the fewest bytes of all widths; the codebook is float16 where that holds
    the values exactly (e.g. -1, -0.5, 0, 0.5, 1), else float32."""
    from tvmcomp.kernels.decode import MAX_GAP_BITS, code_stream

    rng = np.random.default_rng(levels)
    w = np.linspace(-1, 1, levels).astype(np.float32)[rng.integers(0, levels, shape)]
    w *= rng.random(shape) < density
    s = code_stream(w, gap_bits)
    exact16 = np.array_equal(w.astype(np.float16).astype(np.float32), w)
    assert s.codebook.dtype == (np.float16 if exact16 else np.float32)
    assert exact16 == (levels in (3, 4, 5))
    if gap_bits is None:
        assert s.nbytes()["total"] == min(code_stream(w, g).nbytes()["total"]
                                          for g in range(MAX_GAP_BITS + 1))
    if 0 < density < 0.1:
        assert s.gap_bits > 0 and s.nbytes()["total"] < w.size * s.code_bits // 8
    np.testing.assert_array_equal(s.to_dense(), w)
    np.testing.assert_array_equal(_decoded_by_kernel(s, 7), w)


def _decoded_by_kernel(s, garbage) -> np.ndarray:
    """What :func:`stream_decode_kernel` writes for ``s`` over a buffer full of ``garbage``."""
    from tvmcomp.kernels.decode import stream_decode_kernel

    func = stream_decode_kernel(s).with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target="llvm")
    out = tvm.runtime.tensor(np.full(s.shape, garbage, s.dtype))
    lib["main"](*(tvm.runtime.tensor(a) for a in (s.codebook, s.data, np.zeros(1, np.int32))),
                out)
    return out.numpy()


@pytest.mark.parametrize("density", [1.0, 0.1])
def test_int8_code_stream_decodes_to_int8(density):
    """An int8 layer's weight (QuantizeInt8's) as a code stream: an int8 codebook, decoded by
    the TIR kernel into int8, exact; its cache key differs from the same values in float32."""
    from tvmcomp.kernels.decode import cache_key, code_stream

    rng = np.random.default_rng(1)
    shape = (16, 6, 5, 5)
    levels = np.array([-127, -40, -3, 5, 17, 90, 127], np.int8)
    w = levels[rng.integers(0, levels.size, shape)] * (rng.random(shape) < density)
    w = w.astype(np.int8)
    s = code_stream(w)
    assert s.codebook.dtype == np.int8 and s.dtype == "int8" and s.code_bits == 3
    assert s.nbytes()["total"] < w.nbytes
    np.testing.assert_array_equal(s.to_dense(), w)
    assert s.to_dense().dtype == np.int8
    np.testing.assert_array_equal(_decoded_by_kernel(s, 99), w)
    assert cache_key(w) != cache_key(w.astype(np.float32))


def _int8_shared_lenet(tmp_path, shared_lenet, accumulate: str):
    """The shared LeNet-5 with fc1 pruned to 10 % (its survivors keep their shared values),
    quantized with per-tensor scales (a layer keeps one int8 value per shared one), as
    ``QuantizeInt8(accumulate)`` makes it (batch 2), and 16 inputs."""
    import copy

    import torch

    from tvmcomp.frontend.onnx_export import export_onnx
    from tvmcomp.passes import QuantizeInt8
    from tvmcomp.quant import PerTensor, QuantConfig, quantize_onnx

    net = copy.deepcopy(shared_lenet.model)
    torch.manual_seed(0)
    with torch.no_grad():
        net.fc1.weight.mul_((torch.rand_like(net.fc1.weight) < 0.1).float())
    model, info = load_onnx(export_onnx(net, tmp_path / "lenet.onnx"))
    x = np.random.default_rng(0).random((16, 1, 28, 28)).astype(np.float32)
    qm = quantize_onnx(model, x, QuantConfig(weights=PerTensor(), num_calib=16))
    return QuantizeInt8(accumulate)(import_batches(qm.model, info, [2])), x


def test_int8_layers_stored_as_int8_code_streams(tmp_path, shared_lenet):
    """int8 + sharing + pruning (the seed's third step): QuantizeInt8's int8 weights of a
    shared, pruned LeNet-5 (per-tensor scales: a layer keeps one int8 value per shared one)
    are stored as code streams with int8 codebooks, decoded to int8 at load, and only
    where that is smaller than the int8 weight; the int8 kernels give the same integers
    bit for bit; the per-layer table and the decoded RAM count int8 bytes."""
    from tvmcomp.kernels.decode import DECODE_FUNCTION
    from tvmcomp.passes.codebook_dense import decoded_bytes, int8_layers
    from tvmcomp.passes.sizes import layer_sizes
    from tvmcomp.pipeline import compile_fused, fuse

    mod, x = _int8_shared_lenet(tmp_path, shared_lenet, "float32")
    (func,) = [f for gv, f in mod.functions.items() if gv.name_hint == "main_b2"]
    streamed = {name: w for _, name, _, w in int8_layers(func)}
    # the fc layers (16 shared values); not the convs (256: 8-bit codes + a codebook are
    # no smaller than the int8 weight)
    assert set(streamed) == {"matmul2", "matmul3", "matmul4"}
    assert streamed["matmul2"].dtype == np.int8 and streamed["matmul2"].shape == (400, 120)
    rows = {r["layer"]: r for r in layer_sizes(mod, codebook=True)}
    assert rows["conv0"]["form"] == rows["conv1"]["form"] == "dense int8"
    assert rows["matmul3"]["form"] == "codebook, decoded at load"
    assert rows["matmul3"]["value_bits"] == 4  # 16 shared values, 16 int8 ones
    assert rows["matmul2"]["form"] == "sparse codebook, decoded at load"
    assert rows["matmul2"]["stored_bytes"] < 48000 // 8
    # an x86 CPU without AVX2: the layers stay int8 matmuls / convs (Int8Vnni off)
    target = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64", "num-cores": 1})
    outs, consts = [], []
    for m in (mod, CodebookDense()(mod)):
        fused = fuse(m, target)
        consts.append(_constants(fused))
        vm = relax.VirtualMachine(compile_fused(fused, target), tvm.cpu())
        if DECODE_FUNCTION in [gv.name_hint for gv in fused.get_global_vars()]:
            assert decoded_bytes(fused) == sum(w.size for w in streamed.values())
            vm[DECODE_FUNCTION]()
        outs.append(vm["main_b2"](tvm.runtime.tensor(x[:2])).numpy())
    assert ("int8", (400, 120)) in consts[0] and ("int8", (400, 120)) not in consts[1]
    np.testing.assert_array_equal(outs[1], outs[0])


@pytest.mark.parametrize("isa, mcpu", [("avx512_vnni", "cascadelake"), ("avx2", "core-avx2")])
def test_int8_code_streams_decode_into_the_vnni_kernels_packed_weights(tmp_path, shared_lenet,
                                                                        isa, mcpu):
    """With an x86 target (VNNI or AVX2), Int8Vnni packs the int8 weights first; CodebookDense
    then stores the shared fc layers' weights as the same code streams as without these
    kernels (the size report holds for both) and decodes them at load straight into the
    packed weights and their compensation terms, which the kernels read from the tensor
    cache: no packed or dense int8 fc weight in the artifact, every layer still our kernel,
    and the outputs
    equal those of the build without CodebookDense bit for bit (on a CPU with ``isa``)."""
    from tvmcomp.kernels.decode import DECODE_FUNCTION, code_stream
    from tvmcomp.passes import Int8Vnni
    from tvmcomp.passes.codebook_dense import decoded_bytes, int8_layers
    from tvmcomp.pipeline import compile_fused, fuse
    from tvmcomp.targets import cpu_flags

    mod, x = _int8_shared_lenet(tmp_path, shared_lenet, "int32")
    (func,) = [f for gv, f in mod.functions.items() if gv.name_hint == "main_b2"]
    streamed = {name: w for _, name, _, w in int8_layers(func)}
    assert set(streamed) == {"matmul2", "matmul3", "matmul4"}
    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "num-cores": 2})
    with target:
        packed = Int8Vnni(isa)(mod)
    both = CodebookDense()(packed)
    assert DECODE_FUNCTION in [gv.name_hint for gv in both.get_global_vars()]
    kernels = sorted(gv.name_hint for gv, f in both.functions.items()
                     if gv.name_hint.startswith(("vnni_", "avx2_")))
    assert len(kernels) == 5  # conv0, conv1 (256 values: stored int8) and the three fc
    assert all(k.startswith("vnni_" if isa == "avx512_vnni" else "avx2_") for k in kernels)
    stored = _constants(both)
    for name, w in streamed.items():  # [in, out], K % 4 == 0
        nb = -(-w.shape[1] // 16)
        assert ("int8", (nb, w.shape[0] // 4, 64)) not in stored
        assert ("int8", tuple(w.shape)) not in stored
        s = code_stream(w)
        assert ("uint8", tuple(s.data.shape)) in stored
    fused = [fuse(m, target) for m in (packed, both)]
    ram = sum(-(-w.shape[1] // 16) * 16 * (w.shape[0] + 4) for w in streamed.values())
    assert decoded_bytes(fused[1]) == ram  # packed weights + int32 compensation
    if isa not in cpu_flags():
        pytest.skip(f"this CPU has no {isa}")
    outs = []
    for m in fused:
        vm = relax.VirtualMachine(compile_fused(m, target), tvm.cpu())
        if m is fused[1]:
            vm[DECODE_FUNCTION]()
        outs.append(vm["main_b2"](tvm.runtime.tensor(x[:2])).numpy())
    np.testing.assert_array_equal(outs[1], outs[0])
