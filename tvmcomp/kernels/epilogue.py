"""The epilogue a kernel applies to its integer sums before it stores them: the bias,
requantization and clamp (or float scaling) :class:`~tvmcomp.passes.QuantizeInt8` emits after
an int8 layer, computed in registers instead of by a separate kernel over an int32 tensor."""

from __future__ import annotations

from dataclasses import dataclass

OPS = ("add", "subtract", "multiply", "astype", "less", "right_shift", "clip", "maximum",
       "minimum", "relu")


@dataclass(frozen=True)
class Epilogue:
    """Elementwise ops applied to each int32 sum before it is stored.

    ``steps``: ``(op, args, dtype)`` in order, ``op`` one of :data:`OPS`; an arg is
    ``("acc",)`` (the sum), ``("step", k)`` (the k-th step's value), ``("const", value,
    dtype)`` (a scalar) or ``("chan", row, dtype)`` (row ``row`` of the kernel's per-channel
    constants: ``chan_i`` of ``int_dtype`` for integer dtypes, ``chan_f`` float32 for float
    ones). The last step's value, of dtype ``out_dtype``, is stored.

    ``int_dtype="int32"`` when every integer constant fits: an int64 product of two
    sign-extended int32 values is then one ``vpmuldq`` a half vector instead of the
    three-uop ``vpmullq``. Otherwise the rows in ``narrow`` fit int32 (a requantization's
    multipliers, beside its int64 rounding constants): each is read as a sign-extended int32,
    which gives LLVM the same ``vpmuldq``."""

    steps: tuple
    int_rows: int = 0
    float_rows: int = 0
    int_dtype: str = "int64"
    narrow: tuple = ()

    @property
    def out_dtype(self) -> str:
        return self.steps[-1][2] if self.steps else "int32"


def tables(epilogue: Epilogue | None, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Shapes of a kernel's per-channel constant tables ``chan_i`` and ``chan_f``: ``[rows,
    width]``, or ``[1, 1]`` for a kind of constant the epilogue has none of (never read; a
    buffer is never empty, and a row of zeros as wide as the layer would be stored in the
    artifact for nothing)."""
    ir, fr = (epilogue.int_rows, epilogue.float_rows) if epilogue is not None else (0, 0)
    return ((ir, width) if ir else (1, 1)), ((fr, width) if fr else (1, 1))


def value(epi: Epilogue | None, acc, chan, lanes: int):
    """The TIR value of ``epi`` applied to the ``int32x{lanes}`` sums ``acc`` (``lanes=1``: a
    scalar); ``chan(row, dtype, is_int)``: a per-channel constant's ``lanes`` lanes."""
    import tvm
    from tvm.script import tirx as T

    if epi is None:
        return acc
    vals: list = []

    def wide(e):
        return e if lanes == 1 else T.Broadcast(e, lanes)

    def arg(a):
        if a[0] == "acc":
            return acc
        if a[0] == "step":
            return vals[a[1]]
        if a[0] == "const":
            return wide(tvm.tirx.const(a[1], a[2]))
        is_int = not a[2].startswith("float")
        v = chan(a[1], a[2], is_int)
        if is_int and a[1] in epi.narrow and a[2] == "int64":
            v = T.Cast(a[2] if lanes == 1 else f"{a[2]}x{lanes}",
                       T.Cast("int32" if lanes == 1 else f"int32x{lanes}", v))
        return v

    for op, args, dtype in epi.steps:
        xs = [arg(a) for a in args]
        if op == "add":
            v = xs[0] + xs[1]
        elif op == "subtract":
            v = xs[0] - xs[1]
        elif op == "multiply":
            v = xs[0] * xs[1]
        elif op == "astype":
            v = T.Cast(dtype if lanes == 1 else f"{dtype}x{lanes}", xs[0])
        elif op == "less":
            v = xs[0] < xs[1]
        elif op == "right_shift":
            v = T.shift_right(xs[0], xs[1])
        elif op == "clip":
            v = T.max(T.min(xs[0], xs[2]), xs[1])
        elif op == "maximum":
            v = T.max(xs[0], xs[1])
        elif op == "minimum":
            v = T.min(xs[0], xs[1])
        elif op == "relu":
            v = T.max(xs[0], wide(tvm.tirx.const(0, dtype)))
        else:
            raise ValueError(f"epilogue op {op!r} is not one of {', '.join(OPS)}")
        vals.append(v)
    return vals[-1]


def channel_value(epi: Epilogue | None, acc, chan_i, chan_f, channel, lanes: int):
    """:func:`value` for sums that all belong to one output channel ``channel`` (a
    convolution's vector of positions, a SELL row's batch entries or single sum): each
    per-channel constant is one element of the tables ``chan_i`` / ``chan_f``, broadcast."""
    from tvm.script import tirx as T

    def chan(row, dtype, is_int):
        v = T.Cast(dtype, chan_i[T.int64(row), channel] if is_int else
                   chan_f[T.int64(row), channel])
        return v if lanes == 1 else T.Broadcast(v, lanes)

    return value(epi, acc, chan, lanes)

