"""The extinction curve A(lambda)/E(B-V) from spectra the model generates at several E(B-V).

For fixed stellar labels the model generates G-normalised XP coefficients at each E(B-V). Their magnitudes
``-2.5 log10(flux / f_G)`` change with E(B-V) by ``A(lambda) - A_G``: a straight-line fit against E(B-V) per
wavelength gives the *shape* of the curve, ``(A(lambda) - A_G) / E(B-V)``; the median over several reference stars
is robust to one badly generated star. Its absolute level needs one more number, taken either

- from the model (``rv=None``): it also generates ``g_fakemag = 100 * 10**(0.2 (M_G + A_G))`` (parallax times
  ``10**(0.2 G)``, independent of distance), so ``5 log10(g_fakemag)`` grows with E(B-V) by ``A_G``; or
- from a stated ``R_V = A_V / E(B-V)`` (``rv=3.1``): the curve is shifted so that it equals ``R_V`` at 550 nm,
  the usual ``E(lambda - V) / E(B-V) + R_V`` form of an extinction law (only the shape then comes from the model).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from dataset_builder.physics import ExtinctionLaw

from .plotting import new_figure, save_figure
from .spectra import XP_NAMES, sample_xp

DEFAULT_EBV: tuple[float, ...] = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4)
"""E(B-V) values at which spectra are generated (within the bulk of the training distribution)."""


def _reference_grid() -> dict[str, tuple[float, ...]]:
    """Red giants (4400-5200 K) and dwarfs (5000-6200 K) along their log g - Teff sequences, 4 metallicities."""
    giants = [(teff, 2.2 + 0.8 * (teff - 4400.0) / 800.0) for teff in np.arange(4400.0, 5201.0, 200.0)]
    dwarfs = [(teff, 4.5 - 0.3 * (teff - 5000.0) / 1200.0) for teff in np.arange(5000.0, 6201.0, 300.0)]
    stars = [(teff, logg, m_h) for teff, logg in giants + dwarfs for m_h in (-0.4, -0.2, 0.0, 0.2)]
    return {name: tuple(float(star[i]) for star in stars) for i, name in enumerate(("teff", "logg", "m_h"))}


DEFAULT_REFERENCE_STARS: dict[str, tuple[float, ...]] = _reference_grid()
"""40 typical giants and dwarfs of the training set: the median over many stars averages out the model's
star-to-star noise."""
V_WAVELENGTH_NM = 550.0
"""Where ``rv`` anchors the curve: the Gordon et al. (2023) laws are normalised to A(V) at 0.55 micron."""


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
    rv: float | None = None,
) -> ExtinctionCurve:
    """Derive A(lambda)/E(B-V) on Gaia's 336-1020 nm grid from spectra the model generates.

    Args:
        predictor: an ``AstroPredictor`` whose model knows the XP coefficients, ``logebv`` and ``g_fakemag``.
        stars: reference stars' ``teff``, ``logg``, ``m_h`` (dict / DataFrame); default
            ``DEFAULT_REFERENCE_STARS``.
        ebv: at least two distinct E(B-V) values (> 0) to generate each star at.
        rv: ``None`` takes the absolute level from the generated ``g_fakemag``; a number sets A(550 nm)/E(B-V)
            to it (see the module docstring).

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
    prediction = predictor.predict(inputs, [*XP_NAMES, *(["g_fakemag"] if rv is None else [])])
    sampled = sample_xp(prediction)
    flux = sampled.flux.reshape(n_stars, ebv.size, -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        magnitude = -2.5 * np.log10(np.where(flux > 0, flux, np.nan))
        if rv is None:
            g_fakemag = prediction["g_fakemag"].to_numpy(dtype=np.float64).reshape(n_stars, ebv.size, 1)
            magnitude += 5.0 * np.log10(np.where(g_fakemag > 0, g_fakemag, np.nan))
    # least-squares slope of magnitude against E(B-V), per star and wavelength
    centred = (ebv - ebv.mean())[None, :, None]
    per_star = np.sum(centred * (magnitude - magnitude.mean(axis=1, keepdims=True)), axis=1) / np.sum(
        centred**2
    )
    if rv is not None:
        at_v = np.array([np.interp(V_WAVELENGTH_NM, sampled.wavelength, star) for star in per_star])
        per_star = per_star - at_v[:, None] + rv
    median = np.nanmedian(per_star, axis=0)
    counts = np.sum(np.isfinite(per_star), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        sigma = (
            np.nanstd(per_star, axis=0, ddof=1) / np.sqrt(counts)
            if n_stars > 1
            else np.full_like(median, np.nan)
        )
    return ExtinctionCurve(sampled.wavelength, median, 1.2533 * sigma, per_star)


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
