"""CUDA kernels compiled at build time: a fatbin of the profile's machine code and its PTX."""

from __future__ import annotations

import contextlib
import ctypes
import re
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import TvmcompError
from ..targets import Profile
from .toolchain import find_tool

JIT_CALLBACK = "tvm_callback_cuda_compile"  # what TVM's CUDA codegen compiles kernels with
CUDA_FACTORY = "ffi.Module.create.cuda"  # registered by libtvm_runtime_cuda.so
FATBIN_MAGIC = struct.pack("<I", 0xBA55ED50)
STUB_RESULT = 34  # CUDA_ERROR_STUB_LIBRARY, what every stand-in driver function returns


def gpu_code(lib: bytes) -> list[str]:
    """The GPU code in a ``model.so``.

    Parameters
    ----------
    lib : bytes
        The shared library's contents.

    Returns
    -------
    list of str
        Its fatbin's entries: ``"sm_XY"`` (machine code) and ``"compute_XY"`` (PTX);
        ``["CUDA source"]`` when its kernels are compiled when loaded; ``[]`` without CUDA.
    """
    i = lib.find(FATBIN_MAGIC)
    if i < 0:
        return ["CUDA source"] if b"__global__" in lib else []
    _, _, head, size = struct.unpack_from("<IHHQ", lib, i)  # magic, version, header, payload
    code, o = [], i + head
    while o < i + head + size:  # entry: kind (1 PTX, 2 ELF), _, header, payload, ..., arch @28
        kind, _, head_e, size_e = struct.unpack_from("<HHIQ", lib, o)
        arch = struct.unpack_from("<I", lib, o + 28)[0]
        code.append(f"compute_{arch}" if kind == 1 else f"sm_{arch}")
        o += head_e + size_e
    return code


def _runtime_lib() -> Path:
    """Path of TVM's CUDA runtime library, beside ``libtvm_runtime.so``."""
    from tvm.base import _LOADED_LIBS

    return Path(_LOADED_LIBS["tvm_runtime"]._name).parent / "libtvm_runtime_cuda.so"


def load_cuda_runtime() -> str | None:
    """Load TVM's CUDA runtime library, which a runtime-only TVM does not load by itself.

    Returns
    -------
    str or None
        Why it cannot be loaded (e.g. no NVIDIA driver), or None once it is.
    """
    import tvm_ffi
    from tvm.base import _LOADED_LIBS

    if tvm_ffi.get_global_func(CUDA_FACTORY, allow_missing=True) is not None:
        return None
    lib = _runtime_lib()
    try:
        _LOADED_LIBS["tvm_runtime_cuda"] = ctypes.CDLL(str(lib))
    except OSError as e:
        return f"cannot load {lib.name} ({e})"
    return None


def _driver_installed() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def _load_stand_in_driver() -> None:
    """Load a stand-in ``libcuda.so.1`` whose functions all fail, built in a temporary folder.

    It lets TVM's CUDA runtime library load where no NVIDIA driver is installed, so that TVM
    compiles kernels at all; both stay loaded in this process.
    """
    nm = subprocess.run([find_tool("nm"), "-D", "--undefined-only", str(_runtime_lib())],
                        check=True, capture_output=True, text=True).stdout
    names = sorted({w[1].split("@")[0] for w in map(str.split, nm.splitlines())
                    if len(w) == 2 and re.match(r"cu[A-Z]", w[1])})
    with tempfile.TemporaryDirectory(prefix="tvmcomp-cuda.") as tmp:
        src, stub = Path(tmp) / "libcuda.c", Path(tmp) / "libcuda.so.1"
        src.write_text("".join(f"int {n}(void) {{ return {STUB_RESULT}; }}\n" for n in names))
        cmd = [find_tool("gcc"), "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(stub),
               str(src)]
        res = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if res.returncode != 0:
            last = res.stderr.strip().splitlines() or [str(res.returncode)]
            raise TvmcompError(f"building a stand-in libcuda.so.1 failed: {last[-1]}")
        ctypes.CDLL(str(stub), mode=ctypes.RTLD_GLOBAL)


def _load_codegen_runtime() -> None:
    """Load TVM's CUDA runtime library: TVM's codegen compiles kernels only with it loaded."""
    why = load_cuda_runtime()
    if why is not None and not _driver_installed():
        _load_stand_in_driver()
        why = load_cuda_runtime()
    if why is not None:
        hint = "; add the CUDA toolkit's lib folder to LD_LIBRARY_PATH" if "cudart" in why else ""
        raise TvmcompError(f"TVM's CUDA runtime library: {why}{hint}")


@contextlib.contextmanager
def cuda_codegen(profile: Profile) -> Iterator[None]:
    """Make ``tvm.compile`` inside compile CUDA kernels with nvcc into fatbins.

    A fatbin holds machine code for the profile's arch (``sm_90``) and its PTX (``compute_90``),
    which the driver JIT-compiles on newer GPUs; the GPU host then needs only TVM's runtime.
    TVM's compile callback is restored on exit. Without an NVIDIA driver a stand-in
    ``libcuda.so.1`` lets TVM's CUDA runtime library load (for the rest of the process). A
    no-op for profiles of other families.

    Parameters
    ----------
    profile : Profile
        The profile being built.

    Raises
    ------
    TvmcompError
        nvcc (or gcc or nm, for the stand-in) is missing, the profile has no ``sm_XY`` arch or
        TVM's CUDA runtime library cannot be loaded.
    """
    if profile.family != "cuda":
        yield
        return
    find_tool("nvcc")
    arch = str(profile.target.get("arch", ""))
    if not re.fullmatch(r"sm_\d+[a-z]?", arch):
        raise TvmcompError(f"profile {profile.name}: [target] arch must be \"sm_XY\" for CUDA, "
                           f"got {arch!r}")
    import tvm
    import tvm_ffi
    from tvm.support import nvcc  # also registers TVM's own callback

    _load_codegen_runtime()
    sm = arch.removeprefix("sm_")
    gencode = ["-gencode", f"arch=compute_{sm},code=[sm_{sm},compute_{sm}]"]

    def compile_fatbin(code: str, *_) -> bytearray:
        with tvm.target.Target({"kind": "cuda", "arch": arch}):  # nvcc.py asks Target.current()
            return nvcc.compile_cuda(code, "fatbin", arch=gencode, compiler="nvcc")

    old = tvm_ffi.get_global_func(JIT_CALLBACK)
    tvm_ffi.register_global_func(JIT_CALLBACK, compile_fatbin, override=True)
    try:
        yield
    finally:
        tvm_ffi.register_global_func(JIT_CALLBACK, old, override=True)
