"""Tests of modeling_astro.tasks.loci: Teff and colours over a (log g, [M/H]) grid."""

import numpy as np
import pytest

from modeling_astro.tasks import plot_loci, stellar_loci

pytest_plugins = ["training_fixtures"]  # session fixtures: tiny_survey, tiny_trained_checkpoint, tiny_predictor


def test_grid_layout_and_plot(tiny_predictor, tmp_path):
    logg, m_h = np.linspace(1.0, 3.5, 6), np.array([-0.5, 0.0, 0.3])
    loci = stellar_loci(tiny_predictor, logg, m_h)
    assert len(loci) == 18
    np.testing.assert_array_equal(loci["logg"], np.repeat(logg, 3))
    np.testing.assert_array_equal(loci["m_h"], np.tile(m_h, 6))
    assert {"teff", "teff_sigma", "bprp", "jh", "jk"} <= set(loci.columns)
    assert loci["teff"].between(3000, 8000).all() and loci["bprp"].between(0, 4).all()
    assert (loci.filter(like="_sigma") > 0).all().all()
    plot_loci(loci, tmp_path / "loci.png")
    assert (tmp_path / "loci.png").read_bytes()[:4] == b"\x89PNG"


def test_grid_point_equals_a_single_star_and_uses_no_extinction(tiny_predictor):
    loci = stellar_loci(tiny_predictor, [2.0, 3.0], [0.0], request=["teff"])
    single = tiny_predictor.predict({"logg": [3.0], "m_h": [0.0], "logebv": [-7.0]}, ["teff"])
    np.testing.assert_allclose(loci["teff"].iloc[1], single["teff"].iloc[0], rtol=1e-5)
    reddened = stellar_loci(tiny_predictor, [3.0], [0.0], request=["bprp"], logebv=np.log(0.5))
    assert reddened["bprp"].iloc[0] != stellar_loci(tiny_predictor, [3.0], [0.0], request=["bprp"])["bprp"].iloc[0]


def test_bad_grid_and_request(tiny_predictor):
    with pytest.raises(ValueError, match="non-empty 1-d"):
        stellar_loci(tiny_predictor, [], [0.0])
    with pytest.raises(KeyError, match="Did you mean"):
        stellar_loci(tiny_predictor, [2.0], [0.0], request=["bp_rp"])
