"""Embeddings of stars and top-k cosine-similarity search between them."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .labels import select_inputs


def embed_stars(
    predictor, data: Any, inputs: tuple[str, ...] | list[str] | None = None, pooling: str = "mean"
) -> np.ndarray:
    """Per-star embeddings (N, hidden_size): encoder states pooled over the star's observations.

    ``inputs`` restricts the observations the model sees (e.g. the spectra only); default: every known column.
    Stars without a usable observation get NaN rows (with a warning).
    """
    return predictor.embed(data if inputs is None else select_inputs(data, inputs), pooling=pooling)


def _normalised(vectors: np.ndarray | torch.Tensor) -> torch.Tensor:
    vectors = torch.as_tensor(np.asarray(vectors), dtype=torch.float32)
    if vectors.ndim != 2:
        raise ValueError(
            f"embeddings must be a 2-d array (num_stars, dim), got shape {tuple(vectors.shape)}."
        )
    return torch.nn.functional.normalize(vectors, dim=1)


def top_k_similar(
    queries: np.ndarray,
    corpus: np.ndarray,
    k: int = 5,
    chunk_size: int = 4096,
    exclude_self: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` stars of ``corpus`` most cosine-similar to each query, in chunks with ``torch.topk``.

    Args:
        queries: (Q, D) embeddings; corpus: (N, D) embeddings (NaN rows are never returned).
        k: neighbours per query (at most N).
        chunk_size: queries and corpus rows per block, bounding memory to ``chunk_size**2`` similarities.
        exclude_self: ``queries`` is ``corpus`` (same rows): never return a star as its own neighbour.

    Returns:
        ``(similarity (Q, k) float32, index (Q, k) int64)``, best first; a NaN query gets NaN / -1.
    """
    queries, corpus = _normalised(queries), _normalised(corpus)
    if queries.shape[1] != corpus.shape[1]:
        raise ValueError(f"queries ({queries.shape[1]}) and corpus ({corpus.shape[1]}) differ in dimension.")
    if exclude_self and queries.shape[0] != corpus.shape[0]:
        raise ValueError("exclude_self=True needs queries and corpus to be the same stars.")
    available = corpus.shape[0] - int(exclude_self)
    if not 1 <= k <= available:
        raise ValueError(f"k must be between 1 and {available} (the corpus size), got {k}.")
    corpus_valid = torch.isfinite(corpus).all(dim=1)
    best_scores, best_index = [], []
    for start in range(0, queries.shape[0], chunk_size):
        block = queries[start : start + chunk_size]
        scores = torch.full((block.shape[0], 0), -torch.inf)
        index = torch.zeros((block.shape[0], 0), dtype=torch.long)
        for first in range(0, corpus.shape[0], chunk_size):
            similarity = block @ corpus[first : first + chunk_size].T
            similarity = similarity.masked_fill(
                ~corpus_valid[first : first + chunk_size][None, :], -torch.inf
            )
            if exclude_self:
                rows = torch.arange(block.shape[0])
                own = rows + start - first
                inside = (own >= 0) & (own < similarity.shape[1])
                similarity[rows[inside], own[inside]] = -torch.inf
            similarity = torch.nan_to_num(similarity, nan=-torch.inf)
            candidates = torch.cat([scores, similarity], dim=1)
            candidate_index = torch.cat(
                [index, torch.arange(first, first + similarity.shape[1]).expand(block.shape[0], -1)], dim=1
            )
            scores, position = torch.topk(candidates, min(k, candidates.shape[1]), dim=1)
            index = torch.gather(candidate_index, 1, position)
        query_valid = torch.isfinite(block).all(dim=1, keepdim=True)
        best_scores.append(torch.where(query_valid & torch.isfinite(scores), scores, torch.nan))
        best_index.append(torch.where(query_valid & torch.isfinite(scores), index, -1))
    return torch.cat(best_scores).numpy(), torch.cat(best_index).numpy()


def retrieval_accuracy(queries: np.ndarray, corpus: np.ndarray, chunk_size: int = 4096) -> float:
    """Top-1 accuracy of finding each query's own row in ``corpus`` (two views of the same N stars)."""
    if len(queries) != len(corpus):
        raise ValueError(
            f"queries ({len(queries)}) and corpus ({len(corpus)}) must be views of the same stars."
        )
    _, index = top_k_similar(queries, corpus, k=1, chunk_size=chunk_size)
    return float(np.mean(index[:, 0] == np.arange(len(queries))))


__all__ = ["embed_stars", "retrieval_accuracy", "top_k_similar"]
