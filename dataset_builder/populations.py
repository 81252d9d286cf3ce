"""Stellar populations of the simulated APOGEE x Gaia XP cross-match: labels, masses, extinction, brightness.

The mix mirrors the paper's training set (Leung & Bovy 2024): about two thirds of the stars are
APOGEE targets (mostly red giants and red-clump stars, a minority of dwarfs) and the rest are
XP-only stars with a larger dwarf fraction. Relations are analytic (no isochrone grid): the red
giant branch Teff(log g, [M/H]), a red clump, and a main sequence with a turn-off/subgiant tail.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .physics import StellarParameters

POPULATIONS: tuple[str, ...] = ("rgb", "red_clump", "main_sequence")
APOGEE_MIX = {"rgb": 0.52, "red_clump": 0.23, "main_sequence": 0.25}
XP_ONLY_MIX = {"rgb": 0.30, "red_clump": 0.15, "main_sequence": 0.55}
HOT_STAR_FRACTION = 0.06
"""Fraction of XP-only stars that are hot (OBA) dwarfs in the realistic survey (APOGEE rarely labels them)."""
APOGEE_FRACTION = 0.67
"""Fraction of stars that are APOGEE targets (the paper: ~2/3 of its training stars carry labels)."""


@dataclass(frozen=True)
class StarSample:
    """Per-star truth of a simulated catalogue (arrays of length n)."""

    stars: StellarParameters
    population: np.ndarray
    mass: np.ndarray
    is_apogee_target: np.ndarray
    ebv: np.ndarray
    rv: np.ndarray
    g_observed: np.ndarray
    """Noise-free apparent G magnitude (with dust); with the absolute magnitude it sets the distance."""


def _metallicity(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """[M/H] and [alpha/M]: a thin disc plus a metal-poor, alpha-enhanced thick disc/halo tail."""
    thick = rng.random(n) < 0.18
    m_h = np.where(thick, rng.normal(-0.55, 0.35, n), rng.normal(-0.08, 0.24, n))
    m_h = np.clip(m_h, -2.3, 0.5)
    alpha = np.where(thick, 0.28 - 0.1 * np.clip(m_h + 0.5, 0, None), 0.04 - 0.12 * np.clip(m_h, None, 0))
    return m_h, np.clip(alpha + rng.normal(0, 0.03, n), -0.1, 0.4)


def _labels(rng: np.random.Generator, population: np.ndarray, m_h: np.ndarray) -> tuple[np.ndarray, ...]:
    """Teff, log g and mass of each star given its population and metallicity."""
    n = len(population)
    teff = np.empty(n)
    logg = np.empty(n)
    mass = np.empty(n)
    rgb = population == "rgb"
    logg[rgb] = 3.6 - rng.gamma(2.2, 0.55, rgb.sum())
    logg[rgb] = np.clip(logg[rgb], 0.3, 3.7)
    teff[rgb] = 4640 + 330 * (logg[rgb] - 2.5) - 280 * m_h[rgb] + rng.normal(0, 70, rgb.sum())
    mass[rgb] = np.exp(rng.normal(np.log(1.2), 0.3, rgb.sum()))
    clump = population == "red_clump"
    logg[clump] = rng.normal(2.42, 0.09, clump.sum())
    teff[clump] = 4720 - 300 * m_h[clump] + rng.normal(0, 80, clump.sum())
    mass[clump] = np.exp(rng.normal(np.log(1.3), 0.25, clump.sum()))
    dwarf = population == "main_sequence"
    n_dwarf = dwarf.sum()
    teff[dwarf] = np.clip(rng.normal(5300, 750, n_dwarf), 3500, 7000)
    mass[dwarf] = (teff[dwarf] / 5772.0) ** 1.6 * 10 ** (-0.1 * m_h[dwarf])
    zams = 4.44 + 0.35 * (5772.0 - teff[dwarf]) / 1500.0
    evolved = rng.gamma(1.3, 0.15, n_dwarf) * np.clip((teff[dwarf] - 4800.0) / 1000.0, 0, 1.5)
    logg[dwarf] = np.clip(zams - evolved + rng.normal(0, 0.05, n_dwarf), 3.4, 5.1)
    return np.clip(teff, 3300, 7500), logg, mass


def _hot_stars(rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    """Teff [K], log g and mass [Msun] of hot (late O to A) main-sequence stars: Teff log-uniform 7,000-30,000 K."""
    teff = np.exp(rng.uniform(np.log(7000.0), np.log(30000.0), n))
    logg = np.clip(rng.normal(4.15, 0.12, n), 3.6, 4.4)
    mass = (teff / 5772.0) ** 1.8
    return teff, logg, mass


def sample_stars(rng: np.random.Generator, n_stars: int, hot_star_fraction: float = 0.0) -> StarSample:
    """Draw ``n_stars`` stars: populations, labels, abundances, extinction and unextincted G magnitude.

    ``hot_star_fraction`` of the XP-only stars are hot OBA main-sequence stars (`HOT_STAR_FRACTION` is
    the realistic value); with 0 no random number is drawn for them, so older samples are unchanged.
    """
    if not 0.0 <= hot_star_fraction <= 1.0:
        raise ValueError(f"hot_star_fraction must be in [0, 1], got {hot_star_fraction}")
    is_apogee = rng.random(n_stars) < APOGEE_FRACTION
    population = np.empty(n_stars, dtype=object)
    for mask, mix in ((is_apogee, APOGEE_MIX), (~is_apogee, XP_ONLY_MIX)):
        population[mask] = rng.choice(POPULATIONS, size=mask.sum(), p=[mix[p] for p in POPULATIONS])
    population = population.astype(str)
    m_h, alpha_m = _metallicity(rng, n_stars)
    teff, logg, mass = _labels(rng, population, m_h)
    if hot_star_fraction > 0:
        # their own generator: one draw here, none interleaved with the draws below
        hot_rng = np.random.default_rng(rng.integers(0, 2**63))
        hot = ~is_apogee & (hot_rng.random(n_stars) < hot_star_fraction)
        population[hot] = "main_sequence"
        teff[hot], logg[hot], mass[hot] = _hot_stars(hot_rng, int(hot.sum()))
    giant = population != "main_sequence"
    c_m = np.where(giant, -0.15 - 0.1 * (3 - logg).clip(0, None), 0.0) + rng.normal(0, 0.08, n_stars)
    stars = StellarParameters(
        teff=teff,
        logg=logg,
        m_h=m_h,
        alpha_m=alpha_m,
        c_m=c_m,
        microturbulence=np.clip(np.where(giant, 1.9 - 0.25 * (logg - 2), 1.1) + rng.normal(0, 0.2, n_stars), 0.5, 3),
    )
    ebv = np.minimum(np.exp(rng.normal(-2.41, 1.75, n_stars)), 3.0)
    rv = np.clip(rng.normal(3.1, 0.2, n_stars), 2.4, 4.5)
    # APOGEE targets are bright in H (H < 12.2); XP-only stars fill G down to the 17.5 limit
    g_observed = np.where(is_apogee, rng.uniform(8.0, 15.5, n_stars), rng.uniform(9.0, 17.6, n_stars))
    return StarSample(
        stars=stars,
        population=population,
        mass=mass,
        is_apogee_target=is_apogee,
        ebv=ebv,
        rv=rv,
        g_observed=g_observed,
    )
