"""XP coefficient covariances read from the archive's packed correlations, in every format, against GaiaXPy."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SHARED_DATA
from dataset_builder.errors import DatasetBuildError
from dataset_builder.features import relevancy_mask
from dataset_builder.readers import read_xp_continuous, read_xp_correlations, xp_covariance

FOLDER = SHARED_DATA / "gaia_archive_samples/xp_continuous"
FILES = [
    "XP_CONTINUOUS_RAW.csv",
    "XP_CONTINUOUS_RAW.ecsv",
    "XP_CONTINUOUS_RAW.fits",
    "XP_CONTINUOUS_RAW.xml",
    "XP_CONTINUOUS_RAW_plain.xml",
    "XP_CONTINUOUS_RAW_with_missing_BP.csv",
    "XP_CONTINUOUS_RAW_with_missing_BP.ecsv",
    "XP_CONTINUOUS_RAW_with_missing_BP.fits",
    "XP_CONTINUOUS_RAW_with_missing_BP.xml",
]
pytestmark = pytest.mark.skipif(not FOLDER.is_dir(), reason="needs ../shared/data")


@pytest.mark.parametrize("name", FILES)
def test_covariance_equals_gaiaxpy(name):
    """Max relative difference measured: 2e-16 (CSV, VOTable), 8e-8 (ECSV, FITS: float32 cells)."""
    from gaiaxpy.file_parser.parse_internal_continuous import InternalContinuousParser
    from gaiaxpy.spectrum.utils import get_covariance_matrix

    frame, _ = InternalContinuousParser().parse_file(str(FOLDER / name))
    xp = read_xp_continuous(FOLDER / name)
    correlations = read_xp_correlations(FOLDER / name)
    np.testing.assert_array_equal(correlations["source_id"], xp.source_id)
    compared = 0
    for _, row in frame.iterrows():
        k = int(np.flatnonzero(xp.source_id == row["source_id"])[0])
        for band in ("bp", "rp"):
            theirs = get_covariance_matrix(row, band)
            if not isinstance(theirs, np.ndarray) or theirs.ndim < 2:  # no solution for this band
                assert np.isnan(correlations[band][k]).all()
                continue
            theirs = theirs * row[f"{band}_standard_deviation"] ** 2
            ours = xp_covariance(getattr(xp, f"{band}_coefficient_errors")[k], correlations[band][k])
            assert np.abs(ours - theirs).max() <= 2e-7 * np.abs(theirs).max()
            compared += 1
    assert compared >= 4


def test_covariance_through_g_normalisation_and_truncation():
    xp = read_xp_continuous(FOLDER / "XP_CONTINUOUS_RAW.fits")
    packed = read_xp_correlations(FOLDER / "XP_CONTINUOUS_RAW.fits")["bp"]
    g_flux = np.array([3.0e4, 7.0e5])
    errors = xp.bp_coefficient_errors / g_flux[:, None]
    errors = np.where(relevancy_mask(np.array([10, 30])), errors, np.nan)
    covariance = xp_covariance(errors, packed)
    full = xp_covariance(xp.bp_coefficient_errors, packed)
    np.testing.assert_allclose(covariance[0, :10, :10], full[0, :10, :10] / g_flux[0] ** 2, rtol=1e-12)
    assert np.isnan(covariance[0, 10]).all() and np.isnan(covariance[0, :, 10]).all()
    assert np.isfinite(covariance[1, :30, :30]).all() and np.isnan(covariance[1, 30:, 30:]).all()


def test_missing_correlation_column_is_a_clear_error(tmp_path):
    from astropy.table import Table

    table = Table.read(FOLDER / "XP_CONTINUOUS_RAW.fits")
    table.remove_column("rp_coefficient_correlations")
    path = tmp_path / "no_corr.fits"
    table.write(path)
    with pytest.raises(DatasetBuildError, match="rp_coefficient_correlations"):
        read_xp_correlations(path)


def test_wrong_length_is_a_clear_error(tmp_path):
    import pandas as pd

    frame = pd.read_csv(FOLDER / "XP_CONTINUOUS_RAW.csv")
    frame.loc[0, "bp_coefficient_correlations"] = "(0.1, 0.2, 0.3)"
    path = tmp_path / "short.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DatasetBuildError, match="expected 1485 packed correlations"):
        read_xp_correlations(path)
