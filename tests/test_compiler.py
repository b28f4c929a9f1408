"""``build``: the LeNet-5 artifact's manifest and outputs; atomic writing on failure."""

import json

import numpy as np
import pytest

from tvmcomp import runtime
from tvmcomp.artifact import MANIFEST, SCHEMA_VERSION, sha256_file
from tvmcomp.compiler import BuildOptions, as_batches, build
from tvmcomp.data import normalize
from tvmcomp.errors import ArtifactError, ModelError, TvmcompError, VerificationError
from tvmcomp.verify import ACCURACY_TOLERANCE, ort_run, ort_session

NO_TUNE = dict(tune_budget_s=0, progress=False)


def test_manifest_fields(lenet_artifact, lenet):
    import tvm

    m = lenet_artifact.manifest
    assert m == json.loads((lenet_artifact.path / MANIFEST).read_text())
    assert m["schema_version"] == SCHEMA_VERSION
    art = lenet_artifact.path
    src, ckpt = m["model"]["source"], m["model"]["checkpoint"]
    assert src["file"] == lenet.onnx.name and src["sha256"] == sha256_file(lenet.onnx)
    assert (art / src["relpath"]).resolve() == lenet.onnx.resolve()
    assert ckpt["file"] == lenet.checkpoint.name and ckpt["sha256"] == sha256_file(lenet.checkpoint)
    assert (art / ckpt["relpath"]).resolve() == lenet.checkpoint.resolve()
    assert m["model"]["opset"] == 17
    assert set(m["model"]["op_types"]) == {"Conv", "Relu", "MaxPool", "Flatten", "Gemm"}
    assert "tvmcomp.checkpoint" not in m["model"]["metadata"]  # a host path
    assert m["inputs"] == [{"name": "input", "shape": ["N", 1, 28, 28], "dtype": "float32"}]
    assert m["outputs"] == [{"name": "logits", "shape": ["N", 10], "dtype": "float32"}]
    assert m["batches"] == list(lenet_artifact.batches)
    assert m["entry_points"] == {str(b): f"main_b{b}" for b in lenet_artifact.batches}
    assert m["profile"]["name"] == "x86_avx2"
    assert m["profile"] == lenet_artifact.profile.to_dict()
    assert m["target"] == lenet_artifact.profile.target
    assert m["tvm_version"] == tvm.__version__
    assert m["passes"][0] == "quantize/QuantizeInt8(accumulate=float32)"  # x86 without VNNI
    assert m["passes"][1:5] == ["lowrank/LowRankFold(off)", "layer_forms/SparseDense(off)",
                                "layer_forms/Int8Vnni(isa=avx2)",
                                "layer_forms/CodebookDense(off)"]
    assert m["passes"][5].startswith("canonicalize/")
    assert "legalize_fuse/FuseOps" in m["passes"] and "legalize_fuse/FuseTIR" in m["passes"]
    assert m["passes"].index("legalize_fuse/LegalizeOps") < m["passes"].index(
        "lower/VMShapeLower")
    lib = lenet_artifact.path / "model.so"
    assert m["library"] == {"file": "model.so", "sha256": sha256_file(lib),
                            "bytes": lib.stat().st_size}


def test_manifest_kernels_are_the_kernels_in_model_so(lenet_artifact, kernels_in_so, lenet):
    m = lenet_artifact.manifest
    assert set(m["kernels"]) == kernels_in_so(lenet_artifact.path)
    assert set(m["kernels"].values()) == {"untuned"}  # budget 0, empty database
    assert set(m["tuning"]["untuned"]) <= set(m["kernels"])
    assert m["runtime"] == {"threads": lenet_artifact.profile.cores, "on_load": None}
    plan = json.loads((lenet_artifact.path / "plan.json").read_text())
    assert plan == {"version": 2, "profile": "x86_avx2", "batches": [1, 8],
                    "int8_accumulate": "float32", "sparse": None,
                    "model_sha256": sha256_file(lenet.onnx), "quant": None, "codebook": False,
                    "codebook_at_load": [], "codebook_gate": None, "lowrank_fold": [],
                    "lowrank_gate": None}


