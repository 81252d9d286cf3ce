"""Readers and per-star features of `dataset_builder` on the real Gaia archive sample files."""

from __future__ import annotations

import re
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.table import Table

from conftest import SHARED_DATA
from dataset_builder import DatasetBuildError, read_gaia_source, read_xp_continuous
from dataset_builder import features as F

SAMPLES = SHARED_DATA / "gaia_archive_samples"
XP_DIR = SAMPLES / "xp_continuous"
MISSING_BP_ID = 5405570973190252288


def _stem_groups() -> dict[str, list[Path]]:
    groups = defaultdict(list)
    for path in sorted(XP_DIR.iterdir()):
        key = re.sub(r"_(votable_plain|votable|plain)(?=_|$)", "", path.name.rsplit(".", 1)[0])
        groups[key].append(path)
    return groups


def test_every_format_gives_the_same_coefficients():
    groups = _stem_groups()
    assert sum(len(files) >= 4 for files in groups.values()) == 3
    for files in groups.values():
        reference = read_xp_continuous(files[0])
        assert len(reference) > 0
        for path in files[1:]:
            other = read_xp_continuous(path)
            np.testing.assert_array_equal(other.source_id, reference.source_id, err_msg=str(path))
            for field in ("coefficients", "coefficient_errors", "n_relevant_bases"):
                for band in ("bp", "rp"):
                    np.testing.assert_array_equal(
                        getattr(other, f"{band}_{field}").astype(np.float32),
                        getattr(reference, f"{band}_{field}").astype(np.float32),
                        err_msg=f"{path} {band}_{field}",
                    )


@pytest.mark.parametrize("path", sorted(XP_DIR.glob("*missing_BP*")), ids=lambda p: p.name)
def test_missing_bp_solution_is_nan_with_rp_intact(path):
    xp = read_xp_continuous(path)
    row = int(np.flatnonzero(xp.source_id == MISSING_BP_ID)[0])
    assert np.isnan(xp.bp_coefficients[row]).all() and np.isnan(xp.bp_coefficient_errors[row]).all()
    assert xp.bp_n_relevant_bases[row] == 0
    assert np.isfinite(xp.rp_coefficients[row]).all() and np.isfinite(xp.rp_coefficient_errors[row]).all()
    assert xp.rp_n_relevant_bases[row] == 47
    others = np.arange(len(xp)) != row
    assert np.isfinite(xp.bp_coefficients[others]).all()


def test_18sco_g_normalised_coefficients():
    xp = read_xp_continuous(SAMPLES / "cholesky_solution" / "18Sco-XP-spectra.csv")
    assert xp.source_id.tolist() == [4345775217221821312]
    np.testing.assert_allclose(xp.phot_g_mean_mag, [5.327651])
    assert xp.bp_n_relevant_bases.tolist() == [55]  # this schema has no n_relevant_bases column
    raw = pd.read_csv(SAMPLES / "cholesky_solution" / "18Sco-XP-spectra.csv")
    raw_bp = np.array(raw["bp_coefficients"][0].strip("()[]").split(","), dtype=float)
    values, errors = F.normalised_xp(
        xp.bp_coefficients, xp.bp_coefficient_errors, xp.bp_n_relevant_bases, xp.phot_g_mean_mag
    )
    f_g = 10 ** ((25.6873668671 - 5.327651) / 2.5)
    np.testing.assert_allclose(values[0], raw_bp / f_g, rtol=1e-12)
    rp0 = xp.rp_coefficients[0, 0] / f_g
    # a solar twin (BP-RP ~ 0.82): bp0/f_G and rp0/f_G near the notes' 0.064 / 0.067
    assert 0.055 < values[0, 0] < 0.075 and 0.055 < rp0 < 0.08
    assert np.all(errors[0] > 0)


@pytest.mark.parametrize(
    "n_relevant, expected_kept",
    [(55, 55), (53, 55), (52, 55), (51, 51), (40, 40), (0, 0)],
)
def test_relevancy_mask_copies_index_51_to_52_54(n_relevant, expected_kept):
    mask = F.relevancy_mask(np.array([n_relevant]))[0]
    assert mask.sum() == expected_kept
    assert mask[:expected_kept].all()


def _copy(tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copy(XP_DIR / name, target)
    target.chmod(0o644)
    return target


def test_malformed_csv_array_names_file_row_and_column(tmp_path):
    path = _copy(tmp_path, "XP_CONTINUOUS_RAW.csv")
    text = path.read_text().splitlines()
    text[2] = text[2].replace("(7685.987865952477,", "(7685.98xx,", 1)
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(
        DatasetBuildError, match=r"XP_CONTINUOUS_RAW\.csv.*data row 2.*column bp_coefficients"
    ):
        read_xp_continuous(path)


def test_wrong_array_length_is_an_error(tmp_path):
    path = _copy(tmp_path, "XP_CONTINUOUS_RAW.csv")
    text = path.read_text().replace("(56947.03696840172, ", "(", 1)
    path.write_text(text)
    with pytest.raises(DatasetBuildError, match="expected 55 values, found 54"):
        read_xp_continuous(path)


def test_truncated_fits_names_the_file(tmp_path):
    path = _copy(tmp_path, "XP_CONTINUOUS_RAW.fits")
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)
    with pytest.raises(DatasetBuildError, match=r"XP_CONTINUOUS_RAW\.fits.*truncated"):
        read_xp_continuous(path)


