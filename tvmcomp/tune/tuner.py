"""Time-budgeted, resumable MetaSchedule tuning of a fused Relax module."""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

from tqdm import tqdm

from ..errors import Interrupted, TvmcompError
from .intrin import load_tensor_intrinsics
from .records import Records
from .remote import workload_key
from .transfer import carry_schedules
from .workers import without_torch

log = logging.getLogger(__name__)


def ms_build(mod, target, _params):
    """MetaSchedule builder function for our workers.

    TVM's default builder imports ``tvm.s_tir.tensor_intrin`` in every worker, which takes
    ~75 s here (mostly CUDA intrinsics) and trips the builder timeout. We only import the
    intrinsic sets the target can use.
    """
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


class CrossExport:
    """MetaSchedule ``f_export`` for a board: the candidate linked into a shared library with
    the profile's cross compiler (the default exports a ``.tar`` for the server to link,
    which a board server that links only the TVM runtime cannot do)."""

    def __init__(self, cross_compiler: str) -> None:
        self.cross_compiler = cross_compiler

    def __call__(self, mod) -> str:
        import tempfile

        from tvm.support import cc

        path = os.path.join(tempfile.mkdtemp(), "candidate.so")
        mod.export_library(path, fcompile=cc.cross_compiler(self.cross_compiler))
        return path


def _drop_queued_runs(runner) -> None:
    """Cancel the measurements a stopped search left queued in ``runner``'s worker pool and
    stop its workers: on a slow board (qemu: seconds a trial) they would otherwise keep the
    board busy, and this process alive, long after the budget ran out."""
    pool = getattr(runner, "pool", None)
    if pool is None:
        return
    threads = getattr(pool, "_threadpool", None)
    if threads is not None:
        threads.shutdown(wait=False, cancel_futures=True)
    pool.shutdown(wait=False)


