"""A transformers `Pipeline` front end of `AstroPredictor`: ``pipe(stars, request=[...])`` -> table."""

from __future__ import annotations

from typing import Any

import pandas as pd
from transformers import AutoModelForPreTraining, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from ..inference import AstroPredictor

TASK = "astro-observation-prediction"


class AstroObservationPipeline(Pipeline):
    r"""
    Predict requested observations of stars in physical units, the `transformers.pipeline` way. All batching,
    Monte-Carlo error propagation and padding is `AstroPredictor`'s: a call handles a whole table at once.

    Example:

    ```python
    >>> import modeling_astro.tasks  # registers the task
    >>> from transformers import pipeline
    >>> pipe = pipeline("astro-observation-prediction", model="path/to/checkpoint", trust_remote_code=True)
    >>> table = pipe(stars, request=["teff", "logg", "m_h"])  # columns teff, teff_sigma, ...
    ```
    """

    def __init__(self, *args, star_batch_size: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.feature_extractor is None:
            raise ValueError("The pipeline needs the checkpoint's AstroFeatureExtractor: feature_extractor=.")
        self.predictor = AstroPredictor(
            self.model, self.feature_extractor, device=self.device, batch_size=star_batch_size
        )

    def _sanitize_parameters(self, request=None, n_samples=None, seed=None, **kwargs):
        forward = {"request": request, "n_samples": n_samples, "seed": seed}
        return {}, {key: value for key, value in forward.items() if value is not None}, {}

    def preprocess(self, inputs: Any) -> dict[str, Any]:
        return {"stars": inputs}

    def _forward(self, model_inputs: dict[str, Any], request=None, n_samples: int = 0, seed: int = 0):
        if not request:
            raise ValueError("Pass the observations to predict, e.g. pipe(stars, request=['teff', 'logg']).")
        return self.predictor.predict(model_inputs["stars"], list(request), n_samples=n_samples, seed=seed)

    def postprocess(self, model_outputs: pd.DataFrame) -> pd.DataFrame:
        return model_outputs


PIPELINE_REGISTRY.register_pipeline(
    TASK, pipeline_class=AstroObservationPipeline, pt_model=AutoModelForPreTraining
)

__all__ = ["TASK", "AstroObservationPipeline"]
