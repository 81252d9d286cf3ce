"""Inpainting of Gaia XP spectra: one band from the other (BP -> RP, RP -> BP) and missing coefficients."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..feature_extraction_astro import StarTable
from ..observations import BP_NAMES, RP_NAMES, SIGMA_SUFFIX, XP_NAMES
from .labels import select_inputs

BAND_NAMES = {"bp": BP_NAMES, "rp": RP_NAMES}


def inpaint_band(predictor, data: Any, source: str = "bp", n_samples: int = 0, seed: int = 0) -> pd.DataFrame:
    """Predict one XP band from the other: the 55 coefficients (/ f_G) of the band that is not ``source``.

    Args:
        predictor: an ``AstroPredictor``.
        data: stars with the ``source`` band's coefficients ``<source>0..<source>54`` (NaN = missing).
        source: ``"bp"`` (BP -> RP) or ``"rp"`` (RP -> BP).

    Returns:
        DataFrame with the target band's 55 coefficients and their ``_sigma``.
    """
    if source not in BAND_NAMES:
        raise ValueError(f"source must be 'bp' or 'rp', got {source!r}.")
    target = "rp" if source == "bp" else "bp"
    return predictor.predict(
        select_inputs(data, BAND_NAMES[source]), list(BAND_NAMES[target]), n_samples=n_samples, seed=seed
    )


def fill_missing_coefficients(predictor, data: Any, inputs_per_band: int | None = None) -> pd.DataFrame:
    """Fill each star's missing (NaN) XP coefficients, e.g. the high orders beyond ``n_relevant_bases``.

    The model sees the star's lowest-order present coefficients of each band, at most ``inputs_per_band``
    per band (default: half the model's context length), and predicts all 110; only the missing ones are
    replaced.

    Returns:
        DataFrame with the 110 coefficients (observed or filled), ``<name>_sigma`` (the observed
        ``_err`` where given, NaN if unknown; the predicted sigma where filled) and a bool
        ``<name>_filled`` per coefficient.
    """
    context_length = predictor.tokenizer.context_length
    per_band = inputs_per_band or context_length // 2
    if 2 * per_band > context_length:
        raise ValueError(
            f"2 * inputs_per_band ({2 * per_band}) exceeds the model's context length ({context_length})."
        )
    missing_columns = [name for name in XP_NAMES if name not in data]
    if missing_columns:
        raise KeyError(f"fill_missing_coefficients needs all 110 XP columns; missing {missing_columns[:5]}.")
    observed = np.stack([np.asarray(data[name], dtype=np.float64) for name in XP_NAMES], axis=1)
    inputs = {}
    for names in (BP_NAMES, RP_NAMES):
        band = np.stack([np.asarray(data[name], dtype=np.float64) for name in names], axis=1)
        rank = np.cumsum(np.isfinite(band), axis=1)  # 1 for the lowest-order present coefficient
        band = np.where(rank <= per_band, band, np.nan)
        inputs.update({name: band[:, i] for i, name in enumerate(names)})
    table = StarTable(data)
    errors = {name: table.error_column(name) for name in XP_NAMES}
    inputs.update({column: table.raw(column) for column in errors.values() if column is not None})
    prediction = predictor.predict(inputs, list(XP_NAMES))
    filled = ~np.isfinite(observed)
    columns = {}
    for i, name in enumerate(XP_NAMES):
        error = table.numeric(errors[name]) if errors[name] is not None else np.nan
        columns[name] = np.where(filled[:, i], prediction[name], observed[:, i])
        columns[name + SIGMA_SUFFIX] = np.where(filled[:, i], prediction[name + SIGMA_SUFFIX], error)
        columns[f"{name}_filled"] = filled[:, i]
    return pd.DataFrame(columns)


__all__ = ["fill_missing_coefficients", "inpaint_band"]
