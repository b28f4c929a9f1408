"""Loading artifacts: integrity checks, input checks and batch splitting."""

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from tvmcomp import runtime
from tvmcomp.compiler import BuildOptions, build
from tvmcomp.data import normalize
from tvmcomp.errors import ArtifactError, InputError


@pytest.fixture(scope="module")
def model(lenet_artifact):
    return runtime.load(lenet_artifact.path)


@pytest.fixture
def art_copy(lenet_artifact, tmp_path):
    return Path(shutil.copytree(lenet_artifact.path, tmp_path / "copy"))


def _edit_manifest(art, fn):
    path = art / "manifest.json"
    m = json.loads(path.read_text())
    fn(m)
    path.write_text(json.dumps(m))


def test_loaded_model(model, lenet_artifact):
    assert model.batches == [1, 8]
    assert model.input_shape == ("N", 1, 28, 28)
    assert model.input_dtype == "float32" and model.input_name == "input"
    assert model.path == lenet_artifact.path
    assert model.device.dlpack_device_type() == 1  # kDLCPU


def test_missing_dir(tmp_path):
    with pytest.raises(ArtifactError, match="artifact directory not found"):
        runtime.load(tmp_path / "nope")


def test_dir_without_manifest(tmp_path):
    (tmp_path / "model.so").write_bytes(b"\x7fELF")
    with pytest.raises(ArtifactError, match="no manifest.json; not a tvmcomp artifact"):
        runtime.load(tmp_path)


def test_corrupt_manifest(art_copy):
    (art_copy / "manifest.json").write_text('{"schema_version": 1, ')
    with pytest.raises(ArtifactError, match="corrupt manifest"):
        runtime.load(art_copy)


def test_other_schema_version(art_copy):
    _edit_manifest(art_copy, lambda m: m.update(schema_version=99))
    with pytest.raises(ArtifactError, match="unsupported manifest schema 99"):
        runtime.load(art_copy)


def test_manifest_missing_key(art_copy):
    _edit_manifest(art_copy, lambda m: m.pop("entry_points"))
    with pytest.raises(ArtifactError, match="lacks 'entry_points'"):
        runtime.load(art_copy)


@pytest.mark.parametrize("on_load, said", [
    (42, "runtime.on_load must be a function name or null, got 42"),
    ("", "runtime.on_load must be a function name or null"),
    ("decode_weights", "the on-load function 'decode_weights' failed")])
def test_bad_on_load_function(art_copy, on_load, said):
    """An edited ``runtime.on_load`` (not a name, or a function model.so does not have) is
    one clear error at load, not a crash at the first call."""
    _edit_manifest(art_copy, lambda m: m["runtime"].update(on_load=on_load))
    with pytest.raises(ArtifactError, match=said):
        runtime.load(art_copy)


def test_tampered_library(art_copy):
    lib = art_copy / "model.so"
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0x01
    lib.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256") as e:
        runtime.load(art_copy)
    assert "does not match the manifest" in str(e.value)


def test_replaced_library(art_copy):
    (art_copy / "model.so").write_bytes(b"not a shared library")
    with pytest.raises(ArtifactError, match="sha256"):
        runtime.load(art_copy)


def test_missing_library(art_copy):
    (art_copy / "model.so").unlink()
    with pytest.raises(ArtifactError, match="model.so is missing"):
        runtime.load(art_copy)


def test_unloadable_library_with_matching_hash(art_copy):
    """A library that matches its (re-computed) hash but is not a shared object."""
    from tvmcomp.artifact import sha256_file

    lib = art_copy / "model.so"
    lib.write_bytes(b"garbage" * 100)
    _edit_manifest(art_copy, lambda m: m["library"].update(sha256=sha256_file(lib)))
    with pytest.raises(ArtifactError, match="cannot load"):
        runtime.load(art_copy)


