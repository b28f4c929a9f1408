"""Latency of an artifact and, in the same run, its float baselines (PyTorch, ORT, TVM default)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .artifact import sha256_file
from .errors import TvmcompError

BASELINES = ("torch_fp32", "ort_fp32", "tvm_default")
INT8_BASELINES = ("ort_int8_qdq", "torch_int8")
PEER_SETTLE_S = 0.5  # pause after timing a peer runtime, so its spinning threads go idle


def time_us(fn, min_repeat_s: float = 0.02, repeats: int = 15, warmup: int = 5) -> float:
    """Median µs per call of ``fn()``: each repeat runs ≥ ``min_repeat_s``, median of repeats."""
    for _ in range(warmup):
        fn()
    number, t = 1, 0.0
    while True:  # calibrate calls per repeat
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        t = time.perf_counter() - t0
        if t >= min_repeat_s or number >= 1 << 20:
            break
        number = max(number * 2, int(number * min_repeat_s / max(t, 1e-9) * 1.2))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - t0) / number * 1e6)
    return statistics.median(samples)


def evaluator(mod, name: str, args: list, min_repeat_s: float = 0.01, max_number: int = 10000):
    """A zero-argument timer of ``mod[name](*args)`` (a VM or a compiled library).

    Runs it once to warm up and size a TVM ``time_evaluator`` whose one repeat makes enough
    calls to last ``min_repeat_s`` (at most ``max_number``); each call of the returned
    function is one such repeat and returns its mean seconds per call.
    """
    dev = args[0].device
    mod[name](*args)
    once = mod.time_evaluator(name, dev, number=1, repeat=3)(*args)
    n = max(1, min(max_number, int(min_repeat_s / max(float(np.min(once.results)), 1e-7))))
    timer = mod.time_evaluator(name, dev, number=n, repeat=1)
    return lambda: timer(*args).mean


def interleaved_us(timers: dict, repeat: int = 21) -> dict[str, float]:
    """Median µs per call of each :func:`evaluator` in ``timers``, repeats interleaved.

    Repeats alternate between the timers, so a load change on a shared machine hits all of
    them alike.
    """
    samples: dict = {k: [] for k in timers}
    for _ in range(repeat):
        for k, t in timers.items():
            samples[k].append(t())
    return {k: float(np.median(v) * 1e6) for k, v in samples.items()}


def source_onnx(manifest, override: str | None = None) -> str | None:
    """The float ONNX model the artifact was built from, checked against its sha256:
    ``override`` (an error if it is not that model), else the manifest's file found at its
    path relative to the artifact or beside it; None when it is not there."""
    ref = manifest.source_model
    if override:
        path = Path(override)
        if not path.is_file():
            raise TvmcompError(f"--onnx {path}: file not found")
        if ref is None or sha256_file(path) != ref.sha256:
            raise TvmcompError(f"{path} is not the model this artifact was built from "
                               "(sha256 differs)")
        return str(path)
    found = ref.locate(manifest.art_dir) if ref is not None else None
    return str(found) if found is not None else None


def _torch_model(manifest, onnx_path: str | None):
    """The PyTorch model of the checkpoint the manifest names (``tvmcomp export`` records it
    in the ONNX metadata), found beside the artifact or the source model; None if absent."""
    ref = manifest.checkpoint
    dirs = [Path(onnx_path).parent] if onnx_path else []
    path = ref.locate(manifest.art_dir, *dirs) if ref is not None else None
    if path is None:
        return None
    from .model import load_checkpoint

    return load_checkpoint(path)[0]


def _torch_int8(torch_model):
    """PyTorch eager int8 of the checkpoint, calibrated on 256 shipped training images."""
    import torch

    from .data import load_train_5k, normalize
    from .model.lenet import LeNet5, torch_int8_lenet

    if not isinstance(torch_model, LeNet5):
        return None
    calib = torch.from_numpy(normalize(load_train_5k().images[:256]))
    return torch_int8_lenet(torch_model, calib)


def _tvm_default(onnx_path: str, batch: int, profile):
    """TVM's plain ``tvm.compile`` (legalize + lower, no fusion, no schedules) as a baseline."""
    import tvm
    from tvm import relax

    from .frontend.onnx_import import import_onnx, load_onnx

    model, info = load_onnx(onnx_path)
    ex = tvm.compile(import_onnx(model, info, batch), target=profile.tvm_target())
    vm = relax.VirtualMachine(ex, profile.device())
    return vm["main"]


def py_timer(fn, min_repeat_s: float = 0.01):
    """An :func:`interleaved_us` timer of a Python callable: each call of the returned function
    runs ``fn`` enough times to last ``min_repeat_s`` and returns mean seconds per call."""
    for _ in range(3):
        fn()
    t0 = time.perf_counter()
    fn()
    n = max(1, min(100000, int(min_repeat_s / max(time.perf_counter() - t0, 1e-7))))

    def timer() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n

    return timer


