"""Configuration of the Leung & Bovy (2024) stellar foundation model."""

from .configuration_astro import (
    DEFAULT_OBSERVATION_NAMES,
    DEFAULT_OBSERVATION_UNITS,
    XP_COEFFICIENTS_PER_BAND,
    AstroConfig,
)

__all__ = ["AstroConfig", "DEFAULT_OBSERVATION_NAMES", "DEFAULT_OBSERVATION_UNITS", "XP_COEFFICIENTS_PER_BAND"]