def test_copied_artifact_loads_and_runs(art_copy, model, eval_set):
    x = normalize(eval_set.images[:9])
    np.testing.assert_array_equal(runtime.load(art_copy)(x), model(x))


def test_missing_cpu_flags(art_copy):
    _edit_manifest(art_copy, lambda m: m["profile"]["requires_cpu_flags"].extend(
        ["fake_flag_one", "fake_flag_two"]))
    with pytest.raises(ArtifactError) as e:
        runtime.load(art_copy)
    msg = str(e.value)
    assert "lacks fake_flag_one, fake_flag_two" in msg and "x86_avx2" in msg
    assert "avx2," not in msg.split("lacks")[1]  # only the missing flags are named


def test_other_architecture(art_copy):
    _edit_manifest(art_copy, lambda m: m["profile"]["target"].update(mtriple="aarch64-linux-gnu"))
    with pytest.raises(ArtifactError, match="lacks arch:aarch64"):
        runtime.load(art_copy)


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.uint8])
def test_wrong_dtype(model, dtype):
    with pytest.raises(InputError, match=r"must be float32, got " + np.dtype(dtype).name):
        model(np.zeros((2, 1, 28, 28), dtype=dtype))


@pytest.mark.parametrize("shape", [(2, 28, 28), (2, 1, 28, 27), (2, 3, 28, 28), (1, 1, 1, 28, 28),
                                   (784,)])
def test_wrong_shape(model, shape):
    with pytest.raises(InputError, match=r"must have shape \[N, 1, 28, 28\], got "):
        model(np.zeros(shape, dtype=np.float32))


def test_empty_batch(model):
    with pytest.raises(InputError, match="empty batch"):
        model(np.zeros((0, 1, 28, 28), dtype=np.float32))


def test_not_an_array(model):
    with pytest.raises(InputError, match="numpy array, got list"):
        model([[0.0]])


def test_uncompiled_entry(model):
    assert model.entry(8) is not None
    with pytest.raises(InputError, match=r"no compiled entry for batch 5; compiled: \[1, 8\]"):
        model.entry(5)


def test_non_contiguous_input(model, eval_set):
    x = normalize(eval_set.images[:16])
    view = x[::2]
    assert not view.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(model(view), model(np.ascontiguousarray(view)))


@pytest.mark.parametrize("n", [3, 8, 65, 130])
def test_odd_batches_match_one_by_one(model, eval_set, n):
    x = normalize(eval_set.images[:n])
    got = model(x)
    one = np.concatenate([model(x[i: i + 1]) for i in range(n)])
    assert got.shape == (n, 10)
    np.testing.assert_allclose(got, one, rtol=0, atol=1e-5)


