"""Turn Gaia XP / gaia_source / 2MASS / APOGEE survey files into the model's `datasets` parquet folder."""

from .build import BuildSummary, build_dataset
from .errors import DatasetBuildError
from .readers import XPContinuous, read_allstar, read_ebv, read_extra, read_gaia_source, read_xp_continuous
from .schema import OBSERVATION_NAMES, dataset_features

__all__ = [
    "OBSERVATION_NAMES",
    "BuildSummary",
    "DatasetBuildError",
    "XPContinuous",
    "build_dataset",
    "dataset_features",
    "read_allstar",
    "read_ebv",
    "read_extra",
    "read_gaia_source",
    "read_xp_continuous",
]
