"""Building a model with factorized layers (``compress --lowrank``): the pairs are found, the
gate times both forms, folds back where two kernels are slower and keeps them where faster."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tvmcomp.compiler import BuildOptions, build
from tvmcomp.frontend import export_onnx
from tvmcomp.frontend.onnx_import import import_batches, load_onnx
from tvmcomp.model.lowrank import factorize_layers
from tvmcomp.passes import LowRankFold
from tvmcomp.passes.lowrank_fold import lowrank_pairs
from tvmcomp.plan import BuildPlan


@pytest.fixture(scope="module")
def factorized(tmp_path_factory, lenet):
    """LeNet-5 with conv2 at rank 4 and fc1 at rank 8, as ONNX."""
    d = tmp_path_factory.mktemp("lowrank")
    model = copy.deepcopy(lenet.model)
    factorize_layers(model, {"conv2": 4, "fc1": 8})
    return export_onnx(model, d / "lr.onnx"), d


def test_pairs_are_found_and_folded_by_name(factorized):
    """In the imported module conv2's factors are conv1 + conv2 and fc1's matmul3 + matmul4;
    folding matmul3 leaves conv1's pair, and one matmul fewer."""
    model, info = load_onnx(factorized[0])
    mod = import_batches(model, info, [1])
    pairs = lowrank_pairs(mod["main_b1"])
    assert [(p.kind, p.first, p.second, p.rank) for p in pairs] == [
        ("conv", "conv1", "conv2", 4), ("matmul", "matmul3", "matmul4", 8)]
    conv, fc1 = pairs
    assert conv.weights() == (4 * 150 + 16 * 4, 2400) and conv.pixels == 100
    assert fc1.macs() == (8 * (400 + 120), 48000)
    folded = LowRankFold(("matmul3",))(mod)
    assert [p.first for p in lowrank_pairs(folded["main_b1"])] == ["conv1"]
    assert mod.script().count("R.matmul(") == folded.script().count("R.matmul(") + 1


def test_build_gates_each_pair_and_records_it(factorized, profile_with_db, eval_set):
    """Both forms timed per pair; a pair is folded exactly where its two kernels were not
    faster; the manifest, the plan and the pass list agree, and the artifact verifies."""
    onnx_path, d = factorized
    out, man = build(onnx_path, profile_with_db(d / "db"), d / "art",
                     BuildOptions(batches=(1,), tune_budget_s=0, eval_set=eval_set,
                                  progress=False))
    lr = man["lowrank"]
    gate = {g["layer"]: g for g in lr["gate"]}
    assert set(gate) == {"conv1", "matmul3"} and lr["decided_by"] == "measured"
    assert gate["matmul3"]["weights"] == [4160, 48000] and gate["conv1"]["rank"] == 4
    for g in gate.values():
        assert g["factorized_us"] > 0 and g["whole_us"] > 0
        assert g["folded"] == (not g["factorized_us"] < g["whole_us"])
        assert len(g["kernels"]) == 2 and len(g["whole_kernels"]) == 1
    folded = sorted(n for n, g in gate.items() if g["folded"])
    assert sorted(lr["folded"]) == folded
    plan = BuildPlan.from_json((out / "plan.json").read_text())
    assert sorted(plan.lowrank_fold) == folded and plan.lowrank_gate == lr["gate"]
    fold_pass = [p for p in man["passes"] if p.startswith("lowrank/")]
    assert fold_pass == ([f"lowrank/LowRankFold(fold={','.join(plan.lowrank_fold)})"]
                         if folded else ["lowrank/LowRankFold(off)"])
    assert len(man["layers"]) == 7 - len(folded)  # conv/matmul layers the artifact runs


def test_a_factorization_that_pays_is_kept(tmp_path, profile_with_db):
    """A 1024→1024 layer at rank 4 does 1/128 of the MACs: untuned, its two kernels beat the
    whole one, so it stays two kernels, and the artifact matches ONNX Runtime."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))
    factorize_layers(mlp, {"0": 4})
    onnx_path = export_onnx(mlp, tmp_path / "mlp.onnx", input_shape=(1, 1024))
    _, man = build(onnx_path, profile_with_db(tmp_path / "db"), tmp_path / "art",
                   BuildOptions(batches=(1,), tune_budget_s=0, progress=False))
    (g,) = man["lowrank"]["gate"]
    assert (g["layer"], g["folded"], man["lowrank"]["folded"]) == ("matmul0", False, [])
    assert g["factorized_us"] < g["whole_us"]
    assert man["verification"]["passed"] is True
