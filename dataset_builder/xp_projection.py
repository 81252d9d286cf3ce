"""Projection of sampled spectra onto the real Gaia DR3 XP basis functions (BP and RP).

The forward model (coefficients -> absolute flux in W m^-2 nm^-1) is GaiaXPy's own external
calibration model: the Hermite inverse bases, dispersion and instrument response shipped in
``gaiaxpy/config``. These are GaiaXPy internals, not public API, so the version is pinned by
`GAIAXPY_VERSION` and checked on use.

The inverse (flux -> coefficients) is a ridge (Tikhonov) solve weighted by the instrument
response, with a per-coefficient prior that decays with the basis index; plain least squares
is ill-conditioned (condition number ~4e12 for BP). A Gaussian line-spread function (resolving
power ~60 in BP, ~40 in RP) is folded into the same linear map, so projecting a batch of spectra
is one matrix product.
"""

from __future__ import annotations

import contextlib
import io
from functools import cache

import numpy as np

from .schema import XP_LENGTH

GAIAXPY_VERSION = "2.1.5"
"""The GaiaXPy release whose internal instrument model is used (its internals are not public API)."""

BANDS: tuple[str, ...] = ("bp", "rp")
_BAND_MODEL = {"bp": "v375wi", "rp": "v142r"}
_BAND_SAMPLING_NM = {"bp": (320.0, 700.0), "rp": (615.0, 1090.0)}
_RESOLVING_POWER = {"bp": 60.0, "rp": 40.0}
_PRIOR_DECAY = {"bp": 10.0, "rp": 10.0}
"""e-folding (in basis index) of the prior scale of each coefficient relative to the 0th."""
_MIN_RELATIVE_RESPONSE = 0.02
_RIDGE_STRENGTH = 1e-8
"""Ridge weight relative to the mean diagonal of the normal matrix; real spectra round-trip to ~1 sigma."""


def check_gaiaxpy_version() -> None:
    """Raise a RuntimeError saying what to install unless GaiaXPy is the version whose internals this code uses."""
    import gaiaxpy

    version = getattr(gaiaxpy, "__version__", None)
    if version is None:
        from importlib.metadata import version as package_version

        version = package_version("gaiaxpy")
    if version != GAIAXPY_VERSION:
        raise RuntimeError(
            f"the XP projection uses GaiaXPy {GAIAXPY_VERSION} internals but GaiaXPy {version} is installed; "
            f"install it with `pip install gaiaxpy=={GAIAXPY_VERSION}`"
        )


@cache
def band_design_matrix(band: str, step_nm: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The GaiaXPy design matrix of one band on a regular wavelength grid.

    Returns ``(wavelength_nm, design, response)``: ``design`` has shape (55, n) and maps XP
    coefficients to absolute flux [W m^-2 nm^-1]; ``response`` is the instrument response at
    each wavelength. Only wavelengths where the response exceeds 2% of its peak are kept.
    """
    if band not in BANDS:
        raise ValueError(f"band must be one of {BANDS}, got {band!r}")
    check_gaiaxpy_version()
    from gaiaxpy.calibrator.external_instrument_model import ExternalInstrumentModel
    from gaiaxpy.config.paths import config_path
    from gaiaxpy.spectrum.sampled_basis_functions import SampledBasisFunctions

    low, high = _BAND_SAMPLING_NM[band]
    wavelength = np.arange(low, high + step_nm / 2, step_nm)
    prefix = f"{config_path}/{band}C03_{_BAND_MODEL[band]}"
    with contextlib.redirect_stdout(io.StringIO()):  # GaiaXPy prints progress while parsing the bases
        model = ExternalInstrumentModel.from_config_csv(
            f"{prefix}_dispersion.csv", f"{prefix}_response.csv", f"{prefix}_bases.csv"
        )
    design = SampledBasisFunctions.from_external_instrument_model(
        wavelength, np.ones_like(wavelength), model
    ).design_matrix
    response = np.clip(model.get_response(wavelength), 0.0, None)
    # where the response vanishes the calibrated bases blow up (norm ~ 1 / response): keep the band proper
    inside = response >= _MIN_RELATIVE_RESPONSE * response.max()
    return wavelength[inside], np.asarray(design, dtype=np.float64)[:, inside], response[inside]


def _line_spread_matrix(target: np.ndarray, source: np.ndarray, resolving_power: float) -> np.ndarray:
    """Row-normalised Gaussian LSF from grid ``source`` onto grid ``target``: (n_target, n_source)."""
    sigma = target[:, None] / (resolving_power * 2.3548)
    kernel = np.exp(-0.5 * ((source[None, :] - target[:, None]) / sigma) ** 2) * np.gradient(source)[None, :]
    return kernel / kernel.sum(axis=1, keepdims=True)


class XPProjector:
    """Maps spectra sampled on a fixed wavelength grid to Gaia XP coefficients, in one matrix product.

    Args:
        wavelength_nm: the (fine) grid the spectra are sampled on; it must cover 320-1090 nm.

    The projection is linear, so ``project(flux * k) == k * project(flux)``.
    """

    def __init__(self, wavelength_nm: np.ndarray) -> None:
        wavelength_nm = np.asarray(wavelength_nm, dtype=np.float64)
        if wavelength_nm.min() > 320.0 or wavelength_nm.max() < 1090.0:
            raise ValueError("the wavelength grid must cover 320-1090 nm to project onto the XP bases")
        self.wavelength_nm = wavelength_nm
        self.matrices = {band: self._projection_matrix(band) for band in BANDS}

    def _projection_matrix(self, band: str) -> np.ndarray:
        grid, design, response = band_design_matrix(band)
        weights = response / response.max()
        normal = (design * weights) @ design.T
        # prior: coefficient i has scale ~ c0 * exp(-i / decay), so its penalty grows as exp(2 i / decay)
        ridge = (
            _RIDGE_STRENGTH
            * np.trace(normal)
            / XP_LENGTH
            * np.exp(2 * np.arange(XP_LENGTH) / _PRIOR_DECAY[band])
        )
        solve = np.linalg.solve(normal + np.diag(ridge), design * weights)  # (55, n_grid)
        lsf = _line_spread_matrix(grid, self.wavelength_nm, _RESOLVING_POWER[band])  # (n_grid, n_fine)
        return (solve @ lsf).T  # (n_fine, 55)

    def project(self, flux: np.ndarray) -> dict[str, np.ndarray]:
        """XP coefficients of spectra ``flux`` (n, n_wavelength) [W m^-2 nm^-1]: {band: (n, 55)}."""
        flux = np.atleast_2d(flux)
        return {band: flux @ matrix for band, matrix in self.matrices.items()}

    @staticmethod
    def reconstruct(band: str, coefficients: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sampled flux of coefficients (n, 55) of one band: ``(wavelength_nm, flux (n, n_grid))``."""
        grid, design, _ = band_design_matrix(band)
        return grid, np.atleast_2d(coefficients) @ design
