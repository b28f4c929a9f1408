"""Check a compiled model against its float reference (ONNX Runtime) on real inputs."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .data import Dataset, normalize
from .errors import AccuracyDropError, VerificationError

MNIST_SHAPE = (1, 28, 28)
ACCURACY_TOLERANCE = 0.0005  # 0.05 percentage points
RANDOM_INPUTS = 64


@dataclass
class VerifyResult:
    reference: str
    inputs: str
    n: int
    max_abs_err: float
    tolerance: float
    accuracy: float | None = None
    reference_accuracy: float | None = None
    float_accuracy: float | None = None
    max_accuracy_drop: float | None = None
    passed: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def ort_session(onnx_path: str):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])


def ort_run(sess, x: np.ndarray, fixed_batch: int | None = None, chunk: int = 500) -> np.ndarray:
    """Run an ORT session over ``x`` in chunks (of the model's fixed batch, if it has one)."""
    name = sess.get_inputs()[0].name
    step = fixed_batch or chunk
    outs = []
    for i in range(0, len(x), step):
        xb = x[i: i + step]
        if fixed_batch and len(xb) < fixed_batch:
            pad = np.zeros((fixed_batch, *x.shape[1:]), x.dtype)
            pad[: len(xb)] = xb
            outs.append(sess.run(None, {name: pad})[0][: len(xb)])
        else:
            outs.append(sess.run(None, {name: xb})[0])
    return np.concatenate(outs)


@dataclass(frozen=True)
class InputSet:
    """The user's own inputs (``--eval-data``), as the model takes them, and their labels
    (``--eval-labels``) if known."""

    x: np.ndarray
    labels: np.ndarray | None
    source: str  # file names only: it goes into the artifact


def load_input_set(data: str, labels: str | None, input_shape: tuple,
                   dtype: str) -> InputSet:
    """Read ``--eval-data`` (and ``--eval-labels``) for a model taking ``input_shape`` of
    ``dtype``; one :class:`TvmcompError` line for anything that does not fit."""
    from pathlib import Path

    from .errors import TvmcompError

    def load(flag: str, path: str) -> np.ndarray:
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise TvmcompError(f"{flag} {path}: not a readable .npy array "
                               f"({str(e).splitlines()[0][:120]})") from None

    x = load("--eval-data", data)
    want = ["N", *input_shape[1:]]
    if x.ndim != len(input_shape) or tuple(x.shape[1:]) != tuple(input_shape[1:]) or not len(x):
        raise TvmcompError(f"--eval-data {data}: the model takes {want}, got an array of shape "
                           f"{list(x.shape)}")
    if np.dtype(dtype).kind != x.dtype.kind and not (np.dtype(dtype).kind == "f"
                                                     and x.dtype.kind in "iu"):
        raise TvmcompError(f"--eval-data {data}: the model takes {dtype}, got {x.dtype}")
    x = x.astype(dtype, copy=False)
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        raise TvmcompError(f"--eval-data {data}: holds NaN or infinite values")
    y = None
    if labels is not None:
        y = load("--eval-labels", labels)
        if y.ndim != 1 or y.dtype.kind not in "iu" or len(y) != len(x):
            raise TvmcompError(f"--eval-labels {labels}: one integer class per input wanted "
                               f"({len(x)}), got {y.dtype} of shape {list(y.shape)}")
    names = Path(data).name + (f" with labels {Path(labels).name}" if labels else "")
    return InputSet(np.ascontiguousarray(x), y, f"{len(x)} inputs from {names}")


def eval_inputs(input_shape: tuple, dtype: str, eval_set: Dataset | InputSet | None):
    """The user's inputs if given; real MNIST images when the model takes 1×28×28; else
    seeded random inputs."""
    if isinstance(eval_set, InputSet):
        return eval_set.x, eval_set.labels, eval_set.source
    if eval_set is not None and tuple(input_shape[1:]) == MNIST_SHAPE and dtype == "float32":
        return normalize(eval_set.images), eval_set.labels, eval_set.portable_source
    rng = np.random.default_rng(0)
    x = rng.standard_normal((RANDOM_INPUTS, *input_shape[1:])).astype(dtype)
    return x, None, f"{RANDOM_INPUTS} seeded random-normal inputs (input is not MNIST-shaped)"


def verify(run_fn, onnx_path: str, input_shape: tuple, dtype: str,
           eval_set: Dataset | InputSet | None,
           fixed_batch: int | None = None, raise_on_fail: bool = True, *,
           reference_fn=None, reference_name: str = "onnxruntime fp32",
           rel_tol: float = 1e-3, max_accuracy_drop: float | None = None) -> VerifyResult:
    """Compare ``run_fn(x)`` with its reference; accuracy too when labels are known.

    The reference is ONNX Runtime on ``onnx_path`` unless ``reference_fn`` is given (for int8
    builds: ORT running the QDQ model as written). Outputs must agree to ``rel_tol`` of the
    reference's largest magnitude, and accuracy to 0.05 pt. With ``max_accuracy_drop`` the
    float model (ORT on ``onnx_path``) is also run and the accuracy may fall at most that much
    (a fraction) below it.
    """
    x, labels, source = eval_inputs(input_shape, dtype, eval_set)
    float_ref = None
    if reference_fn is None or max_accuracy_drop is not None:
        float_ref = ort_run(ort_session(onnx_path), x, fixed_batch)
    ref = reference_fn(x) if reference_fn is not None else float_ref
    got = run_fn(x)
    if got.shape != ref.shape:
        raise VerificationError(f"output shape {got.shape} differs from the reference's {ref.shape}")
    err = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64))))
    tol = rel_tol * max(1.0, float(np.max(np.abs(ref))))
    res = VerifyResult(reference_name, source, len(x), err, tol)
    ok = bool(np.isfinite(err) and err <= tol)
    too_lossy = False  # agrees with its reference, but too far below the float model
    why = f"max |err| {err:.3g} (tolerance {tol:.3g})"
    if labels is not None and got.ndim != 2:  # not a classifier: outputs compared only
        labels = None
        res.inputs += f"; output {list(got.shape[1:])} per image is not class scores, so no " \
                      "accuracy"
    if labels is not None:
        res.accuracy = float(np.mean(got.argmax(1) == labels))
        res.reference_accuracy = float(np.mean(ref.argmax(1) == labels))
        ok = ok and abs(res.accuracy - res.reference_accuracy) <= ACCURACY_TOLERANCE
        why += f", accuracy {res.accuracy:.4%} vs reference {res.reference_accuracy:.4%}"
        if max_accuracy_drop is not None:
            res.float_accuracy = float(np.mean(float_ref.argmax(1) == labels))
            res.max_accuracy_drop = max_accuracy_drop
            drop = res.float_accuracy - res.accuracy
            too_lossy = ok and drop > max_accuracy_drop
            ok = ok and not too_lossy
            why += (f", {drop * 100:+.2f} pt below float {res.float_accuracy:.4%} "
                    f"(allowed {max_accuracy_drop * 100:.2f} pt)")
    res.passed = ok
    if not ok and raise_on_fail:
        raise (AccuracyDropError if too_lossy else VerificationError)(
            f"compiled model disagrees with {reference_name}: {why}; artifact not written"
        )
    return res
