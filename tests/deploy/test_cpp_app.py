"""The C++ deploy example (examples/cpp_deploy) built natively: outputs, accuracy and errors."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess

import numpy as np
import pytest


def _run(app, *args):
    return subprocess.run([str(app), *map(str, args)], capture_output=True, text=True, timeout=120)


def test_native_app_matches_python_runtime(x86_app, lenet_artifact, mnist_idx):
    from tvmcomp import runtime
    from tvmcomp.data import normalize
    from tvmcomp.deploy import run_app

    res = run_app(lenet_artifact.path, mnist_idx.images, mnist_idx.labels, repeat=20, app=x86_app)
    ref = runtime.load(lenet_artifact.path)(normalize(mnist_idx.raw))
    assert np.abs(res.logits - ref).max() <= 1e-5
    assert res.accuracy == pytest.approx(float(np.mean(ref.argmax(1) == mnist_idx.y)))
    assert res.accuracy > 0.8  # a trained LeNet on real digits
    assert 0 < res.latency_us < 1e5
    assert "predictions" not in res.stdout  # --quiet


def test_prints_predictions_accuracy_latency(x86_app, lenet_artifact, mnist_idx):
    # 13 images: one call at batch 8, then five at batch 1 (largest compiled size that fits)
    r = _run(x86_app, lenet_artifact.path, mnist_idx.images, mnist_idx.labels, "--limit", 13)
    assert r.returncode == 0, r.stderr
    assert "predictions: " in r.stdout and "accuracy: " in r.stdout
    assert "latency_us: median" in r.stdout and "images: 13" in r.stdout


def test_thread_pool_sized_from_the_manifest(x86_app, lenet_artifact, mnist_idx):
    """Without TVM_NUM_THREADS the app sizes TVM's pool from the manifest (tvmcomp_threads.h);
    a value the user set wins."""
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    args = [str(x86_app), str(lenet_artifact.path), str(mnist_idx.images), "--limit", "2"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert "threads: " in r.stdout and "(manifest runtime.threads 2, usable cores" in r.stdout
    r = subprocess.run(args, capture_output=True, text=True, timeout=120,
                       env={**env, "TVM_NUM_THREADS": "1"})
    assert "threads: TVM_NUM_THREADS=1 (set by the user)" in r.stdout


def _one_line_error(r, *needles):
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tvmcomp_deploy: error: "), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_refuses_artifact_for_other_arch(x86_app, mnist_idx, arm_artifact):
    r = _run(x86_app, arm_artifact.path, mnist_idx.images)
    _one_line_error(r, "arm_cortex_a72", "aarch64", "x86_64")


def test_refuses_tampered_library(x86_app, lenet_artifact, mnist_idx, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(lenet_artifact.path, art)
    with open(art / "model.so", "ab") as f:
        f.write(b"\0")
    _one_line_error(_run(x86_app, art, mnist_idx.images), "sha256")


def test_input_errors(x86_app, lenet_artifact, mnist_idx, tmp_path):
    gz = tmp_path / "images.gz"
    gz.write_bytes(gzip.compress(mnist_idx.images.read_bytes()))
    _one_line_error(_run(x86_app, lenet_artifact.path, gz), "gunzip")
    _one_line_error(_run(x86_app, tmp_path, mnist_idx.images), "manifest.json")
    _one_line_error(_run(x86_app, lenet_artifact.path, mnist_idx.labels), "magic 2051")
    _one_line_error(_run(x86_app, lenet_artifact.path), "usage")


def test_app_pins_the_shipped_sha256(x86_app, lenet_artifact, mnist_idx):
    sha = lenet_artifact.manifest["library"]["sha256"]
    ok = _run(x86_app, lenet_artifact.path, mnist_idx.images, "--limit", 1, "--expect-sha256", sha)
    assert ok.returncode == 0, ok.stderr
    bad = _run(x86_app, lenet_artifact.path, mnist_idx.images, "--limit", 1,
               "--expect-sha256", "0" * 64)
    _one_line_error(bad, "is not the pinned", "not the model.so you shipped")


def test_layers_decoded_at_load_run_in_python_and_cpp(x86_app, shared_lenet, mnist_idx,
                                                      tmp_path, profile_with_db):
    """`build --codebook --codebook-decode load`: model.so stores the codes only (bit-packed
    codes and unpadded codebooks: never more than decoding in the kernels), the manifest
    names the on-load function and counts the decoded weights in RAM; the Python runtime and
    the C++ app both call it once and give the logits of the build that decodes in its
    kernels."""
    from tvmcomp import runtime
    from tvmcomp.compiler import BuildOptions, build
    from tvmcomp.data import normalize
    from tvmcomp.deploy import run_app

    prof = profile_with_db(tmp_path / "db")
    opts = dict(batches=(1, 8), tune_budget_s=0, progress=False, codebook=True)
    loaded, man = build(shared_lenet.onnx, prof, tmp_path / "load",
                        BuildOptions(codebook_decode="load", **opts))
    kernel, kman = build(shared_lenet.onnx, prof, tmp_path / "kernel", BuildOptions(**opts))
    assert man["runtime"]["on_load"] == "decode_weights" and kman["runtime"]["on_load"] is None
    # the same codes, bit-packed; codebooks as long as the codes need (kernels: a power of 2)
    pairs = [(r["stored_bytes"], k["stored_bytes"]) for r, k in zip(man["layers"], kman["layers"])]
    assert all(a <= b for a, b in pairs) and any(a < b for a, b in pairs), pairs
    load_less = sum(b - a for a, b in pairs)
    assert man["weight_bytes"] <= kman["weight_bytes"] - load_less  # (kernels: unpacking shifts)
    fp32 = sum(r["fp32_bytes"] for r in man["layers"])
    assert {r["form"] for r in man["layers"]} == {"codebook, decoded at load"}
    assert man["memory"]["decoded_at_load"] == fp32 and "decoded_at_load" in man["memory"]
    assert set(man["memory"]["entries"]) == {"main_b1", "main_b8"}
    assert all(e["total"] >= fp32 + man["weight_bytes"] for e in man["memory"]["entries"].values())
    x = normalize(mnist_idx.raw)
    ref = runtime.load(kernel)(x)
    np.testing.assert_allclose(runtime.load(loaded)(x), ref, rtol=1e-5, atol=1e-5)
    res = run_app(loaded, mnist_idx.images, mnist_idx.labels, repeat=2, app=x86_app)
    assert np.abs(res.logits.reshape(ref.shape) - ref).max() <= 1e-5
