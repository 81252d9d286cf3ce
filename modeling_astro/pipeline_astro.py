"""A transformers `Pipeline` front end of `AstroPredictor`: ``pipe(stars, request=[...])`` -> mean and sigma per star.

Every checkpoint the project saves ships this file beside `modeling_astro.py` and names it in the config's
`custom_pipelines` (see `AstroPreTrainedModel.save_pretrained`), so ``transformers.pipeline(model=<folder or repo
id>, trust_remote_code=True)`` builds this pipeline without the project installed; `pipeline()` loads the model
with `AutoModelForPreTraining` and the feature extractor with `AutoFeatureExtractor` from the same checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from transformers import AutoModelForPreTraining, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from . import feature_extraction_astro
from .inference import AstroPredictor

TASK = "astro-observation-prediction"


def custom_pipelines() -> dict[str, dict[str, Any]]:
    """The config's `custom_pipelines` entry of this pipeline, as `Pipeline.save_pretrained` writes it."""
    return {
        TASK: {
            "impl": f"{__name__.split('.')[-1]}.{AstroObservationPipeline.__name__}",
            "pt": [AutoModelForPreTraining.__name__],
        }
    }


class AstroObservationPipeline(Pipeline):
    r"""
    Predict requested observations of stars in physical units, the `transformers.pipeline` way. All batching,
    Monte-Carlo error propagation and padding is `AstroPredictor`'s: a call handles a whole table at once.

    Inputs: a star table as `AstroPredictor.predict` reads it (a dict of arrays or of scalars for one star, a
    pandas DataFrame, an astropy Table, a `datasets` Dataset) or a list of row dicts. Output: a DataFrame with one
    row per star and columns `<name>` (mean) and `<name>_sigma` per requested name; for a list of row dicts, a
    list of `{<name>: mean, <name>_sigma: sigma}` dicts, one per star.

    Example:

    ```python
    >>> from transformers import pipeline
    >>> pipe = pipeline(model="path/to/checkpoint-or/repo-id", trust_remote_code=True)
    >>> table = pipe(stars, request=["teff", "logg", "m_h"])  # columns teff, teff_sigma, ...
    >>> pipe([{"bprp": 0.9, "jk": 0.4}], request=["teff"])  # [{"teff": ..., "teff_sigma": ...}]
    ```
    """

    _load_feature_extractor = True  # the checkpoint's feature extractor is required: fail loudly if it does not load
    _load_tokenizer = False
    _load_image_processor = False
    _load_processor = False

    def __init__(self, *args, star_batch_size: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.feature_extractor is None:
            raise ValueError(
                "The pipeline needs the checkpoint's feature extractor (preprocessor_config.json): pass "
                "feature_extractor=AutoFeatureExtractor.from_pretrained(<checkpoint>, trust_remote_code=True)."
            )
        self.feature_extractor = _same_code_copy(self.feature_extractor)
        self.predictor = AstroPredictor(
            self.model, self.feature_extractor, device=self.device, batch_size=star_batch_size
        )

    def __call__(self, stars: Any, **kwargs) -> pd.DataFrame | list[dict[str, float]]:
        """Predict ``request=[...]`` for every star of ``stars`` (one table: a list of row dicts is one table)."""
        if isinstance(stars, list):  # `Pipeline` would run a list item by item: here it is the rows of one table
            if not all(isinstance(row, Mapping) for row in stars):
                raise TypeError("A list of stars must hold one dict per star, e.g. [{'bprp': 0.9, 'jk': 0.4}].")
            return super().__call__(_Rows(stars), **kwargs)
        return super().__call__(stars, **kwargs)

    def _sanitize_parameters(self, request=None, n_samples=None, seed=None, **kwargs):
        if isinstance(request, str):
            request = [request]
        forward = {"request": request, "n_samples": n_samples, "seed": seed}
        return {}, {key: value for key, value in forward.items() if value is not None}, {}

    def preprocess(self, inputs: Any) -> dict[str, Any]:
        return {"stars": inputs}

    def _forward(
        self, model_inputs: dict[str, Any], request: Sequence[str] | None = None, n_samples: int = 0, seed: int = 0
    ) -> dict[str, Any]:
        if not request:
            raise ValueError("Pass the observations to predict, e.g. pipe(stars, request=['teff', 'logg']).")
        stars = model_inputs["stars"]
        rows = stars.rows if isinstance(stars, _Rows) else stars
        table = self.predictor.predict(rows, list(request), n_samples=n_samples, seed=seed)
        return {"table": table, "as_rows": isinstance(stars, _Rows)}

    def postprocess(self, model_outputs: dict[str, Any]) -> pd.DataFrame | list[dict[str, float]]:
        table = model_outputs["table"]
        return table.to_dict("records") if model_outputs["as_rows"] else table


def _same_code_copy(feature_extractor: Any) -> Any:
    """
    The feature extractor as an instance of this file's copy of its class (same settings). `pipeline()` takes the
    pipeline class from the checkpoint's code (`custom_pipelines`) but the feature extractor from the installed
    package where one registers it: two copies of the classes, whose star tables do not read each other.
    """
    ours = getattr(feature_extraction_astro, type(feature_extractor).__name__, None)
    if ours is None or isinstance(feature_extractor, ours) or not hasattr(feature_extractor, "to_dict"):
        return feature_extractor
    return ours.from_dict(feature_extractor.to_dict())


class _Rows:
    """A list of row dicts passed through `Pipeline.__call__` as one input (a bare list would be split)."""

    def __init__(self, rows: list[Mapping[str, Any]]):
        self.rows = rows


PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=AstroObservationPipeline, pt_model=AutoModelForPreTraining)

__all__ = ["TASK", "AstroObservationPipeline", "custom_pipelines"]