def test_weight_bytes_are_lenet5_fp32(lenet_artifact, lenet):
    n_params = sum(p.numel() for p in lenet.model.parameters())
    assert n_params == 61706
    assert lenet_artifact.manifest["weight_bytes"] == 4 * n_params
    assert lenet_artifact.manifest["weight_tensors"] == 10


def test_verification_recorded(lenet_artifact, lenet, eval_set):
    v = lenet_artifact.manifest["verification"]
    assert v["passed"] is True
    assert v["reference"] == "onnxruntime fp32"
    assert v["n"] == len(eval_set)
    assert v["inputs"] == eval_set.portable_source  # no host path
    assert 0 <= v["max_abs_err"] <= v["tolerance"]
    assert abs(v["accuracy"] - v["reference_accuracy"]) <= ACCURACY_TOLERANCE
    # the reference accuracy really is ONNX Runtime's on those images
    ref = ort_run(ort_session(str(lenet.onnx)), normalize(eval_set.images))
    assert v["reference_accuracy"] == pytest.approx(float(np.mean(ref.argmax(1) ==
                                                                  eval_set.labels)))
    assert v["accuracy"] > 0.7


def test_tuning_info_with_budget_zero(lenet_artifact):
    t = lenet_artifact.manifest["tuning"]
    assert t["budget_s"] == 0 and t["used_s"] == 0 and t["trials"] == 0
    assert t["stopped_by"] == "budget 0"
    assert t["records_read"] == {"x86_avx2 committed": 0, "x86_avx2 user cache": 0}
    assert t["tasks"] > 0 and t["tuned"] == 0
    assert len(t["untuned"]) == t["tasks"] and t["tuned_kernel_us"] == {}
    assert any(name.startswith("fused_conv2d") for name in t["untuned"])
    assert not lenet_artifact.profile.tuning_dir.exists()  # budget 0 created no database


def test_outputs_match_onnxruntime(lenet_artifact, lenet, eval_set):
    x = normalize(eval_set.images[:256])
    ref = ort_session(str(lenet.onnx)).run(None, {"input": x})[0]
    got = runtime.load(lenet_artifact.path)(x)
    assert got.shape == ref.shape == (256, 10) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)
    assert np.array_equal(got.argmax(1), ref.argmax(1))


@pytest.fixture
def gemm(tmp_path, gemm_onnx):
    return gemm_onnx(tmp_path / "gemm.onnx")[0]


@pytest.fixture
def prof(tmp_path, profile_with_db):
    return profile_with_db(tmp_path / "db")


def test_verification_failure_leaves_no_artifact(gemm, tmp_path, monkeypatch, x86_host, prof):
    import tvmcomp.compiler

    def failing_verify(*args, **kwargs):
        raise VerificationError("compiled model disagrees (injected by the test)")

    monkeypatch.setattr(tvmcomp.compiler, "verify", failing_verify)
    parent = tmp_path / "out"
    parent.mkdir()
    out = parent / "artifact"
    with pytest.raises(VerificationError, match="injected"):
        build(gemm, prof, out, BuildOptions(batches=(1,), **NO_TUNE))
    assert not out.exists()
    assert list(parent.iterdir()) == []  # no temp dirs left behind


def test_verification_failure_keeps_previous_artifact(gemm, tmp_path, monkeypatch, x86_host,
                                                      prof):
    import tvmcomp.compiler

    out, first = build(gemm, prof, tmp_path / "art", BuildOptions(batches=(1,), **NO_TUNE))
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def failing_verify(*args, **kwargs):
        raise VerificationError("injected")

    monkeypatch.setattr(tvmcomp.compiler, "verify", failing_verify)
    with pytest.raises(VerificationError):
        build(gemm, prof, out, BuildOptions(batches=(1, 2), **NO_TUNE))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "gemm.onnx"]


def test_existing_non_artifact_dir_not_overwritten(gemm, tmp_path, x86_host, prof):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match="not a tvmcomp artifact; refusing to replace"):
        build(gemm, prof, out, BuildOptions(batches=(1,), **NO_TUNE))
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gemm.onnx", "precious"]


