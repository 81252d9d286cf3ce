"""Forward model of a star's spectrum at Earth: surface flux, dust extinction and synthetic photometry.

The surface flux is a Planck continuum times an absorption model whose features are driven by
Teff, log g and [M/H] (plus nuisance abundances) the way real spectra are at Gaia XP resolution:
metal-line blanketing in the blue, the Balmer jump and lines, Ca II H&K, the CH G band, Mg b and
gravity-sensitive MgH, Na D, CN (giants), TiO/CaH bands (cool stars; CaH in dwarfs), the Ca II
triplet (stronger in giants and metal-rich stars), and CO/H2O in the near infrared.
Extinction is the Gordon et al. (2023) law (``dust_extinction`` G23), per-star E(B-V) and R_V.
Photometry integrates the real filter curves shipped with ``speclite`` (Gaia DR3 G/BP/RP,
2MASS J/H/Ks) and converts to the Vega system with the published zero points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit

PLANCK_H = 6.62607015e-34
SPEED_OF_LIGHT = 2.99792458e8
BOLTZMANN_K = 1.380649e-23
SOLAR_RADIUS_M = 6.957e8
PARSEC_M = 3.0856775814913673e16
GRAVITATIONAL_CONSTANT = 6.674e-11
SOLAR_MASS_KG = 1.98847e30

PHOTOMETRIC_BANDS: tuple[str, ...] = ("G", "BP", "RP", "J", "H", "K")
_SPECLITE_NAMES = {
    "G": "gaiadr3-G",
    "BP": "gaiadr3-BP",
    "RP": "gaiadr3-RP",
    "J": "twomass-J",
    "H": "twomass-H",
    "K": "twomass-Ks",
}
VEGA_MINUS_AB = {"G": -0.1136, "BP": -0.0155, "RP": -0.3561, "J": -0.91, "H": -1.39, "K": -1.85}
"""Vega minus AB offsets: Gaia EDR3 zero points (Riello et al. 2021), 2MASS (Blanton & Roweis 2007)."""


def wavelength_grid() -> np.ndarray:
    """The simulation's wavelength grid [nm]: 0.5 nm over 320-1100 nm (XP, G), 10 nm to 2450 nm (2MASS)."""
    return np.concatenate([np.arange(320.0, 1100.0, 0.5), np.arange(1100.0, 2451.0, 10.0)])


def planck_flux(wavelength_nm: np.ndarray, teff: np.ndarray) -> np.ndarray:
    """Surface flux pi * B_lambda(Teff) [W m^-2 nm^-1] of each star (n,) on the grid: (n, n_wavelength)."""
    wavelength_m = wavelength_nm[None, :] * 1e-9
    exponent = PLANCK_H * SPEED_OF_LIGHT / (wavelength_m * BOLTZMANN_K * np.asarray(teff)[:, None])
    radiance = 2 * PLANCK_H * SPEED_OF_LIGHT**2 / wavelength_m**5 / np.expm1(exponent)
    return np.pi * radiance * 1e-9


@dataclass(frozen=True)
class StellarParameters:
    """Per-star physical parameters (arrays of equal length) that drive the surface-flux model."""

    teff: np.ndarray
    logg: np.ndarray
    m_h: np.ndarray
    alpha_m: np.ndarray
    c_m: np.ndarray
    microturbulence: np.ndarray


def _band(wavelength: np.ndarray, center: float, width: float) -> np.ndarray:
    """A unit-height Gaussian absorption profile (n_wavelength,)."""
    return np.exp(-0.5 * ((wavelength - center) / width) ** 2)


def _edge(wavelength: np.ndarray, head: float, length: float) -> np.ndarray:
    """A molecular band: sharp head at ``head`` degrading to the red over ``length`` nm."""
    x = (wavelength - head) / length
    return np.where(x >= 0, np.exp(-x), 0.0) * (1 - np.exp(-np.clip(x, 0, None) * 20))


