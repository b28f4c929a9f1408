"""Run an artifact on its board (native or qemu) with the C++ app and compare with a reference.

    python -m tvmcomp.deploy.compare BOARD_ARTIFACT REFERENCE_ARTIFACT [--limit N]

BOARD_ARTIFACT runs through examples/cpp_deploy on its profile's board (aarch64 under qemu);
REFERENCE_ARTIFACT (an x86 build of the same model) runs here with the Python runtime, on the
same real MNIST images. Exit status 1 when the outputs disagree.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..errors import TvmcompError
from .cpp_app import run_app, write_idx


def mnist_idx(out_dir: str | Path, limit: int | None = None):
    """Real MNIST evaluation images (10k test set if present, else held-out) as IDX files."""
    from ..data.mnist import default_mnist_dir, load_eval_set

    d = default_mnist_dir()
    _, ev = load_eval_set(d if d is not None and Path(d).is_dir() else None)
    n = len(ev) if limit is None else min(limit, len(ev))
    images, labels = write_idx(ev.images[:n], ev.labels[:n], out_dir)
    return images, labels, ev.images[:n], ev.labels[:n], ev.source


def disagreements(board: np.ndarray, ref: np.ndarray) -> list[dict]:
    """Images whose top class differs between two logit arrays, each with the reference's
    logit margin (top-1 minus top-2: how close the reference was to a tie)."""
    top2 = np.sort(ref, axis=1)[:, -2:]
    return [{"image": int(i), "board": int(board[i].argmax()), "reference": int(ref[i].argmax()),
             "reference_margin": float(top2[i, 1] - top2[i, 0])}
            for i in np.flatnonzero(board.argmax(1) != ref.argmax(1))]


def compare(board_art: str | Path, ref_art: str | Path, limit: int = 500, tol: float = 1e-4,
            threads: int = 1) -> dict:
    """Logits of ``board_art`` on its board vs ``ref_art`` here, on ``limit`` real images;
    each image whose prediction differs is listed with the reference's logit margin (top-1
    minus top-2: how close it was to a tie)."""
    from .. import runtime
    from ..data import normalize

    with tempfile.TemporaryDirectory() as tmp:
        img, lab, raw, y, source = mnist_idx(tmp, limit)
        run = run_app(board_art, img, lab, threads=threads)
    ref = runtime.load(ref_art)(normalize(raw))
    diff = float(np.abs(run.logits - ref).max())
    same = int(np.sum(run.predictions == ref.argmax(1)))
    return {"images": len(y), "eval_set": source, "max_abs_diff": diff,
            "predictions_identical": same, "disagreements": disagreements(run.logits, ref),
            "board_accuracy": run.accuracy,
            "reference_accuracy": float(np.mean(ref.argmax(1) == y)),
            "board_latency_us": run.latency_us, "match": diff <= tol and same == len(y)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tvmcomp.deploy.compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("board_artifact")
    ap.add_argument("reference_artifact")
    ap.add_argument("--limit", type=int, default=500, help="images (default 500)")
    ap.add_argument("--tol", type=float, default=1e-4, help="max |logit diff| (default 1e-4)")
    args = ap.parse_args(argv)
    try:
        res = compare(args.board_artifact, args.reference_artifact, args.limit, args.tol)
    except TvmcompError as e:
        print(f"compare: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(res))
    return 0 if res["match"] else 1


if __name__ == "__main__":
    sys.exit(main())
