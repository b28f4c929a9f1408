"""``tvmcomp tune --commit``: promote the best checked records into the committed database."""

from __future__ import annotations

from dataclasses import dataclass, field

from .records import RecordPaths, Records, append_record
from .tuner import extract_tasks
from .validate import record_key, validated_database


@dataclass
class CommitReport:
    """What ``promote`` wrote into ``tuning_logs/<profile>/``."""

    database: str
    added: list[str] = field(default_factory=list)    # tasks whose best record was added
    present: list[str] = field(default_factory=list)  # already there
    no_correct_record: list[str] = field(default_factory=list)  # none of this profile passed


def promote(fused, profile, records: Records) -> CommitReport:
    """Append to the committed database, per task of ``fused``, the best record of this
    profile (committed or user cache) whose schedule computes correct results, unless the
    committed database holds it already. Other profiles' (fallback) records are never
    committed under this profile's name. Needs a host that runs the profile."""
    target = profile.tvm_target()
    tasks = [t for t in extract_tasks(fused, target)
             if records.own.has_workload(t.dispatched[0])]
    _, rep = validated_database(records, tasks, target)
    committed_dir = records.paths.committed
    report = CommitReport(str(committed_dir))
    committed = Records(RecordPaths(profile.name, committed_dir, committed_dir))
    for t in tasks:
        rec = rep.chosen.get(t.task_name)
        if rec is None or rep.sources[t.task_name] != profile.name:
            report.no_correct_record.append(t.task_name)
            continue
        mod = t.dispatched[0]
        there = (committed.own.get_top_k(committed.own.commit_workload(mod), 64)
                 if committed.own.has_workload(mod) else [])
        if record_key(rec) in {record_key(r) for r in there}:
            report.present.append(t.task_name)
        else:
            append_record(committed_dir, rec)
            report.added.append(t.task_name)
    return report
