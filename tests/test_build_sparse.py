"""``build --sparse`` end to end: a pruned LeNet-5 through the gate, the manifest, the runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tvmcomp import runtime
from tvmcomp.compiler import BuildOptions, build
from tvmcomp.compress import MagnitudePruneConfig, compress
from tvmcomp.data import normalize
from tvmcomp.frontend import export_onnx
from tvmcomp.model import load_checkpoint
from tvmcomp.quant import MinMax, QuantConfig

PER_LAYER = {"fc1": 0.95, "fc2": 0.8}


@pytest.fixture(scope="module")
def pruned(tmp_path_factory, lenet):
    d = tmp_path_factory.mktemp("pruned")
    cfg = MagnitudePruneConfig(0.0, scope="layer", per_layer=PER_LAYER, finetune=None)
    ckpt, _ = compress(str(lenet.checkpoint), cfg, d / "p.pt", progress=False)
    model, _ = load_checkpoint(ckpt)
    return model.eval(), export_onnx(model, d / "p.onnx"), d


def _build(pruned, profile_with_db, eval_set, name, batches=(1, 8), **kw):
    _, onnx_path, d = pruned
    return build(onnx_path, profile_with_db(d / "db"), d / name,
                 BuildOptions(batches=batches, tune_budget_s=0, eval_set=eval_set,
                              progress=False, sparse=True, **kw))


def test_sparse_build_records_gate_and_sizes(pruned, profile_with_db, eval_set, x86_host,
                                             kernels_in_so):
    model, _, _ = pruned
    # min speedup 0: every candidate stays sparse whatever the timings, so the test is
    # deterministic; the timings are still measured and recorded
    out, man = _build(pruned, profile_with_db, eval_set, "fp32", sparse_min_speedup=0.0)
    sp = man["sparse"]
    gate = {d["key"]: d for d in sp["gate"]}
    assert set(gate) == {f"main_b{b}/{layer}" for b in (1, 8)
                         for layer in ("conv0", "conv1", "matmul2", "matmul3", "matmul4")}
    for b in (1, 8):  # the convs are candidates too (direct sparse convolution): not pruned
        assert all("< 0.7" in gate[f"main_b{b}/conv{k}"]["reason"] for k in (0, 1))
    assert not gate["main_b1/matmul4"]["keep_sparse"]          # fc3 is dense: below threshold
    assert "sparsity 0.000 < 0.7" in gate["main_b8/matmul4"]["reason"]
    for d in (gate[f"main_b{b}/matmul{k}"] for b in (1, 8) for k in (2, 3)):
        assert d["keep_sparse"] and d["dense_us"] > 0 and d["sparse_us"] > 0
        assert d["reason"].startswith(f"sparse {d['sparse_kernels'][0]} ")
        assert f" µs vs dense {d['dense_kernels'][0]} " in d["reason"]
        # the timed kernels are the ones the model's builds contain
        assert d["dense_kernels"][0].startswith("fused_matmul")
        assert d["sparse_kernels"][0].startswith("sell_dense_")
    assert sp["decided_by"] == "measured"
    assert gate["main_b1/matmul2"]["sparsity"] == pytest.approx(0.95, abs=1e-3)
    conv = [L for L in sp["layers"] if L["kind"] == "conv"]
    assert len(conv) == 4 and all(L["sparsity"] < 0.1 for L in conv)   # reported, not pruned
    by = sp["size"]["bytes"]
    nnz = 120 * 400 * 0.05 + 84 * 120 * 0.2
    assert nnz <= by["values"] / 4 < 1.2 * nnz                 # padding stays small
    # float32 values, one byte of column step per stored entry (no gap over 255 columns)
    assert by["col_indices"] == by["values"] // 4
    assert by["slice_pointers"] == (15 + 1 + 11 + 1) * 4 and by["row_order"] == (120 + 88) * 2
    assert by["total"] < 0.5 * sp["dense_size"]["bytes"]["total"]
    assert man["weight_bytes"] == by["total"]
    assert set(man["kernels"]) == kernels_in_so(out)
    assert {k for k, v in man["kernels"].items() if v == "hand-scheduled"} == {
        k for k in man["kernels"] if k.startswith("sell_dense_")} != set()
    assert "layer_forms/SparseDense(threshold=0.7, keep=4/10 layers sparse)" in man["passes"]
    # the plan saved beside the artifact is the one applied: with min speedup 0, fc1 and fc2
    # are sparse in both entries, fc3 (below the threshold) dense, and model.so calls exactly
    # the sparse kernels of the layers the plan keeps sparse
    plan = json.loads((out / "plan.json").read_text())
    expected = {f"main_b{b}/{layer}{k}": layer == "matmul" and k in (2, 3) for b in (1, 8)
                for layer, ks in (("conv", (0, 1)), ("matmul", (2, 3, 4))) for k in ks}
    assert plan["sparse"]["keep"] == expected
    so = kernels_in_so(out)
    assert {k for k, d in gate.items() if set(d["sparse_kernels"][:1]) & so} == {
        k for k, keep in expected.items() if keep}
    # the artifact computes what the pruned PyTorch model does
    m = runtime.load(out)
    x = normalize(eval_set.images[:8])
    ref = model(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(m(x), ref, atol=1e-4)
    np.testing.assert_allclose(m(x[:1]), ref[:1], atol=1e-4)
    v = man["verification"]
    assert v["passed"] and v["accuracy"] == pytest.approx(v["reference_accuracy"], abs=5e-4)


def test_gate_can_refuse_every_layer(pruned, profile_with_db, eval_set, x86_host):
    out, man = _build(pruned, profile_with_db, eval_set, "refused", batches=(1,),
                      sparse_min_speedup=1e6)
    assert not any(d["keep_sparse"] for d in man["sparse"]["gate"])
    gate = {d["key"]: d for d in man["sparse"]["gate"]}
    assert "below the 1e+06x gate" in gate["main_b1/matmul2"]["reason"]
    assert man["weight_bytes"] == man["sparse"]["dense_size"]["bytes"]["total"]


INT8 = dict(quant=QuantConfig(calibration=MinMax(), num_calib=64), max_accuracy_drop=0.05)


def test_sparse_int8_build_is_exact_integer_kernels(pruned, profile_with_db, eval_set, x86_host,
                                                    monkeypatch, kernels_in_so):
    """int8 + sparse equals int8 dense bit for bit; each rewrite runs once on the model."""
    from tvmcomp.passes import quantize_int8, sparse_dense

    runs = {"QuantizeInt8": 0, "SparseDense": 0}
    for name, module in (("QuantizeInt8", quantize_int8), ("SparseDense", sparse_dense)):
        def counted(mod, *args, real=module._Rewriter, name=name):
            if "main_b1" in [gv.name_hint for gv in mod.get_global_vars()]:
                runs[name] += 1  # the model, not the gate's one-layer modules ("main")
            return real(mod, *args)

        monkeypatch.setattr(module, "_Rewriter", counted)
    out, man = _build(pruned, profile_with_db, eval_set, "int8", batches=(1,),
                      sparse_min_speedup=0.0, **INT8)
    # QuantizeInt8 once; SparseDense once on the module that ships, and once on the all-sparse
    # candidate the gate builds to measure (it times that build's kernels against the dense
    # build's). Before the build plan: QuantizeInt8 three times, SparseDense twice plus once
    # per candidate layer.
    assert runs == {"QuantizeInt8": 1, "SparseDense": 2}
    assert man["precision"] == "int8"
    gate = {d["key"]: d for d in man["sparse"]["gate"]}
    assert gate["main_b1/matmul2"]["keep_sparse"]
    # an int8 sparse layer is its integer kernel, with the bias and requantization in it
    assert gate["main_b1/matmul2"]["sparse_kernels"][0].startswith("sell_int_b1_400x120")
    assert len(gate["main_b1/matmul2"]["sparse_kernels"]) == 1
    assert set(gate["main_b1/matmul2"]["sparse_kernels"]) <= set(man["kernels"])
    kernels = {v["kernel"] for v in man["sparse"]["size"]["sparse_layers"].values()}
    assert any(k.startswith(("sell_int_b1_400x120_int8_", "sell_int_b1_400x120_uint8_"))
               for k in kernels)
    assert man["sparse"]["size"]["bytes"]["values"] < 1.2 * (120 * 400 * 0.05 + 84 * 120 * 0.2)
    # every kernel model.so calls is in the manifest, each named tuned / hand-scheduled /
    # untuned, and the tuning block covers that module (budget 0, empty database: untuned)
    assert set(man["kernels"]) == kernels_in_so(out)
    assert {k for k, v in man["kernels"].items() if v == "hand-scheduled"} == {
        k for k in man["kernels"] if k.startswith(("sell_int_", "avx2_"))} != set()
    t = man["tuning"]
    assert t["tuned"] == 0 and set(t["untuned"]) | set(t["hand_scheduled"]) <= set(man["kernels"])
    assert all(k.startswith(("sell_int_", "avx2_")) for k in t["hand_scheduled"])
    assert any(k.startswith("avx2_") for k in t["hand_scheduled"])  # the dense int8 layers
    # the integer sparse kernels are exact: same outputs as the dense int8 build
    dense, _ = build(pruned[1], profile_with_db(pruned[2] / "db"), pruned[2] / "int8_dense",
                     BuildOptions(batches=(1,), tune_budget_s=0, progress=False, **INT8))
    x = normalize(eval_set.images[:16])
    np.testing.assert_array_equal(runtime.load(out)(x), runtime.load(dense)(x))


def test_gate_meets_a_tuned_dense_kernel(pruned, profile_with_db, eval_set, x86_host, tmp_path):
    """With a tuning record for the dense layers, the gate times the tuned dense kernel: the
    record the shipped dense build would use (before: an untuned one-layer model)."""
    from tvmcomp.compiler import plan_and_fuse, prepare_model
    from tvmcomp.tune import RecordPaths, Records, tune_module
    from tvmcomp.tune.tuner import extract_tasks

    _, onnx_path, d = pruned
    prof = profile_with_db(d / "db")
    opts = BuildOptions(batches=(1,), tune_budget_s=0, progress=False, tuning_dir=tmp_path)
    model, info, _, opts = prepare_model(onnx_path, opts)
    records = Records(RecordPaths.for_profile(prof, tmp_path))
    _, dense, _ = plan_and_fuse(model, info, prof, opts, records)
    target = prof.tvm_target()
    matmuls = tuple(t.task_name for t in extract_tasks(dense, target)
                    if t.task_name.startswith("fused_matmul"))
    rep = tune_module(dense, target, records, budget_s=120, max_trials_per_task=1,
                      trials_per_iter=1, family="x86", progress=False, names=matmuls)
    assert len(matmuls) == 3 and not set(matmuls) & set(rep.untuned)
    out, man = build(onnx_path, prof, tmp_path / "art",
                     BuildOptions(batches=(1,), tune_budget_s=0, eval_set=eval_set,
                                  progress=False, sparse=True, sparse_min_speedup=0.0,
                                  tuning_dir=tmp_path))
    fc1 = {g["key"]: g for g in man["sparse"]["gate"]}["main_b1/matmul2"]
    assert fc1["dense_tuned"] is True and "(dense untuned)" not in fc1["reason"]


def test_gate_tunes_both_forms_before_deciding(pruned, profile_with_db, eval_set, x86_host,
                                              tmp_path, monkeypatch):
    """A new int8 model, an empty database and a budget: the build tunes the dense form's
    kernels and the sparse form's epilogues before the gate, so the gate times what would
    ship (before: our sparse kernel against an untuned dense one, never tuned afterwards).
    Tuning is cut to one trial per matmul / requantization task to keep the test short. The
    profile's CPU is a plain x86-64 (no AVX2), whose int8 layers stay int8 ops that tuning
    schedules (with AVX2 they are our hand-scheduled kernels, which need none)."""
    import dataclasses

    from tvmcomp.tune import apply
    from tvmcomp.tune.tuner import extract_tasks

    real, calls = apply.tune_module, []

    def one_trial_each(mod, target, records, **kw):
        names = tuple(t.task_name for t in extract_tasks(mod, target)
                      if "matmul" in t.task_name or "cast" in t.task_name)
        calls.append(names)
        kw.update(max_trials_per_task=1, trials_per_iter=1, names=names)
        return real(mod, target, records, **kw)

    monkeypatch.setattr(apply, "tune_module", one_trial_each)
    _, onnx_path, d = pruned
    prof = profile_with_db(tmp_path / "db")
    prof = dataclasses.replace(prof, target={**prof.target, "mcpu": "x86-64"})
    out, man = build(onnx_path, prof, tmp_path / "art",
                     BuildOptions(batches=(1,), tune_budget_s=300, eval_set=eval_set,
                                  progress=False, sparse=True, sparse_min_speedup=0.0,
                                  tuning_dir=tmp_path / "cache", tuning_logs=tmp_path / "tvm",
                                  **INT8))
    # TVM's own per-task logs go where asked (the main job: its run directory), not the cache
    assert list((tmp_path / "tvm" / "logs").glob("*.log"))
    assert not (tmp_path / "cache" / "logs").exists()
    before = man["sparse"]["tuned_before_gate"]
    assert before["dense"]["trials"] >= 3  # the three int8 matmul kernels (and epilogues)
    assert before["trials"] == before["dense"]["trials"] + before["sparse"]["trials"]
    assert len(calls) >= 2  # dense form, then the sparse form's new tasks
    gate = {g["key"]: g for g in man["sparse"]["gate"]}
    for key in ("main_b1/matmul2", "main_b1/matmul3"):  # fc1, fc2: timed, kept sparse
        assert gate[key]["dense_tuned"] is True and gate[key]["sparse_tuned"] is True, gate[key]
        assert "untuned" not in gate[key]["reason"]
    t = man["tuning"]  # one budget: the gate's tuning counts in the build's
    assert t["budget_s"] == 300 and t["trials"] >= before["trials"]


def test_a_layers_weight_is_stored_in_one_form():
    """Batch entries that disagree on a layer get one form: its weight is stored once."""
    from tvmcomp.plan import store_once
    from tvmcomp.plan.sparse_gate import GateDecision

    def d(key, dense, sparse):
        return GateDecision(key, 1, (120, 400), 0.9, dense, sparse, keep_sparse=dense >= sparse)

    out = store_once([d("main_b1/matmul2", 1.0, 1.5), d("main_b64/matmul2", 30.0, 10.0),
                      d("main_b1/matmul3", 1.0, 2.0), d("main_b64/matmul3", 4.0, 3.0),
                      d("main_b1/matmul4", 1.0, 0.5)], min_speedup=1.0, progress=False)
    keep = {x.key: x.keep_sparse for x in out}
    # fc1: speedups 0.67 and 3.0, geometric mean 1.41 -> sparse in both entries
    assert keep["main_b1/matmul2"] and keep["main_b64/matmul2"]
    # fc2: 0.5 and 1.33, geometric mean 0.82 -> dense in both
    assert not keep["main_b1/matmul3"] and not keep["main_b64/matmul3"]
    assert keep["main_b1/matmul4"]  # one entry only: unchanged
    assert "stored once" in out[0].reason and "stored once" not in out[4].reason
