"""Tests of the batched predictor `AstroPredictor` (modeling_astro/inference.py)."""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from astropy.table import Table

from conftest import tiny_config
from modeling_astro import AstroFeatureExtractor, AstroForObservationPrediction, ObservationNameError
from modeling_astro.inference import AstroPredictor

NAMES = ["bp0", "bp1", "rp0", "rp1", "bprp", "jh", "jk", "teff", "logg", "m_h", "logebv", "g_fakemag"]
REQUEST = ["teff", "logg", "m_h"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_stars(num_stars: int = 40, seed: int = 0) -> dict[str, np.ndarray]:
    """Physical-looking observations, ~40% missing, star 3 with nothing, `source_id`s beyond 2**53."""
    rng = np.random.default_rng(seed)
    data = {name: rng.normal(1.0, 2.0, num_stars) for name in NAMES}
    data["teff"] = rng.normal(5000.0, 700.0, num_stars)
    for name in NAMES:
        data[name][rng.random(num_stars) < 0.4] = np.nan
        data[name + "_err"] = np.abs(rng.normal(0.0, 0.3, num_stars))
    data["teff_err"] = np.full(num_stars, 100.0)
    for name in NAMES:
        data[name][3] = np.nan
    data["source_id"] = np.arange(num_stars, dtype=np.int64) + 2**60
    return data


@pytest.fixture(scope="module")
def predictor() -> AstroPredictor:
    torch.manual_seed(0)
    config = tiny_config(context_length=len(NAMES), encoder_dropout=0.0, decoder_dropout=0.0)
    model = AstroForObservationPrediction(config)
    tokenizer = AstroFeatureExtractor().fit({"teff": np.array([4000.0, 5000.0, 6000.0, 5500.0])}, ["teff"])
    return AstroPredictor(model, tokenizer, device="cpu", batch_size=8)


def reference_predictions(predictor: AstroPredictor, data: dict, request: list[str]) -> np.ndarray:
    """One star at a time through `model.forward`, to compare the fast path against."""
    rows = []
    request_ids = predictor.tokenizer.encode_requests(request, batch_size=1)
    for i in range(len(data["source_id"])):
        star = {key: value[i : i + 1] for key, value in data.items() if key != "source_id"}
        inputs = predictor.tokenizer(star, return_tensors="pt")
        if inputs["attention_mask"].sum() == 0:
            rows.append(np.full(2 * len(request), np.nan))
            continue
        inputs.pop("input_errors")
        with torch.no_grad():
            out = predictor.model(**inputs, request_ids=request_ids)
        value, sigma = predictor.tokenizer.inverse_transform(out.mean, out.logvar, request_ids)
        rows.append(torch.stack([value[0], sigma[0]], dim=1).flatten().numpy())
    return np.array(rows)


def test_matches_model_forward_and_batch_size_does_not_matter(predictor):
    data = make_stars()
    with pytest.warns(UserWarning, match="1 star"):
        table = predictor.predict(data, REQUEST)
    assert list(table.columns) == ["teff", "teff_sigma", "logg", "logg_sigma", "m_h", "m_h_sigma"]
    assert len(table) == 40 and table.iloc[3].isna().all() and not table.drop(index=3).isna().any().any()
    np.testing.assert_allclose(
        table.to_numpy(), reference_predictions(predictor, data, REQUEST), rtol=1e-4, atol=1e-5
    )
    big = AstroPredictor(predictor.model, predictor.tokenizer, device="cpu", batch_size=1000)
    with pytest.warns(UserWarning):
        np.testing.assert_allclose(
            big.predict(data, REQUEST).to_numpy(), table.to_numpy(), rtol=1e-5, atol=1e-6
        )


def test_input_containers_agree(predictor):
    data = make_stars(seed=1)
    with pytest.warns(UserWarning):
        expected = predictor.predict(data, REQUEST, keep_columns=["source_id"])
    assert expected["source_id"].dtype == np.int64
    np.testing.assert_array_equal(expected["source_id"], data["source_id"])
    for container in (
        pd.DataFrame(data),
        Table(data),
        datasets.Dataset.from_dict(data),
        datasets.Dataset.from_dict(data)[:],  # a `datasets` batch: dict of lists
    ):
        with pytest.warns(UserWarning):
            table = predictor.predict(container, REQUEST, keep_columns=["source_id"])
        pd.testing.assert_frame_equal(table, expected, check_exact=False, rtol=1e-6)


def test_predict_tokenized_equals_predict(predictor):
    data = make_stars(num_stars=50, seed=4)
    with pytest.warns(UserWarning, match="1 star"):
        expected = predictor.predict(data, REQUEST)
    features = predictor.tokenizer(data, truncation=True, padding="max_length")  # padded beyond the longest star
    compact = {  # as a pipeline ships them: narrow integer and bool dtypes
        "input_ids": features["input_ids"].astype(np.int16),
        "input_values": features["input_values"],
        "attention_mask": features["attention_mask"].astype(bool),
    }
    with pytest.warns(UserWarning, match="1 star"):
        table = predictor.predict_tokenized(compact, REQUEST)
    assert table.iloc[3].isna().all() and not table.drop(index=3).isna().any().any()
    pd.testing.assert_frame_equal(table, expected, check_exact=False, rtol=1e-5, atol=1e-6)
    with pytest.raises(KeyError, match="input_values"):
        predictor.predict_tokenized({"input_ids": compact["input_ids"]}, REQUEST)


def test_streaming_equals_in_memory(predictor):
    data = make_stars(num_stars=30, seed=2)
    data["teff"][:] = 5000.0  # no empty star warning needed: every star has teff
    expected = predictor.predict(data, REQUEST, keep_columns=["source_id"])
    dataset = datasets.Dataset.from_dict(data)
    for source in (dataset, dataset.to_iterable_dataset()):
        chunks = list(predictor.predict_stream(source, REQUEST, rows_per_chunk=7, keep_columns=["source_id"]))
        assert [len(chunk) for chunk in chunks] == [7, 7, 7, 7, 2]
        pd.testing.assert_frame_equal(pd.concat(chunks), expected, check_exact=False, rtol=1e-6)


def test_monte_carlo_propagation(predictor):
    data = make_stars(num_stars=12, seed=3)
    data["teff"][:] = 5000.0
    plain = predictor.predict(data, REQUEST)
    sampled = predictor.predict(data, REQUEST, n_samples=16, seed=5)
    again = predictor.predict(data, REQUEST, n_samples=16, seed=5)
    other_seed = predictor.predict(data, REQUEST, n_samples=16, seed=6)
    pd.testing.assert_frame_equal(sampled, again)
    assert not np.allclose(sampled.to_numpy(), other_seed.to_numpy())
    sigmas = [f"{name}_sigma" for name in REQUEST]
    # the MC spread adds to the model variance: sampled sigma >= sigma of the model at the sampled inputs
    # (about the unperturbed one), and strictly larger somewhere since the inputs have non-zero errors.
    assert (sampled[sigmas].to_numpy() > plain[sigmas].to_numpy() * 0.9).all()
    assert (sampled[sigmas].to_numpy() > plain[sigmas].to_numpy()).any()
    no_errors = predictor.predict(data, REQUEST, errors={name: np.zeros(12) for name in NAMES}, n_samples=4)
    np.testing.assert_allclose(no_errors.to_numpy(), plain.to_numpy(), rtol=1e-5, atol=1e-6)


def xp_stars(num_stars: int) -> dict[str, np.ndarray]:
    """Stars with bp0-bp2 and rp0-rp1 and their errors, and teff."""
    rng = np.random.default_rng(7)
    data = {name: rng.normal(0.0, 1.0, num_stars) for name in ("bp0", "bp1", "bp2", "rp0", "rp1")}
    data.update({f"{name}_err": np.full(num_stars, 0.5) for name in list(data)})
    data["teff"] = rng.normal(5000.0, 500.0, num_stars)
    return data


def packed_correlations(num_stars: int, pairs: dict[tuple[int, int], float]) -> np.ndarray:
    """Archive-packed (num_stars, 1485) correlations that are 0 except for `pairs` {(i, j): rho}, i > j."""
    rows, cols = np.tril_indices(55, k=-1)
    packed = np.zeros((num_stars, len(rows)))
    for (i, j), rho in pairs.items():
        packed[:, np.flatnonzero((rows == i) & (cols == j))[0]] = rho
    return packed


def test_monte_carlo_draws_from_the_full_covariance(predictor, monkeypatch):
    """With `correlations=`, the sampled inputs have the covariance diag(err) C diag(err) of their band."""
    data = xp_stars(2)
    correlations = {"bp": packed_correlations(2, {(1, 0): 0.9, (2, 0): -0.5}), "rp": packed_correlations(2, {})}
    correlations["rp"][1] = np.nan  # star 1: no RP correlations published
    drawn = []
    forward = predictor._forward

    def recording_forward(input_ids, input_values, attention_mask, request_ids, *args):
        drawn.append((input_ids, input_values))
        return forward(input_ids, input_values, attention_mask, request_ids, *args)

    monkeypatch.setattr(predictor, "_forward", recording_forward)
    n_samples = 4000
    table = predictor.predict(data, ["teff"], n_samples=n_samples, correlations=correlations, seed=1)
    names = predictor.tokenizer.observation_names
    assert sum(len(ids) for ids, _ in drawn) == 2 * n_samples
    for ids, values in drawn:  # one batch per star here (batch_size 8 < n_samples)
        ids, sample = ids.view(n_samples, -1)[0], values.view(n_samples, -1).double().numpy()
        column = {names[int(token) - 1]: k for k, token in enumerate(ids) if token > 0}
        empirical = np.corrcoef(sample[:, [column["bp0"], column["bp1"], column["bp2"], column["rp0"]]].T)
        np.testing.assert_allclose(empirical[0, 1:], [0.9, -0.5, 0.0], atol=0.04)  # bp correlated, not with rp
        np.testing.assert_allclose(empirical[3, 1:3], [0.0, 0.0], atol=0.04)
        token = np.array([int(ids[column["bp1"]])] * 2)
        scale = np.diff(predictor.tokenizer.transform(np.array([0.0, 0.5]), token))[0]  # 0.5 standardised
        np.testing.assert_allclose(sample[:, column["bp1"]].std(), scale, rtol=0.05)
    assert table.attrs["error_propagation"]["full_covariance_stars"] == {"bp": 2, "rp": 1}


def test_zero_correlations_give_the_independent_draws(predictor):
    data = xp_stars(6)
    independent = predictor.predict(data, REQUEST, n_samples=8, seed=3)
    zero = {"bp": packed_correlations(6, {}), "rp": np.zeros((6, 55, 55)) + np.eye(55)}
    pd.testing.assert_frame_equal(predictor.predict(data, REQUEST, n_samples=8, seed=3, correlations=zero), independent)
    correlated = predictor.predict(
        data, REQUEST, n_samples=8, seed=3, correlations={"bp": packed_correlations(6, {(1, 0): 0.95})}
    )
    assert not np.allclose(correlated.to_numpy(), independent.to_numpy())


def test_bad_correlations_are_named(predictor):
    data = xp_stars(3)
    with pytest.raises(ValueError, match="n_samples > 0"):
        predictor.predict(data, REQUEST, correlations={"bp": packed_correlations(3, {})})
    with pytest.raises(KeyError, match="XP bands"):
        predictor.predict(data, REQUEST, n_samples=2, correlations={"g": packed_correlations(3, {})})
    with pytest.raises(ValueError, match="1485"):
        predictor.predict(data, REQUEST, n_samples=2, correlations={"bp": np.zeros((3, 100))})
    with pytest.raises(ValueError, match="has 2 rows but `data` has 3"):
        predictor.predict(data, REQUEST, n_samples=2, correlations={"bp": packed_correlations(2, {})})
    with pytest.raises(ValueError, match="not a covariance"):
        predictor.predict(data, REQUEST, n_samples=2, correlations={"bp": packed_correlations(3, {(1, 0): 4.0})})


def test_bad_inputs(predictor):
    with pytest.raises(ValueError, match="no star"):
        predictor.predict({"teff": np.array([])}, REQUEST)
    with pytest.raises(ObservationNameError, match="Did you mean 'logg'"):
        predictor.predict({"teff": np.array([5000.0])}, ["logq"])
    with pytest.raises(ValueError, match="n_samples"):
        predictor.predict({"teff": np.array([5000.0])}, REQUEST, n_samples=-1)
    with pytest.warns(UserWarning, match="2 star"):
        table = predictor.predict({"teff": np.array([np.nan, 5000.0, np.nan])}, REQUEST)
    assert table.iloc[[0, 2]].isna().all().all() and table.iloc[1].notna().all()
    with pytest.raises(TypeError, match="AutoModelForPreTraining"):
        AstroPredictor(predictor.model.astro, predictor.tokenizer)


def test_attentions_are_returned_per_star(predictor):
    data = make_stars(num_stars=10, seed=4)
    with pytest.warns(UserWarning):
        table, attentions = predictor.predict(data, ["teff"], output_attentions=True)
    longest = attentions.input_ids.shape[1]
    assert [a.shape[1:] for a in attentions.encoder] == [(4, longest, longest + 1), (2, longest, longest + 1)]
    assert [a.shape[1:] for a in attentions.cross] == [
        (4, 1, longest + 1),
        (2, 1, longest + 1),
        (1, 1, longest + 1),
    ]
    star = 0
    length = int((attentions.input_ids[star] > 0).sum())
    cross = attentions.cross[0][star]
    np.testing.assert_allclose(cross.sum(axis=-1), 1.0, rtol=1e-5)
    assert (cross[..., length:longest] == 0).all()
    inputs = predictor.tokenizer({k: v[:1] for k, v in data.items() if k != "source_id"}, return_tensors="pt")
    np.testing.assert_array_equal(inputs["input_ids"][0].numpy(), attentions.input_ids[star, :length])
    assert np.isnan(attentions.encoder[0][3]).all()


def test_embed_is_masked_mean_of_encoder_states(predictor):
    data = make_stars(num_stars=9, seed=5)
    with pytest.warns(UserWarning):
        vectors = predictor.embed(data)
    assert vectors.shape == (9, predictor.model.config.hidden_size) and np.isnan(vectors[3]).all()
    inputs = predictor.tokenizer({k: v[:1] for k, v in data.items() if k != "source_id"}, return_tensors="pt")
    with torch.no_grad():
        states, _ = predictor.model.astro.encode(inputs["input_ids"], inputs["input_values"], inputs["attention_mask"])
    np.testing.assert_allclose(vectors[0], states[0].mean(dim=0).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.warns(UserWarning):
        maxed = predictor.embed(data, pooling="max")
    np.testing.assert_allclose(maxed[0], states[0].amax(dim=0).numpy(), rtol=1e-5, atol=1e-6)


def test_bfloat16_close_to_float32_and_from_pretrained(predictor, tmp_path):
    predictor.model.save_pretrained(tmp_path)
    predictor.tokenizer.save_pretrained(tmp_path)
    fast = AstroPredictor.from_pretrained(str(tmp_path), device="cpu", dtype=torch.bfloat16)
    data = make_stars(num_stars=20, seed=6)
    data["teff"][:] = 5000.0
    expected = predictor.predict(data, REQUEST)
    table = fast.predict(data, REQUEST)
    assert table.dtypes.eq(np.float32).all()
    for name in REQUEST:
        difference = np.abs(table[name] - expected[name]) / expected[f"{name}_sigma"]
        assert difference.max() < 0.05


def test_compiled_predictor_matches_eager(predictor):
    compiled = AstroPredictor(predictor.model, predictor.tokenizer, device="cpu", batch_size=8, compile=True)
    for seed in (7, 8):  # two calls: batches of several widths through the same compiled graph
        data = make_stars(seed=seed)
        data["teff"][3] = 5000.0  # no star without observations (and no warning)
        np.testing.assert_allclose(
            compiled.predict(data, REQUEST).to_numpy(),
            predictor.predict(data, REQUEST).to_numpy(),
            rtol=1e-4,
            atol=1e-5,
        )


def fake_probe(seconds: dict[torch.dtype, float], calls: list):
    """A stand-in for `AstroPredictor._probe` that records its calls and returns fixed timings."""

    def probe(self, dtype, attn_implementation, repeats=2):
        calls.append(dtype)
        return seconds[dtype]

    return probe


def test_auto_dtype_is_measured_once_per_machine_and_cached(predictor, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []
    monkeypatch.setattr(AstroPredictor, "_probe", fake_probe({torch.float32: 1.0, torch.bfloat16: 0.5}, calls))
    first = AstroPredictor(predictor.model, predictor.tokenizer, device="cpu", dtype="auto")
    assert first.dtype == torch.bfloat16 and first.fast_path["cached"] is False and len(calls) == 2
    assert "2.00x" in first.fast_path["reason"] and first.fast_path["cpu"]["torch"] == torch.__version__
    second = AstroPredictor(predictor.model, predictor.tokenizer, device="cpu", dtype="auto")
    assert second.dtype == torch.bfloat16 and second.fast_path["cached"] is True and len(calls) == 2
    torch.set_num_threads(torch.get_num_threads() + 1)  # another thread count is another measurement
    AstroPredictor(predictor.model, predictor.tokenizer, device="cpu", dtype="auto")
    assert len(calls) == 4
    explicit = AstroPredictor(predictor.model, predictor.tokenizer, device="cpu", dtype=torch.float32)
    assert explicit.dtype == torch.float32 and explicit.fast_path["reason"] == "given" and len(calls) == 4


def test_auto_dtype_predictors_starting_together_measure_once(predictor, tmp_path, monkeypatch):
    """Predictors created at once (Ray actors, accelerate processes) wait for one measurement and share it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []
    timings = fake_probe({torch.float32: 1.0, torch.bfloat16: 0.5}, calls)

    def slow_probe(self, dtype, attn_implementation, repeats=2):
        time.sleep(0.2)  # long enough for the other predictors to find no cached choice
        return timings(self, dtype, attn_implementation, repeats)

    monkeypatch.setattr(AstroPredictor, "_probe", slow_probe)
    def start(_) -> AstroPredictor:
        return AstroPredictor(predictor.model, predictor.tokenizer, device="cpu", dtype="auto")

    with ThreadPoolExecutor(3) as pool:
        made = list(pool.map(start, range(3)))
    assert len(calls) == 2  # fp32 and bf16, once
    assert [auto.dtype for auto in made] == [torch.bfloat16] * 3
    assert sorted(auto.fast_path["cached"] for auto in made) == [False, True, True]


def test_auto_dtype_keeps_float32_where_bf16_is_not_faster(predictor, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(AstroPredictor, "_probe", fake_probe({torch.float32: 1.0, torch.bfloat16: 0.95}, []))
    auto = AstroPredictor(predictor.model, predictor.tokenizer, device="cpu", batch_size=8, dtype="auto")
    assert auto.dtype == torch.float32  # 1.05x is below BF16_MIN_SPEEDUP
    data = make_stars(seed=9)
    data["teff"][3] = 5000.0
    pd.testing.assert_frame_equal(auto.predict(data, REQUEST), predictor.predict(data, REQUEST))


def test_auto_dtype_real_probe_and_unreadable_cache(predictor, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = tmp_path / "astro_kernels" / "fast_path.json"
    cache.parent.mkdir()
    cache.write_text("{ torn")
    with pytest.warns(UserWarning, match="unreadable fast-path cache"):
        auto = AstroPredictor(predictor.model, predictor.tokenizer, device="cpu", batch_size=8, dtype="auto")
    assert auto.dtype in (torch.float32, torch.bfloat16)
    assert set(auto.fast_path["seconds"]) == {"float32", "bfloat16"} and min(auto.fast_path["seconds"].values()) > 0
    entries = json.loads(cache.read_text())  # the torn file was replaced by one entry: this choice
    assert [entry["dtype"] for entry in entries.values()] == [auto.fast_path["dtype"]]
    data = make_stars(num_stars=20, seed=6)
    data["teff"][:] = 5000.0
    expected, table = predictor.predict(data, REQUEST), auto.predict(data, REQUEST)
    for name in REQUEST:  # the probe leaves the chosen network in place: fp32 exactly, bf16 within 0.05 sigma
        assert (np.abs(table[name] - expected[name]) / expected[f"{name}_sigma"]).max() < 0.05
    with pytest.raises(ValueError, match="'auto'"):
        AstroPredictor(predictor.model, predictor.tokenizer, device="cpu", dtype="fastest")