def _profiles(wavelength: np.ndarray) -> dict[str, np.ndarray]:
    lam = wavelength
    balmer_lines = sum(_band(lam, c, w) for c, w in ((656.3, 0.9), (486.1, 0.8), (434.0, 0.7), (410.2, 0.7)))
    paschen_lines = sum(_band(lam, c, 0.6) for c in (820.4, 824.0, 829.8, 838.2, 846.7, 859.8, 875.0, 901.5))
    tio = sum(
        _edge(lam, h, length) * s
        for h, length, s in (
            (476.1, 12, 0.4),
            (495.5, 12, 0.5),
            (516.7, 12, 0.5),
            (544.8, 15, 0.6),
            (615.9, 25, 0.8),
            (705.3, 30, 1.0),
            (758.9, 20, 0.6),
            (843.2, 25, 0.6),
            (885.9, 25, 0.4),
        )
    )
    return {
        "blanketing": np.clip((560.0 - lam) / 240.0, 0, None) ** 1.5,
        "balmer_continuum": expit((364.6 - lam) / 1.5),
        "balmer_lines": balmer_lines,
        "paschen_lines": paschen_lines,
        "ca_hk": _band(lam, 393.4, 1.5) + _band(lam, 396.8, 1.5),
        "cn_violet": _edge(lam, 388.3, 6) + 0.6 * _edge(lam, 421.6, 8),
        "ch_gband": _band(lam, 430.5, 2.5),
        "mg_b": _band(lam, 517.5, 1.5),
        "mgh": _edge(lam, 478.0, 40) * (lam < 530),
        "na_d": _band(lam, 589.3, 1.0),
        "tio": tio,
        "cah": _edge(lam, 638.0, 8) + 1.3 * _edge(lam, 675.0, 25),
        "cn_red": _edge(lam, 787.0, 25) + _edge(lam, 910.0, 30),
        "ca_triplet": _band(lam, 849.8, 0.8) + 1.4 * _band(lam, 854.2, 0.8) + 1.2 * _band(lam, 866.2, 0.8),
        "fe_red": _band(lam, 620.0, 40) + _band(lam, 530.0, 30),
        "co": _edge(lam, 2293.0, 60) + _edge(lam, 2322.0, 60) + _edge(lam, 2352.0, 60),
        "h2o": _band(lam, 1400.0, 60) + _band(lam, 1900.0, 120),
        "h_minus": np.clip(1 - np.abs(lam - 850.0) / 700.0, 0, None),
    }


def absorption_depth(stars: StellarParameters, profiles: dict[str, np.ndarray]) -> np.ndarray:
    """Optical depth tau (n, n_wavelength) of the absorption features; flux = continuum * exp(-tau)."""
    theta = 5040.0 / stars.teff[:, None]
    gravity = stars.logg[:, None]
    metals = 10 ** stars.m_h[:, None]
    alpha = 10 ** stars.alpha_m[:, None]
    carbon = 10 ** stars.c_m[:, None]
    saturation = (stars.microturbulence[:, None] / 1.5) ** 0.3
    cool = np.clip(theta - 0.45, 0, None)
    giant = expit((3.6 - gravity) / 0.3)
    dwarf = 1 - giant
    hydrogen = np.exp(-(((stars.teff[:, None] - 9000.0) / 2600.0) ** 2))
    tio_strength = np.clip(theta - 1.12, 0, None) / 0.25 * metals**0.4 * (1 + 0.15 * (3 - gravity))
    terms = {
        "blanketing": 1.1 * metals**0.65 * alpha**0.3 * cool**2.2 * saturation * (1 + 0.06 * (3 - gravity)),
        "balmer_continuum": 0.8 * hydrogen * (1 + 0.18 * (4 - gravity)) + 0.06 * cool,
        "balmer_lines": 1.2 * hydrogen * (1 + 0.12 * (gravity - 3)),
        "paschen_lines": 0.5 * hydrogen * (1 - 0.1 * (gravity - 3)),
        "ca_hk": 1.6 * metals**0.4 * alpha**0.5 * np.clip(cool, 0, 0.6) * (1 + 0.15 * (gravity - 3)),
        "cn_violet": 0.5 * metals * carbon**0.5 * cool**2.5 * giant * (1 + 0.25 * (2.5 - gravity)),
        "ch_gband": 0.6 * metals**0.6 * carbon * np.clip(cool, 0, 0.7) * (1 - 0.1 * (gravity - 3)),
        "mg_b": 0.9 * metals**0.5 * alpha**0.8 * cool * saturation * (1 + 0.12 * (gravity - 3)),
        "mgh": 0.25 * metals**0.5 * alpha**0.6 * cool**2 * dwarf * (gravity - 3.2).clip(0, None),
        "na_d": 0.9 * metals**0.5 * cool**1.5 * (1 + 0.3 * dwarf * (gravity - 3.5).clip(0, None)),
        "tio": 0.6 * tio_strength,
        "cah": 0.4 * np.clip(theta - 1.05, 0, None) / 0.2 * dwarf * metals**0.3,
        "cn_red": 0.05 * metals * carbon**0.5 * cool**2 * giant * (1 + 0.3 * (2.5 - gravity)),
        "ca_triplet": 1.1 * metals**0.35 * saturation * (1 + 0.2 * (3 - gravity)) * np.clip(cool + 0.2, 0, 1),
        "fe_red": 0.03 * metals**0.7 * cool**2 * (1 + 0.1 * (3 - gravity)),
        "co": 0.12 * cool**2 * (1 + 0.4 * giant) * carbon**0.5 * metals**0.3,
        "h2o": 0.6 * np.clip(theta - 1.25, 0, None) * dwarf,
        "h_minus": 0.04 * (gravity - 3) * np.clip(cool - 0.2, 0, None),
    }
    return sum(terms[name] * profiles[name][None, :] for name in terms)