def test_rebuild_replaces_existing_artifact(tmp_path, x86_host, gemm_onnx, prof):
    a, wa, ba = gemm_onnx(tmp_path / "a.onnx", seed=1)
    b, wb, bb = gemm_onnx(tmp_path / "b.onnx", seed=2)
    out = tmp_path / "art"
    build(a, prof, out, BuildOptions(batches=(1,), **NO_TUNE))
    _, man = build(b, prof, out, BuildOptions(batches=(2,), **NO_TUNE))
    assert man["model"]["source"]["sha256"] == sha256_file(b)
    assert json.loads((out / MANIFEST).read_text())["batches"] == [2]
    x = np.random.default_rng(0).standard_normal((3, 32)).astype(np.float32)
    np.testing.assert_allclose(runtime.load(out)(x), x @ wb + bb, rtol=1e-5, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "art", "b.onnx"]


def test_random_input_verification_for_non_mnist_model(gemm, tmp_path, x86_host, prof):
    _, man = build(gemm, prof, tmp_path / "art",
                   BuildOptions(batches=(1, 3), **NO_TUNE))
    v = man["verification"]
    assert v["passed"] is True and v["accuracy"] is None and v["n"] == 64
    assert "random" in v["inputs"]
    assert man["inputs"] == [{"name": "x", "shape": ["N", 32], "dtype": "float32"}]
    assert man["outputs"][0]["shape"] == ["N", 16]
    assert man["weight_bytes"] == 4 * (32 * 16 + 16)


def test_static_batch_model_rejects_other_batches(tmp_path, prof, gemm_onnx):
    path, _, _ = gemm_onnx(tmp_path / "static.onnx", batch=2)
    with pytest.raises(ModelError, match="fixed batch of 2; cannot build batch 1"):
        build(path, prof, tmp_path / "art",
              BuildOptions(batches=(1, 2), **NO_TUNE))
    assert not (tmp_path / "art").exists()


def test_default_batches_follow_the_model(tmp_path, prof, gemm_onnx, x86_host, capsys):
    """A fixed batch builds that batch (as TFLite conversions have); a dynamic one 1 and 64."""
    fixed, _, _ = gemm_onnx(tmp_path / "fixed.onnx", batch=1)
    _, man = build(fixed, prof, tmp_path / "a1", BuildOptions(**{**NO_TUNE, "progress": True}))
    assert man["batches"] == [1]
    assert "batch: 1, the model's fixed batch" in capsys.readouterr().out
    dynamic, _, _ = gemm_onnx(tmp_path / "dyn.onnx")
    _, man = build(dynamic, prof, tmp_path / "a2", BuildOptions(**NO_TUNE))
    assert man["batches"] == [1, 64]


def test_static_batch_model_builds_its_batch(tmp_path, prof, gemm_onnx, x86_host):
    path, w, b = gemm_onnx(tmp_path / "static.onnx", batch=2)
    out, man = build(path, prof, tmp_path / "art", BuildOptions(batches=(2,), **NO_TUNE))
    assert man["verification"]["passed"] is True and man["batches"] == [2]
    x = np.random.default_rng(0).standard_normal((5, 32)).astype(np.float32)
    np.testing.assert_allclose(runtime.load(out)(x), x @ w + b, rtol=1e-5, atol=1e-5)


def test_corrupt_model_fails_before_anything_is_written(tmp_path, prof):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    with pytest.raises(ModelError):
        build(bad, prof, tmp_path / "art",
              BuildOptions(batches=(1,), **NO_TUNE))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]


@pytest.mark.parametrize("text, expect", [("1,64", (1, 64)), ("8", (8,)), (" 1, 4 ,", (1, 4))])
def test_as_batches(text, expect):
    assert as_batches(text) == expect


@pytest.mark.parametrize("text", ["", "0", "1,-2", "a", "1.5"])
def test_as_batches_rejects(text):
    with pytest.raises(TvmcompError):
        as_batches(text)


