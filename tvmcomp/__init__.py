"""tvmcomp: a deployment compiler for compressed CNNs, built on Apache TVM."""

import os as _os

__version__ = "0.1.0"

# TVM's CPU thread pool, left to its defaults, ran LeNet-5 ~3x slower on our 2-vCPU VM than
# with TVM_NUM_THREADS set to the cores this process may use (90 vs 30 µs at batch 1, 2900 vs
# 1250 µs at batch 64, same artifact, same run). The pool reads the variable once, at its first
# parallel kernel, so it is set here, before any tvmcomp code runs a kernel; a value the user
# set wins. Tuning workers inherit it, so schedules are measured as they will run.
try:
    USABLE_CORES = len(_os.sched_getaffinity(0))
except AttributeError:  # not Linux
    USABLE_CORES = _os.cpu_count() or 1
THREADS_SET_BY_USER = "TVM_NUM_THREADS" in _os.environ
if not THREADS_SET_BY_USER:
    _os.environ["TVM_NUM_THREADS"] = str(USABLE_CORES)
