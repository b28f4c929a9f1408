"""The epilogue planner's simplification of QuantizeInt8's requantization (passes._epilogue)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm")

from tvmcomp.passes._epilogue import (  # noqa: E402
    _rounding_in_shift,
    _without_sign_correction,
)

# QuantizeInt8's requantization after an int8 layer, as the epilogue planner records it:
# y = clip((int64(acc + bias) * M + R - (v < 0)) >> s, lo, hi), per-channel bias, M, R, s
STEPS = (("add", (("acc",), ("chan", 0, "int32")), "int32"),
         ("astype", (("step", 0),), "int64"),
         ("multiply", (("step", 1), ("chan", 1, "int64")), "int64"),
         ("less", (("step", 2), ("const", 0, "int64")), "bool"),
         ("astype", (("step", 3),), "int64"),
         ("add", (("step", 2), ("chan", 2, "int64")), "int64"),
         ("subtract", (("step", 5), ("step", 4)), "int64"),
         ("right_shift", (("step", 6), ("chan", 3, "int64")), "int64"),
         ("clip", (("step", 7), ("const", 0, "int64"), ("const", 127, "int64")), "int64"),
         ("astype", (("step", 8),), "int8"))


def _run(steps, acc, rows):
    """NumPy evaluation of epilogue ``steps`` over sums ``acc`` [N, channels]."""
    vals: list = []

    def arg(a):
        if a[0] == "acc":
            return acc
        if a[0] == "step":
            return vals[a[1]]
        if a[0] == "const":
            return np.asarray(a[1], a[2])
        return rows[a[1]].astype(a[2])[None, :]

    for op, args, dtype in steps:
        xs = [arg(a) for a in args]
        if op == "clip":
            v = np.clip(xs[0], xs[1], xs[2])
        else:
            v = {"add": np.add, "subtract": np.subtract, "multiply": np.multiply,
                 "less": np.less, "right_shift": np.right_shift,
                 "astype": lambda x: x}[op](*xs)
        vals.append(np.asarray(v).astype(dtype))
    return vals[-1]


def _rows(rng, channels, shift):
    s = np.full(channels, shift, np.int64) + rng.integers(0, 4, channels)
    return [rng.integers(-5000, 5000, channels).astype(np.int32),
            rng.integers(1 << 30, (1 << 31) - 1, channels).astype(np.int64),
            (np.int64(1) << (s - 1)).astype(np.int64), s]


@pytest.mark.parametrize("lo, hi, changed", [(0, 127, True), (0, 255, True), (-128, 127, False)])
def test_sign_correction_goes_only_where_the_clip_makes_it_moot(lo, hi, changed):
    """Clipped at 0 or above, the requantization without its round-half-away-from-zero
    correction gives the same int8/uint8 values, bit for bit, over sums of both signs and
    exact halves; clipped below 0 it keeps the correction (there it matters)."""
    rng = np.random.default_rng(0)
    steps = STEPS[:8] + (("clip", (("step", 7), ("const", lo, "int64"), ("const", hi, "int64")),
                          "int64"), STEPS[9])
    rows = _rows(rng, 8, 40)
    acc = rng.integers(-(1 << 18), 1 << 18, (4096, 8)).astype(np.int32)
    acc[:8] = -rows[0][None, :].astype(np.int32)  # v == 0
    simple = _without_sign_correction(steps, rows)
    assert (len(simple) == len(steps) - 3) == changed
    if changed:
        assert [op for op, _, _ in simple] == ["add", "astype", "multiply", "add",
                                               "right_shift", "clip", "astype"]
    else:
        assert simple == steps
    np.testing.assert_array_equal(_run(simple, acc, rows), _run(steps, acc, rows))
    assert len(np.unique(_run(steps, acc, rows))) > 50  # not all clipped


def test_sign_correction_stays_when_the_rounding_constant_is_too_large():
    """``R >= 2**s``: a negative value can round up past 0, so the correction stays."""
    rows = _rows(np.random.default_rng(1), 4, 33)
    rows[2] = (np.int64(1) << rows[3]).astype(np.int64)
    assert _without_sign_correction(STEPS, rows) == STEPS


@pytest.mark.parametrize("lo", [0, -128])
def test_rounding_constant_folds_into_the_shift(lo):
    """``(v + 2**(s-1)) >> s`` computed as ``((v >> (s-1)) + 1) >> 1``: bit for bit the same
    over sums of both signs (exact halves among them), with or without the sign correction
    before it; the int64 rounding row goes and the rows left fit int32."""
    rng = np.random.default_rng(2)
    steps = STEPS[:8] + (("clip", (("step", 7), ("const", lo, "int64"),
                                   ("const", 127, "int64")), "int64"), STEPS[9])
    rows = _rows(rng, 8, 40)
    acc = rng.integers(-(1 << 18), 1 << 18, (4096, 8)).astype(np.int32)
    v = (acc.astype(np.int64) + rows[0]) * rows[1]
    acc[:8] = -rows[0].astype(np.int32)  # v == 0, and below exact halves of 2**s
    simple = _without_sign_correction(steps, rows)
    folded, left = _rounding_in_shift(simple, rows)
    assert len(left) == 3 and all(np.abs(r).max() < 1 << 31 for r in left)
    assert [op for op, _, _ in folded].count("right_shift") == 2
    np.testing.assert_array_equal(_run(folded, acc, left), _run(steps, acc, rows))
    assert len(np.unique(_run(steps, acc, rows))) > 50 and (v < 0).any()


def test_rounding_constant_stays_when_it_is_not_half_the_shift():
    rows = _rows(np.random.default_rng(3), 4, 40)
    rows[2] = rows[2] + 1
    steps, left = _rounding_in_shift(STEPS, rows)
    assert steps == STEPS and len(left) == 4
