"""Apply tuning records to a fused module: tune what has none within a budget, then pick per
task the best record whose schedule computes correct results (the records that ship)."""

from __future__ import annotations

from ..targets import Profile
from .records import Records
from .remote import origins
from .rules import RULES
from .transfer import carry_schedules, describe_carried, describe_transferred
from .tuner import extract_tasks, task_status, tune_module


def _say(msg: str, on: bool = True) -> None:
    if on:
        print(msg, flush=True)


def ensure_tuned(fused, profile: Profile, records: Records, budget_s: float,
                 progress: bool = True, boards=None) -> dict:
    """Tune the tasks that have no record (own or fallback) within ``budget_s``: here, or
    for a profile this machine cannot run, on ``boards`` (a
    :class:`~tvmcomp.tune.remote.RemoteRunner`) when given."""
    target = profile.tvm_target()
    tasks = extract_tasks(fused, target)
    status = task_status(fused, target, records, tasks)
    missing = [t.name for t in status if t.best_us is None and not t.hand_scheduled]
    moved = [t.name for t in status if t.transferred]  # tuned when there is a budget
    borrowed = [t for t in status if t.source not in (None, profile.name)]
    info = {"records_read": records.counts(), "tasks": len(status), "budget_s": budget_s,
            "used_s": 0.0, "trials": 0, "stopped_by": "not needed"}
    check = ("checked before use" if profile.runs_here()
             else f"applied unchecked: this host cannot run {profile.name}")
    _say(f"{len(status) - len(missing)}/{len(status)} tasks have records"
         + (f" ({len(moved)} carried across shapes, not tuned)" if moved else "")
         + (f" ({len(borrowed)} only from {', '.join(sorted({t.source for t in borrowed}))}: "
            f"fallback, {check}; "
            f"`tvmcomp tune --profile {profile.name}` tunes them for this profile)"
            if borrowed else ""), progress)
    if missing and not profile.runs_here() and boards is not None and budget_s > 0:
        from .remote import tune_on_boards

        _say(f"tuning {len(missing)} untuned tasks on the board, budget {budget_s:.0f} s: "
             + boards.describe(), progress)
        rep, use = tune_on_boards(fused, target, records, boards, budget_s=budget_s,
                                  only_missing=True, family=profile.family,
                                  cores=profile.cores, progress=progress,
                                  cross_compiler=profile.cross_compiler)
        info.update(used_s=round(rep.used_s, 1), trials=rep.trials, stopped_by=rep.stopped_by,
                    trials_per_server=use.trials, board_busy_s=round(use.busy_s, 1),
                    board_wall_s=round(use.span_s, 1))
        _say(f"tuning used {rep.used_s:.0f} s of the {budget_s:.0f} s budget, "
             f"{rep.trials} trials on the board ({rep.stopped_by})", progress)
        status = rep.tasks
    elif missing and not profile.runs_here():
        info["stopped_by"] = f"cannot measure {profile.name} here" if budget_s > 0 else "budget 0"
        if budget_s > 0:
            _say(f"WARNING: {len(missing)} tasks untuned and {profile.name} cannot run on this "
                 f"machine (lacks {', '.join(profile.missing_cpu_flags())}); untuned kernels "
                 f"are slow: tune them on the board, `--rpc-tracker HOST:PORT` (build or "
                 "tune)", progress)
    elif (missing or moved) and budget_s > 0:
        _say(f"tuning {len(missing) + len(moved)} untuned tasks, budget {budget_s:.0f} s "
             "(--tune-budget; 0 = none)", progress)
        rep = tune_module(fused, target, records, budget_s=budget_s, only_missing=True,
                          family=profile.family, cores=profile.cores, progress=progress)
        _carried(info, rep.carried, rep.transferred, progress)
        info.update(used_s=round(rep.used_s, 1), trials=rep.trials, stopped_by=rep.stopped_by)
        _say(f"tuning used {rep.used_s:.0f} s of the {budget_s:.0f} s budget, "
             f"{rep.trials} trials ({rep.stopped_by}); records in {rep.database}", progress)
        status = rep.tasks
    elif missing:
        info["stopped_by"] = "budget 0"
        # no tuning, but codebook kernels still take their dense twin's schedule, and other
        # kernels the schedule of their operator at another shape
        carried, moved_now = carry_schedules([t for t in tasks if t.task_name in missing],
                                             records, target, records.tuning_database(),
                                             profile.family)
        _carried(info, carried, moved_now, progress)
        if carried or moved_now:
            status = task_status(fused, target, records, tasks)
    untuned = [t.name for t in status if t.best_us is None and not t.hand_scheduled]
    hand = [t.name for t in status if t.hand_scheduled]
    if hand:
        info["hand_scheduled"] = hand
    if untuned and profile.family == "cuda":
        _say(f"{len(untuned)}/{len(status)} kernels have no tuned schedule: DLight's rules "
             "schedule them", progress)
    elif untuned:
        _say(f"WARNING: {len(untuned)}/{len(status)} kernels have no tuned schedule and run "
             f"naive loops (slow): {', '.join(untuned)}", progress)
    moved = [t.name for t in status if t.transferred]
    info["tuned"] = len(status) - len(untuned) - len(hand) - len(moved)
    info["untuned"] = untuned
    if moved:
        info["transferred_untuned"] = moved
    ruled = [t.name for t in status if t.transferred == RULES]
    if ruled:
        info["rule_based_untuned"] = ruled
    info["tuned_kernel_us"] = {t.name: round(t.best_us, 3) for t in status if t.best_us}
    return info


