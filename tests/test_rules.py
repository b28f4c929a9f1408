"""Rule-based first schedules for kernels whose operator has no record anywhere."""

import json

import numpy as np
import pytest

from tvmcomp.compiler import BuildOptions, build
from tvmcomp.frontend.onnx_import import import_batches, load_onnx
from tvmcomp.pipeline import fuse


def _conv_onnx(path, cin=16, cout=32, size=16):
    """A conv large enough that its plain loops are far slower than any sensible schedule
    (16 -> 32 channels: ~1.7 ms plain, ~0.1 ms by the rules on a Zen 3; a 3 -> 16 one runs
    13 us plain, within the noise of its rule schedules)."""
    import torch

    from tvmcomp.frontend.onnx_export import export_onnx

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                              torch.nn.Linear(cout * size * size // 4, 10))
    return export_onnx(net.eval(), path, input_shape=(1, cin, size, size))


@pytest.fixture(scope="module")
def conv_task(tmp_path_factory, x86_host):
    from tvmcomp.tune.tuner import extract_tasks

    path = _conv_onnx(tmp_path_factory.mktemp("rules") / "conv.onnx")
    target = x86_host.tvm_target()
    model, info = load_onnx(path)
    tasks = extract_tasks(fuse(import_batches(model, info, [2]), target), target)
    (conv,) = [t for t in tasks if "conv2d" in t.task_name]
    return path, target, conv


def test_vector_lanes_follow_the_cpu():
    import tvm

    from tvmcomp.tune.rules import vector_lanes

    def lanes(mcpu, triple="x86_64-linux-gnu"):
        return vector_lanes(tvm.target.Target({"kind": "llvm", "mtriple": triple,
                                               "mcpu": mcpu}))

    assert lanes("core-avx2") == 8
    assert lanes("cascadelake") == lanes("znver4") == 16
    assert lanes("cortex-a72", "aarch64-linux-gnu") == 4


def test_rule_schedule_tiles_by_the_rules_and_computes_the_same(conv_task):
    """Every sketch the rules decide: tiles that multiply to each loop's extent, the last
    spatial loop's innermost tile at most two vectors, and the same output as the plain
    loops."""
    import tvm
    from tvm import s_tir

    from tvmcomp.tune.rules import rule_schedule, sketches
    from tvmcomp.tune.validate import _random_args

    _, target, task = conv_task
    mod = task.dispatched[0]
    traces = sketches(mod, target, task.task_name)
    assert traces
    scheds = [s for s in (rule_schedule(mod, target, t, 8, None, wide)
                          for t in traces for wide in (False, True)) if s is not None]
    assert scheds, "the rules decided no sketch"
    args = _random_args(mod["main"], np.random.default_rng(0))

    def run(sch_mod):
        lib = tvm.compile(sch_mod, target=target).jit()
        xs = [tvm.runtime.tensor(a) for a in args]
        lib[lib.entry_name](*xs)
        return xs[-1].numpy()

    ref = run(s_tir.Schedule(mod).mod)
    for sch in scheds:
        tiles = [(inst, sch.trace.decisions[inst]) for inst in sch.trace.insts
                 if inst.kind.name == "SamplePerfectTile"]
        assert tiles
        spatial = [[int(d) for d in dec] for inst, dec in tiles if int(inst.attrs[0]) == 4]
        assert spatial and 1 < spatial[-1][-1] <= 16  # the vectorized loop's innermost tile
        np.testing.assert_allclose(run(sch.mod), ref, rtol=1e-5, atol=1e-5)


def test_register_rows_of_a_prime_sized_loop():
    """The loop before the vectorized one keeps up to 4 rows in registers; where its only
    divisor up to 4 is 1 (DS-CNN's 5-wide MFCC image), the wide candidate keeps up to 6:
    DS-CNN's pointwise convolutions 59-65 -> 23-25 us a kernel on a Zen 3."""
    from tvmcomp.tune.rules import _register_rows

    assert [_register_rows(n, False) for n in (5, 16, 25, 7, 6)] == [1, 4, 1, 1, 3]
    assert [_register_rows(n, True) for n in (5, 16, 25, 7, 6)] == [5, 4, 5, 1, 3]


def test_build_gives_unrecorded_conv_a_rule_schedule(conv_task, tmp_path, profile_with_db,
                                                     monkeypatch, capfd):
    """An empty database, no budget: the convolution takes a rule-based schedule, measured
    faster than its plain loops, checked, labelled and noted as untuned (a budget would
    still tune it); the max-pool's sketches come without TVM's "Unknown schedule rule"."""
    from tvmcomp.tune.rules import RULES
    from tvmcomp.tune.transfer import TRANSFERRED_FILE

    monkeypatch.setenv("TVMCOMP_RULE_SCHEDULES", "1")
    path, _, task = conv_task
    cache = tmp_path / "cache"
    out, man = build(path, profile_with_db(tmp_path / "db"), tmp_path / "art",
                     BuildOptions(batches=(2,), tune_budget_s=0, progress=False,
                                  tuning_dir=cache))
    t = man["tuning"]
    assert task.task_name in t.get("rule_based_untuned", ()), t
    assert t["carried_across_shapes"][task.task_name]["from"] == RULES
    assert task.task_name not in t["untuned"] and t["schedules_checked"]
    assert man["kernels"][task.task_name].startswith("rule-based schedule, checked")
    assert "Unknown schedule rule" not in capfd.readouterr().err
    notes = json.loads((cache / TRANSFERRED_FILE).read_text())
    assert {v["from"] for v in notes.values()} == {RULES}
    # switched off, the same kernel runs its plain loops
    monkeypatch.setenv("TVMCOMP_RULE_SCHEDULES", "0")
    _, plain = build(path, profile_with_db(tmp_path / "db"), tmp_path / "plain",
                     BuildOptions(batches=(2,), tune_budget_s=0, progress=False,
                                  tuning_dir=tmp_path / "cache2"))
    assert task.task_name in plain["tuning"]["untuned"]


def test_the_fastest_candidate_is_decided_on_interleaved_measurements(monkeypatch):
    """keep_fastest: a candidate whose one measurement fell on a slow moment (a shared VM)
    is still kept: the fastest few are measured again in rounds alternating with each other
    and the unscheduled loops, and the lowest median wins; a candidate no faster than the
    loops' median is not kept."""
    import tvm
    from tvm import s_tir, te

    from tvmcomp.tune import transfer

    a = te.placeholder((4,), name="A")
    mod = tvm.IRModule({"main": te.create_prim_func([a, te.compute((4,), lambda i: a[i] * 2)])})
    times = {"fast": iter([2.0] + [1.0] * 9), "steady": iter([1.5] * 10),
             "slow": iter([3.0] * 10)}

    def fake_timer(sch, _target, repeat=3):
        key = "loops" if isinstance(sch, s_tir.Schedule) else sch
        return lambda *_: [1.8 if key == "loops" else next(times[key])]

    kept = []
    monkeypatch.setattr(transfer, "timer", fake_timer)
    monkeypatch.setattr(transfer, "_commit", lambda _db, sch, _m, secs, _t: kept.append(sch))
    cands = [(k, k) for k in times]
    secs, tag = transfer.keep_fastest(None, mod, None, iter(cands))
    assert tag == "fast" and kept == ["fast"] and float(np.median(secs)) == 1.0
    times.update(fast=iter([2.0] * 10), steady=iter([1.9] * 10))
    assert transfer.keep_fastest(None, mod, None, iter(cands[:2])) is None
