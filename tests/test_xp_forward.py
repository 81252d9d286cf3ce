"""The XP instrument forward model and the DR3 error model against real Gaia DR3 files."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io.votable import parse_single_table
from astropy.table import Table

from conftest import SHARED_DATA
from dataset_builder import xp_errors
from dataset_builder.physics import planck_flux, wavelength_grid
from dataset_builder.realism import read_flat_real_sample
from dataset_builder.xp_forward import ANCHOR_BASES, XPForwardModel, forward_matrix
from dataset_builder.xp_projection import XPProjector, band_design_matrix

CORRELATED = SHARED_DATA / "real_xp_sample/xp_continuous_4_sources_with_correlations.vot"
ARCHIVE = SHARED_DATA / "gaia_archive_samples/xp_continuous/XP_CONTINUOUS_RAW.fits"
REAL_SAMPLE = SHARED_DATA / "real_xp_sample/xp_continuous_2000_sources.fits"
needs_data = pytest.mark.skipif(not CORRELATED.is_file(), reason="needs ../shared/data")


def _archive_rows() -> list:
    return [*parse_single_table(CORRELATED).to_table(), *Table.read(ARCHIVE)]


@pytest.fixture(scope="module")
def forward() -> XPForwardModel:
    return XPForwardModel(wavelength_grid())


def _round_trip(band: str, anchored: bool) -> list[tuple[float, float]]:
    """(c0 predicted / published - 1, median |deviation| / sigma over all 55) of each real archive star, from
    its SED as DR3 calibrates it (GaiaXPy's external calibration of its own coefficients)."""
    forward = XPForwardModel(wavelength_grid(), anchored=anchored)
    grid, design, _ = band_design_matrix(band, 0.5)
    out = []
    for row in _archive_rows():
        coefficients = np.asarray(row[f"{band}_coefficients"], dtype=np.float64)
        errors = np.asarray(row[f"{band}_coefficient_errors"], dtype=np.float64)
        sed = np.interp(forward.wavelength_nm, grid, coefficients @ design, left=0.0, right=0.0)
        predicted = forward.project(sed[None])[band][0]
        out.append((predicted[0] / coefficients[0] - 1, float(np.median(np.abs(predicted - coefficients) / errors))))
    return out


ROUND_TRIP_C0 = 0.005
ROUND_TRIP_MEDIAN_SIGMA = 3.5


@needs_data
@pytest.mark.parametrize("band", ["bp", "rp"])
def test_reproduces_archive_coefficients_from_their_sed(band):
    """Each of the 6 real archive stars' calibrated SED goes back to its own coefficients (anchored model).

    Measured, anchored: c0 within 0.00-0.21%, median deviation (all 55) 0.9-2.8 sigma (BP) / 0.9-2.1 sigma (RP),
    max 8-50 / 4-10 sigma. The bare instrument model: c0 off by up to 1.9% / 3.1%, median 1.3-15.8 / 1.1-18.0
    sigma, so it fails both bounds (asserted: the test can tell them apart).
    """
    for c0, median in _round_trip(band, anchored=True):
        assert abs(c0) < ROUND_TRIP_C0 and median < ROUND_TRIP_MEDIAN_SIGMA, (c0, median)
    bare = _round_trip(band, anchored=False)
    assert max(abs(c0) for c0, _ in bare) > ROUND_TRIP_C0
    assert max(median for _, median in bare) > ROUND_TRIP_MEDIAN_SIGMA


def test_linear_and_positive(forward):
    flux = planck_flux(forward.wavelength_nm, np.array([4000.0, 9000.0]))
    single = forward.project(flux)
    double = forward.project(2 * flux)
    for band in ("bp", "rp"):
        np.testing.assert_allclose(double[band], 2 * single[band], rtol=1e-12)
        assert (single[band][:, 0] > 0).all()
    # hotter star: more BP relative to RP
    assert single["bp"][1, 0] / single["rp"][1, 0] > 2 * single["bp"][0, 0] / single["rp"][0, 0]


def test_grid_must_cover_the_responses():
    with pytest.raises(ValueError, match="must cover"):
        XPForwardModel(np.arange(400.0, 900.0, 1.0))


def test_smooth_sed_is_smoother_than_the_ridge_projection(forward):
    """A Planck curve: the forward model's high orders are below the ridge projection's (v1 simulator).

    Measured max |c_i / c0| for i >= 5 at 4000 / 5800 / 9000 K: BP forward (anchored) 0.019 / 0.014 / 0.022
    (bare 0.025 / 0.018 / 0.019) against ridge 0.124 / 0.083 / 0.074; RP forward 0.008 / 0.003 / 0.013 (bare
    0.013 / 0.015 / 0.017) against ridge 0.016 / 0.021 / 0.026.
    """
    lam = forward.wavelength_nm
    flux = planck_flux(lam, np.array([4000.0, 5800.0, 9000.0]))
    ours = forward.project(flux)
    ridge = XPProjector(lam).project(flux)
    for band in ("bp", "rp"):
        high = np.abs(ours[band][:, 5:] / ours[band][:, :1]).max(axis=1)
        assert (high < 0.03).all(), high
        factor = 0.5 if band == "bp" else 0.9
        assert (high < factor * np.abs(ridge[band][:, 5:] / ridge[band][:, :1]).max(axis=1)).all()


def test_anchoring_removes_most_smooth_sed_structure_at_high_order():
    """A Planck curve at 4000 / 5800 / 9000 K: max |c_i / c0| for i >= 10.

    Measured: anchored BP 0.0039 / 0.0064 / 0.0072, RP 0.0044 / 0.0023 / 0.0029; bare instrument model
    BP 0.016 / 0.014 / 0.016, RP 0.012 / 0.015 / 0.017.
    """
    lam = wavelength_grid()
    flux = planck_flux(lam, np.array([4000.0, 5800.0, 9000.0]))
    for anchored, expected_below in ((True, True), (False, False)):
        coefficients = XPForwardModel(lam, anchored=anchored).project(flux)
        for band in ("bp", "rp"):
            high = np.abs(coefficients[band][:, 10:] / coefficients[band][:, :1]).max(axis=1)
            assert (high < 0.01).all() == expected_below, (anchored, band, high)


def test_anchored_bases_map_to_themselves():
    """B_i F = e_i for the anchored calibrated bases i < ANCHOR_BASES, on another grid than the simulation's."""
    lam = np.arange(300.0, 1110.0, 0.3)
    for band in ("bp", "rp"):
        grid, design, _ = band_design_matrix(band, 0.5)
        bases = np.stack([np.interp(lam, grid, row, left=0.0, right=0.0) for row in design])
        for anchored in (True, False):
            mapped = bases[:ANCHOR_BASES] @ forward_matrix(band, lam, anchored=anchored)
            error = np.abs(mapped - np.eye(55)[:ANCHOR_BASES]).max()
            assert (error < 1e-6) == anchored, (band, anchored, error)


def test_anchoring_needs_a_resolving_grid():
    with pytest.raises(ValueError, match="resolves the calibrated bases"):
        forward_matrix("bp", np.arange(300.0, 1110.0, 20.0))


@needs_data
@pytest.mark.xfail(
    strict=True,
    reason="known gap: even anchored, the Hermite instrument model leaves 0.2-0.7% structure at i >= 10 for a "
    "smooth SED (largest BP i = 21); the real sample's 100 highest-S/N stars stay below 0.20% (BP) / 0.15% (RP)",
)
def test_smooth_sed_below_real_bright_stars_at_high_order(forward):
    real = read_flat_real_sample(REAL_SAMPLE)
    flux = planck_flux(forward.wavelength_nm, np.array([4000.0, 5800.0, 9000.0]))
    ours = forward.project(flux)
    for band in ("bp", "rp"):
        c = real.coefficients[band]
        brightest = np.argsort(-c[:, 0] / real.errors[band][:, 0])[:100]
        real_level = np.percentile(np.abs(c[brightest, 10:] / c[brightest, :1]).max(axis=1), 90)
        assert (np.abs(ours[band][:, 10:] / ours[band][:, :1]).max(axis=1) < real_level).all()


@needs_data
@pytest.mark.parametrize("band", ["bp", "rp"])
def test_packed_correlations_match_gaiaxpy(band):
    from gaiaxpy.core.generic_functions import correlation_to_covariance

    for row in _archive_rows():
        packed = np.asarray(row[f"{band}_coefficient_correlations"], dtype=np.float64)
        errors = np.asarray(row[f"{band}_coefficient_errors"], dtype=np.float64)
        ours = errors[:, None] * xp_errors.packed_to_matrix(packed) * errors[None, :]
        theirs = correlation_to_covariance(packed, errors, 1.0)
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=0)
        np.testing.assert_array_equal(xp_errors.matrix_to_packed(xp_errors.packed_to_matrix(packed)), packed)


