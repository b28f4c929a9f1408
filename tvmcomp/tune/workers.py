"""MetaSchedule's build and run workers, started without PyTorch.

Each worker is a fresh ``python -m tvm.exec.popen_worker`` that imports TVM, and ``import tvm``
imports PyTorch when it is installed (tvm_ffi tries it first, and goes on without it). PyTorch
is most of that import: on a 2-core Zen 3, 4.1 s a worker against 1.7 s without. No worker
needs it (they compile and time TIR), so processes started inside :func:`without_torch` find a
``torch`` module that raises ``ImportError`` first on their path.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

NO_TORCH = Path(__file__).with_name("no_torch")  # holds the stand-in torch.py


@contextmanager
def without_torch():
    """Python processes started inside (MetaSchedule's workers) import TVM without PyTorch;
    this process is untouched (the module path is read only at start-up)."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(NO_TORCH), old) if p)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
