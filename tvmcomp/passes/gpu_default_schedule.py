"""GpuDefaultSchedule: DLight rule-based schedules for GPU kernels that have none."""

from __future__ import annotations

import tvm


@tvm.transform.module_pass(opt_level=0, name="GpuDefaultSchedule")
class GpuDefaultSchedule:
    """Give every unscheduled TIR kernel a DLight GPU schedule (thread binding, reductions).

    Expects the fused Relax module (after ``FuseTIR`` and any ``MetaScheduleApplyDatabase``),
    run under a GPU target (``with target:``). Kernels already scheduled (tuned records carry
    ``tirx.is_scheduled``) are left alone; DLight tries the rules in order: Matmul, GEMV,
    Reduction, GeneralReduction, then Fallback (a plain thread-bound loop nest), so every kernel
    ends up bound to GPU threads. Without a current GPU target the module is returned unchanged.
    """

    def __init__(self):
        from tvm.s_tir import dlight as dl

        self._apply = dl.ApplyDefaultSchedule(
            dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
            dl.gpu.Fallback(),
        )

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext):
        target = tvm.target.Target.current(allow_none=True)
        if target is None or "gpu" not in list(target.keys):
            return mod
        return self._apply(mod)
