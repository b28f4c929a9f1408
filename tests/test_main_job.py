"""The main job (`tvmcomp run`, what `make run` calls) on a tiny budget: every form, one table."""

from __future__ import annotations

import json
import re


def _first_images(mnist_dir, dest, n: int) -> str:
    """An MNIST directory holding the first ``n`` test images (IDX files, uncompressed)."""
    from tvmcomp.data.mnist import IDX_IMAGES, IDX_LABELS, load_idx

    ds = load_idx(mnist_dir)
    dest.mkdir()
    head = (2051).to_bytes(4, "big") + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    (dest / IDX_IMAGES).write_bytes(head + ds.images[:n].tobytes())
    (dest / IDX_LABELS).write_bytes((2049).to_bytes(4, "big") + n.to_bytes(4, "big")
                                    + ds.labels[:n].astype("uint8").tobytes())
    return str(dest)


def test_main_job_builds_every_form_and_writes_the_table(tmp_path, x86_host, profile_with_db,
                                                         mnist_dir):
    from tvmcomp.main_job import FORMS, run_main_job

    # every form is verified on these images, through untuned kernels: 500 of them
    mnist = _first_images(mnist_dir, tmp_path / "mnist", 500)
    s = run_main_job(tmp_path / "run", profile_with_db(tmp_path / "db"), mnist,
                     epochs=1, tune_budget_s=0, batches=(1,), tuning_dir=str(tmp_path / "c"),
                     prune_epochs=1, smallest_prune_epochs=1, lowrank_epochs=1,
                     lowrank_budget_pt=2.0,   # 1-epoch models: a rank within 0.3 pt may not be
                     max_accuracy_drop=0.05)  # found, and they lose more to int8
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved == s and list(s["forms"]) == list(FORMS)
    forms = s["forms"]
    assert forms["int8"]["weight_bytes"] < 0.3 * forms["fp32"]["weight_bytes"]
    assert forms["sparse"]["weight_bytes"] < forms["fp32"]["weight_bytes"]
    # conv weights as uint8 indices + 256-entry codebooks, fc + 32-entry ones, biases float
    assert forms["codebook"]["weight_bytes"] < 0.3 * forms["fp32"]["weight_bytes"]
    # pruned, then shared: sparse codes (1 B) + narrow column indices, below both parents
    assert forms["sparse+codebook"]["weight_bytes"] < min(
        forms["sparse"]["weight_bytes"], forms["codebook"]["weight_bytes"])
    for f in FORMS:
        assert 0.5 < forms[f]["accuracy"] <= 1.0
        assert s["latency_us"]["1"][f] > 0
    assert {"ort_fp32", "torch_fp32"} <= set(s["latency_us"]["1"])
    assert set(s["stage_seconds"]) == {"train", "prune", "share", "lowrank", "build", "bench",
                                       "profile"}
    prof = s["kernel_profile"]  # every form's kernels, each timed alone at the largest batch
    assert prof["batch"] == 1 and set(prof["forms"]) == set(FORMS)
    assert all(us > 0 for ks in prof["forms"].values() for _, us in ks)
    assert any(k.startswith("sell_") for k, _ in prof["forms"]["sparse"])
    # factorized under the budget, each layer gated: kept only where its kernels were faster
    gate = forms["lowrank"]["lowrank"]["gate"]
    assert gate and all(d["folded"] == (not d["factorized_us"] < d["whole_us"]) for d in gate)
    assert forms["lowrank"]["weight_bytes"] <= forms["fp32"]["weight_bytes"]
    assert (tmp_path / "run" / "lowrank_ranks.png").is_file()
    md = (tmp_path / "run" / "results.md").read_text()
    assert not re.search(r"#\d", md), "users read no issue-tracker numbers"
    for f in FORMS:
        assert f"| {f} | " in md
    # the smallest form's weights, layer by layer, add up to what its artifact stores
    layers = forms["sparse+codebook"]["layers"]
    assert [r["layer"] for r in layers] == ["conv0", "conv1", "matmul2", "matmul3", "matmul4"]
    # (a conv the gate keeps sparse: its code stream decoded into the sparse kernel's arrays)
    into_sparse = "sparse conv, codebook decoded at load"
    assert {r["form"] for r in layers} <= {"codebook", "sparse codebook", into_sparse}
    # the seed's last step: int8, pruned, shared; the fc layers as int8 code streams
    i8cb = forms["int8+codebook"]
    assert i8cb["weight_bytes"] < 0.5 * forms["int8"]["weight_bytes"]
    assert "sparse codebook, decoded at load" in {r["form"] for r in i8cb["layers"]}
    # pruned further, per layer, shared to 32 values, every layer a code stream decoded at load
    small = forms["smallest"]
    assert {r["form"] for r in small["layers"]} <= {"codebook, decoded at load",
                                                   "sparse codebook, decoded at load",
                                                   into_sparse}
    assert small["weight_bytes"] < 0.6 * forms["sparse+codebook"]["weight_bytes"]
    assert "| weight payload |" in md
    page = (tmp_path / "run" / "report.html").read_text()  # the report embeds its plots
    assert page.count("data:image/png;base64,") == 5 and "<td>lowrank</td>" in page
    # a rerun reuses the pruned checkpoint (same config, same source)
    from tvmcomp.data import load_train_5k
    from tvmcomp.main_job import prune_lenet5

    from tvmcomp.artifact import sha256_file

    pruned = tmp_path / "run" / "lenet5_pruned.pt"
    mtime, onnx = pruned.stat().st_mtime, sha256_file(pruned.with_suffix(".onnx"))
    prune_lenet5(tmp_path / "run", tmp_path / "run" / "lenet5.pt", load_train_5k(), epochs=1)
    assert pruned.stat().st_mtime == mtime
    # exported again byte for byte: the build keys of its forms (saved for each) still match
    assert sha256_file(pruned.with_suffix(".onnx")) == onnx
    assert set(json.loads((tmp_path / "run" / "build_keys.json").read_text())) == set(FORMS)


