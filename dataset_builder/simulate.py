"""A deterministic simulated APOGEE x Gaia XP survey, written in the raw formats the real readers read.

`simulate_survey` draws stars (`populations`), computes their spectra at Earth (`physics`),
projects them onto the real Gaia XP bases (`xp_projection`), adds realistic noise and missing
values, and writes:

- ``xp_continuous/XP_CONTINUOUS_<k>.fits``: Gaia DR3 XP_CONTINUOUS files in the archive schema
  (variable-length array columns; a missing BP or RP solution is an empty array);
- ``gaia_source.fits``: gaia_source photometry/astrometry with 2MASS and ``ebv`` columns;
- ``allStar.fits``: an APOGEE DR17 allStar-like table for the APOGEE targets (with flags and a
  few duplicate Gaia ids, as in the real file);
- ``truth.parquet``: noise-free ``true_*`` columns for every star.

The same seed gives byte-identical files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from modeling_astro.observations import G_FLUX_ZERO_POINT

from . import xp_errors
from .physics import (
    ExtinctionLaw,
    StellarParameters,
    SurfaceFluxModel,
    SyntheticPhotometry,
    dilution,
    stellar_radius,
    wavelength_grid,
)
from .populations import HOT_STAR_FRACTION, StarSample, sample_stars
from .schema import XP_LENGTH
from .xp_calibration import colour_and_log_sn, shipped_calibration
from .xp_forward import XPForwardModel
from .xp_projection import XPProjector

SOLUTION_ID = 4545469030156206080
BASIS_FUNCTION_ID = {"bp": 56, "rp": 57}
N_CORRELATIONS = XP_LENGTH * (XP_LENGTH - 1) // 2
XP_MODELS: tuple[str, ...] = ("ridge", "hermite")
"""``ridge``: ridge projection of the flux onto GaiaXPy's calibrated bases, G-tied errors, no correlations
(simulator v1); ``hermite``: the instrument's forward model (`xp_forward`) calibrated to real DR3 spectra
(`xp_calibration`: means, spreads and error profiles at matched colour and S/N), DR3 error law, correlated noise,
the archive's n_relevant_bases (`xp_errors`) and hot OBA stars."""
TWOMASS_SENTINEL = 99.999
ASPCAP_M_H_BAD = 1 << 19
ASPCAP_STAR_BAD = 1 << 23
_BATCH = 4096


@dataclass(frozen=True)
class SimulatedSurveyFiles:
    """Paths of the raw files written by `simulate_survey`."""

    xp_files: list[Path]
    gaia_source: Path
    allstar: Path
    truth: Path


class _Instrument:
    """The precomputed forward model: surface flux, extinction, photometry and XP projection on one grid."""

    def __init__(self, xp_model: str = "ridge") -> None:
        wavelength = wavelength_grid()
        self.surface_flux = SurfaceFluxModel(wavelength)
        self.extinction = ExtinctionLaw(wavelength)
        self.photometry = SyntheticPhotometry(wavelength)
        self.xp = XPForwardModel(wavelength) if xp_model == "hermite" else XPProjector(wavelength)

    def observe(self, sample: StarSample, index: np.ndarray) -> dict[str, np.ndarray]:
        """Noise-free magnitudes, distance and XP coefficients of the stars ``index`` of ``sample``."""
        fields = StellarParameters.__annotations__
        stars = StellarParameters(**{name: getattr(sample.stars, name)[index] for name in fields})
        radius = stellar_radius(stars.logg, sample.mass[index])
        flux = self.surface_flux(stars) * self.extinction.transmission(sample.ebv[index], sample.rv[index])
        flux *= dilution(radius, np.full(len(index), 10.0))
        absolute_g = self.photometry.magnitudes(flux)["G"]
        distance_modulus = sample.g_observed[index] - absolute_g
        flux *= 10 ** (-0.4 * distance_modulus)[:, None]
        out = {f"mag_{band}": mag for band, mag in self.photometry.magnitudes(flux).items()}
        out["distance_pc"] = 10 ** (1 + distance_modulus / 5)
        for band, coefficients in self.xp.project(flux).items():
            out[f"{band}_coefficients"] = coefficients
        return out


def _xp_errors(rng: np.random.Generator, coefficients: np.ndarray, g_flux: np.ndarray) -> np.ndarray:
    """Coefficient errors: sigma(c0)/c0 = sqrt(0.043 / f_G + 0.00097^2) (0.1% at G=11, 0.6% at G=17.5).

    Higher-order errors decline with the basis index as in real DR3 solutions.
    """
    sigma0 = np.abs(coefficients[:, :1]) * np.sqrt(0.043 / g_flux[:, None] + 0.00097**2)
    shape = np.exp(-np.arange(XP_LENGTH) / 20.0)[None, :]
    return sigma0 * shape * np.exp(rng.normal(0, 0.15, coefficients.shape))


