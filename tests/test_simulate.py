"""Tests of the simulated survey: raw formats, determinism, physics against real numbers, build path."""

from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.table import Table

from conftest import SHARED_DATA
from dataset_builder.physics import (
    ExtinctionLaw,
    StellarParameters,
    SurfaceFluxModel,
    SyntheticPhotometry,
    wavelength_grid,
)
from dataset_builder.simulate import G_FLUX_ZERO_POINT, simulate_survey

SHARED = SHARED_DATA
REAL_XP = SHARED / "gaia_archive_samples/xp_continuous/XP_CONTINUOUS_RAW_with_missing_BP.fits"
REAL_TMASS = SHARED / "gaia_2mass_photometry/ocCastroGinard_tmass.fits"
N_FIRST = 10


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    return simulate_survey(tmp_path_factory.mktemp("sim") / "raw", n_stars=3000, seed=3, progress=False)


@pytest.fixture(scope="module")
def catalogue(survey):
    """gaia_source + truth + the first BP/RP coefficients (NaN for a missing band), one row per star."""
    gaia = Table.read(survey.gaia_source).to_pandas()
    truth = pd.read_parquet(survey.truth)
    xp = [Table.read(path) for path in survey.xp_files]
    ids = np.concatenate([np.asarray(t["source_id"]) for t in xp])
    assert np.array_equal(ids, gaia["source_id"].to_numpy()) and np.array_equal(ids, truth["source_id"])
    for band in ("bp", "rp"):
        first = np.concatenate(
            [[row[:N_FIRST] if len(row) else np.full(N_FIRST, np.nan) for row in t[f"{band}_coefficients"]] for t in xp]
        )
        for i in range(N_FIRST):
            gaia[f"{band}{i}"] = first[:, i]
    return gaia.join(truth.drop(columns="source_id"))


def _xp_schema(path: Path) -> list[tuple[str, str]]:
    with fits.open(path) as hdul:
        return [(column.name, column.format) for column in hdul[1].columns]


def test_xp_files_match_archive_schema_and_have_missing_bands(survey):
    assert len(survey.xp_files) >= 1
    assert _xp_schema(survey.xp_files[0]) == _xp_schema(REAL_XP)
    with fits.open(survey.xp_files[0]) as hdul:
        data = hdul[1].data
        lengths = np.array([len(row) for row in data["bp_coefficients"]])
        assert set(np.unique(lengths)) <= {0, 55}
        assert np.all(data["bp_n_parameters"][lengths == 55] == 55)
    missing = sum(
        int(np.sum([len(r) == 0 for r in Table.read(p)[f"{band}_coefficients"]]))
        for p in survey.xp_files
        for band in ("bp", "rp")
    )
    assert missing > 0


def test_allstar_has_flags_and_duplicates(survey):
    allstar = Table.read(survey.allstar)
    ids = np.asarray(allstar["GAIAEDR3_SOURCE_ID"])
    assert len(np.unique(ids)) < len(ids)
    flags = np.asarray(allstar["ASPCAPFLAG"])
    assert np.any(flags & (1 << 23)) and np.any(flags & (1 << 19))
    assert np.all(np.asarray(allstar["H"]) < 12.2)


def test_same_seed_gives_identical_files(tmp_path):
    first = simulate_survey(tmp_path / "a", n_stars=150, seed=7, xp_rows_per_file=60, progress=False)
    second = simulate_survey(tmp_path / "b", n_stars=150, seed=7, xp_rows_per_file=60, progress=False)
    third = simulate_survey(tmp_path / "c", n_stars=150, seed=8, xp_rows_per_file=60, progress=False)
    pairs = list(zip(first.xp_files, second.xp_files)) + [
        (first.gaia_source, second.gaia_source),
        (first.allstar, second.allstar),
        (first.truth, second.truth),
    ]
    assert len(first.xp_files) == 3
    assert all(filecmp.cmp(a, b, shallow=False) for a, b in pairs)
    assert not filecmp.cmp(first.gaia_source, third.gaia_source, shallow=False)


