"""The paper's (Leung & Bovy 2024) per-star features, computed from the joined survey columns.

All functions are vectorised over stars and return float arrays with NaN for missing values.
Column names of the inputs are the archives' own (Gaia lower case, APOGEE upper case).
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pandas as pd

from modeling_astro.observations import G_FLUX_ZERO_POINT

from .schema import XP_LENGTH

MAG_PER_LN_FLUX = 2.5 / np.log(10.0)
RELEVANCY_SOURCE_INDEX = 51
"""The paper copies the relevancy of coefficient 51 to coefficients 52-54."""

ASPCAPFLAG_BAD_BITS = (19, 23)
"""ASPCAPFLAG bits M_H_BAD (19) and STAR_BAD (23): labels are set to NaN when either is set."""
LOGEBV_FLOOR = -7.0
"""E(B-V) <= 0 is replaced by exp(LOGEBV_FLOOR), i.e. logebv = -7."""
EBV_MAX = 10.0
"""E(B-V) above this is treated as missing."""
FAKEMAG_MAX_PARALLAX_ERROR = 0.1
"""g_fakemag is NaN when parallax_error [mas] exceeds this."""
RUWE_MAX = 1.4
"""g_fakemag is NaN, and XP is cut, when RUWE >= this."""
ZERO_POINT_NU_EFF_RANGE = (1.1, 1.9)
"""Validity range of nu_eff_used_in_astrometry [1/micron] for the Lindegren zero-point of 5-p solutions."""


def g_band_flux(g_mag: np.ndarray) -> np.ndarray:
    """Gaia G-band flux f_G [e-/s] from the G magnitude."""
    return 10.0 ** ((G_FLUX_ZERO_POINT - np.asarray(g_mag, dtype=np.float64)) / 2.5)


def relevancy_mask(n_relevant_bases: np.ndarray) -> np.ndarray:
    """(n, 55) bool: True for coefficients the paper keeps (index < n_relevant, 52-54 follow 51)."""
    index = np.arange(XP_LENGTH)
    mask = index[None, :] < np.asarray(n_relevant_bases)[:, None]
    mask[:, RELEVANCY_SOURCE_INDEX + 1 :] = mask[:, RELEVANCY_SOURCE_INDEX : RELEVANCY_SOURCE_INDEX + 1]
    return mask


def normalised_xp(
    coefficients: np.ndarray, errors: np.ndarray, n_relevant_bases: np.ndarray, g_mag: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """XP coefficients and errors divided by f_G, NaN beyond the relevant bases; shapes (n, 55)."""
    keep = relevancy_mask(n_relevant_bases)
    flux = g_band_flux(g_mag)[:, None]
    return np.where(keep, coefficients / flux, np.nan), np.where(keep, errors / flux, np.nan)


def xp_quality_cuts(photometry: pd.DataFrame, xp_complete: np.ndarray) -> dict[str, np.ndarray]:
    """The paper's XP quality cuts, in order, as {cut name: passes (bool per star)}.

    A star fails a cut when the value is missing (NaN) too. The builder applies them to the XP
    part only: failing stars lose their XP coefficients but keep their other data.
    """
    g = photometry["phot_g_mean_mag"].to_numpy()
    bp_rp = photometry["bp_rp"].to_numpy()
    return {
        "xp_incomplete (BP or RP solution missing)": np.asarray(xp_complete, dtype=bool),
        "bp_rp outside (0, 4)": (bp_rp > 0) & (bp_rp < 4),
        "G outside (6, 17.5)": (g > 6) & (g < 17.5),
        f"ruwe >= {RUWE_MAX}": photometry["ruwe"].to_numpy() < RUWE_MAX,
        "phot_bp_rp_excess_factor >= 2": photometry["phot_bp_rp_excess_factor"].to_numpy() < 2,
    }


def _optional(frame: pd.DataFrame, name: str) -> np.ndarray:
    return frame[name].to_numpy(dtype=np.float64) if name in frame else np.full(len(frame), np.nan)


def colour_features(joined: pd.DataFrame) -> dict[str, np.ndarray]:
    """BP-RP, J-H, J-K and their errors.

    BP-RP error comes from phot_{bp,rp}_mean_flux_over_error when present (NaN otherwise). 2MASS
    comes from the Gaia archive's j_m/h_m/ks_m (+ *_msigcom); where those are missing, APOGEE's
    J/H/K (+ _ERR) are used (they are the same 2MASS photometry).
    """
    sigma_bp = MAG_PER_LN_FLUX / _optional(joined, "phot_bp_mean_flux_over_error")
    sigma_rp = MAG_PER_LN_FLUX / _optional(joined, "phot_rp_mean_flux_over_error")
    bands = {}
    for gaia_name, apogee_name in (("j_m", "J"), ("h_m", "H"), ("ks_m", "K")):
        value, error = _optional(joined, gaia_name), _optional(joined, f"{gaia_name[:-2]}_msigcom")
        use_apogee = np.isnan(value)
        value = np.where(use_apogee, _optional(joined, apogee_name), value)
        error = np.where(use_apogee, _optional(joined, f"{apogee_name}_ERR"), error)
        bands[apogee_name] = (value, error)
    (j, j_err), (h, h_err), (k, k_err) = bands["J"], bands["H"], bands["K"]
    return {
        "bprp": _optional(joined, "bp_rp"),
        "bprp_err": np.hypot(sigma_bp, sigma_rp),
        "jh": j - h,
        "jh_err": np.hypot(j_err, h_err),
        "jk": j - k,
        "jk_err": np.hypot(j_err, k_err),
    }


def apogee_labels(joined: pd.DataFrame) -> dict[str, np.ndarray]:
    """teff [K], logg, m_h [dex] and errors; NaN where ASPCAPFLAG bit 19/23 is set or STARFLAG != 0."""
    usable = apogee_labels_usable(joined)
    labels = {}
    for name, column in (("teff", "TEFF"), ("logg", "LOGG"), ("m_h", "M_H")):
        labels[name] = np.where(usable, _optional(joined, column), np.nan)
        labels[f"{name}_err"] = np.where(usable, _optional(joined, f"{column}_ERR"), np.nan)
    return labels


def apogee_labels_usable(joined: pd.DataFrame) -> np.ndarray:
    """bool per row: the APOGEE row is unflagged (no ASPCAPFLAG bit 19/23, STARFLAG == 0)."""
    bad_bits = sum(1 << bit for bit in ASPCAPFLAG_BAD_BITS)
    aspcapflag = joined["ASPCAPFLAG"].to_numpy(dtype=np.float64)
    starflag = joined["STARFLAG"].to_numpy(dtype=np.float64)
    present = np.isfinite(aspcapflag) & np.isfinite(starflag)
    flags = np.where(present, aspcapflag, 0).astype(np.int64)
    return present & ((flags & bad_bits) == 0) & (np.where(present, starflag, 1) == 0)


def log_ebv(ebv: np.ndarray, ebv_err: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Natural log of E(B-V): E <= 0 -> -7, E > 10 or missing -> NaN; error ebv_err / max(E, e^-7)."""
    ebv = np.asarray(ebv, dtype=np.float64)
    floor = np.exp(LOGEBV_FLOOR)
    valid = np.isfinite(ebv) & (ebv <= EBV_MAX)
    clipped = np.maximum(np.where(valid, ebv, 1.0), floor)
    return np.where(valid, np.log(clipped), np.nan), np.where(valid, ebv_err / clipped, np.nan)


