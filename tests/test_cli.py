"""The command line: help, targets, error reporting (exit 2, one line, no traceback), eval, bench.

Each subprocess imports TVM (several seconds on 2 cores), so only behaviours that need a real
process (exit status, stderr, the console script) run in one; the rest call ``main()``.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tvmcomp import cli
from tvmcomp.targets import load_profile

REPO = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ["train", "export", "compress", "build", "pipeline", "tune", "eval", "bench", "rpc",
               "targets", "run"]


def _one_error_line(proc, cmd):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"tvmcomp {cmd}: error: ")
    return lines[0]


def test_top_level_help(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in SUBCOMMANDS:
        assert f"  {cmd} " in out


@pytest.mark.parametrize("cmd", SUBCOMMANDS)
def test_subcommand_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([cmd, "--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: tvmcomp {cmd}")


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([])
    assert e.value.code == 2


@pytest.mark.parametrize("argv, expect", [
    (["build", "m.onnx", "--batch", "0"], "batch sizes must be >= 1"),
    (["build", "m.onnx", "--tune-budget", "-1"], "a budget cannot be negative"),
    (["train", "--out", "x.pt", "--epochs", "0"], "expected an integer >= 1"),
    (["build", "m.onnx"], "required: --out"),
    (["tune", "m.onnx", "--budget", "5"], "unrecognized arguments: --budget"),  # one name
    (["compress", "x.pt", "--out", "y.pt", "--prune", "1.5"], "sparsity must be in [0, 1)"),
    (["compress", "x.pt"], "required: --out"),
    (["rpc", "server", "--port", "x"], "expected a TCP port 1-65535"),
])
def test_bad_arguments(argv, expect, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert expect in err
    # one line, no usage block, and a hint to the command's help
    assert err.count("\n") == 1 and err.startswith(f"tvmcomp {argv[0]}")
    assert f"(see tvmcomp {argv[0]}" in err and err.rstrip().endswith(" --help)")


def test_export_in_process(lenet, tmp_path, capsys):
    import onnx

    dyn, static = tmp_path / "dyn.onnx", tmp_path / "static.onnx"
    assert cli.main(["export", str(lenet.checkpoint), "--out", str(dyn)]) == 0
    assert cli.main(["export", str(lenet.checkpoint), "--out", str(static),
                     "--static-batch", "3"]) == 0
    out = capsys.readouterr().out
    assert "dynamic batch" in out and "batch 3" in out
    d = onnx.load(str(dyn)).graph.input[0].type.tensor_type.shape.dim[0]
    s = onnx.load(str(static)).graph.input[0].type.tensor_type.shape.dim[0]
    assert d.dim_param == "N" and s.dim_value == 3
    meta = {p.key: p.value for p in onnx.load(str(dyn)).metadata_props}
    assert meta["tvmcomp.checkpoint"] == str(lenet.checkpoint.resolve())


def test_compress_missing_checkpoint(tmp_path, capsys):
    assert cli.main(["compress", str(tmp_path / "none.pt"), "--out", str(tmp_path / "o.pt"),
                     "--prune", "0.5", "--epochs", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tvmcomp compress: error:") and "none.pt" in err
    assert not (tmp_path / "o.pt").exists()


def test_tune_plan_errors(tmp_path, capsys):
    """tune --plan: an unreadable plan and a plan with --sparse are one-line errors."""
    assert cli.main(["tune", "m.onnx", "--profile", "x86_avx2", "--plan",
                     str(tmp_path / "none")]) in (2,)
    assert "cannot read a build plan" in capsys.readouterr().err
    plan = ('{"version": 2, "profile": "x86_avx2", "batches": [1], '
            '"int8_accumulate": "float32", "sparse": null, "model_sha256": "", "quant": null}')
    (tmp_path / "good.json").write_text(plan)
    assert cli.main(["tune", "m.onnx", "--profile", "x86_avx2", "--plan",
                     str(tmp_path / "good.json"), "--sparse"]) == 2
    assert "drop --sparse" in capsys.readouterr().err
    # the --quantize flags the artifact was built with go with the plan: past that check,
    # the missing model is what stops this call
    assert cli.main(["tune", str(tmp_path / "m.onnx"), "--profile", "x86_avx2", "--plan",
                     str(tmp_path / "good.json"), "--quantize", "int8"]) == 2
    err = capsys.readouterr().err
    assert "--plan" not in err and "m.onnx" in err
    (tmp_path / "plan.json").write_text('{"version": 2}')
    assert cli.main(["tune", "m.onnx", "--profile", "x86_avx2", "--plan",
                     str(tmp_path / "plan.json")]) == 2
    assert "not a tvmcomp build plan" in capsys.readouterr().err


def test_tune_plan_is_bound_to_its_model_and_precision(tmp_path, capsys, gemm_onnx):
    """A plan names the model file and the --quantize options it was made with; tune --plan
    refuses another model or other precision flags with one line."""
    from tvmcomp.artifact import sha256_file
    from tvmcomp.plan import BuildPlan
    from tvmcomp.quant import QuantConfig

    m, _, _ = gemm_onnx(tmp_path / "m.onnx", seed=1)
    other, _, _ = gemm_onnx(tmp_path / "other.onnx", seed=2)
    fp32 = BuildPlan("x86_avx2", (1,), "float32", None, sha256_file(m), None)
    (tmp_path / "fp32.json").write_text(fp32.to_json())
    int8 = BuildPlan("x86_avx2", (1,), "float32", None, sha256_file(m),
                     QuantConfig().to_dict())
    (tmp_path / "int8.json").write_text(int8.to_json())
    assert BuildPlan.from_json(int8.to_json()) == int8

    def tune(*args):
        rc = cli.main(["tune", *args, "--profile", "x86_avx2", "--tune-budget", "0",
                       "--tuning-dir", str(tmp_path / "c")])
        return rc, capsys.readouterr()

    rc, io = tune(str(other), "--plan", str(tmp_path / "fp32.json"))
    assert rc == 2 and "the plan was made for another model" in io.err
    assert len(io.err.strip().splitlines()) == 1
    rc, io = tune(str(m), "--plan", str(tmp_path / "int8.json"))
    assert rc == 2 and "made with --quantize int8" in io.err and "this call has no --quantize" \
        in io.err
    rc, io = tune(str(m), "--plan", str(tmp_path / "fp32.json"))
    assert rc == 0, io.err


def test_export_missing_checkpoint(tmp_path, capsys):
    assert cli.main(["export", str(tmp_path / "no.pt"), "--out", str(tmp_path / "x.onnx")]) == 2
    assert capsys.readouterr().err.startswith("tvmcomp export: error: checkpoint not found")
    assert not (tmp_path / "x.onnx").exists()


def test_print_pipeline(capsys):
    assert cli.main(["pipeline", "--profile", "x86_avx2", "--sparse"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "1. quantize", "2. lowrank", "3. layer_forms", "4. canonicalize", "5. dispatch",
        "6. legalize_fuse", "7. schedule", "8. lower"]
    assert lines[0] == "1. quantize: QuantizeInt8(accumulate=float32)"  # AVX2: exact float32
    assert lines[1] == "2. lowrank: LowRankFold(off)"
    assert lines[2] == ("3. layer_forms: SparseDense(threshold=0.7), Int8Vnni(isa=avx2), "
                        "CodebookDense(off)")
    assert "MetaScheduleApplyDatabase" in lines[6]
    assert cli.main(["pipeline", "--profile", "x86_avx512"]) == 0  # its mcpu has VNNI
    assert "SparseDense(off), Int8Vnni, CodebookDense(off)\n" in capsys.readouterr().out


def test_targets_console_script():
    exe = Path(sys.executable).with_name("tvmcomp")
    if not exe.is_file():
        pytest.skip(f"console script not installed beside {sys.executable}")
    proc = subprocess.run([str(exe), "targets"], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()[1:]}
    assert {"x86_avx2", "x86_avx512"} <= set(rows)
    for name, row in rows.items():
        assert row[1] == load_profile(name).family
        assert row[2] == ("yes" if load_profile(name).runs_here() else "no")


def test_commands_that_compile_start_without_torch_and_a_closed_pipe_is_quiet():
    """`tvmcomp targets` (as build, eval, tune) imports TVM with PyTorch marked absent, so
    TVM starts without it, and unmarks it: XGBoost (MetaSchedule's cost model, first
    imported mid-tuning) then imports (with the mark left, scipy under it crashed on the
    None). Its reader closing the pipe early (`| head`) is no traceback."""
    probe = ("import sys, runpy; sys.argv = ['tvmcomp', 'targets']\n"
             "try:\n    runpy.run_module('tvmcomp.cli', run_name='__main__')\n"
             "finally:\n    print('torch', 'torch' in sys.modules, file=sys.stderr)\n"
             "    import xgboost\n    print('xgboost', 'torch' in sys.modules, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "torch False" in proc.stderr and "xgboost False" in proc.stderr, proc.stderr
    p = subprocess.Popen([sys.executable, "-m", "tvmcomp.cli", "targets"], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.stdout.close()  # before it writes a line
    err = p.stderr.read()
    assert p.wait(timeout=300) == 141 and err == "", err


def test_build_unknown_profile(tmp_path, lenet, run_tvmcomp):
    out = tmp_path / "art"
    proc = run_tvmcomp("build", str(lenet.onnx), "--profile", "x86_avx3", "--out", str(out),
                   "--tune-budget", "0")
    line = _one_error_line(proc, "build")
    assert "unknown profile 'x86_avx3'; available: " in line and "x86_avx2, x86_avx512" in line
    assert not out.exists()


def test_build_bad_codebook_decode_is_a_usage_error(tmp_path, capsys, lenet):
    """`--codebook-decode` takes kernel, load or auto; anything else is refused before any
    work, naming the choices."""
    with pytest.raises(SystemExit) as e:
        cli.main(["build", str(lenet.onnx), "--out", str(tmp_path / "art"), "--codebook",
                  "--codebook-decode", "disk"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "invalid choice: 'disk'" in err
    assert "'kernel', 'load', 'auto'" in err and not (tmp_path / "art").exists()


def test_build_corrupt_onnx(tmp_path, lenet, run_tvmcomp):
    raw = lenet.onnx.read_bytes()
    bad = tmp_path / "half.onnx"
    bad.write_bytes(raw[: len(raw) // 2])
    out = tmp_path / "art"
    proc = run_tvmcomp("build", str(bad), "--profile", "x86_avx2", "--out", str(out),
                   "--tune-budget", "0", "--batch", "1")
    line = _one_error_line(proc, "build")
    assert "half.onnx: corrupt or truncated ONNX file" in line
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["half.onnx"]


def test_build_small_model(tmp_path, x86_host, run_tvmcomp, gemm_onnx):
    """A whole CLI build, with a profile file whose tuning database is a temp folder."""
    src = (REPO / "targets" / "x86_avx2.toml").read_text()
    prof = tmp_path / "x86_test.toml"
    prof.write_text(f'tuning_db = "{tmp_path / "db"}"\n' + src)
    onnx_path, _, _ = gemm_onnx(tmp_path / "g.onnx")
    out = tmp_path / "art"
    proc = run_tvmcomp("build", str(onnx_path), "--profile", str(prof), "--out", str(out),
                   "--tune-budget", "0", "--batch", "1,2")
    assert proc.returncode == 0, proc.stderr
    man = json.loads((out / "manifest.json").read_text())
    assert man["profile"]["name"] == "x86_test" and man["batches"] == [1, 2]
    assert man["verification"]["passed"] is True
    assert man["tuning"]["stopped_by"] == "budget 0"
    assert f"wrote {out}" in proc.stdout
    assert not (tmp_path / "db").exists()


def test_eval_json(lenet_artifact, eval_set, run_tvmcomp):
    proc = run_tvmcomp("eval", str(lenet_artifact.path), "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert {"accuracy", "n", "eval_set", "artifact"} <= set(res)
    assert res["n"] == len(eval_set)
    assert res["eval_set"] == eval_set.source
    assert res["artifact"] == str(lenet_artifact.path)
    # the same images as the build's verification, so the same accuracy
    assert res["accuracy"] == pytest.approx(lenet_artifact.manifest["verification"]["accuracy"])


def test_eval_text_in_process(lenet_artifact, eval_set, capsys):
    assert cli.main(["eval", str(lenet_artifact.path)]) == 0
    out = capsys.readouterr().out
    acc = lenet_artifact.manifest["verification"]["accuracy"]
    assert f"accuracy {acc:.4%}" in out and f"/{len(eval_set)}) on {eval_set.source}" in out


def test_eval_rejects_non_mnist_artifact(tmp_path, capsys, x86_host, gemm_onnx, profile_with_db):
    from tvmcomp.compiler import BuildOptions, build

    onnx_path, _, _ = gemm_onnx(tmp_path / "g.onnx")
    out, _ = build(onnx_path, profile_with_db(tmp_path / "db"), tmp_path / "art",
                   BuildOptions(batches=(1,), tune_budget_s=0, progress=False))
    assert cli.main(["eval", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tvmcomp eval: error: ") and "is not MNIST-shaped" in err


def test_eval_tampered_artifact(lenet_artifact, tmp_path, run_tvmcomp):
    art = Path(shutil.copytree(lenet_artifact.path, tmp_path / "art"))
    lib = art / "model.so"
    data = bytearray(lib.read_bytes())
    data[100] ^= 0xFF
    lib.write_bytes(bytes(data))
    proc = run_tvmcomp("eval", str(art), "--json")
    line = _one_error_line(proc, "eval")
    assert "sha256" in line
    assert proc.stdout == ""


def test_eval_missing_artifact(tmp_path, capsys):
    assert cli.main(["eval", str(tmp_path / "nope")]) == 2
    assert "artifact directory not found" in capsys.readouterr().err


def test_bench_json(lenet_artifact, run_tvmcomp):
    proc = run_tvmcomp("bench", str(lenet_artifact.path), "--json", "--batch", "1")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["unit"] == "us"
    assert list(res["results"]) == ["1"]
    row = res["results"]["1"]
    assert set(row) == {"artifact", "torch_fp32", "ort_fp32", "tvm_default"}
    for name, us in row.items():
        assert isinstance(us, float) and us > 0, name
    assert res["profile"] == "x86_avx2"
    assert [n for n in res["notes"] if "input checks" not in n] == []
    # the input checks' cost is measured in this run, not quoted
    check_us = res["input_check_us"]["1"]["artifact"]
    assert check_us > 0 and f"batch 1 {check_us:.1f} µs" in res["notes"][0]


def test_bench_defaults_to_the_artifacts_batches(lenet_artifact, capsys):
    assert cli.main(["bench", str(lenet_artifact.path), "--json", "--no-baselines"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert list(res["results"]) == [str(b) for b in lenet_artifact.batches]
    assert list(res["input_check_us"]) == list(res["results"])
    assert not any("not compiled" in n for n in res["notes"])


def test_sigterm_exits_143(monkeypatch, capsys):
    """SIGTERM is reported as SIGTERM (128 + 15), Ctrl-C as 130."""
    import os
    import signal
    import time

    def killed(args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
        return 0

    old = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(cli, "cmd_targets", killed)
    try:
        assert cli.main(["targets"]) == 143
    finally:
        signal.signal(signal.SIGTERM, old)
    assert capsys.readouterr().err == "interrupted\n"

    def ctrl_c(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_targets", ctrl_c)
    try:
        assert cli.main(["targets"]) == 130
    finally:
        signal.signal(signal.SIGTERM, old)


def test_bench_without_source_model(lenet_artifact, tmp_path, capsys):
    """The artifact moved away from its float source model: bench with no flags times it and
    says the float baselines were skipped; --onnx brings them back."""
    art = Path(shutil.copytree(lenet_artifact.path, tmp_path / "moved" / "art"))
    assert cli.main(["bench", str(art), "--json", "--batch", "1"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["results"]["1"]) == {"artifact"}
    assert any("not at" in n and "--onnx" in n for n in res["notes"])
    assert cli.main(["bench", str(art), "--json", "--batch", "3", "--no-baselines"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["results"]["3"]) == {"artifact"} and res["results"]["3"]["artifact"] > 0
    assert any("batch 3: not compiled" in n for n in res["notes"])


def test_artifact_moved_with_its_sources_finds_them(lenet_artifact, lenet, tmp_path, capsys):
    """No host path in the manifest: an artifact copied to another folder beside its source
    model and checkpoint benches with every baseline, no flags."""
    import socket

    def strings(x):
        if isinstance(x, dict):
            for k, v in x.items():
                yield k
                yield from strings(v)
        elif isinstance(x, list):
            for v in x:
                yield from strings(v)
        elif isinstance(x, str):
            yield x

    for name in ("manifest.json", "plan.json"):
        text = (lenet_artifact.path / name).read_text()
        for host_path in (str(lenet.dir), str(Path.home()), str(Path(__file__).parents[1]),
                          os.environ["XDG_CACHE_HOME"], str(lenet_artifact.path.parent)):
            assert host_path not in text, (name, host_path)
        for s in strings(json.loads(text)):
            assert socket.gethostname() not in s.split(), (name, s)
    d = tmp_path / "elsewhere"
    art = Path(shutil.copytree(lenet_artifact.path, d / "art"))
    shutil.copy(lenet.onnx, d / lenet.onnx.name)
    shutil.copy(lenet.checkpoint, d / lenet.checkpoint.name)
    assert cli.main(["bench", str(art), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert {"artifact", "ort_fp32", "torch_fp32", "tvm_default"} == set(res["results"]["1"])


def test_bench_rejects_other_source_model(lenet_artifact, tmp_path, capsys):
    other = tmp_path / "other.onnx"
    other.write_bytes(b"different")
    assert cli.main(["bench", str(lenet_artifact.path), "--onnx", str(other), "--batch",
                     "1"]) == 2
    assert "sha256 differs" in capsys.readouterr().err


def test_compress_defaults_are_the_finetune_defaults():
    """`tvmcomp compress --prune S` fine-tunes with FineTune's defaults (chosen by
    scripts/prune_defaults.py), not with a second copy of them."""
    from tvmcomp.compress import FineTune

    args = cli.make_parser().parse_args(["compress", "m.pt", "--out", "o.pt", "--prune", "0.9"])
    assert (args.epochs, args.lr) == (FineTune().epochs, FineTune().lr) == (24, 5e-3)


def test_compress_prunes_named_layers_to_their_own_sparsities(lenet, tmp_path, capsys):
    """`--prune NAME=S,...`: each named layer pruned to its sparsity, the others untouched;
    a name that is no layer, or a malformed list, is one line and exit 2."""
    import numpy as np

    from tvmcomp.model import load_checkpoint

    out = tmp_path / "p.pt"
    assert cli.main(["compress", str(lenet.checkpoint), "--out", str(out), "--prune",
                     "conv2=0.5,fc1=0.96", "--epochs", "0"]) == 0
    model = dict(load_checkpoint(out)[0].named_modules())
    zeros = {n: float(np.mean(model[n].weight.detach().numpy() == 0))
             for n in ("conv1", "conv2", "fc1", "fc2")}
    assert abs(zeros["conv2"] - 0.5) < 0.01 and abs(zeros["fc1"] - 0.96) < 0.001
    assert zeros["conv1"] == zeros["fc2"] == 0.0
    capsys.readouterr()
    assert cli.main(["compress", str(lenet.checkpoint), "--out", str(tmp_path / "q.pt"),
                     "--prune", "fc9=0.5", "--epochs", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tvmcomp compress: error:") and "fc9" in err and err.count("\n") == 1
    with pytest.raises(SystemExit):
        cli.main(["compress", "m.pt", "--out", "o.pt", "--prune", "fc1=,conv2=0.5"])
    assert "NAME=SPARSITY" in capsys.readouterr().err


def test_build_and_eval_on_the_users_own_inputs(tmp_path, capsys, gemm_onnx, monkeypatch,
                                                profile_with_db):
    """A model that is not MNIST-shaped is verified and evaluated on the user's .npy inputs
    and labels: the accuracy `eval` reports is the one numpy gets from the model's weights."""
    import numpy as np

    from tvmcomp import targets

    # the host profile with an empty committed database: nothing of the 4,680 records to read
    empty = profile_with_db(tmp_path / "db")
    monkeypatch.setattr(targets, "host_profile", lambda: empty)
    onnx_path, w, b = gemm_onnx(tmp_path / "gemm.onnx")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((20, 32)).astype(np.float64)  # float64: cast to the model's
    y = rng.integers(0, 16, 20)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    art = tmp_path / "art"
    data = ["--eval-data", str(tmp_path / "x.npy"), "--eval-labels", str(tmp_path / "y.npy")]
    assert cli.main(["build", str(onnx_path), "--out", str(art), "--tune-budget", "0",
                     "--batch", "4", "--tuning-dir", str(tmp_path / "c"), *data]) == 0
    out = capsys.readouterr().out
    assert "evaluation set: 20 inputs from x.npy with labels y.npy" in out and "MNIST" not in out
    v = json.loads((art / "manifest.json").read_text())["verification"]
    expect = float(np.mean((x.astype(np.float32) @ w + b).argmax(1) == y))
    assert v["passed"] and v["n"] == 20 and v["accuracy"] == pytest.approx(expect)
    assert cli.main(["eval", str(art), "--json", *data]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["accuracy"] == pytest.approx(expect) and got["n"] == 20


def test_users_inputs_that_do_not_fit_are_one_line(tmp_path, capsys, gemm_onnx):
    import numpy as np

    onnx_path, _, _ = gemm_onnx(tmp_path / "gemm.onnx")
    bad = {"wide.npy": np.zeros((5, 31), np.float32), "nan.npy": np.full((5, 32), np.nan),
           "ok.npy": np.zeros((5, 32), np.float32), "short.npy": np.zeros(4, np.int64)}
    for name, a in bad.items():
        np.save(tmp_path / name, a)
    (tmp_path / "junk.npy").write_text("not numpy")
    for args, expect in (
            (["--eval-data", "wide.npy"], "the model takes ['N', 32], got an array of shape"),
            (["--eval-data", "nan.npy"], "holds NaN or infinite values"),
            (["--eval-data", "junk.npy"], "not a readable .npy array"),
            (["--eval-data", "ok.npy", "--eval-labels", "short.npy"],
             "one integer class per input wanted (5)"),
            (["--eval-labels", "short.npy"], "--eval-labels needs --eval-data")):
        args = [str(tmp_path / a) if a.endswith(".npy") else a for a in args]
        assert cli.main(["build", str(onnx_path), "--out", str(tmp_path / "art"),
                         "--tune-budget", "0", *args]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("tvmcomp build: error: ")
        assert expect in err[0], (args, err)
        assert not (tmp_path / "art").exists()
