"""The extinction curve A(lambda)/E(B-V) from spectra the model generates at several E(B-V).

For fixed stellar labels the model generates G-normalised XP coefficients and ``g_fakemag`` at each E(B-V).
The absolute flux of the star at a fixed distance is ``F = (coefficients / f_G) * f_G`` with
``f_G ~ g_fakemag**-2``, so its magnitude is
``m(lambda) = -2.5 log10(flux / f_G) + 5 log10(g_fakemag) + const``, and the extinction is
``A(lambda) = m(lambda, E) - m(lambda, 0)``. A straight-line fit of ``m`` against E(B-V) per wavelength
gives ``A(lambda)/E(B-V)``; the median over several reference stars is robust to one badly generated star.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from dataset_builder.physics import ExtinctionLaw

from ._plotting import new_figure, save_figure
from .spectra import XP_NAMES, sample_xp

DEFAULT_EBV: tuple[float, ...] = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4)
"""E(B-V) values at which spectra are generated (within the bulk of the training distribution)."""
DEFAULT_REFERENCE_STARS: dict[str, tuple[float, ...]] = {
    "teff": (4600.0, 4800.0, 5000.0, 5400.0, 5800.0),
    "logg": (2.4, 2.5, 2.8, 4.4, 4.3),
    "m_h": (0.0, -0.2, -0.1, 0.0, -0.1),
}
"""Typical giants and dwarfs of the training set: bright enough in the blue for a stable flux ratio."""


@dataclass(frozen=True)
class ExtinctionCurve:
    """A(lambda)/E(B-V) on a wavelength grid.

    Attributes:
        wavelength: (W,) [nm].
        a_over_ebv: (W,) median over the reference stars.
        a_over_ebv_sigma: (W,) standard error of that median, 1.2533 std / sqrt(n) (NaN with one star).
        per_star: (S, W) the curve of each reference star.
    """

    wavelength: np.ndarray
    a_over_ebv: np.ndarray
    a_over_ebv_sigma: np.ndarray
    per_star: np.ndarray


def injected_law(wavelength_nm: np.ndarray, rv: float = 3.1) -> np.ndarray:
    """A(lambda)/E(B-V) of the Gordon et al. (2023) law at ``rv``, as the simulated survey applies it."""
    transmission = ExtinctionLaw(wavelength_nm).transmission(np.array([1.0]), np.array([rv]))[0]
    return -2.5 * np.log10(transmission)


def extinction_curve(
    predictor,
    stars: Any = None,
    ebv: tuple[float, ...] | list[float] | np.ndarray = DEFAULT_EBV,
) -> ExtinctionCurve:
    """Derive A(lambda)/E(B-V) on Gaia's 336-1020 nm grid from spectra the model generates.

    Args:
        predictor: an ``AstroPredictor`` whose model knows the XP coefficients, ``logebv`` and ``g_fakemag``.
        stars: reference stars' ``teff``, ``logg``, ``m_h`` (dict / DataFrame); default
            ``DEFAULT_REFERENCE_STARS``.
        ebv: at least two distinct E(B-V) values (> 0) to generate each star at.

    Returns:
        ExtinctionCurve (wavelengths where a star's generated flux is not positive are NaN for that star).
    """
    stars = DEFAULT_REFERENCE_STARS if stars is None else stars
    ebv = np.asarray(ebv, dtype=np.float64)
    if ebv.ndim != 1 or np.unique(ebv).size < 2 or np.any(ebv <= 0):
        raise ValueError(f"ebv must hold at least two distinct positive E(B-V) values, got {ebv.tolist()}.")
    labels = {name: np.asarray(stars[name], dtype=np.float64) for name in ("teff", "logg", "m_h")}
    n_stars = len(labels["teff"])
    inputs = {name: np.repeat(values, ebv.size) for name, values in labels.items()}
    inputs["logebv"] = np.tile(np.log(ebv), n_stars)
    prediction = predictor.predict(inputs, [*XP_NAMES, "g_fakemag"])
    flux = sample_xp(prediction).flux.reshape(n_stars, ebv.size, -1)
    g_fakemag = prediction["g_fakemag"].to_numpy(dtype=np.float64).reshape(n_stars, ebv.size, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        magnitude = -2.5 * np.log10(np.where(flux > 0, flux, np.nan)) + 5.0 * np.log10(
            np.where(g_fakemag > 0, g_fakemag, np.nan)
        )
    # least-squares slope of magnitude against E(B-V), per star and wavelength
    centred = (ebv - ebv.mean())[None, :, None]
    per_star = np.sum(centred * (magnitude - magnitude.mean(axis=1, keepdims=True)), axis=1) / np.sum(
        centred**2
    )
    median = np.nanmedian(per_star, axis=0)
    counts = np.sum(np.isfinite(per_star), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        sigma = (
            np.nanstd(per_star, axis=0, ddof=1) / np.sqrt(counts)
            if n_stars > 1
            else np.full_like(median, np.nan)
        )
    wavelength = sample_xp(prediction.iloc[:1]).wavelength
    return ExtinctionCurve(wavelength, median, 1.2533 * sigma, per_star)


def max_relative_error(
    curve: ExtinctionCurve, law: np.ndarray, low_nm: float = 400.0, high_nm: float = 1000.0
) -> float:
    """Largest |curve - law| / law over ``low_nm``-``high_nm`` (a NaN sample makes it inf)."""
    inside = (curve.wavelength >= low_nm) & (curve.wavelength <= high_nm)
    error = np.abs(curve.a_over_ebv[inside] - law[inside]) / np.abs(law[inside])
    return float(np.inf) if np.any(~np.isfinite(error)) else float(error.max())


def plot_extinction_curve(
    curve: ExtinctionCurve,
    law: np.ndarray,
    path: str | os.PathLike,
    law_label: str = "injected law (G23, R_V = 3.1)",
) -> None:
    """Plot the derived A(lambda)/E(B-V) (per star, median with 1-sigma band) against the law; PNG."""
    figure, (axis,) = new_figure(width=7.0)
    for star in curve.per_star:
        axis.plot(curve.wavelength, star, color="0.7", lw=0.7)
    axis.fill_between(
        curve.wavelength,
        curve.a_over_ebv - curve.a_over_ebv_sigma,
        curve.a_over_ebv + curve.a_over_ebv_sigma,
        color="C0",
        alpha=0.3,
        lw=0,
    )
    axis.plot(curve.wavelength, curve.a_over_ebv, color="C0", label="model (median of reference stars)")
    axis.plot(curve.wavelength, law, color="C3", ls="--", label=law_label)
    axis.axvspan(400, 1000, color="0.95", zorder=-1)
    axis.set_xlabel("wavelength [nm]")
    axis.set_ylabel("A(lambda) / E(B-V)")
    axis.legend()
    save_figure(figure, path)


__all__ = [
    "DEFAULT_EBV",
    "DEFAULT_REFERENCE_STARS",
    "ExtinctionCurve",
    "extinction_curve",
    "injected_law",
    "max_relative_error",
    "plot_extinction_curve",
]
