"""Register only the tensor intrinsics a target family needs.

``import tvm.s_tir.tensor_intrin`` (done by every MetaSchedule ``TuneContext`` and by TVM's
default builder) registers the intrinsics of *every* backend and takes ~75 s on a 2-core
machine, mostly CUDA and ROCm. We put a light package object in its place whose submodules
(``x86``, ``arm_cpu``, ``cuda``, ...) still import normally, and import only the ones asked for.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

_PKG = "tvm.s_tir.tensor_intrin"
FAMILY_MODULES = {"x86": ("x86",), "arm": ("arm_cpu",), "cuda": ("cuda",)}


def load_tensor_intrinsics(family: str | None = None) -> None:
    """Make ``tvm.s_tir.tensor_intrin`` cheap to import, then load ``family``'s intrinsics."""
    if _PKG not in sys.modules:
        import tvm.s_tir  # noqa: F401  (parent package must exist)

        spec = importlib.util.find_spec(_PKG)
        light = types.ModuleType(_PKG)
        light.__path__ = list(spec.submodule_search_locations)
        light.__package__ = _PKG
        light.__doc__ = "tensor intrinsics, loaded per target family by tvmcomp"
        sys.modules[_PKG] = light
    for sub in FAMILY_MODULES.get(family or "", ()):
        importlib.import_module(f"{_PKG}.{sub}")
