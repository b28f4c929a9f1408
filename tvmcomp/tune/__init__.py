"""MetaSchedule tuning with the XGBoost cost model, one database per target profile."""

from .records import Records, RecordPaths, cache_root
from .tuner import TaskStatus, TuneReport, task_status, tune_module

__all__ = ["RecordPaths", "Records", "TaskStatus", "TuneReport", "cache_root", "task_status",
           "tune_module"]