def test_a_form_refused_by_the_accuracy_gate_is_left_out_and_said(tmp_path, monkeypatch):
    """build_forms: an int8 form the accuracy gate refuses is left out with its reason, the
    forms after it are still built; a wrong output (any other VerificationError) stops it."""
    import pytest

    from tvmcomp import main_job
    from tvmcomp.errors import AccuracyDropError, VerificationError

    built = []

    def fake_build(onnx_path, profile, out, opts):
        if opts.quant is not None and not opts.sparse:
            raise AccuracyDropError("accuracy 90% ... +0.60 pt below float (allowed 0.50 pt)")
        built.append(out.name)
        return out, {"tuning": {"used_s": 0.0}}

    monkeypatch.setattr(main_job, "build", fake_build)
    refused = {}
    for name in ("d.onnx", "p.onnx"):
        (tmp_path / name).write_bytes(name.encode())
    arts = main_job.build_forms(tmp_path, tmp_path / "d.onnx", tmp_path / "p.onnx", None, None,
                                (1,), 0, None, refused=refused)
    assert list(arts) == ["fp32", "sparse", "int8+sparse"] and built == ["fp32", "sparse",
                                                                          "int8_sparse"]
    assert list(refused) == ["int8"] and "below float" in refused["int8"]

    def wrong(*a, **k):
        raise VerificationError("max |err| 3 (tolerance 0.001)")

    monkeypatch.setattr(main_job, "build", wrong)
    with pytest.raises(VerificationError):
        main_job.build_forms(tmp_path, tmp_path / "d.onnx", tmp_path / "p.onnx", None, None,
                             (1,), 0, None)


def test_a_rerun_reuses_each_form_whose_inputs_did_not_change(tmp_path, monkeypatch):
    """build_forms again: every artifact (and a refusal) is reused; a changed source model
    rebuilds its forms only; changed code rebuilds them all."""
    from tvmcomp import main_job
    from tvmcomp.errors import AccuracyDropError

    built = []

    def fake_build(onnx_path, profile, out, opts):
        if opts.quant is not None and not opts.sparse:
            raise AccuracyDropError("accuracy 90% ... +0.60 pt below float (allowed 0.50 pt)")
        built.append(out.name)
        out.mkdir(exist_ok=True)
        man = {"tuning": {"used_s": 1.0}, "seen_budget_s": opts.tune_budget_s}
        (out / "manifest.json").write_text(json.dumps(man))
        return out, man

    monkeypatch.setattr(main_job, "build", fake_build)
    dense, pruned = tmp_path / "d.onnx", tmp_path / "p.onnx"
    dense.write_bytes(b"dense")
    pruned.write_bytes(b"pruned")

    def run():
        built.clear()
        refused = {}
        arts = main_job.build_forms(tmp_path, dense, pruned, None, None, (1,), 10, None,
                                    refused=refused)
        return arts, refused

    first = run()
    assert built == ["fp32", "sparse", "int8_sparse"] and list(first[1]) == ["int8"]
    assert run() == first and built == []          # reused, the refusal too
    pruned.write_bytes(b"pruned again")            # a new pruned model: its forms only
    assert run() == first and built == ["sparse", "int8_sparse"]
    monkeypatch.setattr(main_job, "code_fingerprint", lambda: "other code")
    run()
    assert built == ["fp32", "sparse", "int8_sparse"]


def test_a_lowrank_stage_without_a_rank_in_budget_is_said_not_a_nan():
    """No layer factorized within the budget: no lowrank form, and the table's heading says
    so (it printed "nan%" for the missing model's accuracy)."""
    from tvmcomp.main_job import _lowrank_line

    line = _lowrank_line({"forms": {}, "accuracy": {}, "lowrank_budget_pt": 0.3})
    assert line == ("factorized under a 0.3 pt held-out budget: no layer within it, so no "
                    "lowrank form (see the notes)")
    assert _lowrank_line({"forms": {}, "accuracy": {"torch_lowrank": 0.98}}).endswith(
        "(no layer factorized), 98.00%")
