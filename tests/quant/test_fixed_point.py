"""Fixed-point requantization math against exact rational arithmetic."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from tvmcomp.quant import QuantError
from tvmcomp.quant.fixed_point import quantize_multiplier, requantize_ref, rounding_shift


def test_multiplier_is_accurate_and_in_range():
    m = np.concatenate([np.geomspace(1e-9, 0.999, 200), [1.0, 3.7, 1000.0]])
    m0, shift = quantize_multiplier(m)
    assert np.all((m0 >= 2**30) & (m0 < 2**31)) and np.all((shift >= 1) & (shift <= 62))
    back = m0.astype(np.float64) * np.exp2(-shift.astype(np.float64))
    assert np.all(np.abs(back / m - 1) <= 2.0**-30)


def test_tiny_and_huge_multipliers():
    m0, shift = quantize_multiplier([2.0**-40])
    assert shift[0] == 62 and m0[0] * 2.0**-62 == pytest.approx(2.0**-40, rel=1e-6)
    with pytest.raises(QuantError, match="too large"):
        quantize_multiplier([2.0**31])
    with pytest.raises(QuantError, match="finite and > 0"):
        quantize_multiplier([0.0])


def test_rounding_shift_rounds_half_away_from_zero():
    v = np.arange(-40, 41, dtype=np.int64)
    for n in (1, 2, 3):
        want = [int(Fraction(int(a), 2**n).__abs__() + Fraction(1, 2)) * (1 if a >= 0 else -1)
                for a in v]
        np.testing.assert_array_equal(rounding_shift(v, n), want)


def test_requantize_matches_rational_reference():
    rng = np.random.default_rng(0)
    acc = rng.integers(-(2**24), 2**24, 2000)
    m = 0.000731
    m0, shift = quantize_multiplier(m)
    got = requantize_ref(acc, m0, shift, zero_point=-3, lo=-128, hi=127)
    exact = Fraction(int(m0[0]), 2 ** int(shift[0]))
    want = []
    for a in acc:
        r = Fraction(int(a)) * exact
        q = int(abs(r) + Fraction(1, 2)) * (1 if r >= 0 else -1)
        want.append(min(127, max(-128, q - 3)))
    np.testing.assert_array_equal(got, want)
    # and it is within half an LSB of the real multiplier before clamping
    free = requantize_ref(acc, m0, shift, 0, -(2**40), 2**40)
    assert np.max(np.abs(free - acc * m)) <= 0.5 + 1e-6
