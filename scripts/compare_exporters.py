#!/usr/bin/env python
"""PyTorch's two ONNX exporters on the models we build: what moving to the default one changes.

``tvmcomp export`` (``tvmcomp.frontend.onnx_export``) uses the TorchScript exporter
(``torch.onnx.export(..., dynamo=False)``), deprecated since torch 2.13. The default, the
``torch.export``-based exporter (``dynamo=True``), needs ``onnxscript``, which is not one of
our dependencies. For LeNet-5 and each model of ``tvmcomp.model.suite`` (seeded weights), this
exports both ways with a batch-dynamic input, imports both with ``relax.frontend.onnx`` (our
importer) and reports the export time, the Relax ops each import holds (what our passes
match) and the largest difference of their outputs in ONNX Runtime.

    pip install onnxscript   # into any path on PYTHONPATH; not a dependency of tvmcomp
    .venv/bin/python scripts/compare_exporters.py
"""

from __future__ import annotations

import collections
import datetime as dt
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_lenet5 import machine, save_results, script_parser  # noqa: E402

OPSET = 18  # the dynamo exporter's lowest


def _relax_ops(path: Path) -> list[str]:
    from tvm import relax

    from tvmcomp.frontend.onnx_import import import_batches, load_onnx

    model, info = load_onnx(path)
    ops: list[str] = []
    relax.analysis.post_order_visit(
        import_batches(model, info, [1])["main_b1"],
        lambda e: ops.append(e.op.name) if isinstance(e, relax.Call) and hasattr(e.op, "name")
        else None)
    return ops


def compare(name: str, model, shape: tuple[int, ...], out: Path) -> dict:
    """Both exports of ``model`` (input ``shape``, batch dynamic) in ``out``, compared."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from tvmcomp.frontend.onnx_export import INPUT_NAME, OUTPUT_NAME, export_onnx

    paths = {k: out / f"{name}_{k}.onnx" for k in ("torchscript", "dynamo")}
    t = time.perf_counter()
    export_onnx(model, paths["torchscript"], input_shape=shape)
    secs = {"torchscript": time.perf_counter() - t}
    t = time.perf_counter()
    torch.onnx.export(model, (torch.zeros(*shape),), str(paths["dynamo"]),
                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_shapes=({0: torch.export.Dim("N")},), opset_version=OPSET,
                      dynamo=True, external_data=False, verbose=False)
    secs["dynamo"] = time.perf_counter() - t
    ops = {k: _relax_ops(p) for k, p in paths.items()}
    x = np.random.default_rng(0).standard_normal((2, *shape[1:])).astype(np.float32)
    y = [ort.InferenceSession(str(p)).run(None, {INPUT_NAME: x})[0] for p in paths.values()]
    only = {k: dict(collections.Counter(ops[k]) - collections.Counter(ops[o]))
            for k, o in (("torchscript", "dynamo"), ("dynamo", "torchscript"))}
    return {"model": name, "export_s": {k: round(v, 2) for k, v in secs.items()},
            "relax_ops": {k: len(v) for k, v in ops.items()}, "same_ops": ops["torchscript"]
            == ops["dynamo"], "only_in": only, "max_abs_diff": float(np.abs(y[0] - y[1]).max())}


def main() -> int:
    ap = script_parser(__doc__, "compare_exporters")
    args = ap.parse_args()
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        print("the dynamo exporter needs onnxscript: pip install onnxscript", file=sys.stderr)
        return 2
    import logging
    from importlib.metadata import version

    import torch

    from tvmcomp.model.lenet import LeNet5
    from tvmcomp.model.suite import SUITE, seeded

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    models = {"lenet5": (LeNet5().eval(), (1, 1, 28, 28)),
              **{n: (seeded(c), c.input_shape) for n, c in SUITE.items()}}
    rows = [compare(n, m, s, out) for n, (m, s) in models.items()]
    when = dt.datetime.now(dt.timezone.utc)
    lines = [f"# PyTorch's two ONNX exporters ({when.isoformat(timespec='seconds')})", "",
             f"Machine: {machine()}. torch {torch.__version__}, onnxscript "
             f"{version('onnxscript')}; the dynamo exporter at opset {OPSET}, "
             "ours (TorchScript) at tvmcomp's default. Produced by "
             "`scripts/compare_exporters.py`.", "",
             "| model | export s (TorchScript / dynamo) | Relax ops (TorchScript / dynamo) | "
             "same ops | only in one | ORT max abs diff |", "|---|---|---|---|---|---|"]
    for r in rows:
        only = "; ".join(f"{k}: " + ", ".join(f"{op} ×{n}" for op, n in v.items())
                         for k, v in r["only_in"].items() if v) or "–"
        lines.append(f"| {r['model']} | {r['export_s']['torchscript']:.2f} / "
                     f"{r['export_s']['dynamo']:.2f} | {r['relax_ops']['torchscript']} / "
                     f"{r['relax_ops']['dynamo']} | {'yes' if r['same_ops'] else 'no'} | {only} | "
                     f"{r['max_abs_diff']:.1e} |")
    save_results(args.results_dir, f"{when:%Y-%m-%d_%H%M}_exporters",
                 {"date": when.isoformat(), "machine": machine(), "rows": rows},
                 "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
