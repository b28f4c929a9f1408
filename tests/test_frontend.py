"""ONNX export from PyTorch and ONNX loading/import into Relax."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tvmcomp.errors import ModelError
from tvmcomp.frontend import export_onnx, load_onnx
from tvmcomp.frontend.onnx_import import import_batches
from tvmcomp.model import LeNet5


def _dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_export_dynamic_batch(lenet):
    m = onnx.load(str(lenet.onnx))
    assert _dims(m.graph.input[0]) == ["N", 1, 28, 28]
    assert _dims(m.graph.output[0]) == ["N", 10]
    assert {p.key: p.value for p in m.metadata_props} == {
        "tvmcomp.checkpoint": str(lenet.checkpoint.resolve())}
    model, info = load_onnx(lenet.onnx)
    assert info.dynamic_batch and info.input_shape == ("N", 1, 28, 28)
    assert (info.input_name, info.output_name, info.input_dtype) == ("input", "logits", "float32")
    assert info.opset == 17
    assert set(info.op_types) == {"Conv", "Relu", "MaxPool", "Flatten", "Gemm"}
    assert info.metadata["tvmcomp.checkpoint"] == str(lenet.checkpoint.resolve())
    import hashlib

    assert info.sha256 == hashlib.sha256(lenet.onnx.read_bytes()).hexdigest()
    for b in (1, 7, 64):
        info.check_batch(b)
    with pytest.raises(ModelError):
        info.check_batch(0)


def test_export_matches_torch(lenet):
    import torch

    from tvmcomp.verify import ort_session

    x = np.random.default_rng(0).standard_normal((5, 1, 28, 28)).astype(np.float32)
    ref = lenet.model(torch.from_numpy(x)).detach().numpy()
    got = ort_session(str(lenet.onnx)).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)


def test_export_static_batch(tmp_path):
    path = export_onnx(LeNet5(), tmp_path / "s.onnx", input_shape=(4, 1, 28, 28),
                       dynamic_batch=False)
    m = onnx.load(str(path))
    assert _dims(m.graph.input[0]) == [4, 1, 28, 28]
    assert _dims(m.graph.output[0]) == [4, 10]
    assert not list(tmp_path.glob("*.tmp"))
    _, info = load_onnx(path)
    assert not info.dynamic_batch
    info.check_batch(4)
    with pytest.raises(ModelError, match="fixed batch of 4; cannot build batch 1"):
        info.check_batch(1)


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="ONNX model not found"):
        load_onnx(tmp_path / "nope.onnx")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.onnx"
    p.write_bytes(b"")
    with pytest.raises(ModelError, match="empty file"):
        load_onnx(p)


def test_truncated_file(lenet, tmp_path):
    raw = lenet.onnx.read_bytes()
    p = tmp_path / "half.onnx"
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ModelError, match="corrupt or truncated ONNX file"):
        load_onnx(p)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_bytes(tmp_path, seed):
    p = tmp_path / "random.onnx"
    p.write_bytes(np.random.default_rng(seed).bytes(4096))
    with pytest.raises(ModelError, match="random.onnx"):
        load_onnx(p)


def test_text_file(tmp_path):
    p = tmp_path / "t.onnx"
    p.write_text("this is not an ONNX model\n")
    with pytest.raises(ModelError, match="corrupt or truncated"):
        load_onnx(p)


def _single_node_model(path, op_type, domain="", name="odd_node"):
    node = helper.make_node(op_type, ["x"], ["y"], name=name, domain=domain)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                          [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    opsets = [helper.make_opsetid("", 18)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_unsupported_op_names_op_and_node(tmp_path):
    from tvm.relax.frontend.onnx import onnx_frontend

    assert "Celu" not in onnx_frontend._get_convert_map(), "pick another unsupported op"
    p = _single_node_model(tmp_path / "celu.onnx", "Celu", name="my_celu")
    with pytest.raises(ModelError) as e:
        load_onnx(p)
    assert "unsupported op 'Celu'" in str(e.value) and "'my_celu'" in str(e.value)


def test_supported_op_loads(tmp_path):
    p = _single_node_model(tmp_path / "relu.onnx", "Relu")
    _, info = load_onnx(p)
    assert info.op_types == ("Relu",) and info.input_shape == (1, 4)


def test_unsupported_op_without_node_name(tmp_path):
    p = _single_node_model(tmp_path / "celu.onnx", "Celu", name="")
    with pytest.raises(ModelError, match=r"unsupported op 'Celu' at node '#0'"):
        load_onnx(p)


def test_custom_domain_op(tmp_path):
    p = _single_node_model(tmp_path / "custom.onnx", "FancyOp", domain="com.example",
                           name="fancy")
    with pytest.raises(ModelError, match=r"com\.example::FancyOp at node 'fancy'.*custom domain"):
        load_onnx(p)


def test_invalid_graph_fails_checker(tmp_path):
    # a node reading a tensor that nothing produces
    node = helper.make_node("Add", ["x", "ghost"], ["y"], name="add")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                          [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    p = tmp_path / "bad.onnx"
    onnx.save(model, str(p))
    with pytest.raises(ModelError, match="invalid ONNX model"):
        load_onnx(p)


@pytest.mark.parametrize("dims, elem, expect", [
    (["N", "C"], TensorProto.FLOAT, "symbolic non-batch dims"),
    (["N", 4], TensorProto.DOUBLE, "unsupported element type 11"),
])
def test_unsupported_inputs_rejected(tmp_path, dims, elem, expect):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "g",
                              [helper.make_tensor_value_info("x", elem, dims)],
                              [helper.make_tensor_value_info("y", elem, dims)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    p = tmp_path / "m.onnx"
    onnx.save(model, str(p))
    with pytest.raises(ModelError, match=expect):
        load_onnx(p)


def test_two_inputs_rejected(tmp_path):
    node = helper.make_node("Add", ["a", "b"], ["y"], name="add")
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in "ab"]
    graph = helper.make_graph([node], "g", vi,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    p = tmp_path / "two.onnx"
    onnx.save(model, str(p))
    with pytest.raises(ModelError, match="expected one input and one output, got 2 and 1"):
        load_onnx(p)


def test_import_batches_one_function_per_batch(tmp_path, gemm_onnx):
    path, _, _ = gemm_onnx(tmp_path / "g.onnx")
    model, info = load_onnx(path)
    mod = import_batches(model, info, [4, 1, 4])
    names = sorted(gv.name_hint for gv in mod.get_global_vars())
    assert names == ["main_b1", "main_b4"]
    assert [int(d) for d in mod["main_b4"].params[0].ty.shape] == [4, 32]
    assert mod["main_b1"].attrs["global_symbol"] == "main_b1"
    with pytest.raises(ModelError, match="no batch sizes"):
        import_batches(model, info, [])


def test_import_batches_keeps_helper_functions(tmp_path, x86_host):
    """Clip (ReLU6) imports as calls to PrimFuncs beside "main"; they must survive the merge
    of several batch sizes into one module (regression: FuseOps failed with
    'There is no definition of I.GlobalVar("maximum")')."""
    from tvmcomp.pipeline import fuse

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])
    lo = helper.make_tensor("lo", TensorProto.FLOAT, [], [0.0])
    hi = helper.make_tensor("hi", TensorProto.FLOAT, [], [6.0])
    graph = helper.make_graph([helper.make_node("Clip", ["x", "lo", "hi"], ["y"], name="relu6")],
                              "clip", [x], [y], [lo, hi])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    p = tmp_path / "clip.onnx"
    onnx.save(model, str(p))
    model, info = load_onnx(p)
    mod = import_batches(model, info, [1, 2])
    fused = fuse(mod, x86_host.tvm_target())
    names = {gv.name_hint for gv in fused.get_global_vars()}
    assert {"main_b1", "main_b2"} <= names


def test_opset_newer_than_known_is_one_line(tmp_path, gemm_onnx):
    import onnx

    path, _, _ = gemm_onnx(tmp_path / "g.onnx")
    m = onnx.load(str(path))
    m.opset_import[0].version = 99
    onnx.save(m, str(tmp_path / "opset99.onnx"))
    with pytest.raises(ModelError, match=r"opset 99 is newer than the newest this tvmcomp "
                                         r"knows \(\d+\); export the model with opset"):
        load_onnx(tmp_path / "opset99.onnx")


def test_huge_input_is_one_line_at_load(tmp_path, gemm_onnx):
    path, _, _ = gemm_onnx(tmp_path / "g.onnx", k=100_000)  # x: [N, 100000]: fine
    load_onnx(path)
    m = onnx.load(str(path))
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims.add().dim_value = 100_000  # x: [N, 100000, 100000]
    onnx.save(m, str(tmp_path / "huge.onnx"))
    with pytest.raises(ModelError, match=r"10,000,000,000 elements per sample, more than"):
        load_onnx(tmp_path / "huge.onnx")


def test_huge_batch_is_one_line_before_compiling(tmp_path, gemm_onnx, run_tvmcomp):
    """A batch entry whose input is too large (a fixed batch of 100,000 rows of 100,000, or
    --batch at that size) is refused before anything is compiled: the build once ran to a
    MemoryError making the kernels' random inputs."""
    path, _, _ = gemm_onnx(tmp_path / "g.onnx", k=100_000)
    _, info = load_onnx(path)
    info.check_batch(64)
    with pytest.raises(ModelError, match=r"at batch 100000 has 10,000,000,000 elements, more "
                                         r"than tvmcomp compiles in one call"):
        info.check_batch(100_000)
    m = onnx.load(str(path))
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 100_000
    onnx.save(m, str(tmp_path / "fixed.onnx"))
    r = run_tvmcomp("build", str(tmp_path / "fixed.onnx"), "--out", str(tmp_path / "art"),
                    "--tune-budget", "0")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().endswith("(export the model with a dynamic batch)")
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "art").exists()
