"""Tests of modeling_astro.tasks.extinction: A(lambda)/E(B-V) from spectra generated at several E(B-V)."""

import astropy.units as u
import numpy as np
import pandas as pd
import pytest
from dust_extinction.parameter_averages import G23

from dataset_builder import physics
from dataset_builder.features import g_band_flux
from dataset_builder.xp_projection import XPProjector
from modeling_astro.tasks import (
    ExtinctionCurve,
    extinction_curve,
    injected_law,
    max_relative_error,
    plot_extinction_curve,
)

pytest_plugins = ["training_fixtures"]  # session fixtures: tiny_survey, tiny_trained_checkpoint, tiny_predictor


class SimulatorPredictor:
    """Stands in for `AstroPredictor`: 'predicts' the simulated survey's own noise-free XP coefficients / f_G
    and g_fakemag (star at 10 pc) for given labels, with the G23 law at a fixed R_V."""

    def __init__(self, rv: float) -> None:
        grid = physics.wavelength_grid()
        self.surface = physics.SurfaceFluxModel(grid)
        self.extinction = physics.ExtinctionLaw(grid)
        self.photometry = physics.SyntheticPhotometry(grid)
        self.projector = XPProjector(grid)
        self.rv = rv

    def predict(self, data, request, **kwargs) -> pd.DataFrame:
        n = len(data["teff"])
        zeros = np.zeros(n)
        stars = physics.StellarParameters(
            np.asarray(data["teff"]),
            np.asarray(data["logg"]),
            np.asarray(data["m_h"]),
            zeros,
            zeros,
            zeros + 1.5,
        )
        flux = self.surface(stars) * self.extinction.transmission(np.exp(data["logebv"]), np.full(n, self.rv))
        flux *= physics.dilution(physics.stellar_radius(stars.logg, zeros + 1.0), np.full(n, 10.0))
        g_mag = self.photometry.magnitudes(flux)["G"]
        columns = {"g_fakemag": 100.0 * 10 ** (0.2 * g_mag)}
        for band, coefficients in self.projector.project(flux).items():
            columns.update({f"{band}{i}": coefficients[:, i] / g_band_flux(g_mag) for i in range(55)})
        return pd.DataFrame(
            {
                key: value
                for name in request
                for key, value in ((name, columns[name]), (f"{name}_sigma", zeros))
            }
        )


def test_injected_law_is_g23():
    wavelength = np.array([400.0, 550.0, 800.0, 1000.0])
    for rv in (2.8, 3.1, 3.6):
        expected = rv * G23(Rv=rv)(wavelength * u.nm)
        np.testing.assert_allclose(injected_law(wavelength, rv), expected, rtol=1e-6)


@pytest.mark.parametrize("rv", [3.1, 3.6])
def test_recovers_the_law_from_the_simulators_own_spectra(rv):
    curve = extinction_curve(SimulatorPredictor(rv))
    assert max_relative_error(curve, injected_law(curve.wavelength, rv)) < 0.01
    anchored = extinction_curve(SimulatorPredictor(rv), rv=rv)  # the level from R_V, the shape from the spectra
    assert max_relative_error(anchored, injected_law(curve.wavelength, rv)) < 0.01
    assert np.interp(550.0, anchored.wavelength, anchored.a_over_ebv) == pytest.approx(rv, rel=1e-6)
    other = 2.6 if rv > 3.0 else 4.0
    assert max_relative_error(curve, injected_law(curve.wavelength, other)) > 0.05


def test_trained_model_curve_and_plot(tiny_predictor, tmp_path):
    curve = extinction_curve(tiny_predictor)
    assert isinstance(curve, ExtinctionCurve) and curve.per_star.shape == (40, 343)
    inside = (curve.wavelength > 400) & (curve.wavelength < 1000)
    assert np.isfinite(curve.a_over_ebv[inside]).all()
    # extinction is positive and larger in the blue than in the red (the spectra get redder with E(B-V))
    assert np.mean(curve.a_over_ebv[inside]) > 0
    blue, red = curve.wavelength < 550, (curve.wavelength > 800) & (curve.wavelength < 1000)
    assert np.nanmean(curve.a_over_ebv[blue & inside]) > np.nanmean(curve.a_over_ebv[red])
    law = injected_law(curve.wavelength)
    plot_extinction_curve(curve, law, tmp_path / "extinction.png")
    assert (tmp_path / "extinction.png").read_bytes()[:4] == b"\x89PNG"
    single = extinction_curve(tiny_predictor, {"teff": [4800.0], "logg": [2.5], "m_h": [0.0]})
    assert single.per_star.shape == (1, 343) and np.isnan(single.a_over_ebv_sigma).all()


def test_bad_input(tiny_predictor):
    with pytest.raises(ValueError, match="two distinct positive"):
        extinction_curve(tiny_predictor, ebv=[0.1])
    with pytest.raises(ValueError, match="two distinct positive"):
        extinction_curve(tiny_predictor, ebv=[0.0, 0.1])
    curve = ExtinctionCurve(np.array([500.0, 600.0]), np.array([np.nan, 3.0]), np.zeros(2), np.zeros((1, 2)))
    assert max_relative_error(curve, np.array([3.0, 3.0])) == np.inf
