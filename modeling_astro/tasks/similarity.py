"""Embeddings of stars and top-k cosine-similarity search between them, with FAISS through `datasets`.

`build_index` puts normalised embeddings in a `datasets.Dataset` and attaches a FAISS inner-product index
(`Dataset.add_faiss_index`): exact (`IndexFlatIP`) by default, HNSW (or any FAISS factory string, e.g. IVF-PQ)
for large catalogues;
`search_index` queries it (`Dataset.search_batch`), `save_index` / `load_index` keep the index beside the
embeddings. `top_k_similar` does both for two arrays. Needs `faiss-cpu` (the `similarity` extra).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from .labels import select_inputs


def embed_stars(
    predictor, data: Any, inputs: tuple[str, ...] | list[str] | None = None, pooling: str = "mean"
) -> np.ndarray:
    """Per-star embeddings (N, hidden_size): encoder states pooled over the star's observations.

    ``inputs`` restricts the observations the model sees (e.g. the spectra only); default: every known column.
    Stars without a usable observation get NaN rows (with a warning).
    """
    return predictor.embed(data if inputs is None else select_inputs(data, inputs), pooling=pooling)


EMBEDDING_COLUMN = "embedding"  # the column of normalised vectors, and the name of its FAISS index
ROW_COLUMN = "row"  # each indexed vector's row in the embeddings given to `build_index`
INDEX_FILE = "embedding.faiss"  # `save_index`: the FAISS index beside the dataset of embeddings


def _ivf_lists(num_vectors: int) -> int:
    """IVF list count ~ sqrt(N), a power of 2 between 16 and 4096 (k-means training stays cheap on a few cores)."""
    return int(2 ** np.clip(np.round(np.log2(max(num_vectors, 1)) / 2), 4, 12))


APPROXIMATE = {
    # graph index: no training, recall ~0.9-1 at efSearch 64-128, memory ~ the vectors + 256 B per vector
    "hnsw": lambda dim, n: "HNSW32,Flat",
    # inverted lists over k-means cells: trains in seconds, ~N/nlist * nprobe vectors scanned per query
    "ivf": lambda dim, n: f"IVF{_ivf_lists(n)},Flat",
}


def _require_faiss():
    try:
        import faiss
    except ImportError as error:
        raise ImportError(
            "Similarity search uses FAISS through `datasets`: install the `similarity` extra, "
            "`pip install astro-foundation[similarity]` (or `pip install faiss-cpu`)."
        ) from error
    return faiss


def _normalised(vectors: np.ndarray | torch.Tensor) -> np.ndarray:
    """Float32 rows divided by their L2 norm (at least 1e-12, as `torch.nn.functional.normalize`); NaN stays NaN."""
    vectors = torch.as_tensor(np.asarray(vectors), dtype=torch.float32)
    if vectors.ndim != 2:
        raise ValueError(f"embeddings must be a 2-d array (num_stars, dim), got shape {tuple(vectors.shape)}.")
    return torch.nn.functional.normalize(vectors, dim=1).numpy()


def build_index(
    embeddings: np.ndarray | torch.Tensor,
    index: str = "exact",
    train_size: int | None = None,
    batch_size: int = 10_000,
    nprobe: int | None = None,
    ef_search: int | None = 64,
    k_factor: int | None = 4,
    ef_construction: int | None = None,
) -> datasets.Dataset:
    """A `datasets.Dataset` of normalised embeddings with a FAISS inner-product (cosine) index attached.

    Args:
        embeddings: (N, D) embeddings (e.g. `embed_stars`); rows with a NaN are left out of the index.
        index: "exact" (`IndexFlatIP`, brute force, the default), "hnsw" (HNSW graph, approximate, for large
            corpora), "ivf" (inverted lists, ~sqrt(N) k-means cells: the fastest to build at 10**6 vectors) or any
            FAISS `index_factory` string (inner-product metric), e.g. "IVF1024,PQ32x8,RFlat".
        train_size: vectors used to train an index that needs training (IVF): default min(N, 100 * nlist, 10**6).
        batch_size: vectors added per batch (progress bar per batch).
        nprobe, ef_search, k_factor: search knobs of approximate indexes, see `set_search_parameters`.
        ef_construction: HNSW candidate list length while building (FAISS' default 40; lower builds faster,
            with a lower recall at the same ``ef_search``).

    Returns:
        A dataset with columns `embedding` (normalised float32 vectors) and `row` (the vector's row in
        `embeddings`) and the FAISS index `embedding`; search it with `search_index` (or `datasets`'
        `get_nearest_examples_batch("embedding", queries, k)` on normalised queries), save it with `save_index`.
    """
    faiss = _require_faiss()
    vectors = _normalised(embeddings)
    rows = np.flatnonzero(np.isfinite(vectors).all(axis=1))
    if len(rows) == 0:
        raise ValueError("Every embedding has a NaN: no star to index.")
    dim = vectors.shape[1]
    if index == "exact":
        factory = "Flat"
    elif index in APPROXIMATE:
        factory = APPROXIMATE[index](dim, len(rows))
    else:
        factory = index
    vectors = np.ascontiguousarray(vectors[rows])
    table = pa.table(
        {
            EMBEDDING_COLUMN: pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
            ROW_COLUMN: pa.array(rows.astype(np.int64)),
        }
    )
    del vectors
    dataset = datasets.Dataset(table)
    try:
        probe = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise ValueError(
            f"index={index!r} is neither 'exact', {sorted(APPROXIMATE)} nor a FAISS index_factory string: {error}"
        ) from None
    if not probe.is_trained and train_size is None:
        nlist = getattr(faiss.extract_index_ivf(probe), "nlist", 1) if "IVF" in factory else 1
        train_size = min(len(rows), max(100 * nlist, 10_000), 10**6)
    if ef_construction is not None:
        graph = faiss.downcast_index(probe)
        if not hasattr(graph, "hnsw"):
            raise ValueError(f"ef_construction= is a knob of HNSW indexes, not of {factory!r}.")
        graph.hnsw.efConstruction = int(ef_construction)
    dataset.add_faiss_index(  # the index built here (knobs set), trained and filled by `datasets`
        EMBEDDING_COLUMN,
        custom_index=probe,
        batch_size=batch_size,
        train_size=None if probe.is_trained else train_size,
    )
    set_search_parameters(dataset, nprobe=nprobe, ef_search=ef_search, k_factor=k_factor)
    return dataset


def set_search_parameters(
    dataset: datasets.Dataset, nprobe: int | None = None, ef_search: int | None = 64, k_factor: int | None = 4
) -> None:
    """Set the accuracy / speed knobs of an approximate index (they are saved with it).

    Args:
        nprobe: IVF lists scanned per query (default: nlist / 64, at least 8).
        ef_search: HNSW candidate list length per query (FAISS' default is 16).
        k_factor: a re-ranking stage (``RFlat``) re-scores ``k_factor * k`` candidates exactly.
    """
    import faiss

    index = dataset.get_index(EMBEDDING_COLUMN).faiss_index
    if isinstance(faiss.downcast_index(index), faiss.IndexRefine):
        refine = faiss.downcast_index(index)
        if k_factor is not None:
            refine.k_factor = float(k_factor)
        index = faiss.downcast_index(refine.base_index)
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:  # not an IVF index
        ivf = None
    if ivf is not None:
        ivf.nprobe = int(nprobe) if nprobe is not None else int(min(ivf.nlist, max(8, ivf.nlist // 64)))
    hnsw = faiss.downcast_index(index)
    if hasattr(hnsw, "hnsw") and ef_search is not None:
        hnsw.hnsw.efSearch = int(ef_search)


def save_index(dataset: datasets.Dataset, folder: str | Path) -> Path:
    """Save the embeddings (`datasets` arrow files) and, beside them, the FAISS index (`embedding.faiss`)."""
    folder = Path(folder)
    temporary = folder.with_name(folder.name + ".tmp")
    if temporary.exists():
        shutil.rmtree(temporary)
    datasets.Dataset(dataset.data).save_to_disk(str(temporary))  # the same table without the attached index
    dataset.save_faiss_index(EMBEDDING_COLUMN, temporary / INDEX_FILE)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(temporary, folder)
    return folder


def load_index(folder: str | Path) -> datasets.Dataset:
    """The dataset of embeddings saved by `save_index`, with its FAISS index loaded."""
    _require_faiss()
    folder = Path(folder)
    if not (folder / INDEX_FILE).is_file():
        raise FileNotFoundError(f"{folder} has no {INDEX_FILE}: save an index there with `save_index`.")
    dataset = datasets.load_from_disk(str(folder))
    dataset.load_faiss_index(EMBEDDING_COLUMN, folder / INDEX_FILE)
    return dataset


def search_index(
    dataset: datasets.Dataset,
    queries: np.ndarray | torch.Tensor,
    k: int = 5,
    chunk_size: int = 4096,
    exclude_rows: np.ndarray | None = None,
    **search_kwargs: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` indexed stars most cosine-similar to each query, through `Dataset.search_batch`.

    Args:
        dataset: from `build_index` / `load_index`.
        queries: (Q, D) embeddings (normalised here).
        k: neighbours per query.
        chunk_size: queries per FAISS search call (progress bar per call).
        exclude_rows: (Q,) row (of the indexed embeddings) never to return for each query, e.g. the query itself.
        search_kwargs: passed to FAISS' search, e.g. ``params=faiss.SearchParametersHNSW(efSearch=128)``.

    Returns:
        ``(similarity (Q, k) float32, row (Q, k) int64)``, best first, rows of the indexed embeddings; NaN / -1
        where a query has a NaN or fewer than ``k`` neighbours were found.
    """
    queries = _normalised(queries)
    dim = dataset.features[EMBEDDING_COLUMN].length
    if queries.shape[1] != dim:
        raise ValueError(f"queries ({queries.shape[1]}) and the index ({dim}) differ in dimension.")
    extra = int(exclude_rows is not None)
    rows = dataset.data.column(ROW_COLUMN).to_numpy()  # not `with_format`, which deep-copies the FAISS index
    scores = np.full((len(queries), k), np.nan, dtype=np.float32)
    found = np.full((len(queries), k), -1, dtype=np.int64)
    valid = np.flatnonzero(np.isfinite(queries).all(axis=1))
    starts = range(0, len(valid), chunk_size)
    for start in tqdm(starts, desc="similarity search", unit="chunk", disable=len(starts) < 2):
        chosen = valid[start : start + chunk_size]
        result = dataset.search_batch(
            EMBEDDING_COLUMN, np.ascontiguousarray(queries[chosen]), k=min(k + extra, len(rows)), **search_kwargs
        )
        similarity = np.asarray(result.total_scores, dtype=np.float32)
        position = np.asarray(result.total_indices, dtype=np.int64)
        neighbour = np.where(position >= 0, rows[position.clip(0)], -1)
        keep = position >= 0
        if exclude_rows is not None:
            keep &= neighbour != np.asarray(exclude_rows)[chosen, None]
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept neighbours first, best first
        kept = np.take_along_axis(keep, order, axis=1)
        scores[chosen, : order.shape[1]] = np.where(kept, np.take_along_axis(similarity, order, axis=1), np.nan)
        found[chosen, : order.shape[1]] = np.where(kept, np.take_along_axis(neighbour, order, axis=1), -1)
    return scores, found


def top_k_similar(
    queries: np.ndarray,
    corpus: np.ndarray,
    k: int = 5,
    chunk_size: int = 4096,
    exclude_self: bool = False,
    index: str = "exact",
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` stars of ``corpus`` most cosine-similar to each query, with FAISS through `datasets`.

    Args:
        queries: (Q, D) embeddings; corpus: (N, D) embeddings (NaN rows are never returned).
        k: neighbours per query (at most N).
        chunk_size: queries per FAISS search call.
        exclude_self: ``queries`` is ``corpus`` (same rows): never return a star as its own neighbour.
        index: "exact" (inner product of the normalised vectors, `IndexFlatIP`: brute force), or an approximate
            index for large corpora ("hnsw" or a FAISS factory string, see `build_index`).

    Returns:
        ``(similarity (Q, k) float32, index (Q, k) int64)``, best first; a NaN query gets NaN / -1.
    """
    queries, corpus = np.asarray(queries), np.asarray(corpus)
    if queries.ndim != 2 or corpus.ndim != 2:
        raise ValueError(
            f"embeddings must be 2-d arrays (num_stars, dim), got shapes {queries.shape} and {corpus.shape}."
        )
    if queries.shape[1] != corpus.shape[1]:
        raise ValueError(f"queries ({queries.shape[1]}) and corpus ({corpus.shape[1]}) differ in dimension.")
    if exclude_self and queries.shape[0] != corpus.shape[0]:
        raise ValueError("exclude_self=True needs queries and corpus to be the same stars.")
    available = corpus.shape[0] - int(exclude_self)
    if not 1 <= k <= available:
        raise ValueError(f"k must be between 1 and {available} (the corpus size), got {k}.")
    if not np.isfinite(_normalised(corpus)).all(axis=1).any():
        return np.full((len(queries), k), np.nan, np.float32), np.full((len(queries), k), -1, np.int64)
    dataset = build_index(corpus, index=index)
    exclude = np.arange(len(queries)) if exclude_self else None
    return search_index(dataset, queries, k=k, chunk_size=chunk_size, exclude_rows=exclude)


def retrieval_accuracy(queries: np.ndarray, corpus: np.ndarray, chunk_size: int = 4096) -> float:
    """Top-1 accuracy of finding each query's own row in ``corpus`` (two views of the same N stars)."""
    if len(queries) != len(corpus):
        raise ValueError(f"queries ({len(queries)}) and corpus ({len(corpus)}) must be views of the same stars.")
    _, index = top_k_similar(queries, corpus, k=1, chunk_size=chunk_size)
    return float(np.mean(index[:, 0] == np.arange(len(queries))))


__all__ = [
    "build_index",
    "embed_stars",
    "load_index",
    "retrieval_accuracy",
    "save_index",
    "search_index",
    "set_search_parameters",
    "top_k_similar",
]
