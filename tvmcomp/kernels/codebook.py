"""Codebook encoding of a weight with few distinct values: uint8 codes + a float32 table.

Shared by the dense codebook layers (``CodebookDense``) and the sparse (SELL) kernels whose
stored values are codes (``SparseDense(values="codebook")``).
"""

from __future__ import annotations

import numpy as np

MAX_CODES = 256  # uint8 codes
# A codebook layer's lookup, ``take(codebook, codes)``, legalizes into a block of this name
# writing a buffer named ``T_take_intermediate`` after fusion: the decoded weight, when the
# kernel decodes once per call instead of inside its loops.
DECODE_BLOCK = "T_take"


def codebook_length(codes: int) -> int:
    """The stored codebook's length: ``codes`` rounded up to a power of two (the unused
    entries are zeros), so layers shared to the same bits give the same kernel workload and
    tuning records carry over between models."""
    return 1 << max(0, int(codes) - 1).bit_length()


def distinct_values(w: np.ndarray, zero_first: bool = False) -> int:
    """How many table entries :func:`encode` needs for ``w``."""
    if not zero_first:
        return int(np.unique(w).size)
    return 1 + int(np.unique(w[w != 0]).size)


def encode(w: np.ndarray, zero_first: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(codebook float32 [codebook_length], codes uint8 shaped like w)`` with
    ``codebook[codes] == w``. ``zero_first``: entry 0 is 0.0 (a sparse layout's padding
    entries carry code 0 and must add nothing). Raises ValueError past :data:`MAX_CODES`."""
    w = np.asarray(w, np.float32)
    values = np.unique(w) if not zero_first else np.concatenate(
        [np.zeros(1, np.float32), np.unique(w[w != 0])])
    if values.size > MAX_CODES:
        raise ValueError(f"{values.size} distinct values do not fit {MAX_CODES} codes")
    codebook = np.zeros(codebook_length(values.size), np.float32)
    codebook[: values.size] = values
    codes = np.searchsorted(values[1:] if zero_first else values, w)
    if zero_first:
        codes = np.where(w != 0, codes + 1, 0)
    return codebook, codes.astype(np.uint8)


def code_bits(codebook_len: int) -> int:
    """Bits of one code into a codebook of ``codebook_len`` entries (a power of two)."""
    return max(1, (int(codebook_len) - 1).bit_length())


def codes_per_byte(bits: int) -> int:
    """How many ``bits``-bit codes one stored byte holds: 8, 4, 2, 2, then 1 from 5 bits
    (a code never straddles two bytes, so decoding is one shift and one mask)."""
    return 8 // bits if 1 <= bits <= 8 else 0


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """``codes`` (any shape, values < 2**bits) flattened into bytes of
    :func:`codes_per_byte` codes each, the first code in the low bits; zero-padded."""
    per = codes_per_byte(bits)
    if per == 0:
        raise ValueError(f"bits must be in 1..8, got {bits!r}")
    flat = np.asarray(codes, np.uint8).reshape(-1)
    if flat.size and int(flat.max()) >> bits:
        raise ValueError(f"a code does not fit {bits} bits")
    flat = np.concatenate([flat, np.zeros((-flat.size) % per, np.uint8)]).reshape(-1, per)
    shifts = (np.arange(per) * bits).astype(np.uint8)
    return np.bitwise_or.reduce(flat << shifts, axis=1).astype(np.uint8)


def unpack(packed: np.ndarray, bits: int, size: int) -> np.ndarray:
    """The first ``size`` codes :func:`pack` stored in ``packed`` (flat uint8)."""
    per = codes_per_byte(bits)
    shifts = (np.arange(per) * bits).astype(np.uint8)
    return ((packed[:, None] >> shifts) & ((1 << bits) - 1)).reshape(-1)[:size].astype(np.uint8)


def decode(codebook: np.ndarray, stored: np.ndarray, shape) -> np.ndarray | None:
    """The weight of ``shape`` that ``stored`` codes (uint8 of that shape, or packed as
    :func:`pack` stores a codebook of at most 16 entries) into ``codebook`` stand for; None
    if ``stored`` cannot hold them."""
    size = int(np.prod(shape))
    if stored.dtype != np.uint8 or codebook.ndim != 1:
        return None
    if tuple(stored.shape) == tuple(shape):
        codes = stored
    elif stored.ndim == 1 and stored.size == stored_code_bytes(size, codebook.size) \
            and codes_per_byte(code_bits(codebook.size)) > 1:
        codes = unpack(stored, code_bits(codebook.size), size).reshape(shape)
    else:
        return None
    return codebook[np.minimum(codes, codebook.size - 1)]


def stored_code_bytes(size: int, codebook_len: int) -> int:
    """Bytes of ``size`` codes into a codebook of ``codebook_len`` entries, as :func:`pack`
    stores them."""
    per = codes_per_byte(code_bits(codebook_len))
    return -(-int(size) // per)