def bench_artifact(art_dir: str | Path, batches=None, baselines=BASELINES,
                   onnx_override: str | None = None, progress: bool = True) -> dict:
    """``{"unit": "us", "results": {"<batch>": {"<name>": median_us}}, ...}`` from one run
    (``batches``: default the artifact's compiled batches)."""
    res = bench_artifacts({"artifact": art_dir}, batches, baselines, onnx_override, progress)
    res["artifact"] = str(art_dir)
    return res


def bench_artifacts(arts: dict, batches=None, baselines=BASELINES,
                    onnx_override: str | None = None, progress: bool = True,
                    repeat: int = 15) -> dict:
    """Time several artifacts (``{name: dir}``) and the baselines in one run.

    The float baselines come from the first artifact's source model; with any int8 artifact
    the int8 peers (ONNX Runtime on its QDQ model, PyTorch eager int8) are timed too. Per
    batch, our artifacts are timed interleaved (repeats alternate between them, so a load
    change hits them alike); then each peer in a block of its own, followed by a pause: the
    peers' thread pools keep spinning after a call (PyTorch's OpenMP for a long while), and
    interleaved with them our 2-thread artifact measured up to 9x slower (129 vs 14 µs) on
    a 2-vCPU VM. ``batches`` default to the first artifact's compiled batches. The input
    checks every call through :mod:`tvmcomp.runtime` adds (shape, dtype, NaN/Inf) are timed
    on their own in the same run. Returns ``{"unit": "us", "results": {"<batch>": {"<name>":
    median_us}}, "input_check_us": {"<batch>": {"<name>": median_us}}, "profile", "notes"}``.
    """
    import tvm

    from . import runtime
    from .verify import ort_session

    models = {name: runtime.load(d) for name, d in arts.items()}
    first = next(iter(models.values()))
    man = first.manifest
    batches = tuple(batches or first.batches)
    int8 = [name for name, m in models.items() if m.manifest.precision == "int8"]
    if baselines and int8:
        baselines = (*baselines, *[b for b in INT8_BASELINES if b not in baselines])
    onnx_path = source_onnx(man, onnx_override) if baselines else None
    notes = []
    if baselines and onnx_path is None:
        ref = man.source_model
        notes.append("ort_fp32, tvm_default: " + (
            f"the float source model {ref.file} is not at {ref.relpath} from the artifact "
            "nor beside it" if ref else "the manifest names no float source model")
            + "; skipped (pass --onnx PATH)")
        baselines = tuple(b for b in baselines if b not in ("ort_fp32", "tvm_default"))
    sess = ort_session(onnx_path) if "ort_fp32" in baselines else None
    qdq_sess = None
    if "ort_int8_qdq" in baselines:
        qm = models[int8[0]].manifest if int8 else None
        ref = Path(arts[int8[0]]) / qm.reference_model if qm and qm.reference_model else None
        if ref is not None and ref.is_file():
            qdq_sess = ort_session(str(ref))  # fully optimised: what ORT users deploy
        else:
            notes.append("ort_int8_qdq: no int8 artifact with a QDQ reference model; skipped")
    torch_model = (_torch_model(man, onnx_path) if {"torch_fp32", "torch_int8"} & set(baselines)
                   else None)
    if torch_model is None and {"torch_fp32", "torch_int8"} & set(baselines):
        notes.append("torch: no PyTorch checkpoint recorded in the ONNX metadata, or not found "
                     "beside the artifact or the source model; skipped")
    torch_q = _torch_int8(torch_model) if torch_model is not None and "torch_int8" in baselines \
        else None
    results: dict[str, dict[str, float]] = {}
    checks: dict[str, dict[str, float]] = {}
    rng = np.random.default_rng(0)
    bar = tqdm(batches, desc="bench", disable=not progress, leave=False)
    for b in bar:
        x = rng.standard_normal((b, *first.input_shape[1:])).astype(first.input_dtype)
        runs = {}
        for name, model in models.items():
            if b in model.batches:
                xt = tvm.runtime.tensor(x, model.device)
                runs[name] = (lambda f, xt: lambda: f(xt))(model.entry(b), xt)
            else:
                notes.append(f"{name} batch {b}: not compiled; timed via {model.batches} chunks")
                runs[name] = (lambda m: lambda: m(x))(model)
        if sess is not None:
            feed = {sess.get_inputs()[0].name: x}
            runs["ort_fp32"] = lambda feed=feed: sess.run(None, feed)
        if qdq_sess is not None:
            feed_q = {qdq_sess.get_inputs()[0].name: x}
            runs["ort_int8_qdq"] = lambda feed=feed_q: qdq_sess.run(None, feed)
        for name, net in (("torch_fp32", torch_model), ("torch_int8", torch_q)):
            if name in baselines and net is not None:
                import torch

                xt = torch.from_numpy(x)

                def run(net=net, xt=xt):
                    with torch.inference_mode():
                        return net(xt)

                runs[name] = run
        if "tvm_default" in baselines:
            from .targets import profile_from_dict

            prof = profile_from_dict(man.profile)
            f = _tvm_default(onnx_path, b, prof)
            xd = tvm.runtime.tensor(x, prof.device())
            runs["tvm_default"] = lambda f=f, xd=xd: f(xd)
        bar.set_postfix(batch=b, runs=len(runs))
        ours = {k: py_timer(runs.pop(k)) for k in models}
        row = interleaved_us(ours, repeat)
        checks[str(b)] = interleaved_us(
            {k: py_timer((lambda m: lambda: m.check_input(x))(m)) for k, m in models.items()},
            repeat)
        for k, fn in runs.items():  # peers, one block each, then let their threads go idle
            row.update(interleaved_us({k: py_timer(fn)}, repeat))
            time.sleep(PEER_SETTLE_S)
        results[str(b)] = row
    notes.insert(0, "our artifacts: the compiled entry points are timed; a call through "
                 "tvmcomp.runtime adds its input checks (shape, dtype, NaN/Inf), measured here: "
                 + "; ".join(f"batch {b} " + ", ".join(f"{us:.1f} µs" if len(row) == 1 else
                                                       f"{k} {us:.1f} µs"
                                                       for k, us in row.items())
                             for b, row in checks.items()))
    return {"unit": "us", "results": results, "input_check_us": checks,
            "artifacts": {k: str(v) for k, v in arts.items()},
            "profile": man.profile["name"], "notes": notes}


