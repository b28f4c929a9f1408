"""Build and run the C++ deploy app (examples/cpp_deploy) natively or on an emulated board."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..artifact import read_manifest
from ..errors import TvmcompError
from ..targets import REPO_ROOT, parse_profile
from .boards import board_for
from .toolchain import make_example

APP_DIR = REPO_ROOT / "examples" / "cpp_deploy"
APP_NAME = "tvmcomp_deploy"


@dataclass(frozen=True)
class AppRun:
    """What one run of the C++ app printed, plus the logits it dumped."""

    logits: np.ndarray
    accuracy: float | None
    latency_us: float
    stdout: str

    @property
    def predictions(self) -> np.ndarray:
        return self.logits.argmax(axis=1)


def app_path(arch: str, out_root: Path | None = None) -> Path:
    return (out_root or REPO_ROOT / "build" / "cpp_deploy") / arch / APP_NAME


def build_app(arch: str = "x86_64", out_root: Path | None = None) -> Path:
    """``make -C examples/cpp_deploy ARCH=<arch>``; the binary path (up-to-date builds are free)."""
    return make_example(APP_DIR, arch, app_path(arch, out_root).parent, APP_NAME,
                        "the C++ deploy app")


def manifest_board(art_dir: str | os.PathLike):
    """The board an artifact directory was built for (from its manifest's profile)."""
    prof = read_manifest(art_dir).profile
    keys = ("description", "family", "target", "cores", "cross_compiler", "board")
    profile = parse_profile({k: prof[k] for k in keys if prof.get(k) is not None},
                            prof.get("name", "?"), source=f"{art_dir}/manifest.json")
    return board_for(profile)


def write_idx(images: np.ndarray, labels: np.ndarray | None, out_dir: str | os.PathLike
              ) -> tuple[Path, Path | None]:
    """Write uint8 images ``[N, H, W]`` (and labels) as uncompressed MNIST IDX files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    img = out / "images-idx3-ubyte"
    with open(img, "wb") as f:
        f.write((2051).to_bytes(4, "big"))
        for d in images.shape:
            f.write(int(d).to_bytes(4, "big"))
        f.write(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    lab = None
    if labels is not None:
        lab = out / "labels-idx1-ubyte"
        with open(lab, "wb") as f:
            f.write((2049).to_bytes(4, "big") + len(labels).to_bytes(4, "big"))
            f.write(np.asarray(labels, dtype=np.uint8).tobytes())
    return img, lab


def run_app(art_dir: str | os.PathLike, images_idx: str | os.PathLike,
            labels_idx: str | os.PathLike | None = None, limit: int | None = None,
            repeat: int = 20, threads: int = 1, timeout_s: float = 600,
            app: Path | None = None) -> AppRun:
    """Run the C++ app on an artifact, on its board: natively, or under qemu for aarch64.

    ``threads`` sets ``TVM_NUM_THREADS`` (emulation is slow; one thread keeps the host free).
    """
    board = manifest_board(art_dir)
    arch = board.arch if board.kind != "cuda" else "x86_64"
    binary = app or build_app(arch)
    with tempfile.TemporaryDirectory() as tmp:
        dump = Path(tmp) / "logits.f32"
        cmd = [*board.runner(), str(binary), str(art_dir), str(images_idx)]
        if labels_idx:
            cmd.append(str(labels_idx))
        cmd += ["--dump-logits", str(dump), "--repeat", str(repeat), "--quiet"]
        if limit:
            cmd += ["--limit", str(limit)]
        env = dict(os.environ, TVM_NUM_THREADS=str(threads))
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise TvmcompError(f"{board.describe()}: the deploy app ran past {timeout_s:.0f} s"
                               ) from None
        if res.returncode != 0:
            err = res.stderr.strip().splitlines()
            raise TvmcompError(err[-1] if err else f"deploy app exited {res.returncode}")
        logits = np.fromfile(dump, dtype=np.float32)
    acc = re.search(r"^accuracy: ([0-9.]+)", res.stdout, re.M)
    lat = re.search(r"^latency_us: median ([0-9.]+)", res.stdout, re.M)
    n = int(re.search(r"^images: (\d+)", res.stdout, re.M).group(1))
    return AppRun(logits.reshape(n, -1), float(acc.group(1)) if acc else None,
                  float(lat.group(1)) if lat else float("nan"), res.stdout)
