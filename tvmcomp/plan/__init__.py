"""The build plan: every per-layer decision of a build, taken once and saved beside the artifact.

A build runs the pipeline in pieces, each once (``tvmcomp.pipeline.run_range``):
``quantize`` → the plan's per-layer decisions, taken on that output → ``layer_forms`` (the
rewrites the plan chose) → ``canonicalize`` .. ``legalize_fuse``. The fused module that comes
out is the one that is tuned, checked, compiled and described in the manifest. The plan is
saved as ``plan.json`` in the artifact; ``tvmcomp tune --plan`` applies it without
re-measuring, so it tunes exactly the kernels ``build`` ships.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from ..defaults import CODEBOOK_LOAD_MARGIN
from ..errors import TvmcompError

PLAN_FILE = "plan.json"
PLAN_VERSION = 2  # 2: bound to its model (sha256) and precision options


@dataclass(frozen=True)
class SparsePlan:
    """SparseDense's arguments and how they were chosen.

    ``keep`` maps every candidate layer (``"<function>/matmul<k>"``) to whether it ships
    sparse; ``decided_by`` is ``"measured"`` (the latency gate ran here) or ``"static rule"``
    (the profile cannot run here: every candidate at or above ``threshold`` goes sparse).
    """

    threshold: float
    min_speedup: float
    keep: dict[str, bool]
    decided_by: str
    gate: list[dict] = field(default_factory=list)  # GateDecision.to_dict() per candidate

    def pass_args(self) -> dict:
        """Keyword arguments of :class:`tvmcomp.passes.SparseDense`."""
        return {"threshold": self.threshold, "keep": dict(self.keep)}


@dataclass(frozen=True)
class BuildPlan:
    """Every decision of one build that changes the graph, in pipeline order, and the model
    and precision options it was taken for (a plan applied to anything else is refused)."""

    profile: str
    batches: tuple[int, ...]
    int8_accumulate: str            # QuantizeInt8's accumulation (a no-op on float graphs)
    sparse: SparsePlan | None = None
    model_sha256: str = ""          # the ONNX file given to build (before quantization)
    quant: dict | None = None       # QuantConfig.to_dict() of --quantize; None: float
    codebook: bool = False          # CodebookDense on the float layers left dense
    codebook_at_load: tuple[str, ...] = ()  # of those, the layers decoded once at load
    codebook_gate: list | None = None  # --codebook-decode auto: DecodeDecision dicts
    lowrank_fold: tuple[str, ...] = ()  # factorized layers folded back into one (first name)
    lowrank_gate: list | None = None   # FoldDecision dicts, one per factorized layer

    def check_applies(self, profile: str, model_sha256: str, quant: dict | None) -> None:
        """Raise :class:`TvmcompError` (one line) unless this plan was made for exactly this
        profile, model file and precision options."""
        if profile != self.profile:
            raise TvmcompError(f"the plan was made for profile {self.profile}, not {profile}")
        if model_sha256 != self.model_sha256:
            raise TvmcompError(f"the plan was made for another model (sha256 "
                               f"{self.model_sha256[:12]}…, this one {model_sha256[:12]}…)")
        if quant != self.quant:
            raise TvmcompError(f"the plan was made with {_quant_flags(self.quant)}; this call "
                               f"has {_quant_flags(quant)}: give the "
                               "flags the artifact was built with (its quant_config.json: "
                               "--quantize int8 --quant-config FILE)")

    def sparse_args(self) -> dict | None:
        """SparseDense's keyword arguments, or None when no layer goes sparse."""
        if self.sparse is None or not any(self.sparse.keep.values()):
            return None
        # with --codebook, sparse layers with shared weights store codes, not floats
        return {**self.sparse.pass_args(), **({"values": "codebook"} if self.codebook else {})}

    def to_json(self) -> str:
        d = {"version": PLAN_VERSION, **asdict(self)}
        d["batches"] = list(self.batches)
        d["codebook_at_load"] = list(self.codebook_at_load)
        d["lowrank_fold"] = list(self.lowrank_fold)
        return json.dumps(d, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "plan") -> BuildPlan:
        """Parse a saved plan; a bad file raises :class:`TvmcompError` naming ``source``."""
        try:
            d = json.loads(text)
            if d.pop("version") != PLAN_VERSION:
                raise ValueError(f"plan version is not {PLAN_VERSION}")
            sp = d.pop("sparse")
            quant = d["quant"]
            if quant is not None and not isinstance(quant, dict):
                raise ValueError("quant must be an object or null")
            return cls(profile=str(d["profile"]), batches=tuple(int(b) for b in d["batches"]),
                       int8_accumulate=str(d["int8_accumulate"]),
                       sparse=SparsePlan(**sp) if sp is not None else None,
                       model_sha256=str(d["model_sha256"]), quant=quant,
                       codebook=bool(d.get("codebook", False)),
                       codebook_at_load=tuple(str(n) for n in d.get("codebook_at_load", ())),
                       codebook_gate=d.get("codebook_gate"),
                       lowrank_fold=tuple(str(n) for n in d.get("lowrank_fold", ())),
                       lowrank_gate=d.get("lowrank_gate"))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise TvmcompError(f"{source}: not a tvmcomp build plan ({e})") from None