@functools.cache
def _zero_point_module():
    from zero_point import zpt

    zpt.load_tables()
    return zpt


def parallax_zero_point(photometry: pd.DataFrame) -> np.ndarray:
    """Lindegren et al. (2021) parallax zero-point [mas] from the `gaiadr3-zeropoint` package.

    Out-of-range handling (explicit): G outside 6-21 and 6-p pseudocolour outside 1.24-1.72 use
    the package's plateau values (its documented behaviour: the correction is constant beyond those
    limits). 5-p sources with nu_eff_used_in_astrometry outside 1.1-1.9, where the package says
    the correction "can be seriously wrong", and 2-p solutions (no parallax), or any missing
    input, get NaN.
    """
    zpt = _zero_point_module()
    solved = photometry["astrometric_params_solved"].to_numpy(dtype=np.float64)
    g = photometry["phot_g_mean_mag"].to_numpy(dtype=np.float64)
    nu_eff = photometry["nu_eff_used_in_astrometry"].to_numpy(dtype=np.float64)
    pseudocolour = photometry["pseudocolour"].to_numpy(dtype=np.float64)
    ecl_lat = photometry["ecl_lat"].to_numpy(dtype=np.float64)
    five_p, six_p = solved == 31, solved == 95
    usable = (
        np.isfinite(g)
        & np.isfinite(ecl_lat)
        & (
            (five_p & (nu_eff > ZERO_POINT_NU_EFF_RANGE[0]) & (nu_eff < ZERO_POINT_NU_EFF_RANGE[1]))
            | (six_p & np.isfinite(pseudocolour))
        )
    )
    result = np.full(len(photometry), np.nan)
    if usable.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # plateau warnings, handled as documented above
            result[usable] = zpt.get_zpt(
                g[usable],
                np.where(five_p, nu_eff, 1.5)[usable],
                np.where(six_p, pseudocolour, 1.5)[usable],
                ecl_lat[usable],
                solved[usable].astype(np.int64),
            )
    return result


def g_fakemag(photometry: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(parallax - zero-point) * 10**(0.2 G) and its error; NaN if parallax_error > 0.1 or RUWE >= 1.4."""
    scale = 10.0 ** (0.2 * photometry["phot_g_mean_mag"].to_numpy(dtype=np.float64))
    parallax = photometry["parallax"].to_numpy(dtype=np.float64) - parallax_zero_point(photometry)
    parallax_error = photometry["parallax_error"].to_numpy(dtype=np.float64)
    good = (parallax_error <= FAKEMAG_MAX_PARALLAX_ERROR) & (photometry["ruwe"].to_numpy() < RUWE_MAX)
    return np.where(good, parallax * scale, np.nan), np.where(good, parallax_error * scale, np.nan)
