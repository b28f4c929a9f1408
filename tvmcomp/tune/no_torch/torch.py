"""Stands in for PyTorch in MetaSchedule's worker processes (see ``tvmcomp/tune/workers.py``)."""

raise ImportError("tvmcomp keeps PyTorch out of TVM's build and run workers")
