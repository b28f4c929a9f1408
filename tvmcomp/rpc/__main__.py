"""``python -m tvmcomp.rpc {tracker,server,list} ...``: what ``tvmcomp rpc`` and ``launch`` run."""

import sys

from .cli import main

sys.exit(main())
