"""Whether each factorized layer stays two kernels, measured (``build`` of a model from
``tvmcomp compress --lowrank``).

Two small kernels do fewer MACs than one large one, but on a 2-core CPU they need not be
faster: each has its own loop overheads, its intermediate goes through memory, and either may
tune worse. Like the sparse gate, this measures what would ship: the model is fused twice,
every factorized layer as its two kernels and every one folded back into one (the product
weight, :class:`~tvmcomp.passes.lowrank_fold.LowRankFold`), both built with the checked tuning
records, the two whole models checked to agree, and each layer's kernels timed alone with
their real arguments, the two forms interleaved, summed over the batch entries (the entries
share one stored form). A factorization is kept only where its kernels are faster.
"""

from __future__ import annotations

from dataclasses import dataclass

from .sparse_gate import _dense_calls, time_two_forms, timed_dict


@dataclass(frozen=True)
class FoldDecision:
    """A factorized layer: its size, its timings (median µs of its kernels alone, summed over
    the batch entries, both forms interleaved in one run; None where nothing was measured)
    and whether it is folded back into one layer."""

    layer: str                      # the first factor's name: "matmul4" (every batch entry)
    second: str                     # the second factor's: "matmul5"
    kind: str                       # "matmul" or "conv"
    rank: int
    weights: tuple[int, int]        # factorized, whole
    macs: tuple[int, int]           # per image: factorized, whole
    factorized_us: float | None = None
    whole_us: float | None = None
    kernels: tuple[str, ...] = ()
    whole_kernels: tuple[str, ...] = ()
    folded: bool = False
    reason: str = ""

    def to_dict(self) -> dict:
        return timed_dict(self)


def pairs_of(mod) -> dict:
    """``{first factor's name: LowRankPair}`` over ``mod``'s Relax functions (the batch
    entries name the same layers)."""
    from tvm import relax

    from ..passes.lowrank_fold import lowrank_pairs

    out = {}
    for _, func in mod.functions.items():
        if isinstance(func, relax.Function) and not (func.attrs and "Primitive" in func.attrs):
            for p in lowrank_pairs(func):
                out.setdefault(p.first, p)
    return out


def forms(quantized, target, layers: tuple[str, ...]):
    """The two fused modules the gate compares: every factorized layer as two kernels, and
    every one of ``layers`` folded into one."""
    from ..passes.lowrank_fold import LowRankFold
    from ..pipeline import fuse

    return (fuse(quantized, target, start="layer_forms"),
            fuse(LowRankFold(layers)(quantized), target, start="layer_forms"))


def unmeasured(pairs: dict, why: str) -> list[FoldDecision]:
    """Every factorized layer kept, with ``why`` (nothing could be measured)."""
    return [FoldDecision(n, p.second, p.kind, p.rank, p.weights(), p.macs(), reason=why)
            for n, p in pairs.items()]


def fold_gate(quantized, target, database, fused, progress: bool = True,
              repeat: int | None = None) -> list[FoldDecision]:
    """Time each factorized layer of ``quantized`` as its two kernels against folded into
    one (``fused``: the two modules of :func:`forms`); one decision per layer."""
    from ..passes.lowrank_fold import lowrank_pairs

    pairs = {}

    def find(fname, func, two, one):
        for p in lowrank_pairs(func):
            pairs.setdefault(p.first, p)
            tc = _dense_calls(two.fused[fname], p.a) + _dense_calls(two.fused[fname], p.b)
            oc = _dense_calls(one.fused[fname], p.whole())
            if len(tc) != 2 or tc[0].same_as(tc[1]) or not oc:
                raise ValueError(f"{fname}/{p.first}: cannot find its kernels in the fused "
                                 "modules")
            yield p.first, tc, oc

    out = []
    for name, (t_us, o_us, tn, on) in time_two_forms(quantized, target, database, fused,
                                                     "the folded build", find,
                                                     repeat).items():
        p = pairs[name]
        folded = not t_us < o_us
        why = (f"rank {p.rank}, MACs/image {p.macs()[0]:,} vs {p.macs()[1]:,}: two kernels "
               f"{t_us:.2f} µs vs one {o_us:.2f} µs: "
               + ("folded back into one layer" if folded else "kept factorized"))
        out.append(FoldDecision(name, p.second, p.kind, p.rank, p.weights(), p.macs(), t_us,
                                o_us, tn, on, folded, why))
        if progress:
            print(f"low-rank gate {name}+{p.second}: {why}", flush=True)
    return out
