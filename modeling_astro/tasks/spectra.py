"""XP coefficients -> sampled spectra on Gaia's 336-1020 nm grid, and labels -> generated XP spectra.

The sampling is GaiaXPy's own: the default sampling grid, the sampled basis functions and the BP/RP merge
weights that ``gaiaxpy.calibrate`` uses, so ``sample_xp`` of real coefficients equals ``calibrate``'s flux.
The dataset's coefficients are divided by the G-band flux f_G, so sampled spectra are G-normalised unless an
absolute scale (f_G from the apparent G, or from the predicted g_fakemag at a chosen parallax)
multiplies them.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import pandas as pd

from dataset_builder.features import g_band_flux
from dataset_builder.xp_projection import BANDS, check_gaiaxpy_version

from ..observations import BP_NAMES, LABEL_PROMPT, RP_NAMES, SIGMA_SUFFIX, XP_NAMES
from .labels import select_inputs
from .plotting import new_figure, save_figure

LABEL_INPUTS = LABEL_PROMPT  # the stellar labels a generated spectrum is conditioned on (labels -> XP)


@cache
def gaia_sampling() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Gaia's default sampling grid [nm] (336-1020 nm, 2 nm) and per band the (55, 343) matrix
    coefficients -> flux [W m^-2 nm^-1 per e-/s of coefficient], BP/RP merge weights folded in."""
    check_gaiaxpy_version()
    from gaiaxpy.core.config import load_xpmerge_from_xml, load_xpsampling_from_xml

    grid, merge = load_xpmerge_from_xml()
    design = load_xpsampling_from_xml()
    return np.asarray(grid, dtype=np.float64), {
        band: np.asarray(design[band], dtype=np.float64) * np.asarray(merge[band])[None, :] for band in BANDS
    }


@dataclass(frozen=True)
class SampledSpectra:
    """Spectra of N stars sampled on a wavelength grid, with 1-sigma bands.

    Attributes:
        wavelength: (W,) wavelengths [nm].
        flux: (N, W) flux; G-normalised (flux / f_G) or absolute [W m^-2 nm^-1], see ``unit``.
        flux_sigma: (N, W) 1-sigma of the flux (independent coefficient errors propagated linearly).
        unit: ``"W m^-2 nm^-1 per e-/s of G flux"`` (G-normalised) or ``"W m^-2 nm^-1"``.
    """

    wavelength: np.ndarray
    flux: np.ndarray
    flux_sigma: np.ndarray
    unit: str

    def mean_flux(self, low_nm: float, high_nm: float) -> np.ndarray:
        """Mean flux of each star over ``low_nm``-``high_nm``: (N,)."""
        inside = (self.wavelength >= low_nm) & (self.wavelength <= high_nm)
        if not inside.any():
            raise ValueError(
                f"no sample of the {self.wavelength[0]}-{self.wavelength[-1]} nm grid lies in "
                f"{low_nm}-{high_nm} nm"
            )
        return self.flux[:, inside].mean(axis=1)


def _column(table: Any, name: str) -> np.ndarray:
    return np.asarray(table[name], dtype=np.float64)


def sample_xp(
    coefficients: Any, scale: np.ndarray | float = 1.0, unit: str = "W m^-2 nm^-1 per e-/s of G flux"
) -> SampledSpectra:
    """Sample XP coefficients on Gaia's 336-1020 nm grid.

    Args:
        coefficients: a DataFrame / dict with the 110 columns ``bp0..bp54, rp0..rp54`` (e.g. the output of
            ``AstroPredictor.predict``) and optionally ``<name>_sigma`` columns. Missing (NaN) coefficients
            count as 0 (as in a truncated XP solution); a star with no coefficient at all gets NaN flux.
        scale: per-star (N,) or scalar factor multiplying flux and sigma (e.g. f_G for absolute flux).
        unit: the unit of the result, recorded in ``SampledSpectra.unit``.

    Returns:
        SampledSpectra with flux (N, 343) and sigma (N, 343).
    """
    missing = [name for name in XP_NAMES if name not in coefficients]
    if missing:
        raise KeyError(
            f"sample_xp needs all 110 XP coefficient columns; missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}. Request XP_NAMES from the predictor."
        )
    wavelength, design = gaia_sampling()
    flux = 0.0
    variance = 0.0
    for band, names in (("bp", BP_NAMES), ("rp", RP_NAMES)):
        values = np.nan_to_num(np.stack([_column(coefficients, name) for name in names], axis=1))
        flux = flux + values @ design[band]
        if all(name + SIGMA_SUFFIX in coefficients for name in names):
            sigma = np.nan_to_num(
                np.stack([_column(coefficients, name + SIGMA_SUFFIX) for name in names], axis=1)
            )
            variance = variance + sigma**2 @ design[band] ** 2
    scale = np.reshape(np.asarray(scale, dtype=np.float64), (-1, 1))
    sigma = np.sqrt(variance) * np.ones_like(flux)
    empty = np.all(np.isnan(np.stack([_column(coefficients, name) for name in XP_NAMES], axis=1)), axis=1)
    flux[empty], sigma[empty] = np.nan, np.nan  # stars without any coefficient (e.g. no usable input)
    return SampledSpectra(wavelength, flux * scale, sigma * np.abs(scale), unit)