def _n_relevant_bases(coefficients: np.ndarray, errors: np.ndarray) -> np.ndarray:
    """Index after the last coefficient measured at > 3 sigma (at least 10), like DR3's n_relevant_bases."""
    significant = np.abs(coefficients) > 3 * errors
    last = XP_LENGTH - np.argmax(significant[:, ::-1], axis=1)
    return np.clip(last, 10, XP_LENGTH).astype(np.int16)


def _twomass_error(rng: np.random.Generator, mag: np.ndarray, floor: float, slope: float) -> np.ndarray:
    """2MASS sigma: sqrt(floor^2 + (slope 10^(0.4 (m - 14)))^2), log-normal scatter 0.2 (fit to real data)."""
    sigma = np.sqrt(floor**2 + (slope * 10 ** (0.4 * (mag - 14.0))) ** 2)
    return sigma * np.exp(rng.normal(0, 0.2, mag.shape))


TWOMASS_ERROR_LAWS = {"J": (0.0248, 0.0140), "H": (0.0281, 0.0283), "K": (0.0237, 0.0530)}
"""(floor, slope) of the 2MASS error laws, fit to the bin medians of ocCastroGinard_tmass.fits."""
TWOMASS_LIMITS = {"J": 16.8, "H": 16.2, "K": 15.6}
"""Approximate 2MASS faint limits; fainter simulated magnitudes are non-detections (99.999)."""


def _gaia_source(rng: np.random.Generator, sample: StarSample, obs: dict[str, np.ndarray], source_id: np.ndarray):
    from zero_point import zpt

    n = len(source_id)
    g = obs["mag_G"]
    bp_rp_true = obs["mag_BP"] - obs["mag_RP"]
    noise = lambda scale: rng.normal(0, 1, n) * scale  # noqa: E731
    g_obs = g + noise(0.0003 + 0.0006 * 10 ** (0.2 * (g - 15)))
    bp_obs = obs["mag_BP"] + noise(0.001 + 0.002 * 10 ** (0.3 * (g - 15)))
    rp_obs = obs["mag_RP"] + noise(0.001 + 0.002 * 10 ** (0.3 * (g - 15)))
    six_parameter = (g > 16) & (rng.random(n) < 0.3)
    nu_eff = 1.76 - (1.61 / np.pi) * np.arctan(0.531 * np.clip(bp_rp_true, 0.15, 3))
    ecl_lat = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    solved = np.where(six_parameter, 95, 31).astype(np.int16)
    pseudocolour = np.where(six_parameter, nu_eff + noise(0.02), np.nan)
    nu_eff_used = np.where(six_parameter, np.nan, nu_eff)
    zpt.load_tables()
    zero_point = zpt.get_zpt(
        np.clip(g_obs, 6, 21),
        np.clip(nu_eff_used, 1.1, 1.9),
        np.clip(pseudocolour, 1.24, 1.72),
        ecl_lat,
        solved,
        _warnings=False,
    )
    parallax_error = np.sqrt(0.012**2 + (0.025 * 10 ** (0.2 * (g - 15))) ** 2) * np.exp(noise(0.15))
    parallax = 1000.0 / obs["distance_pc"] + zero_point + noise(parallax_error)
    columns = {
        "source_id": source_id,
        "phot_g_mean_mag": g_obs.astype(np.float32),
        "phot_bp_mean_mag": bp_obs.astype(np.float32),
        "phot_rp_mean_mag": rp_obs.astype(np.float32),
        "bp_rp": (bp_obs - rp_obs).astype(np.float32),
        "parallax": parallax,
        "parallax_error": parallax_error.astype(np.float32),
        "ruwe": np.exp(rng.normal(0.0, 0.12, n) + (rng.random(n) < 0.05) * rng.exponential(0.5, n)).astype(np.float32),
        "phot_bp_rp_excess_factor": (
            1.18 + 0.03 * bp_rp_true + np.abs(noise(0.01)) + (rng.random(n) < 0.005) * 1.5
        ).astype(np.float32),
        "nu_eff_used_in_astrometry": nu_eff_used.astype(np.float32),
        "pseudocolour": pseudocolour.astype(np.float32),
        "ecl_lat": ecl_lat,
        "astrometric_params_solved": solved,
    }
    matched = rng.random(n) > np.where(g > 16.5, 0.25, 0.02)  # 2MASS cross-match exists
    for band, (floor, slope) in TWOMASS_ERROR_LAWS.items():
        name = {"J": "j", "H": "h", "K": "ks"}[band]
        sigma = _twomass_error(rng, obs[f"mag_{band}"], floor, slope)
        mag = obs[f"mag_{band}"] + rng.normal(0, 1, n) * sigma
        detected = obs[f"mag_{band}"] < TWOMASS_LIMITS[band]
        columns[f"{name}_m"] = np.where(matched, np.where(detected, mag, TWOMASS_SENTINEL), np.nan).astype(np.float32)
        columns[f"{name}_msigcom"] = np.where(matched, np.where(detected, sigma, TWOMASS_SENTINEL), np.nan).astype(
            np.float32
        )
    columns["ebv"] = np.maximum(sample.ebv * np.exp(noise(0.15)) + noise(0.01), 0.0).astype(np.float32)
    return columns