def test_padding_when_batch_1_is_not_compiled(tmp_path, x86_host, gemm_onnx, profile_with_db):
    """With only batch 4 compiled, 1, 3, 5 and 9 inputs are padded and trimmed."""
    path, w, b = gemm_onnx(tmp_path / "g.onnx")
    out, _ = build(path, profile_with_db(tmp_path / "db"), tmp_path / "art",
                   BuildOptions(batches=(4,), tune_budget_s=0, progress=False))
    m = runtime.load(out)
    assert m.batches == [4]
    x = np.random.default_rng(0).standard_normal((9, 32)).astype(np.float32)
    for n in (1, 3, 4, 5, 9):
        got = m(x[:n])
        assert got.shape == (n, 16)
        np.testing.assert_allclose(got, x[:n] @ w + b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("edit, expect", [
    (lambda m: m.update(entry_points={"1": "main_b1", "7": "main_b7"}),
     "entry point 'main_b7' (batch 7) is not in model.so"),
    (lambda m: m.update(entry_points={"0": "main_b1"}), "batch size >= 1"),
    (lambda m: m.update(entry_points=["main_b1"]), "must map batch sizes to names"),
    (lambda m: m.update(inputs=[{"name": "x", "shape": "N", "dtype": "float32"}]),
     "needs a name, a shape and a dtype"),
    (lambda m: m["library"].update(file="../model.so"), "is not a file name"),
    (lambda m: m.update(precision="int4"), "precision 'int4' is not fp32 or int8"),
    (lambda m: m.update(profile=["x86_avx2"]), "must be a profile object"),
])
def test_edited_manifest_is_one_clear_error(art_copy, edit, expect):
    """The typed manifest checks what the readers use; a manifest that does not belong to
    its model.so fails at load with one line, not a TVM traceback later."""
    _edit_manifest(art_copy, edit)
    with pytest.raises(ArtifactError, match=re.escape(expect)):
        runtime.load(art_copy)


def test_thread_pool_follows_the_manifest_unless_the_user_set_it(monkeypatch):
    import tvmcomp
    from tvmcomp.runtime import _size_thread_pool

    monkeypatch.setattr(tvmcomp, "USABLE_CORES", 8)
    monkeypatch.setattr(tvmcomp, "THREADS_SET_BY_USER", False)
    monkeypatch.setenv("TVM_NUM_THREADS", "8")
    _size_thread_pool(2)
    assert os.environ["TVM_NUM_THREADS"] == "2"
    _size_thread_pool(16)  # never more than the usable cores
    assert os.environ["TVM_NUM_THREADS"] == "8"
    monkeypatch.setattr(tvmcomp, "THREADS_SET_BY_USER", True)
    monkeypatch.setenv("TVM_NUM_THREADS", "3")
    _size_thread_pool(2)
    assert os.environ["TVM_NUM_THREADS"] == "3"


def test_non_finite_inputs_are_refused_unless_asked(lenet_artifact):
    """NaN/Inf would give finite, confident logits: refused by default, allowed on request."""
    x = np.zeros((2, 1, 28, 28), np.float32)
    x[1, 0, 3, 4] = np.nan
    with pytest.raises(InputError, match="contains NaN or Inf"):
        runtime.load(lenet_artifact.path)(x)
    x[1, 0, 3, 4] = np.inf
    with pytest.raises(InputError, match="check_finite=False"):
        runtime.load(lenet_artifact.path)(x)
    assert runtime.load(lenet_artifact.path, check_finite=False)(x).shape == (2, 10)


def test_stale_temp_dirs_of_dead_writers_are_swept(tmp_path):
    """A build killed mid-write (SIGKILL) leaves a temp dir; the next write removes it, but
    never one of a live writer."""
    import subprocess
    import sys

    from tvmcomp.artifact import OWNER, sweep_stale_temps

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale, live, foreign = (tmp_path / ".art.x1", tmp_path / ".art.x2", tmp_path / ".art.x3")
    for d, owner in ((stale, dead), (live, str(os.getpid())), (foreign, None)):
        d.mkdir()
        if owner:
            (d / OWNER).write_text(owner)
    assert sweep_stale_temps(tmp_path / "art") == [stale]
    assert not stale.exists() and live.exists() and foreign.exists()


def test_pinned_sha256(lenet_artifact, art_copy):
    """load(expected_sha256=...) refuses any other model.so, even with a matching manifest."""
    from tvmcomp.artifact import sha256_file

    sha = lenet_artifact.manifest["library"]["sha256"]
    assert runtime.load(lenet_artifact.path, expected_sha256=sha.upper()).batches
    lib = art_copy / "model.so"
    lib.write_bytes(lib.read_bytes() + b"\0")  # another library, manifest fixed up to match
    _edit_manifest(art_copy, lambda m: m["library"].update(sha256=sha256_file(lib)))
    with pytest.raises(ArtifactError, match="is not the pinned"):
        runtime.load(art_copy, expected_sha256=sha)


def test_artifact_directory_is_readable_like_any_build_output(lenet_artifact):
    umask = os.umask(0)
    os.umask(umask)
    assert (lenet_artifact.path.stat().st_mode & 0o777) == 0o777 & ~umask
