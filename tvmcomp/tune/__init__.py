"""MetaSchedule tuning with the XGBoost cost model, one database per target profile."""

from .tuner import TaskStatus, TuneReport, open_database, task_status, tune_module

__all__ = ["TaskStatus", "TuneReport", "open_database", "task_status", "tune_module"]
