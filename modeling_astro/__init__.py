"""The Leung & Bovy (2024) transformer foundation model for stars, the transformers way.

The modules of this package import each other with flat relative imports (``from .configuration_astro import
AstroConfig``): transformers copies a custom model's file and its same-folder relative imports into a saved
checkpoint folder, which then loads with ``trust_remote_code=True`` without this package installed.
"""

from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoModelForPreTraining

from .configuration_astro import AstroConfig
from .feature_extraction_astro import AstroFeatureExtractor, ObservationNameError
from .modeling_astro import (
    AstroForObservationPrediction,
    AstroModel,
    AstroModelOutput,
    AstroObservationPredictionOutput,
    AstroPreTrainedModel,
)

AstroConfig.register_for_auto_class()
AstroModel.register_for_auto_class("AutoModel")
AstroForObservationPrediction.register_for_auto_class("AutoModelForPreTraining")
AstroFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
AutoConfig.register("astro", AstroConfig, exist_ok=True)
AutoModel.register(AstroConfig, AstroModel, exist_ok=True)
AutoModelForPreTraining.register(AstroConfig, AstroForObservationPrediction, exist_ok=True)
AutoFeatureExtractor.register(AstroConfig, AstroFeatureExtractor, exist_ok=True)


def __getattr__(name: str):
    """`AstroTokenizer`, the deprecated old name of `AstroFeatureExtractor` (with a `FutureWarning`)."""
    if name == "AstroTokenizer":
        from . import feature_extraction_astro

        return getattr(feature_extraction_astro, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AstroConfig",
    "AstroFeatureExtractor",
    "AstroForObservationPrediction",
    "AstroModel",
    "AstroModelOutput",
    "AstroObservationPredictionOutput",
    "AstroPreTrainedModel",
    "ObservationNameError",
]