def _allstar(rng: np.random.Generator, sample: StarSample, gaia: dict[str, np.ndarray], source_id: np.ndarray):
    """APOGEE DR17 allStar-like rows for APOGEE targets with H < 12.2 (plus ~1% repeat observations)."""
    h = gaia["h_m"]
    selected = np.flatnonzero(sample.is_apogee_target & (h < 12.2))
    repeats = selected[rng.random(len(selected)) < 0.01]
    rows = np.concatenate([selected, repeats])
    n = len(rows)
    snr = np.exp(rng.normal(np.log(150), 0.6, n))
    precision = 1 + 60 / snr
    errors = {"TEFF": 28.0 * precision, "LOGG": 0.045 * precision, "M_H": 0.025 * precision}
    truth = {"TEFF": sample.stars.teff, "LOGG": sample.stars.logg, "M_H": sample.stars.m_h}
    aspcapflag = np.zeros(n, dtype=np.int64)
    aspcapflag[rng.random(n) < 0.01] |= ASPCAP_M_H_BAD
    aspcapflag[(rng.random(n) < 0.02) | (sample.stars.teff[rows] < 3500)] |= ASPCAP_STAR_BAD
    telescope = np.where(np.arange(n) < len(selected), "apo25m", "lco25m")
    columns = {
        "APOGEE_ID": np.array([f"2M{sid % 10**16:016d}" for sid in source_id[rows]]),
        "TELESCOPE": telescope,
        "GAIAEDR3_SOURCE_ID": source_id[rows],
    }
    for name, sigma in errors.items():
        columns[name] = (truth[name][rows] + rng.normal(0, 1, n) * sigma).astype(np.float32)
        columns[f"{name}_ERR"] = sigma.astype(np.float32)
    columns["ASPCAPFLAG"] = aspcapflag
    columns["STARFLAG"] = np.where(rng.random(n) < 0.02, 1 << 3, 0).astype(np.int64)
    for band, name in (("J", "j"), ("H", "h"), ("K", "ks")):
        columns[band] = gaia[f"{name}_m"][rows]
        columns[f"{band}_ERR"] = gaia[f"{name}_msigcom"][rows]
    columns["SNR"] = snr.astype(np.float32)
    return columns


def _write_fits(path: Path, columns: dict[str, np.ndarray]) -> None:
    from astropy.table import Table

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Table(columns).write(path, format="fits")