def _quant_flags(q: dict | None) -> str:
    """The precision options a QuantConfig dict (or None: float) stands for, e.g.
    ``--quantize int8 with minmax, symmetric, per_channel, 256 calibration images``."""
    if q is None:
        return "no --quantize"
    cal = q.get("calibration", {})
    w = q.get("weights", {})
    return "--quantize int8 with " + ", ".join(
        str(v) for v in (cal.get("method"), q.get("activations"), w.get("granularity"),
                         f"{q.get('num_calib')} calibration images") if v)


def tune_forms(forms: dict, profile, records, budget_s: float, progress: bool = True) -> dict:
    """Tune the kernels without records of each fused module of ``forms`` (``{form name:
    module}``, in order) within one budget, before a gate times them as they would ship.
    Returns ``{form: summary of ensure_tuned's result, "trials", "used_s"}``."""
    from ..tune.apply import ensure_tuned

    tuned: dict = {}
    used = 0.0
    for form, mod in forms.items():
        info = ensure_tuned(mod, profile, records, max(0.0, budget_s - used), progress)
        used += info["used_s"]
        tuned[form] = {k: info[k] for k in ("tasks", "tuned", "untuned", "trials", "used_s",
                                            "stopped_by")}
    tuned.update(trials=sum(tuned[f]["trials"] for f in forms), used_s=round(used, 1))
    return tuned


def plan_sparse(quantized, profile, records, threshold: float, min_speedup: float,
                progress: bool = True, tune_budget_s: float = 0.0,
                codebook: bool = False,
                at_load: tuple[str, ...] = ()) -> tuple[SparsePlan, dict]:
    """Decide, per sparse candidate layer of the quantized module, dense or sparse.

    Where the profile runs here the latency gate measures both forms (``sparse_gate.gate``)
    as they would ship: the all-dense module's kernels without records are tuned first,
    within ``tune_budget_s`` (our sparse kernels are hand-scheduled), and both forms are
    built with the checked records a build applies. Elsewhere the static rule keeps every
    candidate at or above ``threshold`` sparse. Returns the plan and what the tuning before
    the gate did (``{"dense": ..., "sparse": ..., "trials", "used_s"}``, per form a summary
    of :func:`tvmcomp.tune.apply.ensure_tuned`'s result; empty if none ran). ``codebook``:
    the build keeps shared weights as codes, so both forms are measured that way;
    ``at_load``: the codebook layers decoded at load, a matmul among them kept dense (its
    code stream, the smallest form; a conv's decodes into the sparse kernel's arrays).
    """
    from ..passes.sparse_dense import find_layers
    from .sparse_gate import keeps_code_stream

    if profile.runs_here():
        from ..tune.apply import checked_database
        from .sparse_gate import forms, gate

        target = profile.tvm_target()
        both = forms(quantized, target, threshold, codebook, at_load)
        tuned: dict = {}
        if both[1] is not None and tune_budget_s > 0:
            if progress:
                print("sparse gate: tuning both forms' kernels first, so each is timed as it "
                      "would ship", flush=True)
            # the sparse form's too: its int8 epilogues
            tuned = tune_forms(dict(zip(("dense", "sparse"), both)), profile, records,
                               tune_budget_s, progress)
        database = checked_database(both, profile, records, progress)
        decisions = store_once(gate(quantized, target, database,
                                    threshold=threshold, min_speedup=min_speedup,
                                    progress=progress, fused=both, codebook=codebook,
                                    at_load=at_load),
                               min_speedup, progress)
        return SparsePlan(threshold, min_speedup, {d.key: d.keep_sparse for d in decisions},
                          "measured", [d.to_dict() for d in decisions]), tuned
    layers = find_layers(quantized)
    keep = {L.key: L.sparsity >= threshold for L in layers if L.candidate}
    if progress:
        print(f"sparse: {profile.name} cannot run here, so nothing can be measured; static rule: "
              f"{sum(keep.values())}/{len(keep)} matmul layers at sparsity >= {threshold} go "
              "sparse, convolutions stay dense", flush=True)
    keep.update({L.key: False for L in layers if L.kind == "conv"  # unmeasured: dense
                 or keeps_code_stream(L.kind, L.key.split("/", 1)[1], at_load)})
    return SparsePlan(threshold, min_speedup, keep, "static rule"), {}