@needs_data
@pytest.mark.parametrize("band", ["bp", "rp"])
def test_error_law_matches_real_dr3(band):
    """Errors drawn for the real stars' own c0 have the real medians (per S/N tercile) and index profile."""
    real = read_flat_real_sample(REAL_SAMPLE)
    c0 = real.coefficients[band][:, 0]
    drawn = xp_errors.dr3_errors(np.random.default_rng(0), band, c0)
    observed = real.errors[band]
    for tercile in np.array_split(np.argsort(c0), 3):
        ratio = np.median(drawn[tercile, 0]) / np.median(observed[tercile, 0])
        assert ratio == pytest.approx(1.0, abs=0.15)
    profile_drawn = np.median(drawn / drawn[:, :1], axis=0)
    profile_real = np.median(observed / observed[:, :1], axis=0)
    assert np.abs(np.log(profile_drawn[::5] / profile_real[::5])).max() < 0.25


@needs_data
@pytest.mark.parametrize("band", ["bp", "rp"])
def test_n_relevant_bases_as_the_archive(band):
    real = read_flat_real_sample(REAL_SAMPLE)
    ours = xp_errors.n_relevant_bases(real.coefficients[band], real.errors[band])
    assert np.mean(ours == real.n_relevant_bases[band]) > 0.7
    assert np.mean(np.abs(ours - real.n_relevant_bases[band]) <= 1) > 0.8


def test_correlated_noise_has_the_covariance():
    rng = np.random.default_rng(1)
    errors = np.tile(np.linspace(2.0, 1.0, 55), (40_000, 1))
    noise, packed = xp_errors.correlated_noise(rng, "bp", errors)
    assert packed.shape == (40_000, xp_errors.N_CORRELATIONS) and packed.dtype == np.float32
    np.testing.assert_allclose(noise.std(axis=0), errors[0], rtol=0.03)
    matrices = xp_errors.packed_to_matrix(packed[:, :])
    expected = np.mean(matrices, axis=0)[0, 1] * errors[0, 0] * errors[0, 1]
    assert np.mean(noise[:, 0] * noise[:, 1]) == pytest.approx(expected, abs=0.03 * errors[0, 0] * errors[0, 1])
