"""Deterministic train/validation/test assignment from a hash of the Gaia source_id."""

from __future__ import annotations

import hashlib

import numpy as np

from .errors import DatasetBuildError
from .schema import SPLITS


def hash_uniform(source_id: np.ndarray) -> np.ndarray:
    """Map each int64 source_id to [0, 1) via blake2b of its little-endian bytes (stable forever)."""
    ids = np.ascontiguousarray(source_id, dtype="<i8")
    digests = b"".join(hashlib.blake2b(value, digest_size=8).digest() for value in ids.view("S8"))
    return np.frombuffer(digests, dtype="<u8") / float(2**64)


def check_fractions(split_fractions: tuple[float, float, float]) -> None:
    """Raise `DatasetBuildError` unless there are 3 non-negative fractions summing to 1."""
    fractions = np.asarray(split_fractions, dtype=np.float64)
    if fractions.shape != (len(SPLITS),) or (fractions < 0).any() or abs(fractions.sum() - 1.0) > 1e-9:
        raise DatasetBuildError(
            f"split_fractions={split_fractions!r}: give {len(SPLITS)} non-negative fractions "
            f"for {SPLITS} that sum to 1, e.g. (0.8, 0.1, 0.1)"
        )


def assign_split(source_id: np.ndarray, split_fractions: tuple[float, float, float]) -> np.ndarray:
    """Index into `SPLITS` (int8) per star; a star's split depends only on its own source_id."""
    edges = np.cumsum(split_fractions)[:-1]
    return np.searchsorted(edges, hash_uniform(source_id), side="right").astype(np.int8)
