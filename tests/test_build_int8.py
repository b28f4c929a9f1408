"""``build --quantize int8``: compiler integration, manifest, verification gate, CLI flags."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tvmcomp import cli
from tvmcomp.compiler import QDQ_REFERENCE, QUANT_CONFIG, BuildOptions, build
from tvmcomp.errors import AccuracyDropError, TvmcompError, VerificationError
from tvmcomp.quant import Percentile, PerTensor, QuantConfig


@pytest.fixture(scope="module")
def int8_artifact(tmp_path_factory, lenet, eval_set, profile_with_db):
    d = tmp_path_factory.mktemp("int8")
    cfg = QuantConfig(calibration=Percentile(99.99), activations="asymmetric",
                      weights=PerTensor(), num_calib=64)
    # the fixture model is trained for one epoch only (86-88 %): calibration clips it harder
    # than a converged model (scripts/bench_lenet5_int8.py measures the real accuracy), so
    # the gate is loosened to 5 pt here; test_accuracy_drop_gate_refuses_artifact tests it.
    out, man = build(lenet.onnx, profile_with_db(d / "db"), d / "art",
                     BuildOptions(batches=(1, 8), tune_budget_s=0, eval_set=eval_set,
                                  progress=False, quant=cfg, max_accuracy_drop=0.05))
    return out, man, cfg


def test_manifest_records_scheme_and_layers(int8_artifact):
    out, man, cfg = int8_artifact
    assert man["precision"] == "int8"
    q = man["quantization"]
    assert q["accumulate"] == "float32"   # x86 without VNNI: exact float32 accumulation
    assert q["config"]["calibration"] == {"method": "percentile", "percentile": 99.99,
                                          "bins": 2048}
    assert q["config"]["activations"] == "asymmetric"
    assert q["config"]["weights"]["granularity"] == "per_tensor"
    assert len(q["layers"]) == 5  # 2 conv + 3 fc
    assert QuantConfig.from_json((out / QUANT_CONFIG).read_text()) == cfg
    assert (out / QDQ_REFERENCE).is_file()
    import onnx  # the reference model in the artifact names no host path (the checkpoint's)

    ref = onnx.load(str(out / QDQ_REFERENCE))
    assert "tvmcomp.checkpoint" not in {p.key for p in ref.metadata_props}


def test_manifest_kernels_and_passes_describe_model_so(int8_artifact, kernels_in_so):
    out, man, _ = int8_artifact
    assert set(man["kernels"]) == kernels_in_so(out)
    # x86_avx2: each of LeNet-5's 5 convs / matmuls in both batch entries is our exact int8
    # kernel with its requantization in it (asymmetric activations: summed as signed)
    layers = [k for k in man["kernels"] if k.startswith(("avx2_conv_", "avx2_dense_"))]
    assert len(layers) == 10 and all("_int8_signed_" in k for k in layers)
    acc = man["quantization"]["accumulate"]
    assert f"quantize/QuantizeInt8(accumulate={acc})" == man["passes"][0]


def test_int8_weights_are_a_quarter_of_fp32(int8_artifact, lenet_artifact):
    _, man, _ = int8_artifact
    ratio = man["weight_bytes"] / lenet_artifact.manifest["weight_bytes"]
    assert 0.2 < ratio < 0.3, ratio


def test_verified_against_qdq_reference_and_float(int8_artifact):
    _, man, _ = int8_artifact
    v = man["verification"]
    assert v["passed"] is True
    assert v["reference"].startswith("onnxruntime QDQ")
    assert abs(v["accuracy"] - v["reference_accuracy"]) <= 0.0005
    assert v["float_accuracy"] - v["accuracy"] <= v["max_accuracy_drop"] == 0.05


def test_int8_artifact_runs_through_runtime(int8_artifact, eval_set):
    from tvmcomp import runtime
    from tvmcomp.data import normalize
    from tvmcomp.quant import run_qdq_reference

    out, man, _ = int8_artifact
    model = runtime.load(out)
    x = normalize(eval_set.images[:37])
    got = model(x)
    ref = run_qdq_reference(str(out / QDQ_REFERENCE), x)
    assert np.array_equal(got.argmax(1), ref.argmax(1))
    assert np.max(np.abs(got - ref)) < 0.05 * np.max(np.abs(ref))


def test_accuracy_drop_gate_refuses_artifact(tmp_path, lenet, eval_set, profile_with_db):
    with pytest.raises(AccuracyDropError, match="below float"):
        build(lenet.onnx, profile_with_db(tmp_path / "db"), tmp_path / "art",
              BuildOptions(batches=(1,), tune_budget_s=0, eval_set=eval_set, progress=False,
                           quant=QuantConfig(num_calib=16), max_accuracy_drop=-1.0))
    assert not (tmp_path / "art").exists()


def test_already_quantized_model_rejected(tmp_path, int8_artifact, profile_with_db):
    out, _, _ = int8_artifact
    with pytest.raises(TvmcompError, match="already quantized"):
        build(out / QDQ_REFERENCE, profile_with_db(tmp_path / "db"), tmp_path / "x",
              BuildOptions(batches=(1,), tune_budget_s=0, progress=False, quant=QuantConfig()))


def test_non_mnist_model_needs_calibration_data(tmp_path, gemm_onnx, profile_with_db):
    path, _, _ = gemm_onnx(tmp_path / "g.onnx")
    with pytest.raises(TvmcompError, match="--calib-data"):
        build(path, profile_with_db(tmp_path / "db"), tmp_path / "x",
              BuildOptions(batches=(1,), tune_budget_s=0, progress=False, quant=QuantConfig()))


def test_qdq_input_compiles_to_int8_without_quantize_flag(tmp_path, int8_artifact,
                                                           profile_with_db, eval_set):
    out, _, _ = int8_artifact
    art, man = build(out / QDQ_REFERENCE, profile_with_db(tmp_path / "db"), tmp_path / "qdq",
                     BuildOptions(batches=(1,), tune_budget_s=0, eval_set=eval_set,
                                  progress=False))
    assert man["precision"] == "int8"
    assert man["quantization"] == {"source": "QDQ model given as input", "accumulate": "float32"}
    assert man["verification"]["passed"] is True


@pytest.mark.parametrize("argv, expect", [
    (["--calib", "entropy"], "--calib needs --quantize int8"),
    (["--asymmetric"], "--symmetric needs --quantize int8"),
    (["--quantize", "int8", "--calib", "median"], "calibration must be minmax"),
    (["--quantize", "int8", "--calib-data", "/nonexistent.npy"], "not a readable .npy"),
])
def test_cli_quant_flag_errors(argv, expect, capsys, lenet, tmp_path):
    rc = cli.main(["build", str(lenet.onnx), "--out", str(tmp_path / "a"), "--tune-budget", "0",
                   *argv])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0], err


def test_cli_quant_config_parsing(lenet, tmp_path):
    args = cli.make_parser().parse_args([
        "build", str(lenet.onnx), "--out", "x", "--quantize", "int8", "--calib", "percentile:99.9",
        "--per-tensor", "--asymmetric", "--skip", "/fc3/Gemm", "--calib-images", "100"])
    cfg = cli._quant_config(args)
    assert cfg.calibration.method == "percentile" and cfg.calibration.percentile == 99.9
    assert cfg.weights.granularity == "per_tensor" and cfg.activations == "asymmetric"
    assert cfg.skip == ("/fc3/Gemm",) and cfg.num_calib == 100
    saved = tmp_path / "q.json"
    saved.write_text(json.dumps(cfg.to_dict()))
    args = cli.make_parser().parse_args(["build", "m", "--out", "x", "--quantize", "int8",
                                         "--quant-config", str(saved)])
    assert cli._quant_config(args) == cfg
