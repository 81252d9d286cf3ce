"""Tests of modeling_astro.tasks.inpainting: BP -> RP, RP -> BP and filling missing XP coefficients."""

import datasets
import numpy as np
import pandas as pd
import pytest

from modeling_astro.inference import AstroPredictor
from modeling_astro.tasks import BP_NAMES, RP_NAMES, XP_NAMES, fill_missing_coefficients, inpaint_band

pytest_plugins = ["training_fixtures"]  # session fixtures: tiny_survey, tiny_trained_checkpoint, tiny_predictor


@pytest.fixture(scope="module")
def stars(tiny_survey) -> pd.DataFrame:
    test = datasets.load_dataset(str(tiny_survey), split="test").to_pandas()
    return test[test[["bp0", "rp0"]].notna().all(axis=1)].iloc[:30].reset_index(drop=True)


@pytest.mark.parametrize(("source", "target"), [("bp", RP_NAMES), ("rp", BP_NAMES)])
def test_one_band_from_the_other(tiny_predictor, stars, source, target):
    predicted = inpaint_band(tiny_predictor, stars, source=source)
    assert list(predicted.columns[::2]) == list(target) and len(predicted) == len(stars)
    assert np.isfinite(predicted.to_numpy()).all()
    # only the source band is read: changing the target band's observations changes nothing
    scrambled = stars.copy()
    scrambled[list(target)] = 99.0
    pd.testing.assert_frame_equal(inpaint_band(tiny_predictor, scrambled, source=source), predicted)
    # the leading coefficient is predicted on the scale of the data, not in standardised units
    observed = stars[target[0]]
    assert np.median(np.abs(predicted[target[0]] / observed - 1)) < 1.0


def test_fill_missing_coefficients_fills_only_the_gaps(tiny_predictor, stars):
    masked = stars.copy()
    high = [name for name in XP_NAMES if int(name[2:]) >= 20]
    masked[high] = np.nan
    filled = fill_missing_coefficients(tiny_predictor, masked)
    assert filled[[f"{name}_filled" for name in high]].to_numpy().all()
    low = [name for name in XP_NAMES if name not in high]
    kept = stars[low].notna().to_numpy()
    assert not filled[[f"{name}_filled" for name in low]].to_numpy()[kept].any()
    np.testing.assert_array_equal(filled[low].to_numpy()[kept], stars[low].to_numpy()[kept])
    np.testing.assert_array_equal(
        filled[[f"{n}_sigma" for n in low]].to_numpy()[kept],
        stars[[f"{n}_err" for n in low]].to_numpy()[kept],
    )
    assert (
        np.isfinite(filled[high].to_numpy()).all() and (filled[[f"{n}_sigma" for n in high]] > 0).all().all()
    )


def test_batched_equals_unbatched(tiny_predictor, tiny_trained_checkpoint, stars):
    one_by_one = AstroPredictor.from_pretrained(str(tiny_trained_checkpoint), device="cpu", batch_size=1)
    pd.testing.assert_frame_equal(
        inpaint_band(tiny_predictor, stars.iloc[:8]),
        inpaint_band(one_by_one, stars.iloc[:8]),
        rtol=1e-4,
        atol=1e-6,
    )


def test_bad_input(tiny_predictor, stars):
    with pytest.raises(ValueError, match="'bp' or 'rp'"):
        inpaint_band(tiny_predictor, stars, source="g")
    with pytest.raises(ValueError, match="context length"):
        fill_missing_coefficients(tiny_predictor, stars, inputs_per_band=1000)
    with pytest.raises(KeyError, match="bp0"):
        fill_missing_coefficients(tiny_predictor, stars.drop(columns=["bp0"]))
    no_bp = stars.iloc[:2].copy()
    no_bp.loc[0, list(BP_NAMES)] = np.nan
    with pytest.warns(UserWarning, match="no usable observation"):
        predicted = inpaint_band(tiny_predictor, no_bp, source="bp")
    assert predicted.iloc[0].isna().all() and predicted.iloc[1].notna().all()
