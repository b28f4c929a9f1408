"""Integer requantization: real multipliers as Q31 fixed point + right shift, NumPy reference."""

from __future__ import annotations

import numpy as np

from .errors import QuantError

MULT_BITS = 31  # m0 in [2**30, 2**31): a Q31 mantissa, like TFLite / gemmlowp
MAX_SHIFT = 62  # |acc| < 2**31 and m0 < 2**31, so acc * m0 + 2**61 fits in int64

INT_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int32": (-(2**31), 2**31 - 1)}


def quantize_multiplier(m) -> tuple[np.ndarray, np.ndarray]:
    """Write each real multiplier ``m > 0`` as ``m0 * 2**-shift`` (int64 arrays).

    ``m0`` is in ``[2**30, 2**31)`` and ``1 <= shift <= 62``, so ``acc * m0`` with a 32-bit
    ``acc`` never overflows int64. Multipliers below ``2**-32`` lose mantissa bits (their
    outputs round to 0 or ±1 anyway); multipliers of ``2**30`` or more are rejected.
    """
    m = np.atleast_1d(np.asarray(m, np.float64))
    if not np.all(np.isfinite(m)) or np.any(m <= 0):
        raise QuantError(f"requantization multipliers must be finite and > 0, got {m.min()!r}")
    frac, exp = np.frexp(m)  # m = frac * 2**exp, frac in [0.5, 1)
    m0 = np.round(frac * 2.0**MULT_BITS).astype(np.int64)
    carry = m0 == 2**MULT_BITS
    m0[carry] //= 2
    exp = exp.astype(np.int64) + carry
    shift = MULT_BITS - exp
    if np.any(shift < 1):
        raise QuantError(f"requantization multiplier {m.max():.3g} is too large (>= 2**30); "
                         "the activation scales are inconsistent")
    over = shift > MAX_SHIFT
    if np.any(over):
        m0[over] = rounding_shift(m0[over], shift[over] - MAX_SHIFT)
        shift[over] = MAX_SHIFT
    return m0, shift


def rounding_shift(v, n):
    """``round(v / 2**n)`` with ties away from zero, in integers (n >= 1)."""
    v = np.asarray(v, np.int64)
    n = np.asarray(n, np.int64)
    half = np.left_shift(np.int64(1), n - 1)
    return np.right_shift(v + half - (v < 0), n)


def requantize_ref(acc, m0, shift, zero_point: int, lo: int, hi: int) -> np.ndarray:
    """NumPy reference of the emitted integer requantization (int64 result, clamped).

    ``out = clamp(round_half_away(acc * m0 / 2**shift) + zero_point, lo, hi)``; ``m0`` and
    ``shift`` broadcast against ``acc`` (per-channel values shaped like the channel axis).
    """
    prod = np.asarray(acc, np.int64) * np.asarray(m0, np.int64)
    return np.clip(rounding_shift(prod, shift) + zero_point, lo, hi)
