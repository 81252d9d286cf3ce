"""The Leung & Bovy (2024) transformer foundation model for stars, the transformers way.

The modules of this package import the configuration with flat relative imports (``from .configuration_astro
import AstroConfig``) so that a saved checkpoint folder, where transformers copies them side by side, loads with
``trust_remote_code=True`` without this package installed. In the source tree ``modeling_astro/configuration_astro.py``
is a link to ``configuration_astro/configuration_astro.py``; the alias below makes both names one module, so there
is a single ``AstroConfig`` class.
"""

import importlib
import sys

sys.modules.setdefault(
    f"{__name__}.configuration_astro", importlib.import_module("configuration_astro.configuration_astro")
)

from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoModelForPreTraining  # noqa: E402

from configuration_astro import AstroConfig  # noqa: E402

from .feature_extraction_astro import AstroTokenizer, ObservationNameError  # noqa: E402
from .modeling_astro import (  # noqa: E402
    AstroForObservationPrediction,
    AstroModel,
    AstroModelOutput,
    AstroObservationPredictionOutput,
    AstroPreTrainedModel,
)

AstroConfig.register_for_auto_class()
AstroModel.register_for_auto_class("AutoModel")
AstroForObservationPrediction.register_for_auto_class("AutoModelForPreTraining")
AstroTokenizer.register_for_auto_class("AutoFeatureExtractor")
AutoConfig.register("astro", AstroConfig, exist_ok=True)
AutoModel.register(AstroConfig, AstroModel, exist_ok=True)
AutoModelForPreTraining.register(AstroConfig, AstroForObservationPrediction, exist_ok=True)
AutoFeatureExtractor.register(AstroConfig, AstroTokenizer, exist_ok=True)

__all__ = [
    "AstroConfig",
    "AstroForObservationPrediction",
    "AstroModel",
    "AstroModelOutput",
    "AstroObservationPredictionOutput",
    "AstroPreTrainedModel",
    "AstroTokenizer",
    "ObservationNameError",
]