class SurfaceFluxModel:
    """Surface flux [W m^-2 nm^-1] of stars on a fixed wavelength grid; profiles precomputed once."""

    def __init__(self, wavelength_nm: np.ndarray) -> None:
        self.wavelength_nm = np.asarray(wavelength_nm, dtype=np.float64)
        self.profiles = _profiles(self.wavelength_nm)

    def __call__(self, stars: StellarParameters) -> np.ndarray:
        """Surface flux of each star: (n, n_wavelength)."""
        return planck_flux(self.wavelength_nm, stars.teff) * np.exp(-absorption_depth(stars, self.profiles))


class ExtinctionLaw:
    """Gordon et al. (2023) extinction A(lambda)/E(B-V) with per-star R_V, vectorised.

    G23 is linear in 1/R_V: A(lambda)/A(V) = a(lambda) + b(lambda) (1/R_V - 1/3.1), so two
    evaluations of ``dust_extinction.parameter_averages.G23`` give every star's curve.
    """

    def __init__(self, wavelength_nm: np.ndarray) -> None:
        import astropy.units as u
        from dust_extinction.parameter_averages import G23

        wavelength = np.asarray(wavelength_nm, dtype=np.float64) * u.nm
        at_31 = G23(Rv=3.1)(wavelength)
        at_50 = G23(Rv=5.0)(wavelength)
        self.a = np.asarray(at_31)
        self.b = (np.asarray(at_50) - self.a) / (1 / 5.0 - 1 / 3.1)

    def transmission(self, ebv: np.ndarray, rv: np.ndarray) -> np.ndarray:
        """Fraction of flux transmitted, 10**(-0.4 A(lambda)), for each star: (n, n_wavelength)."""
        ebv = np.asarray(ebv)[:, None]
        rv = np.asarray(rv)[:, None]
        a_lambda = ebv * rv * (self.a[None, :] + self.b[None, :] * (1 / rv - 1 / 3.1))
        return 10 ** (-0.4 * a_lambda)


class SyntheticPhotometry:
    """Vega magnitudes in Gaia G/BP/RP and 2MASS J/H/Ks from spectra on a fixed grid (one matrix product)."""

    def __init__(self, wavelength_nm: np.ndarray) -> None:
        import speclite.filters

        wavelength_nm = np.asarray(wavelength_nm, dtype=np.float64)
        step = np.gradient(wavelength_nm)
        columns = []
        for band in PHOTOMETRIC_BANDS:
            curve = speclite.filters.load_filter(_SPECLITE_NAMES[band])
            response = np.interp(wavelength_nm * 10, curve.wavelength, curve.response, left=0.0, right=0.0)
            # AB maggies = int f_lambda R lambda dlambda / int f_nu,AB (c / lambda^2) R lambda dlambda
            ab_flux = 3631e-26 * SPEED_OF_LIGHT / (wavelength_nm * 1e-9) ** 2 * 1e-9  # W m^-2 nm^-1
            columns.append(
                response * wavelength_nm * step / np.sum(ab_flux * response * wavelength_nm * step)
            )
        self.weights = np.stack(columns, axis=1)  # (n_wavelength, n_bands)
        self.vega_minus_ab = np.array([VEGA_MINUS_AB[band] for band in PHOTOMETRIC_BANDS])

    def magnitudes(self, flux: np.ndarray) -> dict[str, np.ndarray]:
        """Vega magnitudes {band: (n,)} of spectra ``flux`` (n, n_wavelength) [W m^-2 nm^-1]."""
        maggies = np.atleast_2d(flux) @ self.weights
        mags = -2.5 * np.log10(maggies) + self.vega_minus_ab
        return {band: mags[:, i] for i, band in enumerate(PHOTOMETRIC_BANDS)}


def stellar_radius(logg: np.ndarray, mass_msun: np.ndarray) -> np.ndarray:
    """Radius [solar radii] from surface gravity log10(g / cm s^-2) and mass [solar masses]."""
    gravity_si = 10 ** (np.asarray(logg) - 2.0)
    return (
        np.sqrt(GRAVITATIONAL_CONSTANT * np.asarray(mass_msun) * SOLAR_MASS_KG / gravity_si) / SOLAR_RADIUS_M
    )


def dilution(radius_rsun: np.ndarray, distance_pc: np.ndarray) -> np.ndarray:
    """(R / d)^2, the factor from surface flux to flux at Earth, as a column (n, 1) to scale spectra."""
    return ((np.asarray(radius_rsun) * SOLAR_RADIUS_M / (np.asarray(distance_pc) * PARSEC_M)) ** 2)[:, None]