def test_duplicate_source_ids_in_xp_file(tmp_path):
    path = _copy(tmp_path, "XP_CONTINUOUS_RAW.csv")
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + [lines[1]]) + "\n")
    with pytest.raises(DatasetBuildError, match=r"XP_CONTINUOUS_RAW\.csv.*duplicate.*5853498713190525696"):
        read_xp_continuous(path)


def _photometry(n: int = 4) -> dict[str, np.ndarray]:
    return {
        "source_id": np.arange(1, n + 1, dtype=np.int64),
        "phot_g_mean_mag": np.array([12.0, 12.0, 12.0, 15.0])[:n],
        "bp_rp": np.full(n, 1.0),
        "parallax": np.array([1.0, 1.0, 1.0, 2.0])[:n],
        "parallax_error": np.array([0.05, 0.2, 0.05, 0.02])[:n],
        "ruwe": np.array([1.0, 1.0, 1.5, 1.1])[:n],
        "phot_bp_rp_excess_factor": np.full(n, 1.2),
        "nu_eff_used_in_astrometry": np.array([1.5, 1.5, 1.5, np.nan])[:n],
        "pseudocolour": np.array([np.nan, np.nan, np.nan, 1.5])[:n],
        "ecl_lat": np.full(n, 30.0),
        "astrometric_params_solved": np.array([31, 31, 31, 95])[:n],
        "j_m": np.array([10.0, 99.999, 10.0, 11.0])[:n],
        "j_msigcom": np.array([0.02, 99.999, 0.02, 0.03])[:n],
        "h_m": np.full(n, 9.5),
        "h_msigcom": np.full(n, 0.02),
        "ks_m": np.full(n, 9.4),
        "ks_msigcom": np.full(n, 0.02),
    }


def test_gaia_source_reader_masks_2mass_sentinel_and_requires_columns(tmp_path):
    path = tmp_path / "gaia_source.ecsv"
    Table(_photometry()).write(path)
    frame = read_gaia_source(path)
    assert frame["source_id"].dtype == np.int64
    assert np.isnan(frame["j_m"][1]) and np.isnan(frame["j_msigcom"][1]) and frame["j_m"][0] == 10.0
    colours = F.colour_features(frame.assign(J=np.nan, J_ERR=np.nan))
    assert np.isnan(colours["jh"][1]) and colours["jh"][0] == pytest.approx(0.5)
    bad = tmp_path / "no_ruwe.fits"
    Table({k: v for k, v in _photometry().items() if k != "ruwe"}).write(bad)
    with pytest.raises(DatasetBuildError, match=r"no_ruwe\.fits.*missing required column.*ruwe"):
        read_gaia_source(bad)


def test_g_fakemag_uses_lindegren_zero_point_and_quality_limits():
    from zero_point import zpt

    frame = pd.DataFrame(_photometry())
    value, error = F.g_fakemag(frame)
    zpt.load_tables()
    zero_point = zpt.get_zpt(
        np.array([12.0]), np.array([1.5]), np.array([np.nan]), np.array([30.0]), np.array([31])
    )[0]
    assert value[0] == pytest.approx((1.0 - zero_point) * 10 ** (0.2 * 12.0))
    assert error[0] == pytest.approx(0.05 * 10**2.4)
    assert np.isnan(value[1]) and np.isnan(value[2])  # parallax_error > 0.1, RUWE >= 1.4
    assert np.isfinite(value[3])  # 6-parameter solution
    assert abs(zero_point) > 0.005


def test_log_ebv_limits():
    value, error = F.log_ebv(np.array([0.0, -0.1, 0.1, 20.0, np.nan]), np.array([0.01] * 5))
    np.testing.assert_allclose(value[:3], [-7.0, -7.0, np.log(0.1)])
    assert np.isnan(value[3:]).all()
    assert error[2] == pytest.approx(0.1)


def test_apogee_flags_blank_labels():
    frame = pd.DataFrame(
        {
            "TEFF": [5000.0] * 4,
            "TEFF_ERR": [10.0] * 4,
            "LOGG": [3.0] * 4,
            "LOGG_ERR": [0.1] * 4,
            "M_H": [0.0] * 4,
            "M_H_ERR": [0.01] * 4,
            "ASPCAPFLAG": [1 << 19, 1 << 23, 1 << 0, 0],
            "STARFLAG": [0, 0, 0, 2],
        }
    )
    labels = F.apogee_labels(frame)
    assert np.isnan(labels["teff"][[0, 1, 3]]).all() and np.isnan(labels["m_h_err"][[0, 1, 3]]).all()
    assert labels["teff"][2] == 5000.0 and labels["logg_err"][2] == 0.1
