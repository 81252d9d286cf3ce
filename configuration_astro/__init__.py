"""Configuration of the Leung & Bovy (2024) stellar foundation model.

`AstroConfig` is defined in `modeling_astro/configuration_astro.py`, beside the model code: transformers saves a
custom model with the files its module imports relatively from the same folder (`from .configuration_astro import
AstroConfig`), so that a checkpoint folder loads with `trust_remote_code=True` where this package is not installed.
This package is the configuration's public name.
"""

from modeling_astro.configuration_astro import (
    DEFAULT_OBSERVATION_NAMES,
    DEFAULT_OBSERVATION_UNITS,
    PRESETS,
    XP_COEFFICIENTS_PER_BAND,
    AstroConfig,
)

__all__ = [
    "AstroConfig",
    "DEFAULT_OBSERVATION_NAMES",
    "DEFAULT_OBSERVATION_UNITS",
    "PRESETS",
    "XP_COEFFICIENTS_PER_BAND",
]
