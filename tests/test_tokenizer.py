import numpy as np
import pandas as pd
import pytest
import torch
from astropy.stats import mad_std
from astropy.table import MaskedColumn, Table

from conftest import tiny_config
from modeling_astro import AstroFeatureExtractor, AstroForObservationPrediction, ObservationNameError

RNG = np.random.default_rng(0)
STARS = {
    "teff": RNG.normal(4800, 500, 50),
    "logg": RNG.normal(2.5, 1.0, 50),
    "m_h": RNG.normal(-0.2, 0.3, 50),
    "bprp": RNG.normal(1.2, 0.3, 50),
}


@pytest.fixture
def tokenizer() -> AstroFeatureExtractor:
    return AstroFeatureExtractor().fit(STARS)


def test_fit_uses_median_and_mad_std(tokenizer):
    i = tokenizer.token_id("teff") - 1
    assert tokenizer.medians[i] == pytest.approx(np.median(STARS["teff"]))
    assert tokenizer.scales[i] == pytest.approx(mad_std(STARS["teff"]))
    assert tokenizer.scales[tokenizer.token_id("bp0") - 1] == 1.0  # not in the data: left as is


def test_round_trip_physical_standardised_physical(tokenizer):
    batch = tokenizer(STARS, return_tensors="pt")
    assert batch["input_ids"].shape == (50, 4)
    physical, _ = tokenizer.inverse_transform(batch["input_values"].double(), torch.zeros(50, 4), batch["input_ids"])
    expected = np.stack([STARS[n] for n in ("bprp", "teff", "logg", "m_h")], axis=1)  # vocabulary order
    np.testing.assert_allclose(physical.numpy(), expected, rtol=1e-6)


def test_inverse_transform_scales_sigma(tokenizer):
    ids = tokenizer.encode_requests(["teff"])
    _, sigma = tokenizer.inverse_transform(np.zeros(1), np.log(np.full(1, 4.0)), ids.numpy())
    assert sigma[0] == pytest.approx(2 * tokenizer.scales[tokenizer.token_id("teff") - 1])


def test_missing_values_become_padding(tokenizer):
    data = {"teff": np.array([5000.0, np.nan, np.inf]), "logg": np.array([np.nan, 4.0, 3.0])}
    data["m_h"] = np.array([0.1, np.nan, 0.2])
    batch = tokenizer(data)
    teff, logg, m_h = (tokenizer.token_id(n) for n in ("teff", "logg", "m_h"))
    np.testing.assert_array_equal(batch["input_ids"], [[teff, m_h], [logg, 0], [logg, m_h]])
    np.testing.assert_array_equal(batch["attention_mask"], [[1, 1], [1, 0], [1, 1]])
    assert np.all(batch["input_values"][batch["attention_mask"] == 0] == 0)


def test_all_input_formats_agree(tokenizer):
    frame = pd.DataFrame(STARS)
    table = Table(STARS)
    table["teff"] = MaskedColumn(STARS["teff"], mask=np.arange(50) == 3)
    frame.loc[3, "teff"] = np.nan
    dataset_batch = {k: [float(x) for x in v] for k, v in STARS.items()}
    dataset_batch["teff"][3] = None
    reference = tokenizer(frame)
    for data in (table, dataset_batch):
        encoded = tokenizer(data)
        for key in reference:
            np.testing.assert_array_equal(encoded[key], reference[key])
    assert reference["attention_mask"][3].sum() == 3


def test_errors_are_standardised(tokenizer):
    data = {"teff": np.array([5000.0]), "teff_err": np.array([50.0])}
    batch = tokenizer(data)
    assert batch["input_errors"][0, 0] == pytest.approx(50.0 / tokenizer.scales[tokenizer.token_id("teff") - 1])
    override = tokenizer(data, errors={"teff": np.array([100.0])})
    assert override["input_errors"][0, 0] == pytest.approx(2 * batch["input_errors"][0, 0])


def test_unknown_observation_name_is_named_with_suggestions(tokenizer):
    with pytest.raises(ObservationNameError, match=r"'tef'.*Did you mean 'teff'"):
        tokenizer.encode_requests(["teff", "tef"])
    with pytest.raises(ObservationNameError, match=r"'mh'.*'m_h'"):
        tokenizer({"mh": np.ones(2)}, observation_names=["mh"])
    with pytest.raises(ObservationNameError, match="loggg"):
        tokenizer({"teff": np.ones(2), "loggg": np.ones(2)})  # a misspelt column is not silently dropped


def test_unrelated_columns_are_ignored(tokenizer):
    batch = tokenizer({"source_id": np.arange(2), "teff": np.ones(2), "true_teff": np.ones(2)})
    assert batch["input_ids"].shape == (2, 1)


def test_no_known_column_is_an_error(tokenizer):
    with pytest.raises(ValueError, match="None of the columns"):
        tokenizer({"source_id": np.arange(2)})


def test_more_observations_than_context_length():
    tokenizer = AstroFeatureExtractor(context_length=3)
    data = {name: np.ones(2) for name in ("bp0", "bp1", "rp0", "teff")}
    with pytest.raises(ValueError, match="context length 3"):
        tokenizer(data)
    truncated = tokenizer(data, truncation=True)
    np.testing.assert_array_equal(truncated["input_ids"][0], [1, 2, 56])
    assert tokenizer(data, observation_names=["bp0", "teff"], padding="max_length")["input_ids"].shape == (2, 3)


def test_save_and_load(tmp_path, tokenizer):
    tokenizer.save_pretrained(tmp_path)
    loaded = AstroFeatureExtractor.from_pretrained(tmp_path)
    assert loaded.medians == tokenizer.medians and loaded.scales == tokenizer.scales
    assert loaded.observation_names == tokenizer.observation_names


def test_vocabulary_mismatch_with_the_model_raises_at_load(tmp_path):
    AstroForObservationPrediction(tiny_config(observation_names=["teff", "logg"])).save_pretrained(tmp_path)
    AstroFeatureExtractor(observation_names=["teff", "m_h"]).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"does not match the model config.*only in the model: \['logg'\]"):
        AstroFeatureExtractor.from_pretrained(tmp_path)


def test_add_observations_extends_vocabulary(tokenizer):
    (new_id,) = tokenizer.add_observations(["ca_h"], [0.1], [0.2])
    assert new_id == 119 and tokenizer.token_id("ca_h") == 119
    with pytest.raises(ValueError, match="already"):
        tokenizer.add_observations(["teff"], [0.0], [1.0])
