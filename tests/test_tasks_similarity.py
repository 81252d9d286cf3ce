"""Tests of modeling_astro.tasks.similarity and .contrastive: embeddings, top-k search, InfoNCE tuning."""

import datasets
import numpy as np
import pandas as pd
import pytest
import torch

from modeling_astro.inference import AstroPredictor
from modeling_astro.tasks import (
    LABELS_VIEW,
    SPECTRA_INPUTS,
    build_index,
    contrastive_finetune,
    embed_stars,
    info_nce_loss,
    load_index,
    retrieval_accuracy,
    save_index,
    search_index,
    top_k_similar,
)

pytest_plugins = ["training_fixtures"]  # the session fixtures tiny_survey and tiny_trained_checkpoint


@pytest.fixture(scope="module")
def stars(tiny_survey) -> pd.DataFrame:
    test = datasets.load_dataset(str(tiny_survey), split="test").to_pandas()
    both = test[["bp0", "teff", "logg"]].notna().all(axis=1)
    return test[both].iloc[:64].reset_index(drop=True)


def brute_force(queries: np.ndarray, corpus: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    c = corpus / np.linalg.norm(corpus, axis=1, keepdims=True)
    similarity = q @ c.T
    index = np.argsort(-similarity, axis=1)[:, :k]
    return np.take_along_axis(similarity, index, axis=1), index


@pytest.mark.parametrize("chunk_size", [3, 7, 1000])
def test_top_k_matches_brute_force_in_any_chunking(chunk_size):
    rng = np.random.default_rng(0)
    queries, corpus = rng.normal(size=(20, 8)), rng.normal(size=(50, 8))
    scores, index = top_k_similar(queries, corpus, k=4, chunk_size=chunk_size)
    expected_scores, expected_index = brute_force(queries, corpus, 4)
    np.testing.assert_array_equal(index, expected_index)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5)


def test_exclude_self_and_nan_rows():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(30, 5))
    vectors[4] = np.nan
    scores, index = top_k_similar(vectors, vectors, k=3, chunk_size=8, exclude_self=True)
    assert not np.any(index == np.arange(30)[:, None])
    assert not np.any(index == 4)
    assert np.all(index[4] == -1) and np.isnan(scores[4]).all()
    assert retrieval_accuracy(vectors[:4], vectors[:4] * 2.0) == 1.0


def test_bad_search_input():
    with pytest.raises(ValueError, match="k must be between 1 and 3"):
        top_k_similar(np.ones((2, 3)), np.ones((3, 3)), k=4)
    with pytest.raises(ValueError, match="differ in dimension"):
        top_k_similar(np.ones((2, 3)), np.ones((3, 4)))
    with pytest.raises(ValueError, match="same stars"):
        retrieval_accuracy(np.ones((2, 3)), np.ones((3, 3)))


def numpy_top_k(queries: np.ndarray, corpus: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute force in float64 numpy, with a stable sort: ties go to the lower row."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    c = corpus / np.linalg.norm(corpus, axis=1, keepdims=True)
    similarity = q @ c.T
    index = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(similarity, index, axis=1), index


def test_exact_faiss_search_equals_brute_force_on_the_test_split(tiny_trained_checkpoint, tiny_survey):
    test = datasets.load_dataset(str(tiny_survey), split="test").to_pandas()
    test = test[test[list(SPECTRA_INPUTS)].notna().all(axis=1)].reset_index(drop=True)
    predictor = AstroPredictor.from_pretrained(str(tiny_trained_checkpoint), device="cpu", batch_size=256)
    vectors = embed_stars(predictor, test, SPECTRA_INPUTS)
    assert len(vectors) > 200 and np.isfinite(vectors).all()
    scores, index = top_k_similar(vectors[:100], vectors, k=10)
    expected_scores, expected_index = numpy_top_k(vectors[:100].astype(np.float64), vectors.astype(np.float64), 10)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(index, expected_index)
    assert np.all(index[:, 0] == np.arange(100)), "every star is its own nearest neighbour"


def test_exact_search_on_a_simulated_set_with_nan_rows_and_self_exclusion():
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(500, 16)) + rng.normal(size=(1, 16))  # a common direction, as embeddings have
    vectors[[7, 300]] = np.nan
    scores, index = top_k_similar(vectors, vectors, k=8, chunk_size=64, exclude_self=True)
    finite = np.flatnonzero(np.isfinite(vectors).all(axis=1))
    similarity = numpy_top_k(vectors[finite], vectors[finite], 9)
    expected_index = finite[similarity[1][:, 1:]]  # drop each star itself (its own best match)
    np.testing.assert_array_equal(index[finite], expected_index)
    np.testing.assert_allclose(scores[finite], similarity[0][:, 1:], rtol=1e-5)
    assert np.all(index[[7, 300]] == -1) and np.isnan(scores[[7, 300]]).all()