def test_out_that_cannot_be_created_fails_before_compiling(tmp_path, x86_host, gemm_onnx, prof,
                                                           capsys):
    """--out under a regular file: one line, before any compiling (it used to fail at the
    artifact write, after the whole compile, with a traceback)."""
    from tvmcomp import cli

    a, _, _ = gemm_onnx(tmp_path / "a.onnx")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactError, match="cannot create .*file for --out"):
        build(a, prof, tmp_path / "file" / "art", BuildOptions(batches=(1,), **NO_TUNE))
    assert cli.main(["build", str(a), "--profile", "x86_avx2", "--out",
                     str(tmp_path / "file" / "art"), "--tune-budget", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tvmcomp build: error: cannot create") and len(err.splitlines()) == 1


def test_non_classifier_on_mnist_shaped_input_verifies_outputs_only(tmp_path, x86_host, prof,
                                                                    eval_set):
    """An MNIST-shaped model whose output is not class scores (here: a Relu, [N,1,28,28]):
    outputs are compared, accuracy is not computed (it used to crash in argmax)."""
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "relu",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 28, 28])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 28, 28])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "relu.onnx"))
    _, man = build(tmp_path / "relu.onnx", prof, tmp_path / "art",
                   BuildOptions(batches=(1,), eval_set=eval_set, **NO_TUNE))
    v = man["verification"]
    assert v["passed"] is True and v["accuracy"] is None
    assert "is not class scores, so no accuracy" in v["inputs"]


def test_codebook_decode_auto_measures_where_each_layer_decodes(shared_lenet, tmp_path,
                                                                profile_with_db):
    """`build --codebook --codebook-decode auto`: each shared layer's kernels that decode its
    codes are timed against the float kernels reading it decoded at load (one run); a layer
    decodes at load where the former are slower by more than the margin; the manifest and
    the plan record timings, kernels and decision, the layer forms follow the decisions, and
    the artifact passes verification."""
    from tvmcomp.compiler import BuildOptions, build
    from tvmcomp.defaults import CODEBOOK_LOAD_MARGIN

    prof = profile_with_db(tmp_path / "db")
    art, man = build(shared_lenet.onnx, prof, tmp_path / "auto",
                     BuildOptions(batches=(1,), tune_budget_s=0, progress=False,
                                  codebook=True, codebook_decode="auto"))
    gate = man["codebook"]["decode_gate"]
    assert [d["layer"] for d in gate] == ["conv0", "conv1", "matmul2", "matmul3", "matmul4"]
    for d in gate:
        assert d["kernel_us"] > 0 and d["load_us"] > 0
        assert len(d["kernels"]) == len(d["load_kernels"]) == 1  # batch 1's
        assert set(d["kernels"]).isdisjoint(d["load_kernels"])
        assert d["at_load"] == (d["kernel_us"] > d["load_us"] * (1 + CODEBOOK_LOAD_MARGIN))
    forms = {r["layer"]: r["form"] for r in man["layers"]}
    assert {d["layer"]: forms[d["layer"]] for d in gate} == {
        d["layer"]: "codebook, decoded at load" if d["at_load"] else "codebook" for d in gate}
    plan = json.loads((art / "plan.json").read_text())
    assert plan["codebook_gate"] == gate
    assert plan["codebook_at_load"] == [d["layer"] for d in gate if d["at_load"]]
    assert man["verification"]["passed"]


def test_verify_tells_a_wrong_output_from_too_much_accuracy_lost(lenet, eval_set):
    """verify with an accuracy budget: outputs that agree with the reference but fall too far
    below float raise AccuracyDropError (the main job leaves such a form out); outputs that
    disagree with the reference raise a plain VerificationError, budget or not."""
    from tvmcomp.errors import AccuracyDropError
    from tvmcomp.verify import verify

    def ref(x):
        return ort_run(ort_session(str(lenet.onnx)), x)

    with pytest.raises(AccuracyDropError, match="below float"):
        verify(ref, str(lenet.onnx), (1, 1, 28, 28), "float32", eval_set, reference_fn=ref,
               max_accuracy_drop=-1.0)
    for drop in (-1.0, None):
        with pytest.raises(VerificationError) as e:
            verify(lambda x: ref(x) + 100.0 * np.eye(10, dtype=np.float32)[0], str(lenet.onnx),
                   (1, 1, 28, 28), "float32", eval_set, reference_fn=ref,
                   max_accuracy_drop=drop)  # class 0 always wins: wrong outputs
        assert type(e.value) is VerificationError and "max |err|" in str(e.value)