def _xp_hdu(
    rng: np.random.Generator,
    source_id: np.ndarray,
    coefficients: dict,
    errors: dict,
    missing: dict,
    correlations: dict | None = None,
    relevant: dict | None = None,
):
    """A BinTableHDU in the archive's XP_CONTINUOUS schema (variable-length arrays; empty = no solution).

    ``correlations`` {band: (n, 1485)} packed as the archive packs them (zeros when None); ``relevant``
    {band: (n,)} n_relevant_bases (the v1 3-sigma rule when None).
    """
    from astropy.io import fits

    n = len(source_id)
    int_null = -32768
    columns = [
        fits.Column(name="source_id", format="K", array=source_id),
        fits.Column(name="solution_id", format="K", array=np.full(n, SOLUTION_ID)),
    ]
    zeros = np.zeros(N_CORRELATIONS, dtype=np.float32)
    for band in ("bp", "rp"):
        absent = missing[band]
        n_measurements = rng.integers(400, 6000, n)
        n_rejected = rng.binomial(n_measurements, 0.01)
        dof = n_measurements - n_rejected - XP_LENGTH
        std = np.exp(rng.normal(0.08, 0.08, n))

        def ints(values, absent=absent):
            return np.where(absent, int_null, values).astype(np.int16)

        def floats(values, absent=absent):
            return np.where(absent, np.nan, values).astype(np.float32)

        def arrays(matrix, dtype, absent=absent):
            return [np.array([], dtype=dtype) if skip else row.astype(dtype) for row, skip in zip(matrix, absent)]

        band_relevant = _n_relevant_bases(coefficients[band], errors[band]) if relevant is None else relevant[band]
        band_correlations = np.broadcast_to(zeros, (n, N_CORRELATIONS)) if correlations is None else correlations[band]
        columns += [
            fits.Column(
                name=f"{band}_basis_function_id",
                format="I",
                null=int_null,
                array=ints(np.full(n, BASIS_FUNCTION_ID[band])),
            ),
            fits.Column(name=f"{band}_degrees_of_freedom", format="I", null=int_null, array=ints(dof)),
            fits.Column(name=f"{band}_n_parameters", format="I", null=int_null, array=ints(np.full(n, XP_LENGTH))),
            fits.Column(name=f"{band}_n_measurements", format="I", null=int_null, array=ints(n_measurements)),
            fits.Column(name=f"{band}_n_rejected_measurements", format="I", null=int_null, array=ints(n_rejected)),
            fits.Column(name=f"{band}_standard_deviation", format="E", array=floats(std)),
            fits.Column(name=f"{band}_chi_squared", format="E", array=floats(std**2 * dof)),
            fits.Column(
                name=f"{band}_coefficients",
                format=f"PD({XP_LENGTH})",
                array=arrays(coefficients[band], np.float64),
            ),
            fits.Column(
                name=f"{band}_coefficient_errors",
                format=f"PE({XP_LENGTH})",
                array=arrays(errors[band], np.float32),
            ),
            fits.Column(
                name=f"{band}_coefficient_correlations",
                format=f"PE({N_CORRELATIONS})",
                array=arrays(band_correlations, np.float32),
            ),
            fits.Column(name=f"{band}_n_relevant_bases", format="I", null=int_null, array=ints(band_relevant)),
            fits.Column(
                name=f"{band}_relative_shrinking",
                format="E",
                array=floats(1 - np.abs(rng.normal(0, 1e-3, n))),
            ),
        ]
    return fits.BinTableHDU.from_columns(columns)


