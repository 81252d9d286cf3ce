"""The demo's (app.py) input handling without a browser: file and pasted-table parsing, readable errors."""

import numpy as np
import pandas as pd
import pytest

from conftest import SHARED_DATA
from dataset_builder import DatasetBuildError, read_xp_continuous

pytest.importorskip("gradio", reason="the demo needs gradio: pip install -e '.[demo]'")
import app  # noqa: E402

pytest_plugins = ["training_fixtures"]
SAMPLES = SHARED_DATA / "gaia_archive_samples"


def test_xp_file_stars_are_the_builders_normalised_coefficients():
    path = SAMPLES / "cholesky_solution" / "18Sco-XP-spectra.csv"
    stars, xp = app.xp_file_stars(path), read_xp_continuous(path)
    flux = 10 ** ((25.6873668671 - xp.phot_g_mean_mag) / 2.5)  # Gaia DR3 G-band flux [e-/s]
    np.testing.assert_allclose(stars["bp0"], xp.bp_coefficients[:, 0] / flux, rtol=1e-12)
    np.testing.assert_allclose(stars["rp54_err"], xp.rp_coefficient_errors[:, 54] / flux, rtol=1e-12)
    missing_bp = app.xp_file_stars(SAMPLES / "xp_continuous" / "XP_CONTINUOUS_RAW_with_missing_BP.ecsv", 15.0)
    assert missing_bp[list(app.BP_NAMES)].isna().all(axis=1).tolist() == [False, True, False]


def test_xp_file_without_g_asks_for_it():
    with pytest.raises(app.DemoInputError, match="no phot_g_mean_mag column.*enter the stars' G magnitude"):
        app.xp_file_stars(SAMPLES / "xp_continuous" / "XP_CONTINUOUS_RAW.fits")
    with pytest.raises(app.DemoInputError, match="must be a number"):
        app.parse_g_mag("bright")
    assert app.parse_g_mag("  ") is None and app.parse_g_mag("15.5") == 15.5


def test_bad_files_raise_the_readers_error(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    with pytest.raises(DatasetBuildError, match="unsupported file extension"):
        app.xp_file_stars(bad)
    assert (
        app._message(DatasetBuildError(f"{bad}: broken"), str(bad)) == "**Could not use this input.** notes.txt: broken"
    )


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "No stars given"),
        ("bprp,colour_x\n1.0,2.0", r"Unknown column\(s\) \['colour_x'\]"),
        ("bprp,jh\n", "no star"),
        ("bprp,jh\nred,0.3", "must be numbers"),
    ],
)
def test_pasted_tables_with_problems_are_refused(text, match):
    with pytest.raises(app.DemoInputError, match=match):
        app.parse_observations(text, ["bprp", "jh", "jk"])


def test_pasted_table_separators():
    for text in ("bprp,jh_err\n1.0,0.1", "bprp\tjh_err\n1.0\t0.1", "bprp jh_err\n1.0 0.1"):
        pd.testing.assert_frame_equal(
            app.parse_observations(text, ["bprp", "jh"]), pd.DataFrame({"bprp": [1.0], "jh_err": [0.1]})
        )


def test_handlers_draw_with_a_trained_model(tiny_predictor):
    stars = app.parse_observations(app.EXAMPLE_COLOURS, tiny_predictor.tokenizer.observation_names)
    table = app.label_table(tiny_predictor, stars, ["bprp", "jh", "jk"])
    assert list(table.columns) == [f"{n}{s}" for n in app.TABLE_LABELS for s in ("", "_sigma")]
    expected = tiny_predictor.predict(stars, ["teff"])
    np.testing.assert_allclose(table["teff"], expected["teff"], rtol=1e-6)
    image = app.predicted_vs_input_plot(tiny_predictor, stars, ["bprp", "jh", "jk"], table)
    cool, hot = (np.asarray(app.spectrum_plot(tiny_predictor, teff, 4.4, 0.0, 0.05)) for teff in (4000, 6500))
    assert image.size[0] > 100 and cool.shape == hot.shape and (cool != hot).any()
    with pytest.raises(app.DemoInputError, match="log g range is empty"):
        app.loci_plot(tiny_predictor, ["0.0"], 4.0, 2.0, 10)