def flux_scale_from_fakemag(g_fakemag: np.ndarray, parallax_mas: float | np.ndarray) -> np.ndarray:
    """f_G [e-/s] of a star with absolute-magnitude proxy ``g_fakemag`` seen at ``parallax_mas``.

    ``g_fakemag = parallax[mas] * 10**(0.2 G)``, so the apparent ``G = 5 log10(g_fakemag / parallax)``;
    non-positive ``g_fakemag`` (no valid magnitude) gives NaN.
    """
    g_fakemag = np.asarray(g_fakemag, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        g_mag = np.where(g_fakemag > 0, 5.0 * np.log10(g_fakemag / parallax_mas), np.nan)
    return g_band_flux(g_mag)


def generate_spectra(
    predictor,
    labels: Any,
    absolute: bool = False,
    parallax_mas: float = 100.0,
    n_samples: int = 0,
    seed: int = 0,
) -> tuple[SampledSpectra, pd.DataFrame]:
    """Generate the XP spectra of stars from their labels (the paper's labels -> XP task).

    Args:
        predictor: an ``AstroPredictor``.
        labels: stars' ``teff`` [K], ``logg``, ``m_h`` and optionally ``logebv`` (dict / DataFrame / Table);
            other columns are ignored so that the spectrum depends on the labels only.
        absolute: return absolute flux [W m^-2 nm^-1] of the star seen at ``parallax_mas`` (its f_G follows
            from the predicted ``g_fakemag``; the g_fakemag uncertainty is added to the sigma band) instead of
            the G-normalised flux.
        parallax_mas: parallax of the star for absolute flux (default 100 mas, i.e. 10 pc).
        n_samples, seed: Monte-Carlo propagation of label errors (``<label>_err`` columns), see ``predict``.

    Returns:
        ``(spectra, prediction)``: the sampled spectra and the predictor's table of the 110 coefficients
        (plus ``g_fakemag`` when ``absolute``) with their sigmas.
    """
    names = [name for name in LABEL_INPUTS if name in labels]
    if not names:
        raise ValueError(
            f"generate_spectra needs at least one of the labels {LABEL_INPUTS}; got columns "
            f"{list(labels.keys()) if hasattr(labels, 'keys') else type(labels).__name__}."
        )
    inputs = select_inputs(labels, names)
    request = list(XP_NAMES) + (["g_fakemag"] if absolute else [])
    prediction = predictor.predict(inputs, request, n_samples=n_samples, seed=seed)
    if not absolute:
        return sample_xp(prediction), prediction
    g_fakemag = prediction["g_fakemag"].to_numpy(dtype=np.float64)
    if np.any(~(g_fakemag > 0)):
        warnings.warn(
            f"{np.sum(~(g_fakemag > 0))} star(s) have a non-positive predicted g_fakemag: their "
            "absolute flux is NaN.",
            stacklevel=2,
        )
    scale = flux_scale_from_fakemag(g_fakemag, parallax_mas)
    spectra = sample_xp(prediction, scale=scale, unit="W m^-2 nm^-1")
    # f_G ~ g_fakemag^-2: relative sigma of the scale is 2 sigma(g_fakemag) / g_fakemag
    relative = 2.0 * prediction["g_fakemag" + SIGMA_SUFFIX].to_numpy(dtype=np.float64) / g_fakemag
    sigma = np.hypot(spectra.flux_sigma, spectra.flux * relative[:, None])
    return SampledSpectra(spectra.wavelength, spectra.flux, sigma, spectra.unit), prediction


def plot_spectra(
    spectra: SampledSpectra, path: str | os.PathLike, names: list[str] | None = None, title: str | None = None
) -> None:
    """Plot each spectrum with its 1-sigma band and write a PNG to ``path``."""
    figure, (axis,) = new_figure(width=7.0)
    names = names or [f"star {i}" for i in range(len(spectra.flux))]
    for flux, sigma, name in zip(spectra.flux, spectra.flux_sigma, names, strict=True):
        (line,) = axis.plot(spectra.wavelength, flux, lw=1.2, label=name)
        axis.fill_between(
            spectra.wavelength, flux - sigma, flux + sigma, color=line.get_color(), alpha=0.25, lw=0
        )
    axis.set_xlabel("wavelength [nm]")
    axis.set_ylabel(f"flux [{spectra.unit}]")
    if title:
        axis.set_title(title)
    axis.legend(fontsize=8)
    save_figure(figure, path)


__all__ = [
    "BP_NAMES",
    "LABEL_INPUTS",
    "RP_NAMES",
    "XP_NAMES",
    "SampledSpectra",
    "flux_scale_from_fakemag",
    "gaia_sampling",
    "generate_spectra",
    "plot_spectra",
    "sample_xp",
]
