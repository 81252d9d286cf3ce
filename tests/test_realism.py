"""Fast realism regression test: the simulated survey (xp_model='hermite') against real DR3 XP spectra.

Simulated stars are matched 1:1 to the held-out half of ``real_xp_sample`` (the simulator is calibrated on
the other half, `realism.calibration_half`) on colour and S/N (`dataset_builder.realism`); the error model,
``n_relevant_bases``, the noise-dominated high orders and a matched classifier must find them like the real
ones. (The full-size classifier benchmark is benchmarks/bench_realism.py.)
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SHARED_DATA
from dataset_builder.realism import (
    calibration_half,
    feature_table,
    match_pairs,
    matched_classifier_auc,
    read_flat_real_sample,
    read_xp_files,
)
from dataset_builder.simulate import simulate_survey

REAL_SAMPLE = SHARED_DATA / "real_xp_sample/xp_continuous_2000_sources.fits"
pytestmark = pytest.mark.skipif(not REAL_SAMPLE.is_file(), reason="needs ../shared/data")


def _simulate(folder, calibrated=True):
    files = simulate_survey(folder, n_stars=3000, seed=5, progress=False, xp_model="hermite", calibrated=calibrated)
    return read_xp_files(files.xp_files)


@pytest.fixture(scope="module")
def held_out_real():
    real = read_flat_real_sample(REAL_SAMPLE)
    return real.take(np.flatnonzero(~calibration_half(real.source_id)))


@pytest.fixture(scope="module")
def unmatched(tmp_path_factory, held_out_real):
    return held_out_real, _simulate(tmp_path_factory.mktemp("realism") / "raw")


@pytest.fixture(scope="module")
def samples(unmatched):
    real, simulated = unmatched
    rows_real, rows_sim = match_pairs(real, simulated)
    return real.take(rows_real), simulated.take(rows_sim)


def test_enough_pairs(samples):
    assert len(samples[0]) > 200


def test_errors_match_real_at_matched_colour_and_snr(samples):
    """err_i / c0 of matched pairs, i = 0-30: simulated medians within 25% of the real ones (v1: 1.6x off in RP).

    Measured (3,000 stars, seed 5, 457 pairs, held-out real half): sim / real 0.98, 1.00, 0.99, 0.97, 0.97, 1.06
    (BP i = 0, 10, ..., 50), 0.92, 0.92, 0.95, 0.94, 0.94, 0.98 (RP), with real error profiles drawn per star.
    """
    real, simulated = samples
    x_real, names = feature_table(real, "all")
    x_sim, _ = feature_table(simulated, "all")
    index = {name: i for i, name in enumerate(names)}
    for band in ("bp", "rp"):
        for i in (0, 10, 20, 30):
            column = index[f"err_{band}{i}/{band}0"]
            ratio = np.median(x_sim[:, column]) / np.median(x_real[:, column])
            assert abs(np.log(ratio)) < np.log(1.25), (band, i, ratio)


def test_n_relevant_bases_like_the_archive(samples):
    """Median n_relevant_bases of matched pairs within 2 of the real medians.

    Measured (3,000 stars, seed 5, 457 pairs): simulated 7 / 6 against real 6 / 5 (BP / RP); v1 gave 55 / 51,
    the uncalibrated forward model 30 / 29.
    """
    real, simulated = samples
    for band in ("bp", "rp"):
        ours = np.median(simulated.n_relevant_bases[band])
        theirs = np.median(real.n_relevant_bases[band])
        assert abs(ours - theirs) <= 2, (band, theirs, ours)


def test_high_orders_are_noise_like_real(samples):
    """For i >= 10 the median |c_i| / sigma_i is ~0.7 in real DR3 (noise); the simulation must stay below 1.5.

    Measured (3,000 stars, seed 5, 457 pairs; BP / RP): real 0.70 / 0.69, simulated 0.74 / 0.74 (uncalibrated
    forward model 1.09 / 1.09; the bare instrument model gave 4.8 / 5.1 at i = 10-20).
    """
    for band in ("bp", "rp"):
        for sample in samples:
            z = np.abs(sample.coefficients[band][:, 10:] / sample.errors[band][:, 10:])
            assert np.median(z) < 1.5, (band, np.median(z))


@pytest.mark.parametrize(("feature_set", "limit"), [("low_order", 0.72), ("all", 0.80)])
def test_matched_classifier_cannot_tell_them_apart(unmatched, feature_set, limit):
    """Pair-grouped 5-fold XGBoost AUC, simulated vs held-out real: coefficients 1-10 + colour ('low_order') and
    all coefficients + errors ('all'). Issue 17's targets at full size are <= 0.65 / <= 0.75.

    Measured (3,000 stars, seed 5, 457 pairs): 0.642 / 0.655 calibrated, 0.99998 / 0.99999 uncalibrated;
    at 20,000 stars (benchmarks/bench_realism.py, seeds 0-2) 0.601-0.623 / 0.631-0.680. The limits leave
    about 4 standard errors of the smaller sample above the measured values.
    """
    real, simulated = unmatched
    result = matched_classifier_auc(real, simulated, feature_set)
    assert result.n_pairs > 300
    assert result.auc < limit, (result.auc, result.importances[:5])


def test_calibration_is_what_makes_it_realistic(tmp_path, held_out_real):
    """The same population without `xp_calibration` is told apart almost perfectly (so the test above can fail):
    measured 0.9997 on coefficients 1-5."""
    bare = _simulate(tmp_path / "bare", calibrated=False)
    assert matched_classifier_auc(held_out_real, bare, "first_five").auc > 0.95
