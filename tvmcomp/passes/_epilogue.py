"""Which elementwise bindings after a layer go into its kernel: the bias, requantization and
clamp (or float scaling) QuantizeInt8 emits after an int8 conv/matmul, as a
:class:`~tvmcomp.kernels.epilogue.Epilogue` for the kernels that take it (VNNI, the integer
direct sparse convolution and SELL matmul)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
from tvm import relax

from ..kernels.epilogue import OPS, Epilogue
from ._emit import Bindings
from ._qdq_match import const_np, op_name

# the Relax op of each step a kernel's epilogue computes
EPILOGUE_OPS = {f"relax.{'nn.' if op == 'relu' else ''}{op}": op for op in OPS}


@dataclass
class EpiloguePlan:
    """The bindings a layer's kernel computes: ``members[0]`` the layer's int32 sums, then
    one var per step; the kernel stores ``members[-1]`` only."""

    kind: str      # "dense" ([batch, channels]) or "conv" (NCHW): which constants are per channel
    channels: int
    members: list
    steps: list = field(default_factory=list)
    int_rows: list = field(default_factory=list)    # per-channel integer constants
    float_rows: list = field(default_factory=list)  # per-channel float constants

    @property
    def final(self):
        return self.members[-1]

    def simplified(self) -> tuple[tuple, list]:
        """``(steps, integer rows)`` the kernel computes: the recorded steps without the sign
        correction a clip at 0 makes moot (:func:`_without_sign_correction`), and with the
        rounding constant folded into the shift (:func:`_rounding_in_shift`)."""
        return _rounding_in_shift(_without_sign_correction(tuple(self.steps), self.int_rows),
                                  self.int_rows)

    def epilogue(self) -> Epilogue | None:
        if not self.steps:
            return None
        steps, int_rows = self.simplified()
        lo, hi = np.iinfo(np.int32).min, np.iinfo(np.int32).max
        fits = tuple(i for i, r in enumerate(int_rows) if r.min() >= lo and r.max() <= hi)
        narrow = len(fits) == len(int_rows)
        return Epilogue(steps, len(int_rows), len(self.float_rows),
                        "int32" if narrow else "int64", () if narrow else fits)

    def non_decreasing(self) -> bool:
        """Whether the epilogue's result never decreases as the sum grows: then the max of
        some sums' results is the result of their max, and a 2x2 max pool after the layer can
        be taken on the sums before it (a quarter of the epilogues)."""
        if not self.steps:
            return True
        steps, int_rows = self.simplified()
        ranges = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767),
                  "int32": (-(1 << 31), (1 << 31) - 1)}
        for op, args, dtype in steps:
            running = [a[0] in ("acc", "step") for a in args]
            consts = [self.float_rows[a[1]] if a[0] == "chan" and a[2].startswith("float")
                      else _values(a, int_rows) for a, r in zip(args, running) if not r]
            if op in ("add", "clip", "maximum", "minimum", "relu"):
                ok = op == "add" or running[0] and not any(running[1:])
            elif op in ("subtract", "right_shift"):
                ok = running[0] and not running[1] and (op == "subtract"
                                                        or (consts[0] >= 0).all())
            elif op == "multiply":
                ok = sum(running) == 1 and all((c >= 0).all() for c in consts)
            elif op == "astype":  # narrowing: only values a clip before it kept in range
                lo, hi = ranges.get(dtype, (None, None))
                prev = steps[args[0][1]] if args[0][0] == "step" else None
                ok = lo is None or dtype == "int32" and args[0][0] == "acc" or (
                    prev is not None and prev[0] == "clip"
                    and lo <= prev[1][1][1] and prev[1][2][1] <= hi)
            else:
                ok = False
            if not ok:
                return False
        return True

    def constants(self, width: int) -> list:
        """The kernel's ``chan_i, chan_f`` arguments (``width`` columns: the channels, or
        more for a kernel that pads them; ``[1, 1]`` for an empty table:
        :func:`~tvmcomp.kernels.epilogue.tables`)."""
        epi = self.epilogue() or Epilogue(())

        def table(arrays, dtype):
            out = np.zeros((len(arrays), width) if arrays else (1, 1), dtype)
            for r, a in enumerate(arrays):
                out[r, :a.size] = a
            return relax.const(out, str(out.dtype))  # (int64 is kept only when named)

        return [table(self.simplified()[1] if self.steps else [], epi.int_dtype),
                table(self.float_rows, np.float32)]

    def suffix(self) -> str:
        """``_{out dtype}_{hash of the steps}`` for a kernel's name ("" without an epilogue):
        layers of one shape and the same steps share a kernel (constants are arguments)."""
        epi = self.epilogue()
        if epi is None:
            return ""
        tag = hashlib.sha256(repr((epi.steps, epi.int_dtype)).encode()).hexdigest()[:8]
        return f"_{epi.out_dtype}_{tag}"

    def _constant(self, c: np.ndarray):
        dtype = str(c.dtype)
        if c.size == 1:
            return ("const", c.item(), dtype)
        oc = self.channels
        per_channel = ((1, oc, 1, 1), (oc, 1, 1)) if self.kind == "conv" else ((oc,), (1, oc))
        if c.shape not in per_channel or dtype not in ("int32", "int64", "float32"):
            return None
        rows = self.float_rows if dtype == "float32" else self.int_rows
        rows.append(c.reshape(-1))
        return ("chan", len(rows) - 1, dtype)

    def _step(self, val, chain: dict):
        op = EPILOGUE_OPS.get(op_name(val))
        if op is None:
            return None
        dtype = str(val.ty.dtype)
        args = []
        tensors = val.args[:1] if op in ("astype", "relu", "clip") else val.args
        for a in tensors:
            if isinstance(a, relax.Var) and a in chain:
                args.append(chain[a])
                continue
            c = const_np(a)
            enc = self._constant(c) if c is not None else None
            if enc is None:
                return None
            args.append(enc)
        if not any(a[0] in ("acc", "step") for a in args):
            return None
        if op == "clip":
            bounds = [getattr(p.value, "value", p.value) for p in val.args[1:]]
            args += [("const", int(b), dtype) for b in bounds]
        return (op, tuple(args), dtype)

    def _trim(self, uses: dict) -> None:
        """Keep the longest prefix of the steps whose values, but the last, are read nowhere
        else (the kernel stores only the last)."""
        while self.steps:
            inner: dict = {}
            for _, args, _ in self.steps:
                for a in args:
                    if a[0] in ("acc", "step"):
                        v = self.members[0 if a[0] == "acc" else a[1] + 1]
                        inner[v] = inner.get(v, 0) + 1
            if all(uses.get(v, 0) == inner.get(v, 0) for v in self.members[:-1]):
                return
            self.steps.pop()
            self.members.pop()


def _values(arg, int_rows: list) -> np.ndarray | None:
    """A constant argument's values (a scalar, or a per-channel row), else None."""
    if arg[0] == "const":
        return np.asarray([arg[1]], np.int64)
    if arg[0] == "chan" and not arg[2].startswith("float"):
        return int_rows[arg[1]].astype(np.int64)
    return None