def test_xp_scale_matches_real_stars_at_bp_rp_0_9(catalogue):
    near = catalogue[(catalogue["bp_rp"] > 0.85) & (catalogue["bp_rp"] < 0.95)]
    assert len(near) > 20
    g_flux = 10 ** ((G_FLUX_ZERO_POINT - near["phot_g_mean_mag"]) / 2.5)
    assert np.nanmedian(near["bp0"] / g_flux) == pytest.approx(0.064, rel=0.12)
    assert np.nanmedian(near["rp0"] / g_flux) == pytest.approx(0.067, rel=0.12)


@pytest.fixture(scope="module")
def reddening():
    """Magnitudes of a few unreddened and E(B-V)=0.1 stars (Teff 4500-6000 K)."""
    wavelength = wavelength_grid()
    teff = np.array([4500.0, 5000.0, 5500.0, 6000.0])
    ones = np.ones_like(teff)
    stars = StellarParameters(teff, 3 * ones, 0 * ones, 0 * ones, 0 * ones, 1.5 * ones)
    flux = SurfaceFluxModel(wavelength)(stars)
    photometry = SyntheticPhotometry(wavelength)
    law = ExtinctionLaw(wavelength)
    clean = photometry.magnitudes(flux)
    dusty = photometry.magnitudes(flux * law.transmission(0.1 * ones, 3.1 * ones))
    return {band: (dusty[band] - clean[band]) / 0.1 for band in clean}, clean


def test_extinction_coefficients_match_real_values(reddening):
    per_ebv, _ = reddening
    assert np.all((per_ebv["G"] > 2.4) & (per_ebv["G"] < 2.9))
    assert np.all(np.abs(per_ebv["BP"] - per_ebv["RP"] - 1.3) < 0.15)
    assert np.all(np.abs(per_ebv["J"] - per_ebv["K"] - 0.5) < 0.1)


def test_hotter_stars_are_bluer(reddening):
    _, clean = reddening
    assert np.all(np.diff(clean["BP"] - clean["RP"]) < 0)
    assert np.all(np.diff(clean["J"] - clean["K"]) < 0)


def test_twomass_errors_follow_the_real_error_law(catalogue):
    real = Table.read(REAL_TMASS)
    for sim_mag, sim_err, real_mag, real_err in (
        ("j_m", "j_msigcom", "Jmag", "e_Jmag"),
        ("ks_m", "ks_msigcom", "Kmag", "e_Kmag"),
    ):
        mags = np.asarray(real[real_mag], float)
        errs = np.asarray(real[real_err], float)
        for low in (10.0, 12.0, 13.0):
            sim = catalogue[(catalogue[sim_mag] >= low) & (catalogue[sim_mag] < low + 1)][sim_err]
            ref = errs[(mags >= low) & (mags < low + 1)]
            assert len(sim) > 20
            assert np.median(sim) == pytest.approx(np.nanmedian(ref), rel=0.3)


def test_xp_coefficients_carry_teff_signal(catalogue):
    """A ridge fit of Teff on XP coefficients / f_G (+ squares) has a scatter far below the spread."""
    rows = catalogue[np.isfinite(catalogue["bp0"]) & np.isfinite(catalogue["rp0"])]
    g_flux = 10 ** ((G_FLUX_ZERO_POINT - rows["phot_g_mean_mag"].to_numpy()) / 2.5)
    names = [f"{band}{i}" for band in ("bp", "rp") for i in range(N_FIRST)]
    x = rows[names].to_numpy() / g_flux[:, None]
    x = (x - x.mean(0)) / x.std(0)
    x = np.column_stack([x, x**2, np.ones(len(x))])
    y = rows["true_teff"].to_numpy()
    half = len(y) // 2
    coef = np.linalg.solve(x[:half].T @ x[:half] + 1e-2 * np.eye(x.shape[1]), x[:half].T @ y[:half])
    residual = x[half:] @ coef - y[half:]
    scatter = 1.4826 * np.median(np.abs(residual - np.median(residual)))
    assert scatter < 0.25 * np.std(y[half:])
    assert scatter < 200.0


