"""``python -m tvmcomp.rpc {tracker,server,list} ...``: what ``tvmcomp rpc`` and ``launch`` run.

A tracker or server needs TVM's runtime, never PyTorch; ``import tvm`` imports PyTorch when it
is installed (tvm_ffi tries it first), which takes longer than the rest of TVM (on a 2-core
Zen 3, 3.8 s against 1.6 s without). So these processes start with PyTorch marked absent.
"""

import sys

sys.modules.setdefault("torch", None)  # `import torch` raises ImportError: TVM goes on without

from .cli import main  # noqa: E402

sys.exit(main())