def _carried(info: dict, carried: dict, moved: dict, progress: bool) -> None:
    if carried:
        info["carried_from_dense_twin"] = {k: round(v, 3) for k, v in carried.items()}
        _say(describe_carried(carried), progress)
    if moved:
        info["carried_across_shapes"] = moved
        _say(describe_transferred(moved), progress)


def checked_database(fused, profile: Profile, records: Records, progress: bool,
                     tuning: dict | None = None, remote=None):
    """The records to build with: per task of ``fused`` (a fused module, or several), the
    best one whose schedule computes correct results (own profile first, then fallback
    profiles). ``tuning`` (:func:`ensure_tuned`'s dict, for the manifest) is updated with
    what was checked and what stays untuned.

    Checking runs here when the profile runs here, else on ``remote`` (a
    :class:`~tvmcomp.tune.validate.RemoteCheck`: a board over RPC); with neither, each
    task's best record (own first, then fallback) is applied unchecked and the manifest says
    so.
    """
    from .tuner import extract_tasks
    from .validate import validated_database

    target = profile.tvm_target()
    remote = None if profile.runs_here() else remote
    check = profile.runs_here() or remote is not None
    mods = fused if isinstance(fused, (tuple, list)) else (fused,)
    tasks = [t for m in mods if m is not None for t in extract_tasks(m, target)]
    db, rep = validated_database(records, tasks, target, check=check, remote=remote)
    tuning = {} if tuning is None else tuning
    tuning["schedules_checked"] = check
    tuning["checked_on"] = ("build host" if profile.runs_here()
                            else remote.label if remote is not None else None)
    tuning["schedules_rejected"] = rep.rejected
    tuning["record_source"] = dict(sorted(rep.sources.items()))
    borrowed = {t: s for t, s in rep.sources.items() if s != profile.name}
    if check:
        _say(f"checked tuned schedules against unscheduled kernels"
             + (f" on {remote.label}" if remote is not None else "")
             + f": {rep.checked} run, {rep.cached} cached verdicts, {len(rep.rejected)} rejected"
             + (f" ({', '.join(rep.rejected)})" if rep.rejected else ""), progress)
    else:
        _say(f"WARNING: {len(rep.sources)} tuned schedules applied unchecked: this host cannot "
             f"run {profile.name} (lacks {', '.join(profile.missing_cpu_flags())}); "
             "--rpc-tracker HOST:PORT checks them on a board", progress)
    if borrowed:
        _say(f"using {len(borrowed)} records from {', '.join(sorted(set(borrowed.values())))} "
             f"(no {profile.name} record yet; "
             + (f"checked correct on {tuning['checked_on']})" if check else "unchecked)"),
             progress)
    measured = origins((*records.paths.own, *(d for _, d in records.paths.fallbacks)),
                       rep.chosen)
    if measured:
        tuning["measured_over_rpc"] = measured
        emulated = sorted(t for t, o in measured.items() if o.get("emulated"))
        _say(f"{len(measured)} tuned schedules were measured over RPC on boards"
             + (f"; {len(emulated)} on an emulated board, so their timings are the "
                "emulator's, not the board's" if emulated else ""), progress)
    if rep.no_valid_record:
        _say(f"WARNING: no correct tuned schedule for {', '.join(rep.no_valid_record)}; "
             "they run untuned", progress)
    if "tasks" in tuning:
        tuning["untuned"] = sorted(set(tuning.get("untuned", [])) | set(rep.no_valid_record))
        tuning["tuned"] = (tuning["tasks"] - len(tuning["untuned"])
                           - len(tuning.get("hand_scheduled", []))
                           - len(set(tuning.get("transferred_untuned", []))
                                 - set(tuning["untuned"])))
    return db