def test_simulate_build_load_dataset(survey, tmp_path):
    import datasets

    from dataset_builder.build import build_dataset

    out = tmp_path / "dataset"
    build_dataset(survey.xp_files, survey.gaia_source, survey.allstar, out, extra=[survey.truth], num_proc=1)
    splits = datasets.load_dataset(str(out))
    assert set(splits) == {"train", "validation", "test"}
    train = splits["train"].to_pandas()
    assert len(train) > 1000
    labelled = train[np.isfinite(train["teff"])]
    assert 0.3 < len(labelled) / len(train) < 0.9
    assert np.median(np.abs(labelled["teff"] - labelled["true_teff"])) < 60
    assert 4300 < np.median(labelled["teff"]) < 5200
    assert 2.0 < np.median(labelled["logg"]) < 3.2
    streamed = datasets.load_dataset(str(out), streaming=True)
    assert sum(1 for _ in streamed["validation"]) == splits["validation"].num_rows
    assert next(iter(streamed["train"])).keys() == splits["train"].features.keys()


def test_same_seed_gives_byte_identical_shards(tmp_path):
    from dataset_builder.build import build_dataset

    shards = []
    for run in ("a", "b"):
        raw = simulate_survey(tmp_path / run / "raw", n_stars=600, seed=11, progress=False)
        out = tmp_path / run / "dataset"
        build_dataset(raw.xp_files, raw.gaia_source, raw.allstar, out, extra=[raw.truth], num_proc=1)
        shards.append(sorted((out / "data").glob("*.parquet")))
    assert [p.name for p in shards[0]] == [p.name for p in shards[1]] and shards[0]
    assert all(filecmp.cmp(a, b, shallow=False) for a, b in zip(*shards))


def test_default_dataset_is_built_once_and_reused(tmp_path):
    from dataset_builder.default_data import default_dataset

    path = default_dataset(cache_dir=tmp_path, n_stars=400, seed=1)
    assert path.name == "simulated_survey-v1-n400-s1"
    assert (path / "README.md").is_file() and list((path / "data").glob("train-*.parquet"))
    assert "This is a simulated survey" in (path / "README.md").read_text()
    stamp = (path / "README.md").stat().st_mtime_ns
    assert default_dataset(cache_dir=tmp_path, n_stars=400, seed=1) == path
    assert (path / "README.md").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_command_line_simulates_the_calibrated_hermite_survey(tmp_path):
    """`python -m dataset_builder simulate --xp-model hermite`: XP files with the archive's correlation columns,
    and the calibration applied (the same seed without it gives other coefficients but the same c0)."""
    from dataset_builder.__main__ import main
    from dataset_builder.realism import read_xp_files

    common = ["simulate", "--n-stars", "300", "--seed", "4", "--xp-model", "hermite"]
    assert main([*common, "--out", str(tmp_path / "calibrated")]) == 0
    assert main([*common, "--uncalibrated", "--out", str(tmp_path / "bare")]) == 0
    calibrated, bare = (
        read_xp_files(sorted((tmp_path / name).glob("xp_continuous/*"))) for name in ("calibrated", "bare")
    )
    columns = fits.getdata(sorted((tmp_path / "calibrated").glob("xp_continuous/*"))[0]).columns.names
    assert "bp_coefficient_correlations" in columns and "rp_coefficient_correlations" in columns
    assert len(calibrated) > 250
    _, rows_calibrated, rows_bare = np.intersect1d(calibrated.source_id, bare.source_id, return_indices=True)
    ratio = {
        name: sample.coefficients["bp"][rows, 3] / sample.coefficients["bp"][rows, 0]
        for name, sample, rows in (("calibrated", calibrated, rows_calibrated), ("bare", bare, rows_bare))
    }
    assert np.median(np.abs(ratio["calibrated"] - ratio["bare"])) > 0.002  # bp3/bp0 moves by ~0.01 of c0
