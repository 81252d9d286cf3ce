"""Forward model of Gaia XP: a stellar spectrum at Earth -> DR3 BP/RP coefficients through the instrument model.

The instrument model is the Hermite-function representation of Weiler et al. (2023, A&A 671, A52), with
the DR3 responses and dispersion relations (Carrasco et al. 2021; De Angeli et al. 2023). The photon
rate per nm, ``F_lambda lambda A / (h c) R(lambda)``, is spread in pseudo-wavelength ``u(lambda)`` by the
line-spread function, whose two-dimensional Hermite development ``L`` (55 x 100) gives the internal
spectrum's Hermite coefficients of a monochromatic source at ``u'``:

    h = L phi(x(u')),      x = (u - b) / a,

so a spectrum gives ``h = L integral phi(x(u(lambda))) N(lambda) R(lambda) dlambda`` and the DR3
coefficients are ``c = T h`` with the orthogonal basis transformation ``T`` (``h = T^T c``). The LSF
development is normalised to unit area per pseudo-wavelength pixel, so ``c`` is in e-/s like the archive.

This is a linear map, one (n_wavelength, 55) matrix per band; no fit, so no ringing of an ill-posed
inversion (compare `xp_projection`). The configuration (MIT, from fjaellet/xp_spectral_lines) ships in
``dataset_builder/data/xp_instrument_model``.

Anchoring. On its own the instrument model disagrees with DR3's external calibration (Montegriffo et al.
2023, GaiaXPy's calibrated bases ``B_i``) at the percent level in the first coefficients: the calibrated SED
of a real archive star, ``f = c B``, maps back to ``c`` only to 1-18 sigma (median), and a smooth SED gets
1.6% structure at i >= 10 from the mismatched low orders. ``forward_matrix(anchored=True)`` adds the
smallest correction (in the response-weighted flux norm) that makes the calibrated bases i < `ANCHOR_BASES`
map exactly to unit coefficients, ``B_i F = e_i``; it lives in the span of those bases, so flux orthogonal
to them (lines, high orders) is mapped by the instrument model unchanged. Only the low orders, where the
external calibration is well constrained by the data, are imposed.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import numpy as np

from .schema import XP_LENGTH

BANDS: tuple[str, ...] = ("bp", "rp")
_RESPONSE_FILE = {"bp": "bpC03_v375wi", "rp": "rpC03_v142r"}
PSEUDO_WAVELENGTH_SCALE = {"bp": (3.062231, 30.00986), "rp": (3.020529, 30.00292)}
"""(a, b) of x = (u - b) / a, the Hermite argument of pseudo-wavelength u [pixels] (Weiler et al. 2023, DR3)."""
TELESCOPE_PUPIL_AREA_M2 = 0.7278
"""Gaia's pupil area [m^2], as in GaiaXPy."""
PLANCK_H = 6.62607004e-34
SPEED_OF_LIGHT = 2.99792458e8
N_LSF_INPUT = 100
"""Hermite functions of the LSF development in the source position u'."""
WAVELENGTH_RANGE_NM = (310.0, 1100.0)
"""Where the DR3 responses are tabulated; the simulation grid must cover it."""
ANCHOR_BASES = 6
"""The calibrated DR3 bases i < 6 of each band that the anchored forward model maps exactly (see module doc).

Measured (tests/test_xp_forward.py): 3-10 give the same archive round trip (median 0.6-3.3 sigma) and smooth-SED
high orders (0.004-0.007 of c0); 6 is where DR3's relative errors of real stars are still ~1e-3 of c0."""


