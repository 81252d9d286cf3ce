"""Tests of modeling_astro.tasks.pipeline: the transformers Pipeline front end of AstroPredictor."""

import numpy as np
import pandas as pd
import pytest
from transformers import pipeline

from modeling_astro.inference import AstroPredictor
from modeling_astro.tasks import AstroObservationPipeline

pytest_plugins = ["training_fixtures"]  # the session fixtures tiny_survey and tiny_trained_checkpoint

STARS = {"bprp": np.array([0.9, 1.3, np.nan]), "jk": np.array([0.4, 0.7, 0.5])}


def test_pipeline_factory_matches_predictor(tiny_trained_checkpoint):
    checkpoint = str(tiny_trained_checkpoint)
    pipe = pipeline("astro-observation-prediction", model=checkpoint, trust_remote_code=True, device="cpu")
    assert isinstance(pipe, AstroObservationPipeline)
    table = pipe(STARS, request=["teff", "logg"])
    predictor = AstroPredictor.from_pretrained(str(tiny_trained_checkpoint), device="cpu")
    pd.testing.assert_frame_equal(table, predictor.predict(STARS, ["teff", "logg"]))
    sampled = pipe(STARS, request=["teff"], n_samples=4, seed=1)
    assert list(sampled.columns) == ["teff", "teff_sigma"] and np.isfinite(sampled.to_numpy()).all()


def test_pipeline_needs_a_request_and_a_tokenizer(tiny_trained_checkpoint):
    predictor = AstroPredictor.from_pretrained(str(tiny_trained_checkpoint), device="cpu")
    model, tokenizer = predictor.model, predictor.tokenizer
    pipe = AstroObservationPipeline(model=model, feature_extractor=tokenizer, device="cpu")
    with pytest.raises(ValueError, match="request="):
        pipe(STARS)
    with pytest.raises(ValueError, match="AstroFeatureExtractor"):
        AstroObservationPipeline(model=model, device="cpu")
