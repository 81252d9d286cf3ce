"""Configuration of the Leung & Bovy (2024) stellar foundation model.

`AstroConfig` is defined in `modeling_astro/configuration_astro.py`, beside the model code: transformers saves a
custom model with the files its module imports relatively from the same folder (`from .configuration_astro import
AstroConfig`), so that a checkpoint folder loads with `trust_remote_code=True` where this package is not installed.
This package is the configuration's public name.
"""

from modeling_astro.configuration_astro import *  # noqa: F403  (its public names, listed once in its __all__)
from modeling_astro.configuration_astro import __all__  # noqa: F401