def hermite_functions(x: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` Hermite functions phi_0..phi_{n-1} at ``x`` (dimensionless): shape (n, len(x)).

    Orthonormal on the real line; computed with the stable three-term recurrence.
    """
    x = np.asarray(x, dtype=np.float64)
    out = np.empty((n, x.size))
    out[0] = np.pi**-0.25 * np.exp(-0.5 * x * x)
    if n > 1:
        out[1] = np.sqrt(2.0) * x * out[0]
    for i in range(2, n):
        out[i] = np.sqrt(2.0 / i) * x * out[i - 1] - np.sqrt((i - 1) / i) * out[i - 2]
    return out


def _read_csv(name: str) -> np.ndarray:
    path = resources.files("dataset_builder") / "data" / "xp_instrument_model" / name
    with resources.as_file(path) as file:
        return np.loadtxt(file, delimiter=",", ndmin=2)


@cache
def instrument_model(band: str) -> dict[str, np.ndarray]:
    """The configuration of one band: ``response`` (2, n) [nm; e- per photon], ``dispersion`` (2, m) [nm;
    pixels], ``lsf`` (55, 100) and ``transformation`` (55, 55)."""
    if band not in BANDS:
        raise ValueError(f"band must be one of {BANDS}, got {band!r}")
    prefix = _RESPONSE_FILE[band]
    return {
        "response": _read_csv(f"{prefix}_response.csv"),
        "dispersion": _read_csv(f"{prefix}_dispersion.csv"),
        "lsf": _read_csv(f"LSFModel_{band.upper()}.csv"),
        "transformation": _read_csv(f"BasisTransformationMatrix_{band.upper()}.csv"),
    }


def pseudo_wavelength(band: str, wavelength_nm: np.ndarray) -> np.ndarray:
    """Pseudo-wavelength u [pixels] of wavelengths [nm] (the DR3 dispersion relation, linear interpolation)."""
    dispersion = instrument_model(band)["dispersion"]
    order = np.argsort(dispersion[0])
    return np.interp(wavelength_nm, dispersion[0][order], dispersion[1][order])


def response(band: str, wavelength_nm: np.ndarray) -> np.ndarray:
    """The DR3 response [e- per photon at the pupil] at wavelengths [nm]; 0 outside the tabulated range."""
    table = instrument_model(band)["response"]
    return np.clip(np.interp(wavelength_nm, table[0], table[1], left=0.0, right=0.0), 0.0, None)


def lsf_area(band: str) -> float:
    """Integral over pseudo-wavelength [pixels] of the LSF development for a source at the band centre."""
    a, b = PSEUDO_WAVELENGTH_SCALE[band]
    model = instrument_model(band)
    h = model["lsf"] @ hermite_functions(np.array([0.0]), N_LSF_INPUT)[:, 0]
    grid = np.linspace(-20.0, 20.0, 8001)
    profile = h @ hermite_functions(grid, XP_LENGTH)
    return float(np.sum(profile) * (grid[1] - grid[0]) * a)


def forward_matrix(band: str, wavelength_nm: np.ndarray, anchored: bool = True) -> np.ndarray:
    """(n_wavelength, 55) matrix: flux [W m^-2 nm^-1] sampled on ``wavelength_nm`` -> DR3 coefficients [e-/s].

    The quadrature weight of each sample is its share of the grid (trapezoid rule), so any grid that
    resolves the spectrum gives the same coefficients. ``anchored`` (default) makes the first
    `ANCHOR_BASES` calibrated DR3 bases map to themselves (module doc); ``False`` is the bare instrument model.
    """
    wavelength_nm = np.asarray(wavelength_nm, dtype=np.float64)
    a, b = PSEUDO_WAVELENGTH_SCALE[band]
    model = instrument_model(band)
    x = (pseudo_wavelength(band, wavelength_nm) - b) / a
    photons = wavelength_nm * 1e-9 / (PLANCK_H * SPEED_OF_LIGHT) * TELESCOPE_PUPIL_AREA_M2  # per W
    weight = np.gradient(wavelength_nm) * photons * response(band, wavelength_nm)
    inside = weight > 0
    hermite = hermite_functions(x[inside], N_LSF_INPUT) * weight[inside]  # (100, n_inside)
    matrix = np.zeros((wavelength_nm.size, XP_LENGTH))
    matrix[inside] = (model["transformation"] @ model["lsf"] @ hermite).T / lsf_area(band)
    if anchored:
        matrix += _anchor_correction(band, wavelength_nm, matrix)
    return matrix


def _anchor_correction(band: str, wavelength_nm: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The smallest G (response-weighted) with ``B_i (F + G) = e_i`` for the calibrated bases i < ANCHOR_BASES."""
    from .xp_projection import band_design_matrix

    grid, design, relative_response = band_design_matrix(band, 0.5)
    inside = (wavelength_nm >= grid[0]) & (wavelength_nm <= grid[-1])
    if inside.sum() < 2 * XP_LENGTH:
        raise ValueError(
            f"the wavelength grid samples the {band.upper()} band ({grid[0]:.0f}-{grid[-1]:.0f} nm) at only "
            f"{inside.sum()} points; anchoring needs a grid that resolves the calibrated bases (e.g. 0.5 nm steps)"
        )
    bases = np.stack([np.interp(wavelength_nm[inside], grid, row) for row in design])  # (55, n_inside) flux
    mapped = bases @ matrix[inside]  # (55, 55): what the instrument model makes of each calibrated basis
    weight = np.gradient(wavelength_nm)[inside] * np.interp(
        wavelength_nm[inside], grid, relative_response / relative_response.max()
    )
    anchor = bases[:ANCHOR_BASES]
    gram = (anchor * weight) @ anchor.T
    target = np.eye(XP_LENGTH)[:ANCHOR_BASES] - mapped[:ANCHOR_BASES]
    correction = np.zeros_like(matrix)
    correction[inside] = (anchor * weight).T @ np.linalg.solve(gram, target)
    return correction


class XPForwardModel:
    """Maps spectra sampled on a fixed wavelength grid to Gaia DR3 XP coefficients [e-/s], in one matrix product.

    Args:
        wavelength_nm: the (fine) grid the spectra are sampled on [nm]; it must cover 310-1100 nm, where
            the DR3 responses are tabulated.
        anchored: anchor the first `ANCHOR_BASES` coefficients to DR3's external calibration (default; see
            the module doc); ``False`` gives the bare instrument model.

    The same interface as `xp_projection.XPProjector`: ``project(flux) -> {band: (n, 55)}``, linear.
    """

    def __init__(self, wavelength_nm: np.ndarray, anchored: bool = True) -> None:
        wavelength_nm = np.asarray(wavelength_nm, dtype=np.float64)
        low, high = WAVELENGTH_RANGE_NM
        if wavelength_nm.min() > low + 10.0 or wavelength_nm.max() < high:
            raise ValueError(
                f"the wavelength grid must cover {low:.0f}-{high:.0f} nm for the XP forward model "
                f"(got {wavelength_nm.min():.0f}-{wavelength_nm.max():.0f} nm); "
                "BP has no response below 327 nm, so a grid from 320 nm is accepted"
            )
        self.wavelength_nm = wavelength_nm
        self.anchored = anchored
        self.matrices = {band: forward_matrix(band, wavelength_nm, anchored) for band in BANDS}

    def project(self, flux: np.ndarray) -> dict[str, np.ndarray]:
        """XP coefficients [e-/s] of spectra ``flux`` (n, n_wavelength) [W m^-2 nm^-1]: {band: (n, 55)}."""
        flux = np.atleast_2d(flux)
        return {band: flux @ matrix for band, matrix in self.matrices.items()}
