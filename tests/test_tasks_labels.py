"""Tests of modeling_astro.tasks.labels: spectra -> Teff, log g, [M/H], E(B-V), distance."""

import datasets
import numpy as np
import pandas as pd
import pytest

from modeling_astro import ObservationNameError
from modeling_astro.inference import AstroPredictor
from modeling_astro.tasks import (
    LABEL_REQUEST,
    SPECTRA_INPUTS,
    distance_from_fakemag,
    predict_labels,
    select_inputs,
)

pytest_plugins = ["training_fixtures"]  # session fixtures: tiny_survey, tiny_trained_checkpoint, tiny_predictor


@pytest.fixture(scope="module")
def test_stars(tiny_survey) -> pd.DataFrame:
    return datasets.load_dataset(str(tiny_survey), split="test").to_pandas()


def test_distance_from_fakemag_inverts_the_definition():
    rng = np.random.default_rng(0)
    parallax, g_mag = rng.uniform(0.2, 5.0, 50), rng.uniform(8.0, 17.0, 50)
    g_fakemag = parallax * 10 ** (0.2 * g_mag)
    distance, sigma = distance_from_fakemag(g_fakemag, 0.1 * g_fakemag, g_mag)
    np.testing.assert_allclose(distance, 1000.0 / parallax)
    np.testing.assert_allclose(sigma, 0.1 * distance)
    distance, sigma = distance_from_fakemag(np.array([0.0, -3.0]), np.ones(2), np.array([10.0, 10.0]))
    assert np.isnan(distance).all() and np.isnan(sigma).all()


def test_labels_from_spectra_track_the_truth(tiny_predictor, test_stars):
    labels = predict_labels(tiny_predictor, test_stars, g_mag="true_g")
    expected = [*LABEL_REQUEST, "ebv", "distance_pc"]
    assert all(name in labels and name + "_sigma" in labels for name in expected)
    assert len(labels) == len(test_stars) and np.all(labels["teff_sigma"] > 0)
    np.testing.assert_allclose(labels["ebv"], np.exp(labels["logebv"]), rtol=1e-6)
    # the fixture model is trained for seconds: check physical units, not accuracy (examples/ measure that)
    for name in ("teff", "logg", "m_h"):
        truth = test_stars[f"true_{name}"]
        assert labels[name].between(truth.min(), truth.max()).all(), name
    valid = labels["g_fakemag"] > 0
    distance = 1000.0 / test_stars["true_parallax"]
    assert labels.loc[valid, "distance_pc"].between(distance.min() / 20, distance.max() * 20).all()


def test_prediction_ignores_the_stars_own_labels(tiny_predictor, test_stars):
    stars = test_stars.iloc[:40].copy()
    reference = predict_labels(tiny_predictor, stars)
    stars["teff"] = 1e5
    stars["logg"] = -9.0
    pd.testing.assert_frame_equal(predict_labels(tiny_predictor, stars), reference)
    allowed = {*SPECTRA_INPUTS, *(f"{name}_err" for name in SPECTRA_INPUTS)}
    assert set(select_inputs(stars, SPECTRA_INPUTS)) <= allowed


def test_batched_equals_unbatched(tiny_predictor, tiny_trained_checkpoint, test_stars):
    stars = test_stars.iloc[:12]
    one_by_one = AstroPredictor.from_pretrained(str(tiny_trained_checkpoint), device="cpu", batch_size=1)
    pd.testing.assert_frame_equal(
        predict_labels(tiny_predictor, stars), predict_labels(one_by_one, stars), rtol=1e-4, atol=1e-5
    )


def test_streaming_equals_in_memory(tiny_predictor, tiny_survey):
    split = datasets.load_dataset(str(tiny_survey), split="test").select(range(150))
    inputs = split.select_columns([c for c in split.column_names if c.removesuffix("_err") in SPECTRA_INPUTS])
    streamed = pd.concat(tiny_predictor.predict_stream(inputs, list(LABEL_REQUEST), rows_per_chunk=64))
    in_memory = predict_labels(tiny_predictor, split.to_pandas())
    pd.testing.assert_frame_equal(streamed, in_memory[streamed.columns], rtol=1e-4, atol=1e-5)


def test_bad_input(tiny_predictor, test_stars):
    with pytest.raises(ValueError, match="0 rows"):
        predict_labels(tiny_predictor, test_stars.iloc[:0])
    with pytest.raises(ValueError, match="none of the input columns"):
        predict_labels(tiny_predictor, {"colour": np.ones(3)})
    with pytest.raises(ObservationNameError, match="Did you mean"):
        tiny_predictor.predict(select_inputs(test_stars.iloc[:3], SPECTRA_INPUTS), ["tef"])
    stars = test_stars.iloc[:3].copy()
    stars.loc[stars.index[1], list(SPECTRA_INPUTS)] = np.nan
    with pytest.warns(UserWarning, match="no usable observation"):
        labels = predict_labels(tiny_predictor, stars, g_mag=np.array([12.0, 12.0, 12.0]))
    assert labels.iloc[1].isna().all() and labels.iloc[[0, 2]]["teff"].notna().all()
    with pytest.raises(ValueError, match="one value per star"):
        predict_labels(tiny_predictor, stars, g_mag=np.array([12.0]))