def _local_builder(**kw):
    """MetaSchedule's ``LocalBuilder``, with one pool of build workers for the whole run.

    TVM's starts a pool of workers (each importing TVM and the target's intrinsics, ~5 s on 2
    cores) at construction only to check that the build function resolves, and again for
    every batch of candidates, to contain a memory leak of long-lived workers. Here the pool
    is started once, on the first batch, and each worker is replaced after
    ``WORKER_USES`` builds; a build function that does not resolve shows as failed builds.
    ``close()`` stops the pool (:func:`_kept` keeps one builder for the process)."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.builder import local_builder as lb
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    @derived_object
    class _PooledLocalBuilder(ms.builder.LocalBuilder._cls):
        def _sanity_check(self) -> None:
            self.pool = None

        def build(self, build_inputs):
            if self.pool is None:
                self.pool = PopenPoolExecutor(max_workers=self.max_workers,
                                              timeout=self.timeout_sec,
                                              initializer=self.initializer,
                                              maximum_process_uses=WORKER_USES)
            jobs = [(self.f_build, self.f_export, b.mod, b.target,
                     lb._serialize_params(b.params)) for b in build_inputs]
            out = []
            for r in self.pool.map_with_error_catching(lambda job: lb._worker_func(*job), jobs):
                if r.status == StatusKind.COMPLETE:
                    out.append(ms.builder.BuilderResult(r.value, None))
                elif r.status == StatusKind.TIMEOUT:
                    out.append(ms.builder.BuilderResult(
                        None, f"LocalBuilder: Timeout, killed after {self.timeout_sec} seconds"))
                else:
                    out.append(ms.builder.BuilderResult(
                        None, f"LocalBuilder: An exception occurred\n{r.value}"))
            return out

        def close(self) -> None:
            if self.pool is not None:
                self.pool.shutdown()
                self.pool = None

    return _PooledLocalBuilder(**kw)


WORKER_USES = 64  # builds before a build worker is replaced (TVM's workers leak memory)

# The build-worker pool and the local runner (each worker imports TVM: seconds on 2 cores)
# are kept for the process, so the several tuning runs of one build (the sparse gate's forms,
# then the build's own) start them once; dropped after an interrupted or failed run.
_KEPT: dict = {}


def _kept(key: tuple, make):
    if key not in _KEPT:
        with without_torch():  # a runner starts its worker at construction
            _KEPT[key] = make()
    return _KEPT[key]


def _drop_kept(key: tuple) -> None:
    obj = _KEPT.pop(key, None)
    if obj is None:
        return
    if hasattr(obj, "close"):
        obj.close()
    else:
        _drop_queued_runs(obj)


@atexit.register
def _close_kept() -> None:
    for key in list(_KEPT):
        _drop_kept(key)


def _builder_init(family):
    def init():
        load_tensor_intrinsics(family)

    return init


@dataclass(frozen=True)
class TaskStatus:
    """One tuning task (a fused TIR function) and its best record."""

    name: str
    weight: int
    best_us: float | None  # None: no record
    source: str | None = None  # the profile whose database holds the record
    hand_scheduled: bool = False  # our own kernel: never tuned (tirx.is_scheduled)
    transferred: str = ""  # its record's source if carried across shapes or from rules,
    # not tuned (yet); "" otherwise


@dataclass
class TuneReport:
    """What a tuning run did."""

    database: str
    budget_s: float
    used_s: float = 0.0
    trials: int = 0
    stopped_by: str = "done"
    tasks: list[TaskStatus] = field(default_factory=list)
    measured: dict[str, str] = field(default_factory=dict)  # task this run tuned → workload key
    carried: dict[str, float] = field(default_factory=dict)  # task → µs, from its dense twin
    transferred: dict[str, dict] = field(default_factory=dict)  # task → µs and source shape

    @property
    def untuned(self) -> list[str]:
        return [t.name for t in self.tasks if t.best_us is None and not t.hand_scheduled]


def _tuned_since_transfer(tasks, records: Records, db) -> None:
    """Clear the transfer note of those of ``tasks`` that now hold more than the one
    carried-across-shapes record (the search measured it)."""
    from .records import update_json
    from .transfer import TRANSFERRED_FILE

    moved = records.transferred()
    done = {k: None for t in tasks if (k := workload_key(t.dispatched[0])) in moved
            and len(db.get_top_k(db.commit_workload(t.dispatched[0]), 2)) > 1}
    if done:
        update_json(records.paths.write_dir / TRANSFERRED_FILE, done)


def extract_tasks(mod, target):
    from tvm.s_tir import meta_schedule as ms

    return ms.relax_integration.extract_tasks(mod, target)


def task_status(mod, target, records: Records | None, tasks=None) -> list[TaskStatus]:
    """The tuning tasks of ``mod`` (after fusion; or ``tasks``, already extracted from it)
    and their best record in ``records``."""
    out = []
    moved = records.transferred() if records is not None else {}
    for t in tasks if tasks is not None else extract_tasks(mod, target):
        if _scheduled(t):
            out.append(TaskStatus(t.task_name, int(t.weight), None, None, hand_scheduled=True))
            continue
        us, source = (records.best(t.dispatched[0], target, t.task_name) if records is not None
                      else (None, None))
        out.append(TaskStatus(t.task_name, int(t.weight), us, source,
                              transferred=moved.get(workload_key(t.dispatched[0]), "")
                              if moved and source == records.paths.profile else ""))
    return out


def _scheduled(task) -> bool:
    """Our hand-scheduled kernels (and anything else already scheduled): never tuned."""
    return any(f.attrs is not None and bool(f.attrs.get("tirx.is_scheduled", False))
               for f in task.dispatched[0].functions.values())


NOTHING_TO_TUNE = "nothing to tune"  # every task already had a record (or none was chosen)


class _Deadline(Exception):
    pass


# Relax legalizes pooling into PrimFuncs annotated schedule_rule="meta_schedule.pool_max" /
# "pool_avg", for which TVM registers no CPU rule. MetaSchedule then logs "Unknown schedule
# rule" for every pooling block of every search round, drops the annotation and applies its
# default rules. These functions do exactly that, without the noise.
CUSTOM_RULES_WITHOUT_CPU_IMPL = ("meta_schedule.pool_max", "meta_schedule.pool_avg")


def _register_default_custom_rules() -> None:
    import tvm

    def apply_default_rules(sch, block):
        sch.unannotate(block, "schedule_rule")
        return [sch]

    for name in CUSTOM_RULES_WITHOUT_CPU_IMPL:
        key = f"s_tir.meta_schedule.cpu.{name}"
        if tvm.get_global_func(key, allow_missing=True) is None:
            tvm.register_global_func(key, apply_default_rules)


@contextlib.contextmanager
def _unnamed_log_handlers_detached():
    """MetaSchedule rebuilds its loggers with ``dictConfig``, naming every handler already on
    its logger; an unnamed one (left by an earlier tuning run, or a test harness) makes that
    fail. Detach those for the duration."""
    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    unnamed = [h for h in ms_logger.handlers if not h.get_name()]
    for h in unnamed:
        ms_logger.removeHandler(h)
    try:
        yield
    finally:
        for h in unnamed:
            ms_logger.addHandler(h)


@contextlib.contextmanager
def _no_info_lines():
    """MetaSchedule announces its log folder and its workers at INFO on the terminal while
    it sets up (its per-task logs go to files under the cache); keep those lines off it."""
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


class _StopOnSignal:
    """SIGINT / SIGTERM during tuning raise KeyboardInterrupt and are remembered: the FFI may
    hand the interrupt back wrapped in a RuntimeError when it lands inside a callback."""

    def __init__(self):
        self.signalled = 0  # the signal number, once one arrived
        self._old = {}

    def _handler(self, signum, frame):
        self.signalled = signum
        raise Interrupted(signum)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def _interrupted(bar: tqdm, measured: int, work_dir, signum: int) -> Interrupted:
    """Close the bar and say what was kept; the error that ends an interrupted tuning."""
    bar.close()
    print(f"interrupted: the {measured} trials measured in this run are kept in {work_dir}; "
          "run again to resume", file=sys.stderr, flush=True)
    return Interrupted(signum)


def _make_callback(deadline: float, bar: tqdm, counter: list, fired: list, runner_gone=None):
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class _ProgressAndDeadline(PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
                  runner_results):
            counter[0] += len(runner_results)
            counter[1] += sum(1 for r in runner_results if not r.error_msg)
            bar.update(len(runner_results))
            if runner_gone is not None and any(r.error_msg for r in runner_results):
                gone = runner_gone()
                if gone:
                    fired[0] = gone
                    raise _Deadline(gone)
            if time.monotonic() > deadline:
                fired[0] = True
                raise _Deadline("tuning budget used up")

    return _ProgressAndDeadline()


MIN_TRIALS_PER_TASK = 64  # MetaSchedule's usual cap
# a trial's wall time at the fastest measured (DS-CNN's kernels on a 2-vCPU Zen 3: 320 trials
# in 166 s), so that a budget's per-task cap is not what stops the search first
TRIAL_S = 0.5


def trials_per_task(budget_s: float, tasks: int) -> int:
    """The per-task trial cap a budget gets by default: :data:`MIN_TRIALS_PER_TASK`, or
    enough for ``tasks`` to use the whole budget at :data:`TRIAL_S` a trial (a 600 s budget
    on DS-CNN's 5 tasks had stopped after 166 s at 64 trials a task)."""
    return max(MIN_TRIALS_PER_TASK, math.ceil(budget_s / (TRIAL_S * max(1, tasks))))


def search_population(trials: int) -> int:
    """The evolutionary search's population for a task tuned ``trials`` times: 256 (64 or
    more trials), else 4 candidates a trial, at least 16. Evolving 256 candidates for a
    trial or two spent ~3 s a task in the search alone (LeNet-5's int8 kernels, Zen 3)."""
    return min(256, max(16, 4 * trials))


def tune_module(mod, target, records: Records, *, budget_s: float,
                max_trials_per_task: int | None = None, only_missing: bool = True,
                trials_per_iter: int = 32, runner=None, runner_gone=None, seed: int = 0,
                family: str | None = None, cores: int | None = None, progress: bool = True,
                names: tuple[str, ...] | None = None,
                cross_compiler: str | None = None) -> TuneReport:
    """Tune the TIR tasks of a fused Relax module into the database at ``work_dir``.

    Measured here (no ``runner``, no ``cross_compiler``), codebook kernels first take their
    dense twin's schedule, and other kernels without a record the schedule of the same
    operator at another shape (:mod:`tvmcomp.tune.transfer`), even with no budget; the search
    then starts from it. A kernel whose record was carried across shapes counts as missing.

    Parameters
    ----------
    mod : IRModule
        The module after the pipeline's fusion phase (tasks are keyed on these PrimFuncs).
    target : tvm.target.Target
        The target to tune for.
    records : Records
        The profile's records (see ``records.py``): tasks are looked up there, and every
        measured record is appended to ``records.paths.write_dir`` as soon as it is measured,
        so an interrupted run keeps its measurements and a rerun resumes.
    budget_s : float
        Wall-clock budget; tuning stops at the first measurement batch that ends past it.
    max_trials_per_task : int, optional
        Trial cap per task (default: :func:`trials_per_task` of the budget and the tasks).
    only_missing : bool
        Tune only tasks with no record of this profile's own yet; otherwise all tasks.
    runner : meta_schedule Runner, optional
        Defaults to a ``LocalRunner``; pass an ``RPCRunner`` to measure on a remote board.
    runner_gone : callable, optional
        With a remote ``runner``: after a batch with failed runs, returns one line if the
        runner's tracker is gone (None if not); tuning then stops with that line (a
        :class:`TvmcompError`), keeping every record measured.
    names : tuple of str, optional
        Tune only the tasks with these names (default: all).
    cores : int, optional
        The profile's cores: the cost model's threads, at most this machine's (default: all).
    cross_compiler : str, optional
        The profile's cross compiler: candidates are exported as shared libraries linked with
        it (:class:`CrossExport`), for a board's RPC server to load.
    """
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.relax_integration import extracted_tasks_to_tune_contexts

    load_tensor_intrinsics(family)
    _register_default_custom_rules()
    work_dir = records.paths.write_dir
    report = TuneReport(database=str(work_dir), budget_s=budget_s)
    all_tasks = extract_tasks(mod, target)
    if not all_tasks:
        raise TvmcompError("the module has no TIR tasks to tune (was it fused?)")
    own, moved = records.own, records.transferred()
    chosen = [t for t in all_tasks if not _scheduled(t)
              and (names is None or t.task_name in names)
              and (not only_missing or not own.has_workload(t.dispatched[0])
                   or workload_key(t.dispatched[0]) in moved)]
    start = time.monotonic()
    db = records.tuning_database()
    if chosen and runner is None and cross_compiler is None:
        # codebook kernels first take their dense twin's schedule, other kernels without a
        # record that of their operator at another shape (measured here, like a local
        # trial; about a second a kernel, so even without a budget)
        report.carried, report.transferred = carry_schedules(
            [t for t in chosen if not own.has_workload(t.dispatched[0])], records, target, db,
            family)
    if chosen and budget_s > 0:
        report.measured = {t.task_name: workload_key(t.dispatched[0]) for t in chosen}
        logs = records.paths.log_dir  # MetaSchedule writes its per-task logs/ here
        logs.mkdir(parents=True, exist_ok=True)
        if max_trials_per_task is None:
            max_trials_per_task = trials_per_task(budget_s, len(chosen))
        population = search_population(max_trials_per_task)
        with _unnamed_log_handlers_detached(), _no_info_lines():
            contexts, weights = extracted_tasks_to_tune_contexts(
                chosen, work_dir=str(logs), num_threads="physical", seed=seed,
                strategy=ms.search_strategy.EvolutionarySearch(
                    population_size=population, init_measured_ratio=0.2,
                    init_min_unmeasured=min(50, population), genetic_num_iters=3),
            )
            builder_key = ("builder", family, cross_compiler)
            builder = _kept(builder_key, lambda: _local_builder(
                f_build=ms_build, timeout_sec=60.0, initializer=_builder_init(family),
                f_export=CrossExport(cross_compiler) if cross_compiler else None))
            local = runner is None
            runner = runner or _kept(("runner",), lambda: ms.runner.LocalRunner(
                timeout_sec=30.0,
                evaluator_config=ms.runner.EvaluatorConfig(number=10, repeat=3,
                                                           min_repeat_ms=20),
            ))
        finished = False
        total = max_trials_per_task * len(contexts)
        counter, fired = [0, 0], [False]  # trials, of which measured; why it stopped
        bar = tqdm(total=total, desc=f"tune {len(contexts)} tasks", unit="trial",
                   disable=not progress)
        deadline = start + budget_s
        callbacks = list(ms.measure_callback.MeasureCallback.create("default"))
        callbacks.append(_make_callback(deadline, bar, counter, fired, runner_gone))
        # Quieten MetaSchedule's per-task INFO logs; our progress bar is the summary.
        logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
        stop = _StopOnSignal()
        try:
            with stop, without_torch():  # the workers started while tuning
                ms.tune.tune_tasks(
                    tasks=contexts, task_weights=weights, work_dir=str(logs),
                    max_trials_global=total, max_trials_per_task=max_trials_per_task,
                    num_trials_per_iter=trials_per_iter, builder=builder, runner=runner,
                    database=db, cost_model=ms.cost_model.XGBModel(
                        num_tuning_cores=min(cores or os.cpu_count(), os.cpu_count())),
                    measure_callbacks=callbacks,
                )
        except (Exception, KeyboardInterrupt):  # noqa: BLE001 - both come back wrapped by the FFI
            if stop.signalled:
                raise _interrupted(bar, counter[1], work_dir, stop.signalled) from None
            if not fired[0]:
                raise
            if isinstance(fired[0], str):  # the runner's tracker went away
                bar.close()
                raise TvmcompError(f"{fired[0]}: tuning stopped; the {counter[1]} trials "
                                   f"measured in this run are kept in {work_dir}") from None
            report.stopped_by = "budget"
            finished = True
        else:
            finished = True
            if stop.signalled:  # its exception was swallowed where Python ignores them (seen:
                # in an import lock's callback, "Exception ignored in"): stop all the same
                raise _interrupted(bar, counter[1], work_dir, stop.signalled)
        finally:
            bar.close()
            if not finished:  # interrupted or failed: the workers may be mid-job
                _drop_kept(builder_key)
                if local:
                    _drop_kept(("runner",))
            if not local:  # a remote runner is this run's: stop it and its queue
                _drop_queued_runs(runner)
        report.used_s = time.monotonic() - start
        report.trials = counter[0]
        _tuned_since_transfer(chosen, records, db)
    elif chosen:
        report.stopped_by = "no budget"
    else:
        report.stopped_by = NOTHING_TO_TUNE
    report.tasks = task_status(mod, target, records)
    return report
