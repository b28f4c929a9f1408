"""Load an artifact and run it, checking integrity and inputs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .artifact import Manifest, check_library, read_manifest
from .errors import ArtifactError, InputError
from .targets import profile_from_dict


class CompiledModel:
    """A loaded artifact: call it with a NumPy batch of any size. ``vm``: the artifact's
    VM, local or on a board over RPC; its on-load function, if any, is run here, once."""

    def __init__(self, art_dir: Path, manifest: Manifest, vm, device, check_finite: bool = True,
                 library=None):
        self.path = art_dir
        self.library = library  # the kernels' module (loaded here), for timing them one by one
        self.check_finite = check_finite
        self.manifest = manifest
        self._vm = vm
        self.device = device
        inp = manifest.inputs[0]
        self.input_name = inp.name
        self.input_shape = inp.shape  # batch dim symbolic
        self.input_dtype = inp.dtype
        self.batches = manifest.batches
        run_on_load(vm, manifest)
        self._entries = {}
        for b, name in manifest.entry_points.items():
            try:
                self._entries[b] = vm[name]
            except Exception:  # noqa: BLE001 - the VM raises a bare TVM error
                raise ArtifactError(f"{art_dir}: the manifest's entry point {name!r} (batch {b}) "
                                    "is not in model.so; the two do not belong together") from None

    def entry(self, batch: int):
        """The raw VM function for a compiled batch size (for benchmarking)."""
        if batch not in self._entries:
            raise InputError(f"no compiled entry for batch {batch}; compiled: {self.batches}")
        return self._entries[batch]

    def check_input(self, x) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            raise InputError(f"input must be a numpy array, got {type(x).__name__}")
        if x.dtype != np.dtype(self.input_dtype):
            raise InputError(
                f"input {self.input_name!r} must be {self.input_dtype}, got {x.dtype}"
            )
        expect = self.input_shape[1:]
        if x.ndim != len(self.input_shape) or tuple(x.shape[1:]) != tuple(expect):
            raise InputError(
                f"input {self.input_name!r} must have shape [N, {', '.join(map(str, expect))}], "
                f"got {list(x.shape)}"
            )
        if x.shape[0] == 0:
            raise InputError(f"input {self.input_name!r} has an empty batch")
        if self.check_finite and x.dtype.kind == "f" and not np.isfinite(x).all():
            # the compiled model would return finite, confident logits for them
            raise InputError(f"input {self.input_name!r} contains NaN or Inf (load the artifact "
                             "with check_finite=False to skip this check)")
        return np.ascontiguousarray(x)

    def _run(self, batch: int, x: np.ndarray) -> np.ndarray:
        import tvm

        out = self._entries[batch](tvm.runtime.tensor(x, self.device))
        return out.numpy()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Run on a batch of any size, split over the compiled batch sizes (padding the tail)."""
        x = self.check_input(x)
        outs, i, n = [], 0, x.shape[0]
        while i < n:
            left = n - i
            fit = [b for b in self.batches if b <= left]
            if fit:
                b = max(fit)
                outs.append(self._run(b, x[i: i + b]))
            else:
                b = min(self.batches)
                pad = np.zeros((b, *x.shape[1:]), dtype=x.dtype)
                pad[:left] = x[i:]
                outs.append(self._run(b, pad)[:left])
            i += b
        return np.concatenate(outs, axis=0)


def _size_thread_pool(threads: int | None) -> None:
    """TVM_NUM_THREADS = min(the manifest's runtime.threads, usable cores), unless the user set
    it. Effective when no kernel has run in this process yet (TVM sizes its pool once)."""
    import tvmcomp

    if threads is None or tvmcomp.THREADS_SET_BY_USER:
        return
    os.environ["TVM_NUM_THREADS"] = str(max(1, min(threads, tvmcomp.USABLE_CORES)))


def load(art_dir: str | os.PathLike, check_finite: bool = True,
         expected_sha256: str | None = None) -> CompiledModel:
    """Load an artifact directory: verify ``model.so``'s hash and that this machine can run it.

    Loading runs native code from ``model.so``. The sha256 in ``manifest.json`` sits beside it,
    so it catches accidents, not attackers: a deployment passes ``expected_sha256``, the hash
    of the ``model.so`` it shipped, and a different library is refused before it is loaded.

    ``check_finite``: calls refuse inputs holding NaN or Inf. The raw entry points
    (:meth:`CompiledModel.entry`, what ``bench`` times) skip every input check; ``bench``
    times the checks on their own in the same run and reports their cost.
    """
    import tvm
    from tvm.runtime.vm import VirtualMachine  # = relax.VirtualMachine, also in runtime-only TVM

    art_dir = Path(art_dir)
    manifest = read_manifest(art_dir)
    lib_path = check_library(art_dir, manifest)
    if expected_sha256 is not None and manifest.library_sha256 != expected_sha256.lower():
        raise ArtifactError(
            f"{lib_path}: sha256 {manifest.library_sha256[:12]}… is not the pinned "
            f"{expected_sha256[:12]}…: not the model.so you shipped")
    _size_thread_pool(manifest.threads)
    profile = profile_from_dict(manifest.profile, source=str(manifest.path))
    missing = profile.missing_cpu_flags()
    if missing:
        raise ArtifactError(
            f"{art_dir}: built for profile {profile.name!r} ({profile.description}); this machine "
            f"lacks {', '.join(missing)}. Rebuild with a profile it supports (tvmcomp targets)."
        )
    device = profile.device()
    if not device.exist:
        raise ArtifactError(f"{art_dir}: built for CUDA but no CUDA GPU is present")
    try:
        lib = tvm.runtime.load_module(str(lib_path))
        vm = VirtualMachine(lib, device)
    except Exception as e:  # noqa: BLE001 - the loader raises bare TVM errors
        raise ArtifactError(f"{lib_path}: cannot load ({str(e).strip().splitlines()[-1]})") from None
    return CompiledModel(art_dir, manifest, vm, device, check_finite,
                         library=lib.imports[0] if lib.imports else lib)


def run_on_load(vm, manifest: Manifest) -> None:
    """Call the artifact's on-load function once, if it has one (``runtime.on_load``: layers
    stored compressed and decoded at load put their dense weights in TVM's tensor cache,
    where the entry points read them). ``vm``: local, or on a board over RPC."""
    if manifest.on_load is None:
        return
    try:
        vm[manifest.on_load]()
    except Exception as e:  # noqa: BLE001 - the VM raises bare TVM errors
        raise ArtifactError(f"{manifest.path.parent}: the on-load function {manifest.on_load!r} "
                            f"failed ({str(e).strip().splitlines()[-1][:160]})") from None