def plan_codebook_decode(quantized, profile, records, layers: tuple[str, ...],
                         margin: float = CODEBOOK_LOAD_MARGIN,
                         progress: bool = True) -> tuple[tuple[str, ...], list | None]:
    """``--codebook-decode auto``: of the codebook ``layers`` (by name), those decoded at
    load, and the measured decisions (``codebook_gate.decode_gate``; None where the profile
    cannot run here: then every layer decodes at load, the form that runs the float
    kernels). Both forms are timed with the records at hand, the kernels that decode with
    their dense twins' schedules, as the build would ship them (nothing is tuned here)."""
    if not profile.runs_here():
        if progress:
            print(f"codebook decode: {profile.name} cannot run here, so nothing can be "
                  "measured; every codebook layer decodes at load", flush=True)
        return tuple(layers), None
    from ..tune.apply import checked_database, ensure_tuned
    from .codebook_gate import decode_gate, forms

    target = profile.tvm_target()
    both = forms(quantized, target, layers)
    ensure_tuned(both[0], profile, records, 0.0, progress)  # carries the twins' schedules
    database = checked_database(both, profile, records, progress)
    decisions = decode_gate(quantized, target, database, both, layers, margin, progress)
    return (tuple(d.layer for d in decisions if d.at_load),
            [d.to_dict() for d in decisions])


def plan_lowrank(quantized, profile, records, progress: bool = True,
                 tune_budget_s: float = 0.0) -> tuple[tuple[str, ...], list | None, dict]:
    """Of the factorized layers of ``quantized`` (``tvmcomp compress --lowrank``), those
    folded back into one layer, the decisions (``lowrank_gate.fold_gate``; None without any
    factorized layer) and what the tuning before the gate did (as :func:`plan_sparse`).

    Where the profile runs here, both forms' kernels without records are tuned first, within
    ``tune_budget_s``, then measured: a factorization stays where its two kernels are faster.
    Elsewhere every factorization stays (fewer MACs), unmeasured."""
    from .lowrank_gate import pairs_of, unmeasured

    pairs = pairs_of(quantized)
    if not pairs:
        return (), None, {}
    if not profile.runs_here():
        why = f"{profile.name} cannot run here, so nothing was measured: kept (fewer MACs)"
        if progress:
            print(f"low-rank: {why}", flush=True)
        return (), [d.to_dict() for d in unmeasured(pairs, why)], {}
    from ..tune.apply import checked_database
    from .lowrank_gate import fold_gate, forms

    target = profile.tvm_target()
    both = forms(quantized, target, tuple(pairs))
    tuned: dict = {}
    if tune_budget_s > 0:
        if progress:
            print(f"low-rank gate: tuning both forms' kernels of {len(pairs)} factorized "
                  "layers first, so each is timed as it would ship", flush=True)
        tuned = tune_forms(dict(zip(("factorized", "whole"), both)), profile, records,
                           tune_budget_s, progress)
    database = checked_database(both, profile, records, progress)
    decisions = fold_gate(quantized, target, database, both, progress)
    return (tuple(d.layer for d in decisions if d.folded), [d.to_dict() for d in decisions],
            tuned)


def store_once(decisions: list, min_speedup: float, progress: bool = True) -> list:
    """One form per weight. The batch entry points of a layer (``main_b1/matmul2``,
    ``main_b64/matmul2``) share its weight; where the gate chose differently per entry, the
    artifact would hold the weight both dense and sparse. Such a layer gets one form for all
    entries: sparse when the geometric mean of its measured speedups reaches
    ``min_speedup``, else dense."""
    import dataclasses
    import math

    groups: dict[str, list] = {}
    for d in decisions:
        if d.dense_us == d.dense_us and d.sparse_us > 0:  # timed (not below the threshold)
            groups.setdefault(d.key.split("/", 1)[1], []).append(d)
    change = {}
    for layer, ds in groups.items():
        if len({d.keep_sparse for d in ds}) < 2:
            continue
        mean = math.exp(sum(math.log(d.speedup) for d in ds) / len(ds))
        keep = mean >= min_speedup
        for d in ds:
            change[d.key] = dataclasses.replace(
                d, keep_sparse=keep, reason=f"{d.reason}; stored once: {layer} is "
                f"{'sparse' if keep else 'dense'} in every entry (geometric-mean speedup "
                f"{mean:.2f}x)")
        if progress:
            print(f"sparse gate {layer}: the batch entries disagree; stored once, "
                  f"{'sparse' if keep else 'dense'} (geometric-mean speedup {mean:.2f}x)",
                  flush=True)
    return [change.get(d.key, d) for d in decisions]


__all__ = ["BuildPlan", "PLAN_FILE", "SparsePlan", "plan_lowrank", "plan_sparse",
           "store_once"]
