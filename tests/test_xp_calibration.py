"""dataset_builder.xp_calibration: the empirical map of simulated XP coefficients onto real DR3 ones."""

from __future__ import annotations

import numpy as np
import pytest

from dataset_builder import xp_calibration
from dataset_builder.xp_calibration import fit_calibration, noise_free_simulation, ratios, shipped_calibration


@pytest.fixture(scope="module")
def population():
    return noise_free_simulation(3000, seed=3)


def _fake_real(coefficients, shift, spread):
    """'Real' stars: the simulated ones with bp3/bp0 shifted by ``shift`` and its residual scaled by ``spread``."""
    rng = np.random.default_rng(0)
    real = {band: values.copy() for band, values in coefficients.items()}
    r = real["bp"][:, 3] / real["bp"][:, 0]
    real["bp"][:, 3] = (r + shift + (spread - 1) * (r - np.median(r))) * real["bp"][:, 0]
    errors = {band: 1e-6 * np.abs(values[:, :1]) * np.ones_like(values) for band, values in real.items()}
    errors["bp"][:, 0] = real["bp"][:, 0] * 10 ** rng.uniform(-3.2, -2.2, len(r))  # a spread of S/N
    return real, errors


def test_a_known_offset_is_learned_and_applied(population):
    """Fitted on 'real' stars that differ from the simulation by +0.01 in bp3/bp0, the map moves the simulation
    there, leaves c0 alone and changes the other ratios far less."""
    simulated, sigma0 = population
    real, errors = _fake_real(simulated, 0.01, 1.0)
    calibration = fit_calibration(real, errors, simulated, errors["bp"][:, 0])
    mapped = calibration.apply(simulated, errors["bp"][:, 0])
    colour = np.log10(simulated["bp"][:, 0] / simulated["rp"][:, 0])
    inside = (xp_calibration._interpolation_weights(colour, xp_calibration.KNOTS) @ calibration.support) == 1
    assert inside.mean() > 0.5
    for band in ("bp", "rp"):
        np.testing.assert_array_equal(mapped[band][:, 0], simulated[band][:, 0])
    change = ratios(mapped)[inside] - ratios(simulated)[inside]
    assert np.median(change[:, 2]) == pytest.approx(0.01, abs=0.002)  # bp3/bp0 is column 2
    others = np.delete(np.abs(change), 2, axis=1)
    assert np.median(others) < 0.001


def test_the_spread_is_matched(population):
    """'Real' bp3/bp0 residuals twice as wide: the mapped simulation is about twice as wide too."""
    simulated, _ = population
    real, errors = _fake_real(simulated, 0.0, 2.0)
    calibration = fit_calibration(real, errors, simulated, errors["bp"][:, 0])
    mapped = calibration.apply(simulated, errors["bp"][:, 0])
    colour = np.log10(simulated["bp"][:, 0] / simulated["rp"][:, 0])
    band = (colour > -0.3) & (colour < -0.1)  # a densely populated colour range
    before = ratios(simulated)[band, 2] - np.median(ratios(simulated)[band, 2])
    after = ratios(mapped)[band, 2] - np.median(ratios(mapped)[band, 2])
    assert np.std(after) / np.std(before) == pytest.approx(2.0, rel=0.25)


def test_stars_without_both_bands_are_unchanged():
    calibration = shipped_calibration()
    coefficients = {"bp": np.ones((2, 55)), "rp": np.ones((2, 55))}
    coefficients["bp"][1, 0] = -1.0
    out = calibration.apply(coefficients, np.array([1e-3, 1e-3]))
    np.testing.assert_array_equal(out["bp"][1], coefficients["bp"][1])
    np.testing.assert_array_equal(out["rp"][1], coefficients["rp"][1])


def test_error_profiles_come_from_real_stars():
    calibration = shipped_calibration()
    drawn = calibration.error_profiles(np.random.default_rng(0), np.array([-0.2, 0.0]), np.array([-2.8, -2.3]))
    for b, band in enumerate(("bp", "rp")):
        assert drawn[band].shape == (2, 55)
        np.testing.assert_array_equal(drawn[band][:, 0], 1.0)
        assert all((np.abs(calibration.profiles[:, b] - row) < 1e-6).all(axis=1).any() for row in drawn[band])


def test_a_calibration_fitted_on_other_knots_is_refused(tmp_path, monkeypatch):
    calibration = shipped_calibration()
    monkeypatch.setattr(xp_calibration, "KNOTS", xp_calibration.KNOTS[:-1])
    path = tmp_path / xp_calibration.CALIBRATION_FILE
    calibration.save(path)
    monkeypatch.setattr(xp_calibration, "KNOTS", np.append(xp_calibration.KNOTS, 0.3))
    with pytest.raises(ValueError, match="refit it"):
        xp_calibration.load_calibration(path)