def kernel_profile(art_dir: str | Path, batch: int,
                   repeat: int = 5) -> list[tuple[str, float, tuple[int, str] | None]]:
    """``[(kernel, median µs, (operations, "int8" | "fp32") or None)]`` of one call of the
    artifact's batch-``batch`` entry point, in call order: the VM's calls are recorded with
    their real arguments (the VM's instrument hook), then each kernel is timed alone on those
    arguments (``time_evaluator``); a conv / matmul kernel's operations are counted from its
    arguments' shapes (:func:`tvmcomp.peak.kernel_ops`). The VM's own instructions
    (allocation, reshape, tensor-cache reads) are not in it."""
    import tvm

    from . import runtime
    from .peak import kernel_ops

    model = runtime.load(art_dir)
    if model.library is None:
        raise TvmcompError(f"{art_dir}: no kernel library to profile")
    x = np.zeros([batch, *model.input_shape[1:]], model.input_dtype)
    calls = []

    def record(_func, symbol, before, _ret, *args):
        if before and not str(symbol).startswith("vm."):
            calls.append((str(symbol), [tvm.runtime.tensor(a.numpy(), model.device)
                                        if hasattr(a, "numpy") else a for a in args]))
        return 0  # VMInstrumentReturnKind.NO_OP

    model._vm.set_instrument(record)
    try:
        model.entry(batch)(tvm.runtime.tensor(x, model.device))
    finally:
        model._vm.set_instrument(None)
    out = []
    for symbol, args in calls:
        ev = model.library.time_evaluator(symbol, model.device, number=1, repeat=repeat,
                                          min_repeat_ms=1)  # ≥ 1 ms a repeat
        tensors = [a for a in args if hasattr(a, "shape")]
        ops = kernel_ops(symbol, [tuple(int(d) for d in a.shape) for a in tensors],
                         [str(a.dtype) for a in tensors])
        out.append((symbol, 1e6 * float(np.median(ev(*args).results)), ops))
    return out


def format_table(res: dict) -> str:
    """A Markdown table: one row per batch, one column per run, then ours / ORT fp32 (time ratio:
    below 1 is faster than ORT)."""
    names = []
    for row in res["results"].values():
        names += [n for n in row if n not in names]
    ours = list(res.get("artifacts", {"artifact": None}))
    head = "| batch | " + " | ".join(f"{n} (µs)" for n in names) + " | " + " | ".join(
        f"{n} / ORT" for n in ours) + " |"
    lines = [head, "|" + "---|" * (len(names) + 1 + len(ours))]
    for b, row in res["results"].items():
        cells = [f"{row[n]:.1f}" if n in row else "–" for n in names]
        ratios = [f"{row[n] / row['ort_fp32']:.2f}×" if "ort_fp32" in row and n in row else "–"
                  for n in ours]
        lines.append(f"| {b} | " + " | ".join(cells + ratios) + " |")
    return "\n".join(lines)