def _source_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unique, Gaia-like (positive, < 2^63) source ids."""
    return np.sort(rng.choice(6_900_000_000_000_000_000, size=n, replace=False)).astype(np.int64)


def simulate_survey(
    out_dir: str | Path,
    n_stars: int = 50_000,
    seed: int = 0,
    xp_rows_per_file: int = 10_000,
    missing_band_fraction: float = 0.005,
    progress: bool = True,
    xp_model: str = "ridge",
    hot_star_fraction: float | None = None,
    calibrated: bool = True,
) -> SimulatedSurveyFiles:
    """Simulate a cross-survey catalogue and write it to ``out_dir`` (created atomically).

    Args:
        out_dir: folder to create; it must not exist (or be empty).
        n_stars: number of Gaia sources (every one has an XP entry; ~2/3 are APOGEE targets).
        seed: seed of the numpy Generator; the same seed gives byte-identical files.
        xp_rows_per_file: rows per XP_CONTINUOUS file (the archive delivers chunked files).
        missing_band_fraction: fraction of sources with an empty BP (and, separately, RP) solution.
        progress: show a tqdm progress bar.
        xp_model: ``"ridge"`` (simulator v1) or ``"hermite"`` (the instrument's forward model with DR3 errors,
            correlations and n_relevant_bases); see `XP_MODELS`.
        hot_star_fraction: fraction of XP-only stars that are hot OBA dwarfs; default 0 for ``ridge``,
            `populations.HOT_STAR_FRACTION` for ``hermite``.
        calibrated: for ``hermite``, map the forward model's coefficients and error profiles onto real DR3
            (`xp_calibration`; default); ``False`` gives the bare forward model with the median error profile.

    Returns:
        SimulatedSurveyFiles with the paths of the XP files, gaia_source, allStar and truth table.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} already exists and is not empty; choose a new folder or delete it")
    if n_stars < 1:
        raise ValueError(f"n_stars must be positive, got {n_stars}")
    if xp_model not in XP_MODELS:
        raise ValueError(f"xp_model must be one of {XP_MODELS}, got {xp_model!r}")
    if hot_star_fraction is None:
        hot_star_fraction = HOT_STAR_FRACTION if xp_model == "hermite" else 0.0
    rng = np.random.default_rng(seed)
    sample = sample_stars(rng, n_stars, hot_star_fraction=hot_star_fraction)
    source_id = _source_ids(rng, n_stars)
    instrument = _Instrument(xp_model)
    batches = [np.arange(start, min(start + _BATCH, n_stars)) for start in range(0, n_stars, _BATCH)]
    parts = [
        instrument.observe(sample, index) for index in tqdm(batches, desc="simulating spectra", disable=not progress)
    ]
    obs = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

    gaia = _gaia_source(rng, sample, obs, source_id)
    g_flux = 10 ** ((G_FLUX_ZERO_POINT - obs["mag_G"]) / 2.5)
    coefficients, errors, missing, correlations, relevant = {}, {}, {}, {}, {}
    if xp_model == "hermite":
        clean = {band: obs[f"{band}_coefficients"] for band in ("bp", "rp")}
        sigma0 = {band: xp_errors.sigma0(rng, band, clean[band][:, 0]) for band in clean}
        if calibrated:
            calibration = shipped_calibration()
            clean = calibration.apply(clean, sigma0["bp"])
            with np.errstate(divide="ignore", invalid="ignore"):
                profiles = calibration.error_profiles(rng, *colour_and_log_sn(clean, sigma0["bp"]))
        else:
            profiles = {band: xp_errors.median_profiles(rng, band, len(clean[band])) for band in clean}
    for band in ("bp", "rp"):
        if xp_model == "hermite":
            errors[band] = sigma0[band][:, None] * profiles[band]
            noise, correlations[band] = xp_errors.correlated_noise(rng, band, errors[band])
            coefficients[band] = clean[band] + noise
            relevant[band] = xp_errors.n_relevant_bases(coefficients[band], errors[band])
        else:
            errors[band] = _xp_errors(rng, obs[f"{band}_coefficients"], g_flux)
            coefficients[band] = obs[f"{band}_coefficients"] + rng.normal(0, 1, errors[band].shape) * errors[band]
        missing[band] = rng.random(n_stars) < missing_band_fraction * (1 + 3 * (obs["mag_G"] > 16.5))
    missing["rp"] &= ~missing["bp"]
    allstar = _allstar(rng, sample, gaia, source_id)
    truth = {
        "source_id": source_id,
        "true_teff": sample.stars.teff,
        "true_logg": sample.stars.logg,
        "true_m_h": sample.stars.m_h,
        "true_alpha_m": sample.stars.alpha_m,
        "true_c_m": sample.stars.c_m,
        "true_ebv": sample.ebv,
        "true_rv": sample.rv,
        "true_parallax": 1000.0 / obs["distance_pc"],
        "true_mass": sample.mass,
        "true_g": obs["mag_G"],
        "true_bp_rp": obs["mag_BP"] - obs["mag_RP"],
        "true_j": obs["mag_J"],
        "true_h": obs["mag_H"],
        "true_ks": obs["mag_K"],
        "true_is_giant": (sample.population != "main_sequence").astype(np.float32),
    }
    truth = {
        name: np.asarray(values, dtype=np.float32) if name != "source_id" else values for name, values in truth.items()
    }

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        (staging / "xp_continuous").mkdir()
        xp_files = []
        starts = range(0, n_stars, xp_rows_per_file)
        for k, start in enumerate(tqdm(starts, desc="writing XP files", disable=not progress)):
            rows = slice(start, start + xp_rows_per_file)
            hdu = _xp_hdu(
                rng,
                source_id[rows],
                {band: values[rows] for band, values in coefficients.items()},
                {band: values[rows] for band, values in errors.items()},
                {band: values[rows] for band, values in missing.items()},
                {band: values[rows] for band, values in correlations.items()} if correlations else None,
                {band: values[rows] for band, values in relevant.items()} if relevant else None,
            )
            name = Path("xp_continuous") / f"XP_CONTINUOUS_{k:03d}.fits"
            hdu.writeto(staging / name)
            xp_files.append(name)
        _write_fits(staging / "gaia_source.fits", gaia)
        _write_fits(staging / "allStar.fits", allstar)
        pd.DataFrame(truth).to_parquet(staging / "truth.parquet", index=False)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return SimulatedSurveyFiles(
        xp_files=[out_dir / name for name in xp_files],
        gaia_source=out_dir / "gaia_source.fits",
        allstar=out_dir / "allStar.fits",
        truth=out_dir / "truth.parquet",
    )
