"""Spectra -> stellar labels: Teff, log g, [M/H], E(B-V) and distance from Gaia XP spectra and colours."""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import pandas as pd

from ..observations import EVALUATION_INPUTS, LABEL_REQUEST, SIGMA_SUFFIX
from .plotting import new_figure, save_figure

SPECTRA_INPUTS = EVALUATION_INPUTS  # the paper's spectra -> labels inputs


def select_inputs(data: Any, names: tuple[str, ...] | list[str]) -> dict[str, np.ndarray]:
    """The columns ``names`` of ``data`` (and their ``_err`` columns) that are present, as a dict of arrays.

    Restricting the inputs keeps a prediction from seeing the answer (e.g. a dataset row's own ``teff``).
    """
    inputs = {}
    for name in names:
        for column in (name, f"{name}_err"):
            if column in data:
                inputs[column] = np.asarray(data[column], dtype=np.float64)
    if not inputs:
        raise ValueError(f"The data has none of the input columns {list(names[:4])}...; pass data with them.")
    return inputs


def distance_from_fakemag(
    g_fakemag: np.ndarray, g_fakemag_sigma: np.ndarray, g_mag: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Distance [pc] and its 1-sigma from ``g_fakemag = parallax[mas] * 10**(0.2 G)`` and the apparent G.

    ``parallax = g_fakemag / 10**(0.2 G)`` [mas], so ``distance = 1000 * 10**(0.2 G) / g_fakemag``
    and, to first order, ``sigma(distance) = distance * sigma(g_fakemag) / g_fakemag``.
    Non-positive g_fakemag gives NaN.
    """
    g_fakemag = np.asarray(g_fakemag, dtype=np.float64)
    valid = g_fakemag > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        distance = np.where(
            valid, 1000.0 * 10 ** (0.2 * np.asarray(g_mag, dtype=np.float64)) / g_fakemag, np.nan
        )
        sigma = np.where(valid, distance * np.asarray(g_fakemag_sigma, dtype=np.float64) / g_fakemag, np.nan)
    return distance, sigma


def predict_labels(
    predictor,
    data: Any,
    g_mag: np.ndarray | str | None = None,
    inputs: tuple[str, ...] | list[str] = SPECTRA_INPUTS,
    n_samples: int = 0,
    seed: int = 0,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Stellar labels of stars from their spectra (the paper's XP -> labels task).

    Args:
        predictor: an ``AstroPredictor``.
        data: stars with (some of) the ``inputs`` columns (dict / DataFrame / astropy Table / datasets batch),
            optionally with ``<name>_err`` columns; other columns are ignored.
        g_mag: apparent Gaia G magnitude per star (array, or the name of a column of ``data``) to turn the
            predicted g_fakemag into a distance; without it no distance columns are returned.
        inputs: the observations to predict from (default: BP/RP 0-29 and the three colours).
        n_samples, seed, progress: passed to ``AstroPredictor.predict`` (Monte-Carlo error propagation).

    Returns:
        DataFrame with ``teff, logg, m_h, logebv, g_fakemag`` and their ``_sigma`` (physical units), ``ebv``
        (= exp(logebv)) with ``ebv_sigma``, and with ``g_mag``: ``distance_pc`` and ``distance_pc_sigma``.
    """
    labels = predictor.predict(
        select_inputs(data, inputs), list(LABEL_REQUEST), n_samples=n_samples, seed=seed, progress=progress
    )
    labels["ebv"] = np.exp(labels["logebv"])
    labels["ebv" + SIGMA_SUFFIX] = labels["ebv"] * labels["logebv" + SIGMA_SUFFIX]
    if g_mag is None:
        return labels
    g_mag = np.asarray(data[g_mag] if isinstance(g_mag, str) else g_mag, dtype=np.float64)
    if g_mag.shape != (len(labels),):
        raise ValueError(f"g_mag must have one value per star ({len(labels)}), got shape {g_mag.shape}.")
    distance, sigma = distance_from_fakemag(labels["g_fakemag"], labels["g_fakemag" + SIGMA_SUFFIX], g_mag)
    invalid = np.isfinite(labels["g_fakemag"]) & ~(labels["g_fakemag"] > 0)
    if invalid.any():
        warnings.warn(
            f"{int(invalid.sum())} star(s) have a non-positive predicted g_fakemag: distance is NaN.",
            stacklevel=2,
        )
    labels["distance_pc"] = distance
    labels["distance_pc" + SIGMA_SUFFIX] = sigma
    return labels


def plot_label_comparison(
    labels: pd.DataFrame, reference: dict[str, np.ndarray], path: str | os.PathLike
) -> None:
    """Predicted vs reference value, one panel per ``reference`` key (a column of ``labels``); PNG."""
    if not reference:
        raise ValueError("No reference values to compare with: pass e.g. {'teff': true_teff}.")
    figure, axes = new_figure(ncols=len(reference), width=4.0)
    for axis, (name, truth) in zip(axes, reference.items(), strict=True):
        predicted = labels[name].to_numpy(dtype=np.float64)
        axis.errorbar(truth, predicted, yerr=labels[name + SIGMA_SUFFIX], fmt=".", ms=2, lw=0.3, alpha=0.5)
        finite = np.isfinite(truth) & np.isfinite(predicted)
        if finite.any():
            low, high = np.percentile(np.concatenate([truth[finite], predicted[finite]]), [0.5, 99.5])
            axis.plot([low, high], [low, high], color="k", lw=0.8)
            if name == "distance_pc":
                axis.set_xscale("log")
                axis.set_yscale("log")
        axis.set_xlabel(f"reference {name}")
        axis.set_ylabel(f"predicted {name}")
    save_figure(figure, path)


__all__ = [
    "LABEL_REQUEST",
    "SPECTRA_INPUTS",
    "distance_from_fakemag",
    "plot_label_comparison",
    "predict_labels",
    "select_inputs",
]
