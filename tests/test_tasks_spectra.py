"""Tests of modeling_astro.tasks.spectra: GaiaXPy sampling of XP coefficients and labels -> XP spectra."""

import ast

import numpy as np
import pandas as pd
import pytest

from conftest import SHARED_DATA
from modeling_astro.inference import AstroPredictor
from modeling_astro.tasks import XP_NAMES, flux_scale_from_fakemag, generate_spectra, plot_spectra, sample_xp

pytest_plugins = ["training_fixtures"]  # session fixtures: tiny_survey, tiny_trained_checkpoint, tiny_predictor

ARCHIVE_XP = SHARED_DATA / "gaia_archive_samples/xp_continuous/XP_CONTINUOUS_RAW.csv"


def giants(teff: list[float], logebv: float = np.log(0.05)) -> dict[str, np.ndarray]:
    n = len(teff)
    return {
        "teff": np.asarray(teff),
        "logg": np.full(n, 2.5),
        "m_h": np.zeros(n),
        "logebv": np.full(n, logebv),
    }


def archive_coefficients() -> dict[str, np.ndarray]:
    if not ARCHIVE_XP.exists():
        pytest.skip(f"shared archive sample {ARCHIVE_XP} not available")
    raw = pd.read_csv(ARCHIVE_XP)
    columns = {}
    for band in ("bp", "rp"):
        matrix = np.array([ast.literal_eval(text) for text in raw[f"{band}_coefficients"]])
        columns.update({f"{band}{i}": matrix[:, i] for i in range(matrix.shape[1])})
    return columns


def test_sampling_equals_gaiaxpy_calibrate():
    from gaiaxpy import calibrate

    spectra = sample_xp(archive_coefficients())
    expected, sampling = calibrate(str(ARCHIVE_XP), save_file=False, truncation=False)
    np.testing.assert_allclose(spectra.wavelength, sampling)
    reference = np.stack(expected["flux"])
    np.testing.assert_allclose(spectra.flux, reference, rtol=1e-9, atol=1e-12 * np.abs(reference).max())


def test_sampling_is_linear_and_sigma_propagates():
    coefficients = archive_coefficients()
    single = sample_xp(coefficients, scale=np.array([2.0, 3.0]), unit="test")
    base = sample_xp(coefficients)
    np.testing.assert_allclose(single.flux, base.flux * np.array([[2.0], [3.0]]))
    assert np.all(base.flux_sigma == 0)
    with_sigma = dict(coefficients, **{f"{name}_sigma": np.full(2, 1.0) for name in XP_NAMES})
    assert np.all(sample_xp(with_sigma).flux_sigma > 0)


def test_sampling_names_missing_columns():
    coefficients = archive_coefficients()
    del coefficients["rp7"]
    with pytest.raises(KeyError, match="rp7"):
        sample_xp(coefficients)


def test_flux_scale_from_fakemag():
    g_mag, parallax = np.array([10.0, 14.0]), np.array([2.0, 0.5])
    g_fakemag = parallax * 10 ** (0.2 * g_mag)
    expected = 10 ** ((25.6873668671 - g_mag) / 2.5)
    np.testing.assert_allclose(flux_scale_from_fakemag(g_fakemag, parallax), expected)
    assert np.isnan(flux_scale_from_fakemag(np.array([-1.0]), 1.0)).all()


def test_hotter_star_is_bluer(tiny_predictor):
    # Teff within the red-giant branch of the training set (at log g 2.5, Teff ~ 4640 +- 330 K)
    spectra, prediction = generate_spectra(tiny_predictor, giants([4200.0, 4500.0, 4800.0]))
    assert spectra.flux.shape == (3, 343) and list(prediction.columns[:2]) == ["bp0", "bp0_sigma"]
    assert np.all(spectra.flux_sigma > 0)
    blue_over_red = spectra.mean_flux(400, 500) / spectra.mean_flux(700, 900)
    assert np.all(np.diff(blue_over_red) > 0), blue_over_red


def test_more_extinction_is_redder(tiny_predictor):
    reddened = {key: np.repeat(value[:1], 3) for key, value in giants([4700.0]).items()}
    reddened["logebv"] = np.log([0.02, 0.2, 0.6])
    spectra, _ = generate_spectra(tiny_predictor, reddened)
    blue_over_red = spectra.mean_flux(400, 500) / spectra.mean_flux(700, 900)
    assert np.all(np.diff(blue_over_red) < 0), blue_over_red


def test_batched_equals_unbatched_and_absolute_flux(tiny_predictor, tiny_trained_checkpoint, tmp_path):
    labels = giants([4200.0, 4500.0, 4800.0, 5100.0, 5400.0])
    batched, _ = generate_spectra(tiny_predictor, labels, absolute=True)
    one_by_one = AstroPredictor.from_pretrained(str(tiny_trained_checkpoint), device="cpu", batch_size=1)
    unbatched, prediction = generate_spectra(one_by_one, labels, absolute=True)
    np.testing.assert_allclose(batched.flux, unbatched.flux, rtol=1e-4)
    relative, _ = generate_spectra(tiny_predictor, labels)
    scale = flux_scale_from_fakemag(prediction["g_fakemag"].to_numpy(np.float64), 100.0)
    np.testing.assert_allclose(batched.flux, relative.flux * scale[:, None], rtol=1e-4)
    assert batched.unit == "W m^-2 nm^-1"
    assert np.all(batched.flux_sigma >= relative.flux_sigma * scale[:, None])
    plot_spectra(batched, tmp_path / "spectra.png")
    assert (tmp_path / "spectra.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_labels_raise_clear_errors(tiny_predictor):
    with pytest.raises(ValueError, match="needs at least one of the labels"):
        generate_spectra(tiny_predictor, {"colour": np.array([1.0])})
    with pytest.raises(ValueError, match="0 rows"):
        generate_spectra(tiny_predictor, {"teff": np.array([])})
    with pytest.warns(UserWarning, match="no usable observation"):
        spectra, _ = generate_spectra(tiny_predictor, {"teff": np.array([np.nan, 4800.0])})
    assert np.isnan(spectra.flux[0]).all() and np.isfinite(spectra.flux[1]).all()
