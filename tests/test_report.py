"""The main job's report (tvmcomp.report): plots and one self-contained HTML page."""

import base64
import re

import matplotlib.image

from tvmcomp.report import render_html, write_report


def _results(forms=("fp32", "int8")) -> dict:
    return {
        "date": "2026-12-07T12:00:00+00:00", "machine": "x86_64 test <cpu>",
        "profile": "x86_avx2", "eval_set": "MNIST test set, /data (10000 images)",
        "accuracy": {"torch_fp32": 0.98},
        "forms": {f: {"accuracy": 0.98 - 0.001 * i, "model_so_bytes": 400_000 - 1000 * i,
                      "weight_bytes": 246_824 // (1 + 3 * i)} for i, f in enumerate(forms)},
        "latency_us": {"1": {**{f: 20.0 + i for i, f in enumerate(forms)}, "ort_fp32": 40.0},
                       "64": {**{f: 700.0 + i for i, f in enumerate(forms)},
                              "ort_fp32": 800.0, "torch_fp32": 2000.0}},
        "notes": ["a note with <angle> & brackets"],
        "stage_seconds": {"train": 15.0, "build": 60.0}, "seconds": 80.0}


def test_report_embeds_every_plot_and_the_table(tmp_path):
    """report.html stands alone: each PNG written beside it is embedded (the same bytes), the
    table has a row per form and peer with the ratio to ORT fp32, text is escaped; a plot the
    run left there (the low-rank rank plot) is included."""
    s = _results()
    written = write_report(s, tmp_path)
    assert set(written) == {"report", "accuracy_vs_size", "latency"}
    page = written["report"].read_text()
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert [base64.b64decode(i) for i in images] == [
        written[k].read_bytes() for k in ("accuracy_vs_size", "latency")]
    assert "<td>int8</td><td>97.90%</td><td>-0.10 pt</td><td>399,000</td><td>61,706</td>" \
           "<td>0.250</td><td>21.0 (0.53×)</td><td>701.0 (0.88×)</td>" in page
    assert "<td>torch_fp32</td><td></td><td></td><td></td><td></td><td></td><td>–</td>" \
           "<td>2000.0</td>" in page
    assert "&lt;angle&gt; &amp; brackets" in page and "test &lt;cpu&gt;" in page
    assert "train 15 s, build 60 s; total 80 s" in page

    (tmp_path / "lowrank_ranks.png").write_bytes(written["latency"].read_bytes())
    page = write_report(s, tmp_path)["report"].read_text()
    assert page.count("data:image/png;base64,") == 3 and "Low-rank" in page


def test_latency_plot_has_a_panel_per_batch(tmp_path):
    one = dict(_results(), latency_us={"1": {"fp32": 20.0, "int8": 21.0, "ort_fp32": 40.0}})
    (tmp_path / "one").mkdir()
    h1, w1 = matplotlib.image.imread(write_report(one, tmp_path / "one")["latency"]).shape[:2]
    h2, w2 = matplotlib.image.imread(write_report(_results(), tmp_path)["latency"]).shape[:2]
    assert w2 == 2 * w1 and h1 == h2


def test_render_html_needs_no_files_beyond_its_plots():
    page = render_html(_results(("fp32",)), [])
    assert page.startswith("<!doctype html>") and "<img" not in page and "src=" not in page


def test_kernel_profile_times_each_kernel_the_artifact_calls(lenet_artifact, kernels_in_so):
    """The profile lists the kernels one call runs, in order (the VM's own instructions left
    out), each timed alone, with the operations of its conv / matmul kernels: LeNet-5's
    2 x (6*28*28*25 + 16*10*10*150 + 400*120 + 120*84 + 84*10) = 833,040 an image. Its plot
    stacks them per form."""
    from tvmcomp.bench import kernel_profile
    from tvmcomp.report import plot_kernel_profile

    prof = kernel_profile(lenet_artifact.path, 1)
    names = [k for k, _, _ in prof]
    assert len(names) >= 5 and set(names) <= kernels_in_so(lenet_artifact.path)
    assert not any(k.startswith("vm.") for k in names) and all(us > 0 for _, us, _ in prof)
    assert names.index(next(k for k in names if "conv" in k)) < names.index(
        next(k for k in names if "matmul" in k))  # call order: convolutions before the fc
    counted = [(k, ops) for k, _, ops in prof if ops is not None]
    assert sum(ops for _, (ops, _) in counted) == 833_040
    assert {kind for _, (_, kind) in counted} == {"fp32"}
    assert all("conv" in k or "matmul" in k for k, _ in counted) and len(counted) == 5
    s = dict(_results(), kernel_profile={"batch": 1, "forms": {
        "fp32": [[k, us] for k, us, _ in prof]}})
    assert plot_kernel_profile(s, lenet_artifact.path.parent / "kp.png").stat().st_size > 0


def test_kernel_ops_counts_the_dense_layer_a_kernel_computes():
    """2 operations a multiply-add of the dense layer, for our direct kernels (padded input,
    kernel size from the shapes; a pooled output counts the convolution before the pool), for
    TVM's fused ones (kernel size from the weight) and for matmuls; none for the rest."""
    from tvmcomp.peak import kernel_ops

    conv1 = 2 * 64 * 6 * 28 * 28 * 25
    assert kernel_ops("vnni_conv_b64_1x32x32_6k5x5_int8_int8_55ac82fe",
                      [(64, 1, 32, 32), (6, 7), (28,), (6,), (3, 6), (1, 6), (64, 6, 28, 28)],
                      ["int8", "int32", "int32", "int32", "int32", "float32", "int8"]) == (
        conv1, "int8")
    assert kernel_ops("sparse_conv_b64_1x32x32_6k5x5_relu_pool2",
                      [(64, 1, 32, 32), (45,), (45,), (7,), (6,), (64, 6, 14, 14)],
                      ["float32", "float32", "int32", "int32", "float32", "float32"]) == (
        conv1, "fp32")
    assert kernel_ops("fused_conv2d_add_relu", [(64, 1, 28, 28), (6, 1, 5, 5), (1, 6, 1, 1),
                                                (64, 6, 28, 28)], ["float32"] * 4) == (
        conv1, "fp32")
    assert kernel_ops("sell_int_b64_400x120_uint8_int8_1234abcd",
                      [(64, 400), (99,), (99,), (9,), (120,), (2, 120), (1, 120), (64, 120)],
                      ["uint8"] + ["int32"] * 7) == (2 * 64 * 400 * 120, "int8")
    # a codebook kernel: the weight's uint8 codes first, then the float input
    assert kernel_ops("fused_relax_astype_relax_take_relax_nn_conv2d_relax_add_relax_nn_relu",
                      [(6, 1, 5, 5), (32,), (64, 1, 28, 28), (1, 6, 1, 1), (64, 6, 28, 28)],
                      ["uint8", "float32", "float32", "float32", "float32"]) == (conv1, "fp32")
    assert kernel_ops("fused_relax_astype_relax_take_relax_matmul_relax_add",
                      [(400, 120), (32,), (64, 400), (120,), (64, 120)],
                      ["uint8", "float32", "float32", "float32", "float32"]) == (
        2 * 64 * 400 * 120, "fp32")
    assert kernel_ops("max_pool2d", [(64, 6, 28, 28), (64, 6, 14, 14)], ["int8"] * 2) is None