def _users(steps, k: int) -> list[int]:
    """The indices of the steps that read step ``k``'s value."""
    return [u for u, (_, args, _) in enumerate(steps) if ("step", k) in args]


def _without_sign_correction(steps: tuple, int_rows: list) -> tuple:
    """``steps`` without the round-half-away-from-zero correction of a requantization whose
    result is clipped at 0 or above: ``(v + R - (v < 0)) >> s`` then ``clip(lo >= 0, hi)``
    gives what ``(v + R) >> s`` then the clip gives, when every ``R < 2**s``: for ``v >= 0``
    the correction is 0, and for ``v < 0`` both shifted values are ``<= 0`` (``v + R - c <
    2**s``), which the clip takes to ``lo``. The ``less``, its ``astype`` and the
    ``subtract`` go (three vector operations a half vector of int64)."""
    steps = list(steps)
    for k, (op, args, _) in enumerate(steps):
        if op != "right_shift" or args[0][0] != "step":
            continue
        users = _users(steps, k)
        if not users or any(steps[u][0] != "clip" or steps[u][1][0] != ("step", k)
                            or steps[u][1][1][0] != "const" or steps[u][1][1][1] < 0
                            for u in users):
            continue
        j = args[0][1]
        sub = steps[j]
        if sub[0] != "subtract" or sub[1][0][0] != "step" or sub[1][1][0] != "step":
            continue
        a, c = sub[1][0][1], sub[1][1][1]
        cast, add = steps[c], steps[a]
        if cast[0] != "astype" or cast[1][0][0] != "step" or add[0] != "add":
            continue
        less = steps[cast[1][0][1]]
        if (less[0] != "less" or less[1][0] != add[1][0] or less[1][1][0] != "const"
                or less[1][1][1] != 0):
            continue
        r, shift = _values(add[1][1], int_rows), _values(args[1], int_rows)
        if r is None or shift is None or (shift < 1).any() or (shift > 62).any() or \
                not (r < (np.int64(1) << shift)).all():
            continue
        steps[k] = (op, (("step", a), args[1]), steps[k][2])
    return _live(steps)