def test_index_saved_beside_the_embeddings_and_approximate_indexes(tmp_path):
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(40, 32))
    corpus = np.repeat(centres, 50, axis=0) + 0.3 * rng.normal(size=(2000, 32))
    queries = corpus[::20] + 0.05 * rng.normal(size=(100, 32))
    _, exact = numpy_top_k(queries, corpus, 10)
    dataset = build_index(corpus)
    folder = save_index(dataset, tmp_path / "embeddings")
    assert (folder / "embedding.faiss").is_file() and (folder / "dataset_info.json").is_file()
    reloaded = load_index(folder)
    assert reloaded.list_indexes() == ["embedding"] and len(reloaded) == 2000
    np.testing.assert_array_equal(search_index(reloaded, queries, k=10)[1], exact)
    for kind in ("hnsw", "ivf", "IVF16,Flat"):
        _, found = search_index(build_index(corpus, index=kind), queries, k=10)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)])
        assert recall > 0.5, (kind, recall)
    import faiss

    ivf = faiss.extract_index_ivf(build_index(corpus, index="ivf").get_index("embedding").faiss_index)
    assert ivf.nlist == 32 and ivf.nprobe == 8  # 2**round(log2(2000) / 2) lists, nprobe max(8, nlist / 64)
    graph = build_index(corpus, index="hnsw", ef_construction=12).get_index("embedding").faiss_index
    graph = faiss.downcast_index(graph)
    assert graph.hnsw.efConstruction == 12 and graph.hnsw.efSearch == 64
    with pytest.raises(ValueError, match="ef_construction= is a knob of HNSW"):
        build_index(corpus, index="ivf", ef_construction=12)
    with pytest.raises(ValueError, match="neither 'exact'"):
        build_index(corpus, index="NotAnIndex")
    with pytest.raises(FileNotFoundError, match="no embedding.faiss"):
        load_index(tmp_path)


def test_info_nce_prefers_aligned_views():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(16, 8, generator=generator)
    aligned = info_nce_loss(a, a + 0.01 * torch.randn(16, 8, generator=generator))
    shuffled = info_nce_loss(a, a[torch.randperm(16, generator=generator)])
    assert aligned < shuffled


def test_embeddings_are_batch_independent(tiny_trained_checkpoint, stars):
    batched = AstroPredictor.from_pretrained(str(tiny_trained_checkpoint), device="cpu", batch_size=64)
    one_by_one = AstroPredictor.from_pretrained(str(tiny_trained_checkpoint), device="cpu", batch_size=1)
    vectors = embed_stars(batched, stars.iloc[:10], SPECTRA_INPUTS)
    assert vectors.shape == (10, batched.model.config.hidden_size)
    np.testing.assert_allclose(vectors, embed_stars(one_by_one, stars.iloc[:10], SPECTRA_INPUTS), atol=1e-5)
    assert not np.allclose(vectors, embed_stars(batched, stars.iloc[:10], LABELS_VIEW))


def test_contrastive_finetuning_improves_cross_view_retrieval(tiny_trained_checkpoint, stars):
    torch.manual_seed(0)
    predictor = AstroPredictor.from_pretrained(str(tiny_trained_checkpoint), device="cpu", batch_size=64)

    def accuracy() -> float:
        spectra = embed_stars(predictor, stars, SPECTRA_INPUTS)
        labels = embed_stars(predictor, stars, LABELS_VIEW)
        return retrieval_accuracy(spectra, labels)

    before = accuracy()
    decoder = [p.detach().clone() for p in predictor.model.astro.decoder.parameters()]
    losses = contrastive_finetune(
        predictor.model,
        predictor.tokenizer,
        stars,
        steps=40,
        batch_size=32,
        learning_rate=3e-3,
        progress=False,
    )
    after = accuracy()
    assert after > before + 0.1, (before, after)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert not predictor.model.training
    assert all(torch.equal(p, q) for p, q in zip(decoder, predictor.model.astro.decoder.parameters()))


def test_contrastive_needs_both_views(tiny_trained_checkpoint, stars):
    predictor = AstroPredictor.from_pretrained(str(tiny_trained_checkpoint), device="cpu")
    labels_only = stars[list(LABELS_VIEW)]
    with pytest.raises(ValueError, match="none of the input columns"):
        contrastive_finetune(predictor.model, predictor.tokenizer, labels_only, steps=1, progress=False)
    one_star = stars.iloc[:1]
    with pytest.raises(ValueError, match="at least 2 stars"):
        contrastive_finetune(predictor.model, predictor.tokenizer, one_star, steps=1, progress=False)


def test_missing_faiss_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError
    with pytest.raises(ImportError, match=r"astro-foundation\[similarity\]"):
        build_index(np.ones((3, 4)))
