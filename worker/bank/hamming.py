"""Hamming distances between PDQ hashes (32-byte rows), in one place for fingerprint thinning,
the match rule and the index. A byte lookup table, so that any supported numpy will do."""
from __future__ import annotations

import numpy as np

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def hamming(a: bytes, b: bytes) -> int:
    return int(_POPCOUNT[np.frombuffer(a, np.uint8) ^ np.frombuffer(b, np.uint8)].sum())


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Between every row of ``a`` (n, 32) and every row of ``b`` (m, 32): (n, m)."""
    return _POPCOUNT[a[:, None, :] ^ b[None, :, :]].sum(axis=2, dtype=np.int32)


def row_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Between each row of ``a`` and the row of ``b`` at the same position: (n,)."""
    return _POPCOUNT[a ^ b].sum(axis=1, dtype=np.int32)