def _rounding_in_shift(steps: tuple, int_rows: list) -> tuple[tuple, list]:
    """``steps`` and their integer rows with ``(v + R) >> s``, where every channel's ``R`` is
    ``2**(s-1)``, computed as ``((v >> (s-1)) + 1) >> 1``: the same for every int64 ``v``
    (with ``v = q * 2**(s-1) + r``, ``0 <= r < 2**(s-1)``, both are ``floor((q+1) / 2)``);
    with the sign correction ``c`` between the add and the shift, ``v - c`` takes ``v``'s
    place. The int64 row ``R`` goes (a requantization's rows left, bias, multiplier and
    ``s-1``, fit int32, so its whole table does: half the bytes, and ``vpmuldq`` multiplies)."""
    steps, rows = list(steps), list(int_rows)
    for k, (op, args, dtype) in enumerate(steps):
        if op != "right_shift" or args[0][0] != "step" or args[1][0] != "chan":
            continue
        a = args[0][1]
        sub = None  # the sign correction between the add and the shift: (v + R - c) >> s
        if steps[a][0] == "subtract" and steps[a][1][0][0] == "step" and _users(steps, a) == [k]:
            sub, a = steps[a], steps[a][1][0][1]
        add = steps[a]
        if add[0] != "add" or add[1][1][0] != "chan" or \
                _users(steps, a) != [k if sub is None else args[0][1]]:
            continue
        if sub is not None and not (sub[1][1][0] == "step" and sub[1][1][1] < a):
            continue  # the correction is computed after the add: no place for it before
        shift, r = rows[args[1][1]].astype(np.int64), rows[add[1][1][1]].astype(np.int64)
        if (shift < 1).any() or (shift > 62).any() or \
                not np.array_equal(r, np.int64(1) << (shift - 1)):
            continue
        rows.append(shift - 1)
        x = add[1][0]
        if sub is not None:  # ((v - c) + R) >> s: the correction first, then the shift
            steps[a] = ("subtract", (x, sub[1][1]), sub[2])
            x, a = ("step", a), args[0][1]
        steps[a] = ("right_shift", (x, ("chan", len(rows) - 1, args[1][2])), add[2])
        # the steps after k read one index further on (k's value is now at k + 1)
        later = [(o, tuple(("step", x[1] + 1) if x[0] == "step" and x[1] >= k else x
                           for x in xs), d) for o, xs, d in steps[k + 1:]]
        steps[k:] = [("add", (("step", a), ("const", 1, dtype)), dtype),
                     ("right_shift", (("step", k), ("const", 1, dtype)), dtype), *later]
        break
    used = sorted({x[1] for _, xs, _ in steps for x in xs
                   if x[0] == "chan" and not x[2].startswith("float")})
    new = {old: i for i, old in enumerate(used)}
    steps = [(o, tuple(("chan", new[x[1]], x[2]) if x[0] == "chan"
                       and not x[2].startswith("float") else x for x in xs), d)
             for o, xs, d in steps]
    return tuple(steps), [rows[i] for i in used]


def _live(steps: list) -> tuple:
    """``steps`` without those no later step reads (the last is stored), renumbered."""
    live = {len(steps) - 1}
    for k in range(len(steps) - 1, -1, -1):
        if k in live:
            live |= {a[1] for a in steps[k][1] if a[0] == "step"}
    new = {k: i for i, k in enumerate(sorted(live))}
    return tuple((op, tuple(("step", new[a[1]]) if a[0] == "step" else a for a in args), dt)
                 for k, (op, args, dt) in enumerate(steps) if k in live)


def plan_epilogue(b: Bindings, var, kind: str, channels: int) -> EpiloguePlan:
    """The elementwise bindings right after ``var`` (a layer's int32 sums) that its kernel
    can compute: each one's tensor arguments are earlier members or constants (scalar or
    per output channel), and no value but the last is read elsewhere."""
    plan = EpiloguePlan(kind, channels, [var])
    chain = {var: ("acc",)}
    for nxt in b.order[b.order.index(var) + 1:]:
        step = plan._step(b.value[nxt], chain)
        if step is None:
            break
        plan.steps.append(step)
        chain[nxt] = ("step", len(plan.steps) - 1)
        plan.members.append(nxt)
    plan._trim(b.uses)
    return plan
